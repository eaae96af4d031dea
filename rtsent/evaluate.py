"""Stage 3, evaluate: accuracy, macro-F1, per-class precision/recall, confusion matrix, calibration."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from rtsent import __version__, card, prepare
from rtsent.cache import clean_stale, write_json
from rtsent.config import EvaluateConfig, to_dict
from rtsent.errors import ArtifactError
from rtsent.engines import open_classifier
from rtsent.modeling import softmax, tokenizer_fingerprint
from rtsent.workspace import MANIFEST, Workspace


def classification_report(scores: np.ndarray, labels: Sequence[int], names: Sequence[str], bins: int = 15) -> dict[str, Any]:
    """Metrics of label-word scores [n, classes] against class ids."""
    labels = np.asarray(labels)
    probs = softmax(scores.astype(np.float64))
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
    return {
        "examples": int(len(labels)),
        "accuracy": float((pred == labels).mean()),
        "macro_f1": float(np.mean([c["f1"] for c in per_class.values()])),
        "ece": expected_calibration_error(probs, labels, bins),
        "per_class": per_class,
        "confusion_matrix": {"labels": list(names), "rows_true_cols_predicted": confusion.tolist()},
    }


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int) -> float:
    """ECE over equal-width confidence bins: sum of |accuracy - confidence| weighted by bin size."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def run(cfg: EvaluateConfig, ws: Workspace, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Score a split with a model and write the report as JSON; returns the report.

    Raises ArtifactError when no model/prepared data fits, UsageError for contradicting options.
    """
    clean_stale(ws)
    model = cfg.model or str(ws.latest_model())
    clf = open_classifier(model, cfg.prompt, precision=cfg.precision)
    path = _prepared_for(clf, cfg, ws)
    dd, manifest = prepare.load(path, ws)
    _check_compatible(clf, manifest, path)
    if cfg.split not in dd:
        raise ArtifactError(f"prepared data {path.name} has no {cfg.split} split; choose --split from {sorted(dd)}")
    table = dd[cfg.split].data
    rows, labels = table.column("input_ids").to_pylist(), table.column("labels").to_pylist()
    started = time.perf_counter()
    scores = clf.scores(rows, cfg.batch_size)
    seconds = time.perf_counter() - started
    report = {
        "rtsent_version": __version__,
        "model": str(model),
        "split": cfg.split,
        "prepared": manifest["fingerprint"],
        "prompt": to_dict(clf.prompt),
        "precision": clf.scorer.precision,
        "seconds": round(seconds, 3),
        "examples_per_s": round(len(rows) / seconds, 2) if seconds else None,
        **classification_report(scores, labels, clf.label_names, cfg.bins),
    }
    out = Path(cfg.output) if cfg.output else _report_path(model, cfg.split, ws)
    write_json(out, report)
    card.refresh(out.parent)  # a report next to an exported model joins its model card
    report["written_to"] = str(out)
    return report


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
    folder = Path(model).expanduser()
    if folder.is_dir():
        return folder / f"eval-{split}.json"
    return ws.evals_dir / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', model)}-{split}.json"
