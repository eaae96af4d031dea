"""What a run left behind, gathered from its files: `rtsent report` (one run) and `rtsent runs` (all of them).

Everything here reads the run's artifacts (run.json, metrics.jsonl, model/rtsent.json, the model's
eval-*.json reports, the prepared manifest); nothing is recomputed and nothing heavy is imported.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rtsent.artifacts.files import atomic_file, check_replaceable, is_json_with, read_json, write_json
from rtsent.artifacts.model import ModelMeta, ModelPaths, read_eval_reports
from rtsent.artifacts.prepared import PreparedMeta, in_workspace
from rtsent.artifacts.workspace import RunPaths, Workspace
from rtsent.errors import ArtifactError, UsageError
from rtsent.console import number

REPORT_FORMATS = ("table", "md", "json")
LIST_FORMATS = ("table", "json")
EVAL_KEYS = ("examples", "accuracy", "macro_f1", "ece", "nll", "examples_per_s")


def find_run(ws: Workspace, ref: str | None) -> RunPaths:
    """A run by name or folder; the latest run when ref is None. Raises ArtifactError naming the runs there are."""
    if ref is None:
        runs = ws.runs()
        if not runs:
            raise ArtifactError(f"no runs in {ws.runs_dir}; start one with `rtsent train` (or pass --workdir)")
        return runs[0]
    path = Path(ref).expanduser()
    paths = RunPaths(path) if RunPaths(path).exists() else ws.run(ref)
    if not paths.exists():
        names = sorted(r.name for r in ws.runs())
        raise ArtifactError(f"no run {ref!r} in {ws.runs_dir} (runs: {', '.join(names) or 'none'}); "
                            f"pass a run name from `rtsent runs`")
    return paths


def _evaluations(model_dir: Path) -> dict[str, dict[str, Any]]:
    """The model's own evaluation reports (eval-<split>.json, eval-data-<file>.json), key metrics only."""
    found = {}
    for split, report in read_eval_reports(ModelPaths(model_dir)).items():
        entry = {k: report.get(k) for k in EVAL_KEYS}
        entry["temperature"] = (report.get("calibration") or {}).get("temperature")
        entry["contextual"] = (report.get("calibration") or {}).get("contextual")
        entry.update(path=report["path"], plots=report.get("plots", []))
        found[split] = entry
    return found


def _prepared(ws: Workspace, fingerprint: str | None) -> dict[str, Any] | None:
    path = in_workspace(ws, fingerprint)
    if path is None:
        return None
    try:
        meta = PreparedMeta.read(path)
    except ArtifactError:
        return None
    return {"fingerprint": fingerprint, "data": meta.data, "max_len": meta.max_len, "splits": meta.splits}


def run_report(ws: Workspace, ref: str | None = None) -> dict[str, Any]:
    """Everything known about one run, as a JSON-able dict."""
    from rtsent.plots import read_metrics

    paths = find_run(ws, ref)
    run_json = read_json(paths.config, "the run is damaged; start a new one with `rtsent train`")
    meta = ModelMeta.read(paths.model) if ModelPaths(paths.model).is_model() else None
    series = read_metrics(paths.metrics) if paths.metrics.is_file() else {"loss": [], "eval_accuracy": []}
    evaluations = _evaluations(paths.model) if paths.model.is_dir() else {}
    plots = sorted(str(p) for p in paths.plots.glob("*.png"))
    plots += [p for e in evaluations.values() for p in e["plots"] if Path(p).is_file()]
    return {
        "run": paths.name,
        "dir": str(paths.dir),
        "finished": meta is not None,
        "created": meta.created if meta else None,
        "config": run_json.get("config", {}),
        "prepared": _prepared(ws, run_json.get("prepared")) or {"fingerprint": run_json.get("prepared")},
        "model": str(paths.model) if meta else None,
        "best": meta.best if meta else None,
        "training": meta.training if meta else None,
        "calibration": meta.calibration if meta else None,
        "last_logged": {"step": series["loss"][-1][0], "loss": series["loss"][-1][1]} if series["loss"] else None,
        "validation_curve": series["eval_accuracy"],
        "evaluations": evaluations,
        "plots": plots,
    }


