"""Classification metrics of probabilities against class ids: what evaluate reports and its plots draw."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from rtsent.core import calibration


def _macro_f1(per_class: dict[str, dict[str, Any]], confusion: np.ndarray) -> float:
    """The mean F1 of the classes that occur in the truth or the predictions (scikit-learn's convention): a
    class absent from both, as in a file without it, has no F1 to average, not an F1 of 0."""
    seen = (confusion.sum(axis=0) + confusion.sum(axis=1)) > 0
    return float(np.mean([c["f1"] for c, s in zip(per_class.values(), seen) if s]))


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
        "macro_f1": _macro_f1(per_class, confusion),
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
