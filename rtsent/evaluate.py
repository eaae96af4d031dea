"""Stage 3, evaluate: accuracy, macro-F1, per-class P/R, confusion matrix, calibration, errors, plots.

Scores a prepared split, or any labelled csv/jsonl/parquet file tokenized with the model's own prompt
(--data); compares several models side by side.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from rtsent import __version__, prepare
from rtsent.core import calibration
from rtsent.artifacts import card
from rtsent.artifacts.cache import clean_stale, write_json, write_jsonl
from rtsent.config import EvaluateConfig, to_dict
from rtsent.errors import ArtifactError, UsageError
from rtsent.engines import open_classifier
from rtsent.engines.base import softmax
from rtsent.core.prompts import tokenizer_fingerprint
from rtsent.artifacts.workspace import MANIFEST, MODEL_META, Workspace


def classification_report(scores: np.ndarray, labels: Sequence[int], names: Sequence[str], bins: int = 15,
                          temperature: float = 1.0) -> dict[str, Any]:
    """Metrics of label-word scores [n, classes] against class ids, with probabilities softmax(scores / T)."""
    return probability_report(softmax(scores.astype(np.float64) / temperature), labels, names, bins)


def probability_report(probs: np.ndarray, labels: Sequence[int], names: Sequence[str], bins: int = 15) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class P/R/F1, confusion matrix, NLL, the reliability bins behind ECE and
    the histogram of the true class's probability; the plots draw exactly these numbers."""
    labels = np.asarray(labels)
    pred = probs.argmax(axis=1)
    k = len(names)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, pred), 1)
    per_class = {}
    for i, name in enumerate(names):
        tp = confusion[i, i]
        predicted, actual = confusion[:, i].sum(), confusion[i, :].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1), "support": int(actual)}
    bins_report = calibration.reliability(probs, labels, bins)
    return {
        "examples": int(len(labels)),
        "accuracy": float((pred == labels).mean()),
        "macro_f1": float(np.mean([c["f1"] for c in per_class.values()])),
        "ece": bins_report["ece"],
        "nll": calibration.summary(probs, labels, bins)["nll"],
        "per_class": per_class,
        "confusion_matrix": {"labels": list(names), "rows_true_cols_predicted": confusion.tolist()},
        "reliability": {"bins": bins_report["bins"]},
        "probability_histogram": _true_class_histogram(probs, labels, names),
    }


def _true_class_histogram(probs: np.ndarray, labels: np.ndarray, names: Sequence[str], bins: int = 20) -> dict[str, Any]:
    edges = np.linspace(0.0, 1.0, bins + 1)
    p_true = probs[np.arange(len(labels)), labels]
    counts = {name: np.histogram(p_true[labels == i], bins=edges)[0].tolist() for i, name in enumerate(names)}
    return {"edges": edges.tolist(), "counts": counts}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int) -> float:
    """ECE over equal-width confidence bins: sum of |accuracy - confidence| weighted by bin size."""
    return calibration.reliability(probs, labels, bins)["ece"]


@dataclass
class Examples:
    """What is scored: prompt token ids, class ids, where they came from, and (for --data) the texts."""

    rows: list[list[int]]
    labels: list[int]
    split: str
    source: dict[str, Any]
    texts: list[str] | None = None