def list_runs(ws: Workspace, fmt: str = "table") -> list[dict[str, Any]]:
    """Key facts of every run in the workspace, newest first (by when run.json was written)."""
    if fmt not in LIST_FORMATS:
        raise UsageError(f"--format must be one of {', '.join(LIST_FORMATS)}, got {fmt!r}")
    rows = []
    for paths in ws.runs():
        try:
            r = run_report(ws, paths.name)
        except ArtifactError as exc:  # one damaged run is listed as such; the others are still listed
            rows.append({"run": paths.name, "finished": False, "damaged": str(exc)})
            continue
        test, validation = r["evaluations"].get("test", {}), r["evaluations"].get("validation", {})
        rows.append({
            "run": paths.name,
            "finished": r["finished"],
            "created": r["created"],
            "model": r["config"].get("model"),
            "steps": (r["training"] or {}).get("steps") or (r["last_logged"] or {}).get("step"),
            "best_step": (r["best"] or {}).get("step"),
            "validation_accuracy": (r["best"] or {}).get("validation_accuracy"),
            "test_accuracy": test.get("accuracy"),
            "test_ece": test.get("ece"),
            "temperature": (r["calibration"] or {}).get("temperature"),
            "seconds": (r["training"] or {}).get("seconds"),
            "validation_ece": validation.get("ece"),
            "evaluated": sorted(r["evaluations"]),
        })
    return rows


def write_report(summary: dict[str, Any], fmt: str, output: str | None = None) -> Path:
    """Write the run report as markdown (plots embedded by relative path) or JSON; returns the path."""
    if fmt not in REPORT_FORMATS:
        raise UsageError(f"--format must be one of {', '.join(REPORT_FORMATS)}, got {fmt!r}")
    out = Path(output) if output else Path(summary["dir"]) / f"report.{fmt}"
    if output:  # a path the user named may replace an earlier run report, never another file
        check_replaceable(out, _is_run_report, "run report")
    if fmt == "json":
        write_json(out, summary)
        return out
    text = to_markdown(summary, out.parent)
    with atomic_file(out) as fh:
        fh.write(text)
    return out


def _is_run_report(path: Path) -> bool:
    """Whether path holds a run report write_report wrote (JSON with its keys, or markdown under its title)."""
    if is_json_with(path, "validation_curve"):
        return True
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.readline().startswith("# Run ")
    except (OSError, UnicodeDecodeError):
        return False


def to_markdown(s: dict[str, Any], where: Path) -> str:
    """The run report as markdown; image links are relative to `where`, the markdown file's folder."""
    lines = [f"# Run {s['run']}", ""]
    cfg = s["config"]
    lines += [f"- model: `{cfg.get('model')}`" + (" (from scratch, " + cfg.get("config_overrides", "") + ")"
                                                   if cfg.get("from_scratch") else ""),
              f"- lr {cfg.get('lr')}, batch {cfg.get('batch_size')}, epochs {cfg.get('epochs')}, "
              f"max steps {cfg.get('max_steps')}, loss {cfg.get('loss')}, precision {cfg.get('precision')}, seed {cfg.get('seed')}",
              f"- status: {'finished, model in `' + s['model'] + '`' if s['finished'] else 'not finished (no exported model)'}"]
    best, training, cal = s["best"] or {}, s["training"] or {}, s["calibration"] or {}
    if best:
        lines.append(f"- best checkpoint: step {best.get('step')}, validation accuracy {number(best.get('validation_accuracy'))}")
    if training:
        lines.append(f"- training: {training.get('steps')} steps in {number(training.get('seconds'), 1)} s "
                     f"({number(training.get('train_examples_per_s'), 1)} examples/s)")
    if cal:
        lines.append(f"- temperature {number(cal.get('temperature'))} fitted on {cal.get('fitted_on')}: "
                     f"NLL {number(cal.get('nll_before'))} → {number(cal.get('nll_after'))}")
    prep = s["prepared"]
    lines += ["", f"## Data (prepared `{prep.get('fingerprint')}`, max_len {prep.get('max_len')})", ""]
    if prep.get("splits"):
        lines += ["| split | rows | truncated | skipped empty | tokens mean | tokens max |", "| --- | --: | --: | --: | --: | --: |"]
        for name, sp in prep["splits"].items():
            length = sp.get("length", {})
            lines.append(f"| {name} | {sp.get('rows')} | {sp.get('truncated')} | {sp.get('skipped_empty')} | "
                         f"{length.get('mean')} | {length.get('max')} |")
    if s["evaluations"]:
        lines += ["", "## Evaluations", "", "| split | examples | accuracy | macro F1 | ECE | NLL | ECE before T |",
                  "| --- | --: | --: | --: | --: | --: | --: |"]
        for split, e in s["evaluations"].items():
            before = ((e.get("temperature") or {}).get("before") or {}).get("ece")
            lines.append(f"| {split} | {e['examples']} | {number(e['accuracy'])} | {number(e['macro_f1'])} | "
                         f"{number(e['ece'])} | {number(e.get('nll'))} | {number(before)} |")
    if s["plots"]:
        lines += ["", "## Plots", ""]
        for plot in s["plots"]:
            rel = os.path.relpath(plot, where)
            lines += [f"![{Path(plot).stem}]({rel})", ""]
    return "\n".join(lines).rstrip() + "\n"
