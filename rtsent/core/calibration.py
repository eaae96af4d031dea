"""Can the probabilities be trusted: reliability bins and ECE, NLL, temperature scaling, contextual calibration.

Temperature scaling (Guo et al. 2017) divides a fine-tuned model's label-word scores by one scalar T
fitted on validation; it never changes a prediction, only how sure the model says it is. Contextual
calibration (Zhao et al. 2021) corrects a zero-shot model's bias towards some label words: it divides
each example's probabilities by those of content-free inputs ("N/A", "", "[MASK]") through the same
prompt and renormalises, which can change predictions.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

CONTENT_FREE = ("N/A", "", "[MASK]")
# The temperature is searched in [1/100, 100] on a log scale; NLL of softmax(z / T) is unimodal there.
LOG_T_BOUNDS = (-math.log(100.0), math.log(100.0))


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def nll(scores: np.ndarray, labels: Sequence[int], temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true class under softmax(scores / temperature)."""
    z = np.asarray(scores, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(z)), np.asarray(labels)].mean())


def fit_temperature(scores: np.ndarray, labels: Sequence[int], tol: float = 1e-6) -> float:
    """The T > 0 that minimises nll(scores, labels, T): golden-section search on log T.

    NLL(z / T) is convex in 1 / T, hence unimodal in log T, so the bounded 1-D search finds the minimum
    (up to the bounds: a set the model gets all right pushes T towards its lower bound).
    """
    if len(labels) == 0:
        raise ValueError("cannot fit a temperature on no examples")
    f = lambda log_t: nll(scores, labels, math.exp(log_t))  # noqa: E731
    lo, hi = LOG_T_BOUNDS
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = f(a), f(b)
    while hi - lo > tol:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = f(b)
    return math.exp((lo + hi) / 2)


def temperature_record(scores: np.ndarray, labels: Sequence[int], fitted_on: str = "validation") -> dict[str, Any]:
    """What rtsent.json stores under "calibration": the fitted T and the NLL before and after it.

    When every example is classified correctly the NLL keeps falling as T -> 0: the data do not
    determine a temperature, and sharpening towards certainty would only hide that. T stays 1 then.
    """
    t = fit_temperature(scores, labels)
    record: dict[str, Any] = {"temperature": round(t, 6), "fitted_on": fitted_on, "examples": int(len(labels))}
    if math.log(t) <= LOG_T_BOUNDS[0] + 1e-3:
        record.update(temperature=1.0, note=f"every {fitted_on} example is right, so no finite temperature "
                                            f"minimises the NLL; kept T = 1")
    elif math.log(t) >= LOG_T_BOUNDS[1] - 1e-3:
        record["note"] = (f"T reached its upper bound {math.exp(LOG_T_BOUNDS[1]):g}: the scores say almost nothing "
                          f"about the {fitted_on} labels (the model is at or below chance there), so every "
                          f"probability is near uniform; check the data, the label words or the training")
    t = record["temperature"]
    record.update(nll_before=round(nll(scores, labels), 6), nll_after=round(nll(scores, labels, t), 6))
    return record


def reliability(probs: np.ndarray, labels: Sequence[int], bins: int) -> dict[str, Any]:
    """Equal-width confidence bins: per bin its range, example count, mean confidence and accuracy,
    and the ECE they give (sum of |accuracy - confidence| weighted by the bin's share of examples).

    Confidence is the top class's probability; a confidence on an edge falls in the lower bin.
    """
    labels = np.asarray(labels)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        count = int(mask.sum())
        conf = float(confidence[mask].mean()) if count else None
        acc = float(correct[mask].mean()) if count else None
        if count:
            ece += count / len(labels) * abs(acc - conf)
        rows.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": count,
                     "confidence": conf, "accuracy": acc})
    return {"bins": rows, "ece": float(ece)}


def summary(probs: np.ndarray, labels: Sequence[int], bins: int) -> dict[str, float]:
    """Accuracy, ECE and NLL of one set of probabilities."""
    labels = np.asarray(labels)
    p_true = np.clip(probs[np.arange(len(labels)), labels], 1e-300, None)
    return {"accuracy": float((probs.argmax(axis=1) == labels).mean()),
            "ece": reliability(probs, labels, bins)["ece"],
            "nll": float(-np.log(p_true).mean())}


def contextual(probs: np.ndarray, p_cf: np.ndarray) -> np.ndarray:
    """Zhao et al.'s correction: divide each row by the content-free probabilities, renormalise."""
    adjusted = probs / np.asarray(p_cf)[None, :]
    return adjusted / adjusted.sum(axis=1, keepdims=True)


def content_free_probabilities(clf: Any, inputs: Sequence[str] = CONTENT_FREE) -> np.ndarray:
    """Mean label-word probabilities of content-free reviews through the classifier's own prompt and its
    own calibration (clf.calibrate: softmax(scores / T)), the scale of the reviews they correct.

    The empty review is the bare template (prefix + suffix), exactly as the encoder builds it.
    """
    rows = clf.encoder.encode(list(inputs)).input_ids
    return clf.calibrate(clf.scores(rows, len(rows))).mean(axis=0)