def run(cfg: EvaluateConfig, ws: Workspace, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Score a split (or a labelled file) with a model and write the report as JSON; returns the report.

    Raises ArtifactError when no model/prepared data fits, UsageError/DataError for contradicting
    options or unusable data.
    """
    clean_stale(ws)
    model = cfg.model or str(ws.latest_model())
    clf = open_classifier(model, cfg.prompt, precision=cfg.precision, engine=cfg.engine)
    examples = _from_file(clf, cfg) if cfg.data else _from_prepared(clf, cfg, ws)
    out = Path(cfg.output) if cfg.output else _report_path(model, examples.split, ws)
    _check_writable(out)  # before the scoring, not after it
    started = time.perf_counter()
    scores = clf.scores(examples.rows, cfg.batch_size).astype(np.float64)
    seconds = time.perf_counter() - started
    probs, calibrated = _calibrated(clf, scores, examples, cfg)
    report = {
        "rtsent_version": __version__,
        "model": str(model),
        "split": examples.split,
        "prepared": examples.source.get("prepared"),
        "source": examples.source,
        "prompt": to_dict(clf.prompt),
        "engine": clf.engine,
        "precision": clf.precision,
        "seconds": round(seconds, 3),
        "examples_per_s": round(len(examples.rows) / seconds, 2) if seconds else None,
        "probabilities": calibrated["applied"],
        **probability_report(probs, examples.labels, clf.label_names, cfg.bins),
        "calibration": calibrated,
    }
    if examples.split == "validation" and clf.meta.get("best"):
        report["warning"] = ("validation chose this model's checkpoint and temperature, so its figures are "
                             "optimistic; report `rtsent evaluate --split test`")
    if cfg.errors is not None:
        report["errors"] = _errors(clf, examples, probs, cfg.errors, out.with_name(f"{out.stem}-errors.jsonl"))
    if cfg.plots:
        from rtsent.plots import evaluation_plots

        report["plots"] = [str(p.path) for p in evaluation_plots(report, out.parent / "plots", out.stem)]
    write_json(out, report)  # last: a report on disk means its plots and errors file are complete
    if _is_run_export(out.parent, ws):
        card.refresh(out.parent)  # a report next to a run's exported model joins its model card
    report["written_to"] = str(out)
    return report


def compare(cfg: EvaluateConfig, models: Sequence[str], ws: Workspace,
            log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Evaluate each model on the same split (or file), each through its own prompt; one JSON with all.

    A zero-shot prompt (cfg.prompt) applies to the models that have no rtsent.json of their own.
    """
    from rtsent.artifacts.workspace import MODEL_META

    reports = []
    for model in models:
        own_prompt = (Path(model).expanduser() / MODEL_META).is_file()
        one = dataclasses.replace(cfg, model=model, output=None, prompt=None if own_prompt else cfg.prompt)
        log(f"evaluating {model}")
        reports.append(run(one, ws, log))
    what = Path(cfg.data).stem if cfg.data else cfg.split
    out = Path(cfg.output) if cfg.output else ws.evals_dir / f"compare-{what}.json"
    combined = {"rtsent_version": __version__, "split": reports[0]["split"], "models": reports}
    write_json(out, combined)
    combined["written_to"] = str(out)
    return combined


def _from_prepared(clf: Any, cfg: EvaluateConfig, ws: Workspace) -> Examples:
    path = _prepared_for(clf, cfg, ws)
    dd, manifest = prepare.load(path, ws)
    _check_compatible(clf, manifest, path)
    if cfg.split not in dd:
        raise ArtifactError(f"prepared data {path.name} has no {cfg.split} split; choose --split from {sorted(dd)}")
    table = dd[cfg.split].data
    info = manifest["splits"].get(cfg.split, {})
    source = {"prepared": manifest["fingerprint"], "data": manifest["config"]["data"], "rows": info.get("rows"),
              "truncated": info.get("truncated"), "max_len": manifest["max_len"]}
    return Examples(table.column("input_ids").to_pylist(), table.column("labels").to_pylist(), cfg.split, source)


def _from_file(clf: Any, cfg: EvaluateConfig) -> Examples:
    """A labelled csv/jsonl/parquet file (or a folder's <split> file) tokenized with the model's own prompt."""
    from rtsent.artifacts.cache import hash_files
    from rtsent.sources.data import FORMATS, build_raw_split, read_raw_file

    path = _labelled_file(Path(cfg.data).expanduser(), cfg.split, FORMATS)
    # A ClassLabel column is matched to the model's label names by name, as prepare matches it.
    split = build_raw_split(read_raw_file(path), path.stem, cfg.text_column, cfg.label_column, clf.label_names,
                            str(path))
    rows, truncated = [], 0
    for start in range(0, len(split.texts), prepare.TOKENIZE_CHUNK):
        batch = clf.encoder.encode(split.texts[start : start + prepare.TOKENIZE_CHUNK])
        rows.extend(batch.input_ids)
        truncated += sum(batch.truncated)
    source = {"data": str(path), "sha256": hash_files([path])[:16], "rows": len(rows),
              "skipped_empty": split.skipped_empty, "truncated": truncated, "max_len": clf.encoder.max_len}
    return Examples(rows, split.labels, f"data-{path.stem}", source, split.texts)


def _labelled_file(path: Path, split: str, formats: dict[str, str]) -> Path:
    if path.is_dir():
        found = [path / f"{split}{ext}" for ext in formats if (path / f"{split}{ext}").is_file()]
        if len(found) != 1:
            raise UsageError(f"--data {path}: expected one {split}.parquet/.csv/.jsonl file in the folder, found "
                             f"{[f.name for f in found] or 'none'}; pass the file itself or --split")
        return found[0]
    if not path.is_file():
        raise UsageError(f"--data {path}: no such file or folder")
    if path.suffix not in formats:
        raise UsageError(f"--data {path}: expected a .csv, .jsonl or .parquet file with text and label columns")
    return path


def _calibrated(clf: Any, scores: np.ndarray, examples: Examples, cfg: EvaluateConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """The probabilities the report describes, and accuracy/ECE/NLL with and without each calibration.

    A fitted temperature (rtsent.json) is always applied, as predict applies it; --calibrate adds
    contextual calibration on top. Nothing is fitted here, on the split being reported.
    """
    labels, bins = examples.labels, cfg.bins
    raw = softmax(scores)
    probs, section, applied, t = raw, {}, "softmax(scores)", 1.0
    fitted = clf.meta.get("calibration") or {}
    if "temperature" in fitted:
        t = clf.temperature
        probs = softmax(scores / t)
        applied = f"softmax(scores / {t:g})"
        section["temperature"] = {"value": t, "fitted_on": fitted.get("fitted_on"),
                                  "before": calibration.summary(raw, labels, bins),
                                  "after": calibration.summary(probs, labels, bins)}
        if fitted.get("fitted_on") == examples.split:
            section["temperature"]["warning"] = (f"the temperature was fitted on {examples.split}; "
                                                 f"its 'after' figures are optimistic, report test instead")
    if cfg.calibrate:
        p_cf = calibration.content_free_probabilities(clf, t)  # the reviews' scale
        adjusted = calibration.contextual(probs, p_cf)
        section["contextual"] = {"content_free": list(calibration.CONTENT_FREE), "p_cf": p_cf.tolist(),
                                 "before": calibration.summary(probs, labels, bins),
                                 "after": calibration.summary(adjusted, labels, bins)}
        probs, applied = adjusted, applied + ", contextual calibration"
    section["applied"] = applied
    return probs, section


def _errors(clf: Any, examples: Examples, probs: np.ndarray, top: int, path: Path) -> dict[str, Any]:
    """Every misclassified example, most confident first, to a jsonl file; the first `top` in the report."""
    labels = np.asarray(examples.labels)
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != labels)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")]
    names = clf.label_names
    rows = [{"index": int(i), "text": _text_of(clf, examples, int(i)), "true": names[labels[i]],
             "predicted": names[pred[i]], "probability": float(probs[i, pred[i]]),
             "probabilities": {n: float(p) for n, p in zip(names, probs[i])}} for i in wrong]
    write_jsonl(path, rows)
    return {"count": len(rows), "written_to": str(path), "top": rows[:top]}


def _text_of(clf: Any, examples: Examples, i: int) -> str:
    """The review: as given (--data), else decoded from the prepared ids without the template."""
    if examples.texts is not None:
        return examples.texts[i]
    # The encoder put its BOS (Llama's <s>, OPT's </s>) before every prompt and the suffix after it.
    row = examples.rows[i]
    body = row[len(clf.encoder.bos_ids): len(row) - len(clf.encoder.suffix_ids)]
    text = clf.tokenizer.decode(body)
    prefix = clf.prompt.prefix
    return text[len(prefix):] if prefix and text.startswith(prefix) else text


def _prepared_for(clf: Any, cfg: EvaluateConfig, ws: Workspace) -> Path:
    """--prepared, else the dataset the model was trained on, else the newest prepared dataset."""
    if cfg.prepared:
        return ws.find_prepared(cfg.prepared)
    trained_on = clf.meta.get("prepared")
    if trained_on and (ws.prepared(trained_on) / MANIFEST).is_file():
        return ws.prepared(trained_on)
    return ws.find_prepared(None)


def _check_compatible(clf: Any, manifest: dict[str, Any], path: Path) -> None:
    prompt = manifest["prompt"]
    same_prompt = (prompt["template"], tuple(prompt["label_words"])) == (clf.prompt.template, clf.prompt.label_words)
    if manifest["tokenizer"] != tokenizer_fingerprint(clf.tokenizer) or not same_prompt:
        words = ",".join(w.replace("\n", "\\n") for w in clf.prompt.label_words)
        template = clf.prompt.template.replace("\n", "\\n")
        raise ArtifactError(
            f"prepared data {path.name} was made with another tokenizer or prompt than {clf.name} uses; run "
            f"`rtsent prepare --model {clf.name} --template '{template}' --label-words '{words}'` (or pass --prepared)"
        )


def _report_path(model: str, split: str, ws: Workspace) -> Path:
    """Next to a run's own exported model; for any other model (a user's folder, a hub snapshot, a hub
    name) under the workspace's evals/, so that evaluating never writes into a folder rtsent did not make."""
    folder = Path(model).expanduser()
    if _is_run_export(folder, ws):
        return folder / f"eval-{split}.json"
    where = str(folder.resolve()) if folder.exists() else model
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", folder.name if folder.exists() else model).strip("_") or "model"
    digest = hashlib.sha256(where.encode()).hexdigest()[:8]
    return ws.evals_dir / f"{slug}-{digest}" / f"eval-{split}.json"


def _check_writable(out: Path) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(f"cannot write the report to {out} ({exc.strerror}); pass --output to a writable place") from None
    if not os.access(out.parent, os.W_OK):
        raise ArtifactError(f"cannot write the report to {out} (read-only); pass --output to a writable place")


def _is_run_export(folder: Path, ws: Workspace) -> bool:
    if not (folder / MODEL_META).is_file():
        return False
    try:
        return folder.resolve().parent.parent == ws.runs_dir.resolve() and folder.name == "model"
    except OSError:
        return False
