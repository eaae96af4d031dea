"""Stage 1, prepare: tokenize every split once and save it as Arrow, keyed by a fingerprint."""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rtsent import __version__
from rtsent.artifacts.cache import fingerprint, locked, publish, staging, write_json
from rtsent.config import PrepareConfig, PromptConfig, to_dict
from rtsent.sources.data import (Source, Split, SplitPlan, build_splits, class_label_ids, data_class_names, open_source,
                                 plan_splits, source_id)
from rtsent.errors import ArtifactError, DataError
from rtsent.faults import crash_point
from rtsent.core.families import check_max_len
from rtsent.core.modeling import load_config, load_tokenizer
from rtsent.core.prompts import tokenizer_fingerprint
from rtsent.core.prompts import ENCODING_VERSION, LabelWords, PromptEncoder
from rtsent.artifacts.workspace import MANIFEST, Workspace, read_json

TOKENIZE_CHUNK = 2048


@dataclass(frozen=True)
class PrepareResult:
    path: Path
    manifest: dict[str, Any]
    cache_hit: bool


def run(cfg: PrepareConfig, ws: Workspace, log: Callable[[str], None] = lambda _: None) -> PrepareResult:
    """Tokenize cfg.data into ws.prepared(<fingerprint>), or reuse it when already there.

    Raises UsageError/DataError for bad options or data, HubError when a name cannot be fetched.
    """
    ws.ensure()
    tok = load_tokenizer(cfg.model)
    config = load_config(cfg.model)
    if config is not None:
        check_max_len(config, cfg.max_len, cfg.model, "pass --max-len {tokens} or less")
    source = open_source(cfg.data, cfg.subset)
    plan = plan_splits(source, cfg.split_map, cfg.validation_fraction, cfg.seed)
    plan = dataclasses.replace(plan, shots=cfg.shots, shots_seed=cfg.seed)
    cfg = dataclasses.replace(cfg, prompt=_classes(cfg, source, plan, log))
    encoder = PromptEncoder(cfg.prompt, tok, cfg.max_len)
    key = _cache_key(cfg, tok, source, plan)
    fp = fingerprint({"stage": "prepare", **key})
    dest = ws.prepared(fp)
    with locked(ws, f"prepare-{fp}", f"prepared dataset {dest}", wait=3600):
        if (dest / MANIFEST).is_file() and not cfg.force:
            manifest = read_json(dest / MANIFEST, "run `rtsent prepare --force` to rebuild it")
            log(f"Prepared dataset {fp} is cached - skipping tokenization (use --force to rebuild)")
            _make_current(ws, fp)
            return PrepareResult(dest, manifest, cache_hit=True)
        manifest = {
            "fingerprint": fp,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "rtsent_version": __version__,
            "config": {**to_dict(cfg), "force": None},
            **key,
            "label_words": encoder.label_words.to_list(),
            "splits": {},
        }
        with staging(ws, f"prepare-{fp}") as tmp:
            splits = build_splits(source, plan, cfg.text_column, cfg.label_column, cfg.prompt.label_names, log)
            dd = _tokenize(cfg, splits, encoder, manifest, log)
            dd.save_to_disk(str(tmp))
            crash_point("prepare:before-manifest")
            write_json(tmp / MANIFEST, manifest)
            publish(tmp, dest)
        _make_current(ws, fp)
    log(f"Prepared dataset {fp} written to {dest}")
    return PrepareResult(dest, manifest, cache_hit=False)


def _classes(cfg: PrepareConfig, source: Source, plan: SplitPlan, log: Callable[[str], None]) -> PromptConfig:
    """The prompt with its classes known: as given, else the data's own label names (their words read off the
    names), else " negative, positive" for data whose labels are class ids or match those names."""
    if cfg.prompt.resolved:
        return cfg.prompt
    default = cfg.prompt.or_default()
    names = data_class_names(source, plan, cfg.label_column)
    if names is None:
        return default
    try:
        class_label_ids(names, default.label_names, source.name)
        return default
    except DataError:
        pass
    prompt = cfg.prompt.with_names(tuple(names))
    log(f"classes from the data's labels: {', '.join(f'{n!r} (word {w!r})' for n, w in zip(prompt.label_names, prompt.label_words))}"
        f"; pass --label-words to choose other words or --label-names for another order")
    return prompt


def _make_current(ws: Workspace, fp: str) -> None:
    """Point the workspace at this dataset: what `train` and `evaluate` use when not told otherwise."""
    write_json(ws.current_file, {"prepared": fp})


