"""Fast by default (#19): what `--engine auto --precision auto` picks for each job, against every other path,
side by side in one run on this machine.

    python benchmarks/defaults.py                                   # GPT-2 small from scratch, ~15-25 minutes
    python benchmarks/defaults.py --models /path/to/run/model --skip-gpt2 --workdir WS

For each model folder (every measured program is its own subprocess; peak RSS from os.wait4):
  evaluate   the whole `rtsent evaluate --split validation` command (1,066 RT reviews): auto, and each engine
             and precision forced; wall time, the report's scoring rate and the engine auto chose
  predict    cold `rtsent predict "great movie"`: auto, --engine torch, the fp32 graph; interleaved, median
  baseline   for GPT-2 small, the seed recipe's evaluation rate (benchmarks/baseline.py eval), the figure the
             issue's "evaluate vs the seed recipe" ratio divides by

The GPT-2 small model is trained from scratch on the real data for one epoch (`rtsent train --from-scratch`,
its defaults), so that its int8 graph is checked on a model that makes real decisions; random weights have
no margins to keep. Writes benchmarks/out/defaults.json and defaults.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, GPT2_SMALL, HERE, OUT, check, cpu_description, gpt2_small_in_child, log, run_child  # noqa: E402
from common import write_report  # noqa: E402
from common import rtsent_cmd as rtsent  # noqa: E402

PY = sys.executable
SCORING = {  # label: extra options of evaluate / predict
    "auto": [],
    "torch (auto precision)": ["--engine", "torch"],
    "onnx fp32": ["--engine", "onnx", "--precision", "fp32"],
    "onnx int8": ["--engine", "onnx", "--precision", "int8"],
}


def gpt2_from_scratch(ws: Path, epochs: float) -> Path:
    base = gpt2_small_in_child()
    check(run_child(rtsent("prepare", "--workdir", str(ws), "--data", str(DATA), "--model", str(base))), "prepare")
    log(f"rtsent train --from-scratch, GPT-2 small, {epochs} epoch")
    train = check(run_child(rtsent("train", "--workdir", str(ws), "--model", str(base), "--from-scratch", "--lr", "3e-4",
                                   "--epochs", str(epochs), "--run-name", "gpt2-small", "--no-plots")), "train")
    log(f"trained in {train['wall_s']:.0f} s")
    return ws / "runs" / "gpt2-small" / "model"


def graphs(model: Path) -> dict[str, Any]:
    onnx = json.loads((model / "rtsent.json").read_text()).get("onnx") or {}
    return {"graphs": onnx.get("graphs", {}), "int8_check": onnx.get("int8_check")}


def evaluate(model: Path, ws: Path, repeats: int) -> dict[str, Any]:
    have = graphs(model)["graphs"]
    out: dict[str, Any] = {}
    for _ in range(repeats):
        for label, extra in SCORING.items():
            if "int8" in label and "int8" not in have:
                continue
            slug = "".join(c if c.isalnum() else "-" for c in label)
            report = ws / f"defaults-eval-{slug}-{len(out.get(label, []))}.json"
            child = check(run_child(rtsent("evaluate", "--workdir", str(ws), "--model", str(model), "--split", "validation",
                                           "--no-plots", "--output", str(report), *extra)), f"evaluate {label}")
            r = json.loads(report.read_text())
            out.setdefault(label, []).append({"wall_s": round(child["wall_s"], 2), "examples_per_s": r["examples_per_s"],
                                              "accuracy": r["accuracy"], "peak_rss_mb": round(child["peak_rss_mb"]),
                                              "choice": r.get("engine_choice")})
    return {k: {"wall_s": statistics.median(x["wall_s"] for x in v),
                "examples_per_s": statistics.median(x["examples_per_s"] for x in v),
                "accuracy": v[0]["accuracy"], "peak_rss_mb": max(x["peak_rss_mb"] for x in v),
                "choice": v[0]["choice"], "runs": v} for k, v in out.items()}


def cold_predict(model: Path, repeats: int) -> dict[str, Any]:
    argvs = {label: rtsent("predict", "great movie", "--model", str(model), *extra)
             for label, extra in SCORING.items() if label != "onnx int8" or "int8" in graphs(model)["graphs"]}
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in argvs}
    for _ in range(repeats):
        for key, argv in argvs.items():
            runs[key].append(check(run_child(argv), f"predict {key}"))
    said = [line for line in runs["auto"][0]["stderr"].splitlines() if "scoring with" in line]
    return {"choice_line": said[0] if said else None,
            **{k: {"median_s": round(statistics.median(r["wall_s"] for r in v), 3),
                   "runs_s": [round(r["wall_s"], 2) for r in v],
                   "peak_rss_mb": round(max(r["peak_rss_mb"] for r in v))} for k, v in runs.items()}}


def baseline_eval(model: Path) -> float:
    rates = []
    for n in (32, 64):
        child = check(run_child([PY, str(HERE / "baseline.py"), "eval", "--model", str(model), "--examples", str(n)]),
                      "baseline eval")
        rates.append(child["result"]["examples_per_s"])
    return statistics.fmean(rates)


def markdown(res: dict[str, Any]) -> str:
    lines = []
    for name, m in res["models"].items():
        ev, pr = m["evaluate"], m["predict"]
        lines += [f"### {name}", "", f"int8 check: `{json.dumps(m['graphs']['int8_check'])}`", "",
                  f"auto chose for evaluate: {ev['auto']['choice']}", "", f"auto said for cold predict: {pr['choice_line']}", "",
                  "| evaluate, whole command (1,066 reviews) | wall s | scoring ex/s | accuracy | peak RSS MB | vs auto (wall) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for k, v in ev.items():
            lines.append(f"| {k} | {v['wall_s']:.1f} | {v['examples_per_s']:.1f} | {v['accuracy']:.4f} | {v['peak_rss_mb']} | "
                         f"{v['wall_s'] / ev['auto']['wall_s']:.2f}x |")
        if m.get("baseline_eval_per_s"):
            lines.append(f"\nseed recipe evaluation: {m['baseline_eval_per_s']:.2f} ex/s; auto's scoring rate is "
                         f"**{ev['auto']['examples_per_s'] / m['baseline_eval_per_s']:.1f}x** that")
        lines += ["", "| cold `rtsent predict \"great movie\"` | median s | peak RSS MB | torch / this |", "|---|---:|---:|---:|"]
        torch_s = pr["torch (auto precision)"]["median_s"]
        for k, v in pr.items():
            if k != "choice_line":
                lines.append(f"| {k} | {v['median_s']:.2f} | {v['peak_rss_mb']} | {torch_s / v['median_s']:.1f}x |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="", help="more model folders (comma-separated), each with its workspace --workdir")
    ap.add_argument("--workdir", default=None, help="workspace of --models (their validation split)")
    ap.add_argument("--skip-gpt2", action="store_true")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=5, help="cold predicts per variant")
    ap.add_argument("--eval-repeats", type=int, default=1)
    a = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    res: dict[str, Any] = {"machine": cpu_description(), "when": time.strftime("%Y-%m-%d %H:%M"), "models": {}}
    todo: list[tuple[str, Path, Path]] = []
    if not a.skip_gpt2:
        ws = OUT / "defaults-ws"
        todo.append(("GPT-2 small, trained from scratch", gpt2_from_scratch(ws, a.epochs), ws))
    for m in filter(None, a.models.split(",")):
        todo.append((m, Path(m), Path(a.workdir) if a.workdir else OUT / "defaults-ws"))
    for name, model, ws in todo:
        log(f"{name}: evaluate")
        entry: dict[str, Any] = {"graphs": graphs(model), "evaluate": evaluate(model, ws, a.eval_repeats)}
        log(f"{name}: cold predict x{a.repeats}")
        entry["predict"] = cold_predict(model, a.repeats)
        if name.startswith("GPT-2"):
            log("seed recipe evaluation")
            entry["baseline_eval_per_s"] = baseline_eval(GPT2_SMALL)
        res["models"][name] = entry
        write_report("defaults", res)  # after each model: what is measured so far
    write_report("defaults", res, markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
