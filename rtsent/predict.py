"""Stage 4, predict: texts, files or stdin -> label + probability, streamed in batches."""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TextIO

from rtsent.cache import clean_stale
from rtsent.config import PredictConfig
from rtsent.data import iter_text_file
from rtsent.errors import DataError
from rtsent.engines import open_classifier
from rtsent.workspace import Workspace


@dataclass(frozen=True)
class PredictStats:
    count: int
    seconds: float
    """Time spent reading, scoring and writing, after the model was loaded."""
    load_seconds: float = 0.0

    @property
    def per_second(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0


def _texts(cfg: PredictConfig) -> Iterator[list[str]]:
    if cfg.file:
        yield from iter_text_file(cfg.file, cfg.text_column, cfg.batch_size)
        return
    for start in range(0, len(cfg.texts), cfg.batch_size):
        yield list(cfg.texts[start : start + cfg.batch_size])


def predictions(cfg: PredictConfig, clf: Any) -> Iterator[dict[str, Any]]:
    """One dict per review, in input order: text, label, probability, and every class's probability.

    Memory stays bounded by one batch whatever the input size; blank lines of a file are skipped.
    """
    names = clf.label_names
    for chunk in _texts(cfg):
        probs = clf.probabilities(chunk, cfg.batch_size)
        for text, row in zip(chunk, probs):
            best = int(row.argmax())
            yield {
                "text": text,
                "label": names[best],
                "probability": float(row[best]),
                "probabilities": {n: float(p) for n, p in zip(names, row)},
            }


def run(cfg: PredictConfig, ws: Workspace, out: TextIO | None = None, console: Any = None,
        prompt: Any = None) -> PredictStats:
    """Predict and write results to `out` (stdout) in cfg.format; returns counts and timing."""
    out = out or sys.stdout
    fmt = cfg.format if cfg.format != "auto" else ("table" if cfg.texts else "jsonl")
    started = time.perf_counter()
    clean_stale(ws)
    clf = open_classifier(cfg.model or str(ws.latest_model()), prompt, cfg.max_len, cfg.precision, cfg.engine)
    loaded = time.perf_counter()
    count = 0
    writer = WRITERS[fmt](out, console)
    for row in predictions(cfg, clf):
        writer.add(row)
        count += 1
    if count == 0:  # only a file or stdin can get here: arguments are checked to be non-empty
        where = "stdin" if cfg.file == "-" else cfg.file
        raise DataError(f"{where} has no reviews (it is empty or holds only blank lines); nothing to classify")
    writer.close()
    return PredictStats(count, time.perf_counter() - loaded, loaded - started)


class _JsonLines:
    def __init__(self, out: TextIO, console: Any):
        self.out = out

    def add(self, row: dict[str, Any]) -> None:
        self.out.write(json.dumps(row, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self.out.flush()


class _JsonArray(_JsonLines):
    def __init__(self, out: TextIO, console: Any):
        super().__init__(out, console)
        self.first = True

    def add(self, row: dict[str, Any]) -> None:
        self.out.write(("[\n  " if self.first else ",\n  ") + json.dumps(row, ensure_ascii=False))
        self.first = False

    def close(self) -> None:
        self.out.write("[]\n" if self.first else "\n]\n")
        self.out.flush()


class _Csv:
    def __init__(self, out: TextIO, console: Any):
        self.out = out
        self.writer = None

    def add(self, row: dict[str, Any]) -> None:
        flat = {"text": row["text"], "label": row["label"], "probability": f"{row['probability']:.6f}",
                **{f"p_{n}": f"{p:.6f}" for n, p in row["probabilities"].items()}}
        if self.writer is None:
            self.writer = csv.DictWriter(self.out, fieldnames=list(flat))
            self.writer.writeheader()
        self.writer.writerow(flat)

    def close(self) -> None:
        self.out.flush()


class _Table:
    """A Rich table; it holds every row, so `auto` uses it only for texts given as arguments."""

    def __init__(self, out: TextIO, console: Any):
        from rich.console import Console
        from rich.table import Table

        self.console = console or Console(file=out)
        self.table = Table("text", "label", "probability")

    def add(self, row: dict[str, Any]) -> None:
        from rich.text import Text  # Text, not a str: review text must never be read as Rich markup

        text = row["text"] if len(row["text"]) <= 80 else row["text"][:77] + "..."
        self.table.add_row(Text(_visible(text)), Text(row["label"]), f"{row['probability']:.3f}")

    def close(self) -> None:
        self.console.print(self.table)


def _visible(text: str) -> str:
    """Control characters shown as escapes: a review must never move the cursor or recolour a terminal."""
    import unicodedata

    return "".join(c if unicodedata.category(c) != "Cc" else repr(c)[1:-1] for c in text)


WRITERS: dict[str, Callable[[TextIO, Any], Any]] = {
    "jsonl": _JsonLines, "json": _JsonArray, "csv": _Csv, "table": _Table,
}
