"""Rich summaries that the CLI prints after each stage (stdout; logs go to stderr)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text


def _console() -> Console:
    return Console(highlight=False)


def print_prepared(result: Any) -> None:
    m = result.manifest
    table = Table(title=f"prepared {m['fingerprint']}" + (" (cached)" if result.cache_hit else ""))
    for col in ("split", "rows", *m["splits"][next(iter(m["splits"]))]["per_class"], "truncated", "skipped empty",
                "tokens mean", "tokens max"):
        table.add_column(escape(col), justify="left" if col == "split" else "right")
    for name, s in m["splits"].items():
        table.add_row(name, str(s["rows"]), *(str(v) for v in s["per_class"].values()), str(s["truncated"]),
                      str(s["skipped_empty"]), f"{s['length']['mean']:.1f}", str(s["length"]["max"]))
    console = _console()
    console.print(table)
    console.print(Text(f"saved to {result.path}"))


def print_trained(result: Any) -> None:
    console = _console()
    acc = "n/a" if result.best_accuracy is None else f"{result.best_accuracy:.4f}"
    console.print(Text(
        f"run {result.run.name}: {result.steps} steps in {result.seconds:.1f} s "
        f"({result.train_examples_per_s:.1f} examples/s); best validation accuracy {acc} at step {result.best_step}"
    ))
    if result.total_params:
        share = 100 * result.trainable_params / result.total_params
        console.print(Text(f"trainable parameters: {result.trainable_params:,} of {result.total_params:,} ({share:.2f} %)"))
    console.print(Text(f"model exported to {result.model_dir}"))


def print_evaluation(report: dict[str, Any]) -> None:
    console = _console()
    summary = Table(title=f"{report['split']}: {report['examples']} examples ({report['model']})")
    for col in ("accuracy", "macro F1", "ECE", "examples/s"):
        summary.add_column(col, justify="right")
    summary.add_row(f"{report['accuracy']:.4f}", f"{report['macro_f1']:.4f}", f"{report['ece']:.4f}",
                    f"{report['examples_per_s']:.1f}")
    console.print(summary)
    classes = Table("class", "precision", "recall", "F1", "support")
    for name, c in report["per_class"].items():
        classes.add_row(Text(name), f"{c['precision']:.4f}", f"{c['recall']:.4f}", f"{c['f1']:.4f}", str(c["support"]))
    console.print(classes)
    names = report["confusion_matrix"]["labels"]
    confusion = Table("true \\ predicted", *(escape(n) for n in names), title="confusion matrix")
    for name, row in zip(names, report["confusion_matrix"]["rows_true_cols_predicted"]):
        confusion.add_row(Text(name), *(str(v) for v in row))
    console.print(confusion)
    console.print(Text(f"report written to {report['written_to']}"))
