"""Rich summaries that the CLI prints after each stage (stdout; logs go to stderr)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text


def _console() -> Console:
    """stdout's console. Piped to a file or a log it is as wide as a table needs (not 80 columns), so a
    class name or a path is never cut to `abbreviati…` where nobody can widen the window."""
    console = Console(highlight=False)
    return console if console.is_terminal else Console(highlight=False, width=WIDE)


WIDE = 1000


def visible(text: str) -> str:
    """Control characters shown as escapes: text from the data (a review, a class name) must never move
    the cursor, retitle or recolour a terminal."""
    import unicodedata

    return "".join(c if unicodedata.category(c) != "Cc" else repr(c)[1:-1] for c in str(text))


def print_prepared(result: Any) -> None:
    meta = result.meta
    table = Table(title=f"prepared {meta.fingerprint}" + (" (cached)" if result.cache_hit else ""))
    for col in ("split", "rows", *meta.splits[next(iter(meta.splits))]["per_class"], "truncated", "skipped empty",
                "tokens mean", "tokens max"):
        table.add_column(escape(col), justify="left" if col == "split" else "right")
    for name, s in meta.splits.items():
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
    cal = getattr(result, "calibration", None)
    if cal:
        console.print(Text(f"temperature {cal['temperature']:.3f} fitted on {cal['fitted_on']} "
                           f"(NLL {cal['nll_before']:.4f} -> {cal['nll_after']:.4f})"))
        if cal.get("note"):
            console.print(Text(f"note: {cal['note']}"), soft_wrap=True)
    for plot in getattr(result, "plots", ()):
        console.print(Text(f"plot: {plot}"), soft_wrap=True)


def print_evaluation(report: dict[str, Any]) -> None:
    console = _console()
    summary = Table(title=f"{report['split']}: {report['examples']} examples ({report['model']})")
    for col in ("accuracy", "macro F1", "ECE", "examples/s"):
        summary.add_column(col, justify="right")
    summary.add_row(f"{report['accuracy']:.4f}", f"{report['macro_f1']:.4f}", f"{report['ece']:.4f}",
                    f"{report['examples_per_s']:.1f}")
    console.print(summary)
    if report.get("warning"):
        console.print(Text(f"note: {report['warning']}"))
    classes = Table("class", "precision", "recall", "F1", "support")
    for name, c in report["per_class"].items():
        classes.add_row(Text(visible(name)), f"{c['precision']:.4f}", f"{c['recall']:.4f}", f"{c['f1']:.4f}", str(c["support"]))
    console.print(classes)
    names = report["confusion_matrix"]["labels"]
    confusion = Table("true \\ predicted", *(escape(visible(n)) for n in names), title="confusion matrix")
    for name, row in zip(names, report["confusion_matrix"]["rows_true_cols_predicted"]):
        confusion.add_row(Text(visible(name)), *(str(v) for v in row))
    console.print(confusion)
    _print_calibration(console, report)
    _print_errors(console, report)
    for plot in report.get("plots", []):
        console.print(Text(f"plot: {plot}"), soft_wrap=True)
    console.print(Text(f"report written to {report['written_to']}"))


def _print_calibration(console: Console, report: dict[str, Any]) -> None:
    section = {k: v for k, v in (report.get("calibration") or {}).items() if isinstance(v, dict)}
    if not section:
        return
    table = Table("method", "acc before", "acc after", "ECE before", "ECE after", "NLL before", "NLL after",
                  title=f"calibration (reported: {report.get('probabilities')})")
    for name, part in section.items():
        label = f"T={part['value']:.3f}" if name == "temperature" else "contextual"
        b, a = part["before"], part["after"]
        table.add_row(label, f"{b['accuracy']:.4f}", f"{a['accuracy']:.4f}", f"{b['ece']:.4f}", f"{a['ece']:.4f}",
                      f"{b['nll']:.4f}", f"{a['nll']:.4f}")
    console.print(table)
    for part in section.values():
        if part.get("warning"):
            console.print(Text(f"note: {part['warning']}"))


def _print_errors(console: Console, report: dict[str, Any]) -> None:
    errors = report.get("errors")
    if not errors:
        return
    if errors["top"]:
        table = Table("text", "true", "predicted", "probability",
                      title=f"{len(errors['top'])} most confident of {errors['count']} mistakes")
        for row in errors["top"]:
            table.add_row(Text(visible(row["text"])), Text(visible(row["true"])), Text(visible(row["predicted"])),
                          f"{row['probability']:.4f}")
        console.print(table)
    console.print(Text(f"{errors['count']} mistakes written to {errors['written_to']}"), soft_wrap=True)


def print_comparison(combined: dict[str, Any]) -> None:
    """Several models' evaluations of the same split, side by side."""
    console = _console()
    table = Table("model", "examples", "accuracy", "macro F1", "ECE", "NLL", "probabilities",
                  title=f"{combined['split']}: {len(combined['models'])} models")
    for r in combined["models"]:
        table.add_row(Text(r["model"]), str(r["examples"]), f"{r['accuracy']:.4f}", f"{r['macro_f1']:.4f}",
                      f"{r['ece']:.4f}", f"{r['nll']:.4f}", Text(r.get("probabilities", "")))
    console.print(table)
    for r in combined["models"]:
        console.print(Text(f"{r['model']}: report {r['written_to']}"), soft_wrap=True)
    console.print(Text(f"comparison written to {combined['written_to']}"), soft_wrap=True)


