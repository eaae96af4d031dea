"""Stage 1, prepare: tokenize every split once and save it as Arrow, keyed by a fingerprint (the folder and its
manifest are artifacts/prepared.py's)."""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rtsent.artifacts.cache import fingerprint, locked, publish, staging
from rtsent.artifacts.prepared import PreparedMeta, PreparedPaths, lock_key, make_current
from rtsent.artifacts.workspace import Workspace
from rtsent.config import PrepareConfig, PromptConfig, to_dict
from rtsent.core.families import check_max_len
from rtsent.core.modeling import load_config, load_tokenizer
from rtsent.core.prompts import ENCODING_VERSION, PromptEncoder, tokenizer_fingerprint
from rtsent.errors import DataError
from rtsent.faults import crash_point
from rtsent.sources.data import (Source, Split, SplitPlan, build_splits, class_label_ids, data_class_names, open_source,
                                 plan_splits, source_id)


@dataclass(frozen=True)
class PrepareResult:
    path: Path
    meta: PreparedMeta
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
    meta = _record(cfg, tok, source, plan, encoder)
    dest = ws.prepared(meta.fingerprint)
    with locked(ws, lock_key(meta.fingerprint), f"prepared dataset {dest}", wait=3600):
        if PreparedPaths(dest).is_prepared() and not cfg.force:
            log(f"Prepared dataset {meta.fingerprint} is cached - skipping tokenization (use --force to rebuild)")
            make_current(ws, meta.fingerprint)
            return PrepareResult(dest, PreparedMeta.read(dest), cache_hit=True)
        meta = _build(cfg, ws, source, plan, encoder, meta, log)
        make_current(ws, meta.fingerprint)
    log(f"Prepared dataset {meta.fingerprint} written to {dest}")
    return PrepareResult(dest, meta, cache_hit=False)


def _build(cfg: PrepareConfig, ws: Workspace, source: Source, plan: SplitPlan, encoder: PromptEncoder,
           meta: PreparedMeta, log: Callable[[str], None]) -> PreparedMeta:
    """Read, tokenize and save the splits in a staging folder, the manifest last, then publish it; the record."""
    with staging(ws, lock_key(meta.fingerprint)) as tmp:
        splits = build_splits(source, plan, cfg.text_column, cfg.label_column, cfg.prompt.label_names, log)
        dd, counts = _tokenize(cfg, splits, encoder, log)
        meta = meta.replace(splits=counts)
        dd.save_to_disk(str(tmp))
        crash_point("prepare:before-manifest")
        meta.write(tmp)
        publish(tmp, ws.prepared(meta.fingerprint))
    return meta


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


def _record(cfg: PrepareConfig, tok: Any, source: Source, plan: SplitPlan, encoder: PromptEncoder) -> PreparedMeta:
    """The dataset's record before its splits are counted, fingerprinted on everything that changes the prepared
    output, and nothing else (see docs/pipeline.md)."""
    meta = PreparedMeta.new(
        config={**to_dict(cfg), "force": None},
        source=source_id(source, plan),
        subset=cfg.subset,
        split_plan=plan.describe(),
        tokenizer=tokenizer_fingerprint(tok),
        prompt=cfg.prompt,
        max_len=cfg.max_len,
        columns=[cfg.text_column, cfg.label_column],
        encoding=ENCODING_VERSION,
        label_words=encoder.label_words,
    )
    return meta.replace(fingerprint=fingerprint({"stage": "prepare", **meta.cache_key()}))


def _tokenize(cfg: PrepareConfig, splits: dict[str, Split], encoder: PromptEncoder,
              log: Callable[[str], None]) -> tuple[Any, dict[str, dict[str, Any]]]:
    """The splits as a DatasetDict of prompt token ids, and each split's counts for the manifest."""
    import datasets

    features = datasets.Features({
        "input_ids": datasets.Sequence(datasets.Value("int32")),
        "labels": datasets.Value("int64"),
        "length": datasets.Value("int32"),
    })
    out, counts = {}, {}
    for name, split in splits.items():
        ids, truncated = encoder.encode_all(split.texts)
        lengths = [len(r) for r in ids]
        out[name] = datasets.Dataset.from_dict(
            {"input_ids": ids, "labels": split.labels, "length": lengths}, features=features
        )
        counts[name] = {
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
    return datasets.DatasetDict(out), counts


def _length_stats(lengths: list[int]) -> dict[str, float]:
    ordered = sorted(lengths)
    return {
        "min": ordered[0],
        "mean": round(statistics.fmean(ordered), 2),
        "p50": ordered[len(ordered) // 2],
        "p95": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))],
        "max": ordered[-1],
    }
