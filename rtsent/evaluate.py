"""Stage 3, evaluate: accuracy, macro-F1, per-class P/R, confusion matrix, calibration, errors, plots.

Scores a prepared split, or any labelled csv/tsv/jsonl/parquet file tokenized with the model's own prompt
(--data); compares several models side by side.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from rtsent import __version__
from rtsent.core import calibration
from rtsent.core.calibration import softmax
from rtsent.artifacts import card
from rtsent.artifacts.cache import clean_stale
from rtsent.artifacts.files import check_replaceable, is_json_with, write_json, write_jsonl
from rtsent.config import EvaluateConfig, PromptConfig, to_dict
from rtsent.errors import ArtifactError, UsageError
from rtsent.engines import open_classifier
from rtsent.core.prompts import tokenizer_fingerprint
from rtsent.artifacts.model import ModelPaths, resolve_model
from rtsent.artifacts.prepared import PreparedMeta, find_prepared, in_workspace, load_prepared, prompt_command
from rtsent.artifacts.workspace import Workspace
from rtsent.core.metrics import probability_report
from rtsent.engines.base import Classifier


@dataclass
class Examples:
    """What is scored: prompt token ids, class ids, where they came from, and (for --data) the texts."""

    rows: list[list[int]]
    labels: list[int]
    split: str
    source: dict[str, Any]
    texts: list[str] | None = None
    file_rows: list[int] | None = None
    """For --data: each example's 0-based data row in the file (blank rows are skipped, so they differ)."""