def number(value: Any, digits: int = 4) -> str:
    """A metric for a table: 4 decimals for floats (or digits), as is for ints and text, a dash for None."""
    if value is None:
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def print_run(s: dict[str, Any]) -> None:
    """`rtsent report`: one run's config, data, best step, metrics, timing, calibration and plots."""
    console = _console()
    cfg = s["config"]
    facts = Table(show_header=False, title=f"run {s['run']}" + ("" if s["finished"] else " (not finished)"))
    facts.add_column("what", style="bold")
    facts.add_column("value")
    facts.add_row("model", Text(f"{cfg.get('model')}" + (f" (from scratch {cfg.get('config_overrides')})"
                                                         if cfg.get("from_scratch") else "")))
    facts.add_row("recipe", Text(f"lr {cfg.get('lr')}, batch {cfg.get('batch_size')}, epochs {cfg.get('epochs')}, "
                                 f"loss {cfg.get('loss')}, precision {cfg.get('precision')}, seed {cfg.get('seed')}"))
    prep = s["prepared"]
    facts.add_row("prepared", Text(f"{prep.get('fingerprint')} ({prep.get('data')}, max_len {prep.get('max_len')})"))
    for name, sp in (prep.get("splits") or {}).items():
        facts.add_row(f"  {name}", Text(f"{sp.get('rows')} rows, {sp.get('truncated')} truncated, "
                                        f"{sp.get('skipped_empty')} empty skipped"))
    best, training, cal = s["best"] or {}, s["training"] or {}, s["calibration"] or {}
    if best:
        facts.add_row("best", f"step {best.get('step')}: validation accuracy {number(best.get('validation_accuracy'))}")
    if training:
        facts.add_row("training", f"{training.get('steps')} steps in {number(training.get('seconds'), 1)} s "
                                  f"({number(training.get('train_examples_per_s'), 1)} examples/s)")
    elif s["last_logged"]:
        facts.add_row("last logged", f"step {s['last_logged']['step']}, loss {s['last_logged']['loss']:.4f}")
    if cal:
        facts.add_row("temperature", f"{number(cal.get('temperature'))} fitted on {cal.get('fitted_on')} "
                                     f"(NLL {number(cal.get('nll_before'))} -> {number(cal.get('nll_after'))})")
    console.print(facts)
    if s["evaluations"]:
        table = Table("evaluation", "examples", "accuracy", "macro F1", "ECE", "NLL", "ECE before T", title="evaluations")
        for split, e in s["evaluations"].items():
            before = ((e.get("temperature") or {}).get("before") or {}).get("ece")
            table.add_row(Text(split), str(e["examples"]), number(e["accuracy"]), number(e["macro_f1"]), number(e["ece"]),
                          number(e.get("nll")), number(before))
        console.print(table)
    else:
        console.print(Text(f"not evaluated yet: run `rtsent evaluate --split test --model {s['model'] or '...'}`"))
    for plot in s["plots"]:
        console.print(Text(f"plot: {plot}"), soft_wrap=True)


def print_runs(rows: list[dict[str, Any]]) -> None:
    """`rtsent runs`: one line per run, newest first."""
    console = _console()
    if not rows:
        console.print(Text("no runs yet; start one with `rtsent train`"))
        return
    table = Table("run", "finished", "steps", "best step", "val acc", "test acc", "test ECE", "T", "seconds",
                  title="runs (newest first)")
    for r in rows:
        if r.get("damaged"):
            table.add_row(Text(r["run"]), "damaged", *["–"] * 7)
            continue
        table.add_row(Text(r["run"]), "yes" if r["finished"] else "no", number(r["steps"]), number(r["best_step"]),
                      number(r["validation_accuracy"]), number(r["test_accuracy"]), number(r["test_ece"]),
                      number(r["temperature"], 3), number(r["seconds"], 1))
    console.print(table)
    for r in rows:
        if r.get("damaged"):
            console.print(Text(f"{r['run']}: {r['damaged']}"), soft_wrap=True)