def describe(manifest: dict[str, Any]) -> str:
    """One line naming a prepared dataset: fingerprint, data, max-len and template."""
    return (f"prepared dataset {manifest['fingerprint']} ({manifest['config']['data']}, max-len "
            f"{manifest['max_len']}, template {manifest['prompt']['template']!r})")


def _cache_key(cfg: PrepareConfig, tok: Any, source: Source, plan: SplitPlan) -> dict[str, Any]:
    """Everything that changes the prepared output, and nothing else (see docs/pipeline.md)."""
    return {
        "source": source_id(source, plan),
        "subset": cfg.subset,
        "split_plan": plan.describe(),
        "tokenizer": tokenizer_fingerprint(tok),
        "prompt": to_dict(cfg.prompt),
        "max_len": cfg.max_len,
        "columns": [cfg.text_column, cfg.label_column],
        "encoding": ENCODING_VERSION,
    }


def _tokenize(cfg: PrepareConfig, splits: dict[str, Split], encoder: PromptEncoder, manifest: dict,
              log: Callable) -> Any:
    import datasets

    features = datasets.Features({
        "input_ids": datasets.Sequence(datasets.Value("int32")),
        "labels": datasets.Value("int64"),
        "length": datasets.Value("int32"),
    })
    out = {}
    for name, split in splits.items():
        ids, truncated = [], 0
        for start in range(0, len(split.texts), TOKENIZE_CHUNK):
            batch = encoder.encode(split.texts[start : start + TOKENIZE_CHUNK])
            ids.extend(batch.input_ids)
            truncated += sum(batch.truncated)
        lengths = [len(r) for r in ids]
        out[name] = datasets.Dataset.from_dict(
            {"input_ids": ids, "labels": split.labels, "length": lengths}, features=features
        )
        manifest["splits"][name] = {
            "rows": len(ids),
            "per_class": {n: split.labels.count(i) for i, n in enumerate(cfg.prompt.label_names)},
            "skipped_empty": split.skipped_empty,
            "truncated": truncated,
            "length": _length_stats(lengths),
        }
        if truncated:
            log(f"{name}: {truncated} of {len(ids)} reviews were longer than --max-len {cfg.max_len} and lost their tail")
        if split.skipped_empty:
            log(f"{name}: skipped {split.skipped_empty} rows with empty text")
    return datasets.DatasetDict(out)


def _length_stats(lengths: list[int]) -> dict[str, float]:
    ordered = sorted(lengths)
    return {
        "min": ordered[0],
        "mean": round(statistics.fmean(ordered), 2),
        "p50": ordered[len(ordered) // 2],
        "p95": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))],
        "max": ordered[-1],
    }


MANIFEST_KEYS = ("fingerprint", "config", "tokenizer", "prompt", "max_len", "splits")
# How long a reader waits for a `prepare --force` that is replacing the same dataset.
LOCK_WAIT_S = 600.0


def load(path: Path, ws: Workspace | None = None) -> tuple[Any, dict[str, Any]]:
    """A prepared DatasetDict and its manifest; an incomplete folder is an ArtifactError.

    With the workspace given, the dataset's prepare lock is held while opening it, so a concurrent
    `prepare --force` never swaps the folder mid-open (once open, the memory-mapped files stay valid).
    """
    if ws is None:
        return _load(path)
    with locked(ws, f"prepare-{path.name}", f"prepared dataset {path}", wait=LOCK_WAIT_S):
        return _load(path)


def _load(path: Path) -> tuple[Any, dict[str, Any]]:
    import datasets

    hint = f"rebuild it with `rtsent prepare --force` (or delete {path})"
    manifest = read_json(path / MANIFEST, hint)
    missing = [k for k in MANIFEST_KEYS if k not in manifest] + (
        [] if "label_words" in manifest or "label_ids" in manifest else ["label_words"])
    if missing:
        raise ArtifactError(f"{path / MANIFEST} lacks {', '.join(missing)}; {hint}")
    try:
        dd = datasets.load_from_disk(str(path))
    except Exception as exc:  # damaged arrow files surface as several exception types
        raise ArtifactError(f"prepared dataset {path} is damaged ({exc}); {hint}") from None
    # Datasets prepared before label words of several tokens kept one token id per class as "label_ids".
    manifest["label_words"] = LabelWords.from_list(manifest.pop("label_ids", None) or manifest["label_words"]).to_list()
    for split, info in manifest.get("splits", {}).items():
        if split not in dd or len(dd[split]) != info.get("rows"):
            raise ArtifactError(f"prepared dataset {path} does not match its manifest ({split}); {hint}")
    return dd, manifest

