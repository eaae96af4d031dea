"""PNG figures from metrics files: training curves, confusion matrix, reliability diagram, probabilities.

matplotlib is imported only here, and this module only when a figure is drawn. Every figure is drawn
from numbers already in a metrics file (metrics.jsonl, an evaluation report) and each function returns
the numbers it drew, read back from the figure's own artists, so tests can hold them against the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtsent.artifacts.files import atomic_file
from rtsent.errors import ArtifactError


@dataclass(frozen=True)
class Plot:
    """A written figure and the numbers drawn in it."""

    path: Path
    drawn: dict[str, Any] = field(default_factory=dict)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    """Write the PNG atomically (a temp file renamed into place) and close the figure."""
    plt = _pyplot()
    try:
        with atomic_file(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def read_metrics(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Series of (step, value) from metrics.jsonl: train loss, validation loss and accuracy.

    A resumed run logs some steps twice; the later event wins.
    """
    series: dict[str, dict[int, float]] = {"loss": {}, "eval_loss": {}, "eval_accuracy": {}}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ArtifactError(f"cannot read {path} ({exc.strerror}); the run has no metrics log") from None
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:  # a line cut by a kill mid-write
            continue
        for key, values in series.items():
            if isinstance(event, dict) and key in event and "step" in event:
                values[int(event["step"])] = float(event[key])
    return {key: sorted(values.items()) for key, values in series.items()}


def training_curves(metrics_path: Path, out: Path, best_step: int | None, class_weighted: bool = False) -> Plot:
    """Train loss and validation loss (left) and validation accuracy (right) against step; both losses
    are labelled class-weighted when the run weighted them (--class-weights auto)."""
    plt = _pyplot()
    series = read_metrics(metrics_path)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    kind = " (class-weighted)" if class_weighted else ""
    for key, label, style in (("loss", "train loss", "-"), ("eval_loss", "validation loss", "o-")):
        if series[key]:
            left.plot(*zip(*series[key]), style, label=label + kind)
    left.set(xlabel="step", ylabel="loss" + kind, title="loss" + kind)
    losses = [v for key in ("loss", "eval_loss") for _, v in series[key] if v > 0]
    if losses and max(losses) > 20 * min(losses):  # the LM loss starts near ln(vocab): show both ends
        left.set_yscale("log")
    if series["eval_accuracy"]:
        right.plot(*zip(*series["eval_accuracy"]), "o-", color="tab:green", label="validation accuracy")
    right.set(xlabel="step", ylabel="accuracy", title="validation accuracy")
    if best_step is not None:
        for ax in (left, right):
            ax.axvline(best_step, color="tab:red", linestyle="--", label=f"best checkpoint (step {best_step})")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    drawn = {line.get_label(): list(zip(map(int, line.get_xdata()), map(float, line.get_ydata())))
             for line in left.lines + right.lines[:1] if not line.get_label().startswith("best")}
    drawn["best_step"] = best_step
    return Plot(_save(fig, out), drawn)


def confusion(report: dict[str, Any], out: Path) -> Plot:
    """Confusion matrix as counts (left) and normalised by true class (right)."""
    import numpy as np

    plt = _pyplot()
    names = report["confusion_matrix"]["labels"]
    counts = np.asarray(report["confusion_matrix"]["rows_true_cols_predicted"], dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    fig, axes = plt.subplots(1, 2, figsize=(5 + 3 * len(names), 2 + 1.2 * len(names)), layout="constrained")
    for ax, values, title, fmt in ((axes[0], counts, "counts", "{:.0f}"), (axes[1], share, "share of true class", "{:.2f}")):
        image = ax.imshow(values, cmap="Blues", vmin=0)
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, fmt.format(values[i, j]), ha="center", va="center",
                        color="white" if values[i, j] > values.max() / 2 else "black")
        ax.set(xticks=range(len(names)), yticks=range(len(names)), xticklabels=names, yticklabels=names,
               xlabel="predicted", ylabel="true", title=title)
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle(f"{report['split']}: accuracy {report['accuracy']:.3f}")
    drawn = {"counts": axes[0].images[0].get_array().tolist(), "normalised": axes[1].images[0].get_array().tolist()}
    return Plot(_save(fig, out), drawn)


def reliability_diagram(report: dict[str, Any], out: Path) -> Plot:
    """Accuracy per confidence bin against the diagonal, and how many examples each bin holds."""
    plt = _pyplot()
    bins = report["reliability"]["bins"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = bins[0]["upper"] - bins[0]["lower"]
    filled = [b for b in bins if b["count"]]
    top.bar([b["lower"] for b in filled], [b["accuracy"] for b in filled], width=width, align="edge",
            edgecolor="black", alpha=0.7, label="accuracy")
    top.plot([b["confidence"] for b in filled], [b["confidence"] for b in filled], "x", color="tab:red",
             label="mean confidence")
    top.plot([0, 1], [0, 1], ":", color="gray", label="perfect calibration")
    top.set(ylabel="accuracy", ylim=(0, 1), xlim=(0, 1),
            title=f"{report['split']}: ECE {report['ece']:.4f} ({len(bins)} bins)")
    top.legend(fontsize="small", loc="upper left")
    bottom.bar([b["lower"] for b in bins], [b["count"] for b in bins], width=width, align="edge",
               edgecolor="black", color="tab:gray")
    bottom.set(xlabel="confidence (probability of the predicted class)", ylabel="examples")
    drawn = {"accuracy": [p.get_height() for p in top.patches], "counts": [int(p.get_height()) for p in bottom.patches],
             "bin_lower": [p.get_x() for p in bottom.patches]}
    return Plot(_save(fig, out), drawn)


def probability_histogram(report: dict[str, Any], out: Path) -> Plot:
    """Per true class, how much probability the model gave that class (mistakes sit left of 0.5 in binary)."""
    plt = _pyplot()
    hist = report["probability_histogram"]
    edges = hist["edges"]
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = {}
    for name, counts in hist["counts"].items():
        bars = ax.bar(edges[:-1], counts, width=edges[1] - edges[0], align="edge", alpha=0.5,
                      edgecolor="black", label=f"true {name}")
        drawn[name] = [int(b.get_height()) for b in bars]
    ax.set(xlabel="probability of the true class", ylabel="examples", xlim=(0, 1),
           title=f"{report['split']}: predicted probability by true class")
    ax.legend(fontsize="small")
    return Plot(_save(fig, out), drawn)


def evaluation_plots(report: dict[str, Any], folder: Path, stem: str) -> list[Plot]:
    """The three evaluation figures of a report, as folder/<stem>-{confusion,reliability,probabilities}.png."""
    return [confusion(report, folder / f"{stem}-confusion.png"),
            reliability_diagram(report, folder / f"{stem}-reliability.png"),
            probability_histogram(report, folder / f"{stem}-probabilities.png")]
