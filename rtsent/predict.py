"""Stage 4, predict: texts, files or stdin -> label + probability, streamed in batches."""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, TextIO

from rtsent.artifacts.cache import clean_stale
from rtsent.artifacts.files import finite
from rtsent.artifacts.model import resolve_model
from rtsent.config import PredictConfig
from rtsent.sources.inputs import Row, check_file, iter_rows, problem
from rtsent.errors import DataError
from rtsent.engines import open_classifier
from rtsent.artifacts.workspace import Workspace


@dataclass(frozen=True)
class PredictStats:
    count: int
    seconds: float
    """Time spent reading, scoring and writing, after the model was loaded."""
    load_seconds: float = 0.0
    unlabelled: int = 0
    """Rows answered with an error instead of a label (blank text)."""
    note: str | None = None
    """The engine and precision picked for the job, and why (engines/choice.py)."""

    @property
    def per_second(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0


def _rows(cfg: PredictConfig) -> Iterator[list[Row]]:
    if cfg.file:
        yield from iter_rows(cfg.file, cfg.text_column, cfg.keep_columns, cfg.batch_size)
        return
    for start in range(0, len(cfg.texts), cfg.batch_size):
        yield [Row(t) for t in cfg.texts[start : start + cfg.batch_size]]


OUTPUT_KEYS = ("text", "label", "probability", "probabilities", "error")


def output_columns(names: Sequence[str]) -> set[str]:
    """Every column predict writes in any format (csv adds p_<class>): a kept column of one of these
    names is carried as input.<name>, the same in every format, and never overwritten."""
    return {*OUTPUT_KEYS, *(f"p_{n}" for n in names)}


def predictions(cfg: PredictConfig, clf: Any) -> Iterator[dict[str, Any]]:
    """One dict per input row, in input order: carried columns, text, label, probability, every class's
    probability. A row that cannot be classified (blank text) keeps its place with label None and an
    "error" saying why. Memory stays bounded by one batch whatever the input size.
    """
    names = clf.label_names
    taken = output_columns(names)
    for chunk in _rows(cfg):
        problems = [problem(row.text) for row in chunk]
        good = [i for i, p in enumerate(problems) if p is None]
        probs = dict(zip(good, clf.probabilities([chunk[i].text for i in good], cfg.batch_size))) if good else {}
        for i, row in enumerate(chunk):
            carried = {(f"input.{k}" if k in taken else k): v for k, v in row.carried.items()}
            if i not in probs:
                text = row.text if isinstance(row.text, str) else ("" if row.text is None else str(row.text))
                yield {**carried, "text": text, "label": None, "probability": None, "probabilities": None,
                       "error": problems[i]}
                continue
            best = int(probs[i].argmax())
            yield {
                **carried,
                "text": row.text,
                "label": names[best],
                "probability": float(probs[i][best]),
                "probabilities": {n: float(p) for n, p in zip(names, probs[i])},
            }


def run(cfg: PredictConfig, ws: Workspace, out: TextIO | None = None, console: Any = None) -> PredictStats:
    """Predict and write results to `out` (stdout) in cfg.format; returns counts and timing."""
    out = out or sys.stdout
    fmt = cfg.format if cfg.format != "auto" else ("table" if cfg.texts else "jsonl")
    started = time.perf_counter()
    if cfg.file:
        check_file(cfg.file, cfg.text_column, cfg.keep_columns)  # a bad file is refused before any row is out
    clean_stale(ws)
    job = "bulk" if cfg.file else "cold"  # texts on the command line: a new process scoring a few reviews
    clf = open_classifier(str(resolve_model(ws, cfg.model, base_ok=True)), cfg.prompt, cfg.max_len, cfg.precision,
                          cfg.engine, job)
    loaded = time.perf_counter()
    count = skipped = 0
    writer = WRITERS[fmt](out, console, clf.label_names)
    for row in predictions(cfg, clf):
        writer.add(row)
        count += 1
        skipped += row["label"] is None
    if count == 0:  # only a file or stdin can get here: arguments are checked to be non-empty
        where = "stdin" if cfg.file == "-" else cfg.file
        raise DataError(f"{where} has no reviews (it is empty); nothing to classify")
    writer.close()
    return PredictStats(count, time.perf_counter() - loaded, loaded - started, skipped,
                        clf.choice.line() if clf.choice else None)


class _JsonLines:
    def __init__(self, out: TextIO, console: Any, names: Sequence[str]):
        self.out = out

    def add(self, row: dict[str, Any]) -> None:
        self.out.write(_json(row) + "\n")

    def close(self) -> None:
        self.out.flush()


class _JsonArray(_JsonLines):
    def __init__(self, out: TextIO, console: Any, names: Sequence[str]):
        super().__init__(out, console, names)
        self.first = True

    def add(self, row: dict[str, Any]) -> None:
        self.out.write(("[\n  " if self.first else ",\n  ") + _json(row))
        self.first = False

    def close(self) -> None:
        self.out.write("[]\n" if self.first else "\n]\n")
        self.out.flush()


def _json(row: dict[str, Any]) -> str:
    """A row as strict JSON: a NaN or infinity (a parquet float cell, a jsonl `NaN`) becomes null, never
    the bare `NaN` that strict parsers refuse."""
    return json.dumps(finite(row), ensure_ascii=False, default=str, allow_nan=False)


class _Csv:
    """Fixed columns: carried ones, text, label, probability, p_<class> each, error (empty when labelled)."""

    def __init__(self, out: TextIO, console: Any, names: Sequence[str]):
        self.out = out
        self.names = names
        self.writer = None

    def add(self, row: dict[str, Any]) -> None:
        probs = row["probabilities"] or {}
        flat = {k: v for k, v in row.items() if k not in OUTPUT_KEYS}
        flat.update({"text": row["text"], "label": row["label"] or "",
                     "probability": "" if row["probability"] is None else f"{row['probability']:.6f}",
                     **{f"p_{n}": f"{probs[n]:.6f}" if n in probs else "" for n in self.names},
                     "error": row.get("error") or ""})
        if self.writer is None:
            self.writer = csv.DictWriter(self.out, fieldnames=list(flat))
            self.writer.writeheader()
        self.writer.writerow(flat)

    def close(self) -> None:
        self.out.flush()


class _Table:
    """A Rich table; it holds every row, so `auto` uses it only for texts given as arguments."""

    def __init__(self, out: TextIO, console: Any, names: Sequence[str]):
        from rich.console import Console
        from rich.table import Table

        self.console = console or Console(file=out)
        self.table = Table("text", "label", "probability")

    def add(self, row: dict[str, Any]) -> None:
        from rich.text import Text  # Text, not a str: review text must never be read as Rich markup

        text = row["text"] if len(row["text"]) <= 80 else row["text"][:77] + "..."
        if row["label"] is None:
            self.table.add_row(Text(_visible(text)), Text(f"({row['error']})"), "-")
        else:
            self.table.add_row(Text(_visible(text)), Text(row["label"]), f"{row['probability']:.3f}")

    def close(self) -> None:
        self.console.print(self.table)


def _visible(text: str) -> str:
    """Control characters shown as escapes: a review must never move the cursor or recolour a terminal."""
    from rtsent.console import visible

    return visible(text)


WRITERS: dict[str, Callable[[TextIO, Any, Sequence[str]], Any]] = {
    "jsonl": _JsonLines, "json": _JsonArray, "csv": _Csv, "table": _Table,
}