def run(cfg: EvaluateConfig, ws: Workspace, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Score a split (or a labelled file) with a model and write the report as JSON; returns the report.

    Raises ArtifactError when no model/prepared data fits, UsageError/DataError for contradicting
    options or unusable data.
    """
    clean_stale(ws)
    if cfg.output:
        _check_writable(Path(cfg.output), named=True)  # before the model is opened
    model = str(resolve_model(ws, cfg.model, base_ok=True))
    clf = open_classifier(model, _zero_shot_prompt(model, cfg, ws), precision=cfg.precision, engine=cfg.engine)
    if clf.choice is not None:
        log(clf.choice.line())
    examples = _from_file(clf, cfg) if cfg.data else _from_prepared(clf, cfg, ws)
    if examples.source.get("skipped_empty"):  # as prepare says it: a row left out of the figures is told
        log(f"{cfg.data}: skipped {examples.source['skipped_empty']} rows with empty text; the figures count "
            f"the other {len(examples.rows)}")
    out = Path(cfg.output) if cfg.output else _default_report_path(clf, model, examples, cfg, ws)
    _check_writable(out, named=False)  # before the scoring, not after it (a named --output was checked above)
    started = time.perf_counter()
    scores = clf.scores(examples.rows, cfg.batch_size)
    seconds = time.perf_counter() - started
    probs, calibrated = _calibrated(clf, scores, examples, cfg)
    report = _report(clf, model, examples, probs, calibrated, seconds, cfg)
    _add_extras(report, clf, examples, probs, out, cfg)
    write_json(out, report)  # last: a report on disk means its plots and errors file are complete
    if _is_run_export(out.parent, ws):
        card.refresh(out.parent)  # a report next to a run's exported model joins its model card
    report["written_to"] = str(out)
    return report


def _zero_shot_prompt(model: str, cfg: EvaluateConfig, ws: Workspace) -> Any:
    """cfg.prompt; for --zero-shot without one, a base model takes the prompt the prepared data was made
    with (its template, label words and names: a question-type dataset is not scored as sentiment), and
    --data the default prompt. An exported model always has its own (None here)."""
    if cfg.prompt is not None or not cfg.zero_shot or ModelPaths(Path(model).expanduser()).is_model():
        return cfg.prompt
    if cfg.data:
        return PromptConfig()
    return PreparedMeta.read(find_prepared(ws, cfg.prepared)).prompt


def _report(clf: Classifier, model: str, examples: Examples, probs: np.ndarray, calibrated: dict[str, Any],
            seconds: float, cfg: EvaluateConfig) -> dict[str, Any]:
    report = {
        "rtsent_version": __version__,
        "model": model,
        "split": examples.split,
        "prepared": examples.source.get("prepared"),
        "source": examples.source,
        "prompt": to_dict(clf.prompt),
        "engine": clf.engine,
        "precision": clf.precision,
        "engine_choice": clf.choice.to_dict() if clf.choice else None,
        "seconds": round(seconds, 3),
        "examples_per_s": round(len(examples.rows) / seconds, 2) if seconds else None,
        "probabilities": calibrated["applied"],
        **probability_report(probs, examples.labels, clf.label_names, cfg.bins),
        "calibration": calibrated,
    }
    if examples.split == "validation" and clf.meta is not None and clf.meta.best:
        report["warning"] = ("validation chose this model's checkpoint and temperature, so its figures are "
                             "optimistic; report `rtsent evaluate --split test`")
    return report


def _add_extras(report: dict[str, Any], clf: Classifier, examples: Examples, probs: np.ndarray, out: Path,
                cfg: EvaluateConfig) -> None:
    """The mistakes file (--errors) and the plots, written next to the report before it."""
    if cfg.errors is not None:
        report["errors"] = _errors(clf, examples, probs, cfg.errors, out.with_name(f"{out.stem}-errors.jsonl"))
    if cfg.plots:
        from rtsent.plots import evaluation_plots

        report["plots"] = [str(p.path) for p in evaluation_plots(report, out.parent / "plots", out.stem)]


def compare(cfg: EvaluateConfig, models: Sequence[str], ws: Workspace,
            log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Evaluate each model on the same split (or file), each through its own prompt; one JSON with all.

    A zero-shot prompt (cfg.prompt) applies to the models that have no rtsent.json of their own.
    """
    what = Path(cfg.data).stem if cfg.data else cfg.split
    out = Path(cfg.output) if cfg.output else ws.evals_dir / f"compare-{what}.json"
    _check_writable(out, named=bool(cfg.output))  # before any model is scored
    reports = []
    for model in models:
        # a run's name, or its folder: the model has its own prompt (resolved as every command resolves it)
        own_prompt = ModelPaths(Path(str(resolve_model(ws, model, base_ok=True))).expanduser()).is_model()
        one = dataclasses.replace(cfg, model=model, output=None, prompt=None if own_prompt else cfg.prompt)
        log(f"evaluating {model}")
        reports.append(run(one, ws, log))
    combined = {"rtsent_version": __version__, "split": reports[0]["split"], "models": reports}
    write_json(out, combined)
    combined["written_to"] = str(out)
    return combined


def _from_prepared(clf: Classifier, cfg: EvaluateConfig, ws: Workspace) -> Examples:
    prepared = load_prepared(_prepared_for(clf, cfg, ws), ws)
    path, dd, meta = prepared.path, prepared.dataset, prepared.meta
    _check_compatible(clf, meta, path)
    if cfg.split not in dd:
        raise ArtifactError(f"prepared data {path.name} has no {cfg.split} split; choose --split from {sorted(dd)}")
    table = dd[cfg.split].data
    info = meta.splits.get(cfg.split, {})
    source = {"prepared": meta.fingerprint, "data": meta.data, "rows": info.get("rows"),
              "truncated": info.get("truncated"), "max_len": meta.max_len}
    return Examples(table.column("input_ids").to_pylist(), table.column("labels").to_pylist(), cfg.split, source)


def _from_file(clf: Classifier, cfg: EvaluateConfig) -> Examples:
    """A labelled csv/tsv/jsonl/parquet file (or a folder's <split> file) tokenized with the model's own prompt."""
    from rtsent.artifacts.cache import hash_files
    from rtsent.sources.data import build_raw_split, read_raw_file
    from rtsent.sources.inputs import TABLE_FORMATS as FORMATS

    path = _labelled_file(Path(cfg.data).expanduser(), cfg.split, FORMATS)
    # A ClassLabel column is matched to the model's label names by name, as prepare matches it.
    split = build_raw_split(read_raw_file(path), path.stem, cfg.text_column, cfg.label_column, clf.label_names,
                            str(path))
    rows, truncated = clf.encoder.encode_all(split.texts)
    source = {"data": str(path), "sha256": hash_files([path])[:16], "rows": len(rows),
              "skipped_empty": split.skipped_empty, "truncated": truncated, "max_len": clf.encoder.max_len}
    return Examples(rows, split.labels, f"data-{path.stem}", source, split.texts, split.rows)


def _labelled_file(path: Path, split: str, formats: dict[str, str]) -> Path:
    if path.is_dir():
        found = [path / f"{split}{ext}" for ext in formats if (path / f"{split}{ext}").is_file()]
        if len(found) != 1:
            raise UsageError(f"--data {path}: expected one {split}.parquet/.csv/.tsv/.jsonl file in the folder, found "
                             f"{[f.name for f in found] or 'none'}; pass the file itself or --split")
        return found[0]
    if not path.is_file():
        raise UsageError(f"--data {path}: no such file or folder")
    if path.suffix.lower() not in formats:
        raise UsageError(f"--data {path}: expected a .csv, .tsv, .jsonl or .parquet file with text and label columns")
    return path


def _calibrated(clf: Classifier, scores: np.ndarray, examples: Examples, cfg: EvaluateConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """The probabilities the report describes, and accuracy/ECE/NLL with and without each calibration.

    The classifier's own calibration (its fitted temperature, as predict and serve apply it) always
    applies; --calibrate adds contextual calibration on top. Nothing is fitted on the split reported.
    """
    labels, bins = examples.labels, cfg.bins
    probs = clf.calibrate(scores)
    section: dict[str, Any] = {}
    applied = "softmax(scores)"
    fitted = (clf.meta.calibration if clf.meta is not None else None) or {}
    if "temperature" in fitted:
        raw = softmax(np.asarray(scores, dtype=np.float64))
        applied = f"softmax(scores / {clf.temperature:g})"
        section["temperature"] = {"value": clf.temperature, "fitted_on": fitted.get("fitted_on"),
                                  "before": calibration.summary(raw, labels, bins),
                                  "after": calibration.summary(probs, labels, bins)}
        if fitted.get("fitted_on") == examples.split:
            section["temperature"]["warning"] = (f"the temperature was fitted on {examples.split}; "
                                                 f"its 'after' figures are optimistic, report test instead")
    if cfg.calibrate:
        p_cf = calibration.content_free_probabilities(clf)  # through the same calibrate(): the reviews' scale
        adjusted = calibration.contextual(probs, p_cf)
        section["contextual"] = {"content_free": list(calibration.CONTENT_FREE), "p_cf": p_cf.tolist(),
                                 "before": calibration.summary(probs, labels, bins),
                                 "after": calibration.summary(adjusted, labels, bins)}
        probs, applied = adjusted, applied + ", contextual calibration"
    section["applied"] = applied
    return probs, section


def _errors(clf: Classifier, examples: Examples, probs: np.ndarray, top: int, path: Path) -> dict[str, Any]:
    """Every misclassified example, most confident first, to a jsonl file; the first `top` in the report.

    `index` is the example's 0-based data row in the --data file (blank rows count, as in the file), or its
    row in the prepared split."""
    labels = np.asarray(examples.labels)
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != labels)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")]
    names = clf.label_names
    rows = [{"index": examples.file_rows[i] if examples.file_rows else int(i), "text": _text_of(clf, examples, int(i)), "true": names[labels[i]],
             "predicted": names[pred[i]], "probability": float(probs[i, pred[i]]),
             "probabilities": {n: float(p) for n, p in zip(names, probs[i])}} for i in wrong]
    write_jsonl(path, rows)
    return {"count": len(rows), "written_to": str(path), "top": rows[:top]}


def _text_of(clf: Classifier, examples: Examples, i: int) -> str:
    """The review: as given (--data), else decoded from the prepared ids without the template."""
    if examples.texts is not None:
        return examples.texts[i]
    # The encoder put its BOS (Llama's <s>, OPT's </s>) before every prompt and the suffix after it.
    row = examples.rows[i]
    body = row[len(clf.encoder.bos_ids): len(row) - len(clf.encoder.suffix_ids)]
    text = clf.tokenizer.decode(body)
    prefix = clf.prompt.prefix
    return text[len(prefix):] if prefix and text.startswith(prefix) else text


def _prepared_for(clf: Classifier, cfg: EvaluateConfig, ws: Workspace) -> Path:
    """--prepared, else the dataset the model was trained on, else the newest prepared dataset."""
    if cfg.prepared:
        return find_prepared(ws, cfg.prepared)
    return in_workspace(ws, clf.meta.prepared if clf.meta is not None else None) or find_prepared(ws, None)


def _check_compatible(clf: Classifier, meta: PreparedMeta, path: Path) -> None:
    if meta.tokenizer != tokenizer_fingerprint(clf.tokenizer) or not meta.prompt.same_scoring(clf.prompt):
        raise ArtifactError(
            f"prepared data {path.name} was made with another tokenizer or prompt than {clf.name} uses; run "
            f"`{prompt_command(clf.name, clf.prompt.template, clf.prompt.label_words)}` (or pass --prepared)"
        )


def _report_name(clf: Classifier, examples: Examples, cfg: EvaluateConfig) -> tuple[str, bool]:
    """The report's split name, qualified when it does not describe what the model does on its own data:
    `test-contextual` for --calibrate (predict, serve and the exports never apply it), `test-on-<prepared>`
    for a prepared dataset other than the one the model was trained on. Only an unqualified report may
    sit in a run's model folder, where the card and `rtsent runs` credit it to the model; returns the
    name and whether it is unqualified."""
    name = examples.split
    prepared = examples.source.get("prepared")
    trained_on = clf.meta.prepared if clf.meta is not None else None
    if prepared and trained_on and prepared != trained_on:
        name += f"-on-{prepared[:8]}"
    if cfg.calibrate:
        name += "-contextual"
    return name, name == examples.split


def _report_path(model: str, name: str, describes_model: bool, ws: Workspace) -> Path:
    """Next to a run's own exported model when the report describes it (an unqualified name); for any other
    model (a user's folder, a hub snapshot, a hub name) or report under the workspace's evals/, so that
    evaluating never writes into a folder rtsent did not make, nor credits a model with figures it does not give."""
    folder = Path(model).expanduser()
    run_export = _is_run_export(folder, ws)
    if run_export and describes_model:
        return ModelPaths(folder).eval_report(name)
    where = str(folder.resolve()) if folder.exists() else model
    label = folder.resolve().parent.name if run_export else (folder.name if folder.exists() else model)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("_") or "model"
    digest = hashlib.sha256(where.encode()).hexdigest()[:8]
    return ModelPaths(ws.evals_dir / f"{slug}-{digest}").eval_report(name)


def _default_report_path(clf: Classifier, model: str, examples: Examples, cfg: EvaluateConfig, ws: Workspace) -> Path:
    """Where the report goes without --output (see _report_name, _report_path). A --data report is named by its
    file's stem (data-test); where that name already holds the report of another file with the same stem (a
    second test.csv), this one's split is qualified with its path's digest (data-test-1a2b3c4d), so that
    neither replaces the other."""
    name, describes_model = _report_name(clf, examples, cfg)
    out = _report_path(model, name, describes_model, ws)
    if cfg.data and _another_files_report(out, examples.source["data"]):
        digest = hashlib.sha256(str(Path(examples.source["data"]).resolve()).encode()).hexdigest()[:8]
        examples.split = f"{examples.split}-{digest}"
        out = _report_path(model, f"{name}-{digest}", describes_model, ws)
    return out


def _another_files_report(path: Path, data: str) -> bool:
    """Whether path holds the readable report of a file other than data (a damaged report is simply replaced)."""
    try:
        earlier = json.loads(path.read_text(encoding="utf-8")).get("source", {}).get("data")
    except (OSError, ValueError, AttributeError):
        return False
    return earlier is not None and Path(earlier).resolve() != Path(data).resolve()


def _check_writable(out: Path, named: bool) -> None:
    """The report can be written to out; a path the user named (--output) may replace an earlier report only,
    never their data or any other file."""
    if named:
        check_replaceable(out, lambda p: is_json_with(p, "rtsent_version"), "evaluation report")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(f"cannot write the report to {out} ({exc.strerror}); pass --output to a writable place") from None
    if not os.access(out.parent, os.W_OK):
        raise ArtifactError(f"cannot write the report to {out} (read-only); pass --output to a writable place")


def _is_run_export(folder: Path, ws: Workspace) -> bool:
    if not ModelPaths(folder).is_model():
        return False
    try:
        return folder.resolve().parent.parent == ws.runs_dir.resolve() and folder.name == "model"
    except OSError:
        return False
