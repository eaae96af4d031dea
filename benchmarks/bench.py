"""rtsent vs the seed recipe, side by side, on the same data and the same model folder.

    python benchmarks/bench.py --mode small     # ~9 minutes on 2 shared cores (streaming check ~4 of them)
    python benchmarks/bench.py --mode full      # one rtsent epoch, 1M-line stream check: ~50-90 minutes
    python benchmarks/bench.py --mode train     # training only (issue #12): baseline steps vs one rtsent epoch, ~7 min
    python benchmarks/bench.py --mode train --train-steps 15   # N rtsent steps instead of the epoch (fp32-only CPUs,
                                                               # where an epoch of GPT-2 small takes most of an hour)

Every measured program runs as its own subprocess, so each peak RSS (os.wait4's ru_maxrss) is that
program's alone. Writes benchmarks/out/bench-<mode>.json and a ready-to-paste bench-<mode>.md.

What runs:
  baseline train  benchmarks/baseline.py: the seed recipe; a full epoch takes hours here, so a fixed number of
                  optimizer steps is timed after excluded warm-up steps (steady state).
  baseline eval   the seed recipe's Trainer.evaluate on two small validation subsets; its speed is measured,
                  its peak RSS on the full split (1066 examples) is EXTRAPOLATED linearly from the two subsets
                  (running it would need ~27 GB of logits alone).
  rtsent train    rtsent.train.run with its defaults (the real code path; a step-timing callback is the only
                  addition): --max-steps in small mode, one epoch in full mode. Reported twice: steady-state
                  steps (warm-up excluded, comparable to the baseline) and end to end (Trainer's own figure,
                  which includes the in-training validation pass, checkpoint and best-model reload).
  rtsent eval     `rtsent evaluate` (the CLI) on the full validation split.
  CLI             `rtsent --help` wall time; cold `rtsent predict "great movie"` against a floor program
                  (python + import torch + transformers' GPT-2 + loading the same weights), split reported.
  streaming       `rtsent predict --file`: throughput on GPT-2 small; bounded memory shown with a tiny model
                  on a small and a 10x larger file (same peak RSS = memory does not grow with the input).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (DATA, GPT2_SMALL, HERE, OUT, StepTimer, check, cpu_description, emit,  # noqa: E402
                    gpt2_small_in_child, log, predict_stats, rtsent_cmd, run_child, write_report)

PY = sys.executable
MODES = {
    "small": dict(bl_steps=2, bl_warmup=1, bl_eval=(16, 32), rt_steps=12, rt_epochs=None, rt_warmup=2,
                  stream_lines=1000, mem_lines=(10_000, 100_000), repeats=3),
    "full": dict(bl_steps=5, bl_warmup=2, bl_eval=(32, 64), rt_steps=None, rt_epochs=1.0, rt_warmup=3,
                 stream_lines=10_000, mem_lines=(100_000, 1_000_000), repeats=5),
    "train": dict(bl_steps=5, bl_warmup=2, rt_epochs=1.0, rt_warmup=3),  # bench_train: training only
}
VALIDATION_ROWS = 1066
VOCAB, MAX_LEN = 50257, 128


# ----------------------------------------------------------------------------------------------- workers
def worker_rtsent_train(args) -> None:
    """rtsent.train.run with defaults; a StepTimer callback is appended to the Trainer's callbacks."""
    import rtsent.train as tr
    from rtsent.config import TrainConfig
    from rtsent.artifacts.workspace import Workspace

    timer = StepTimer()
    real = tr.LabelPositionTrainer

    class Timed(real):
        def __init__(self, *a, callbacks=None, **kw):
            super().__init__(*a, callbacks=list(callbacks or []) + [timer], **kw)

    tr.LabelPositionTrainer = Timed
    kw = {"max_steps": args.steps} if args.steps else {"epochs": args.epochs}
    cfg = TrainConfig(model=args.model, run_name=args.run_name, **kw)
    import torch
    from rtsent.core.modeling import default_device
    from rtsent.machine import resolve_precision

    started = time.perf_counter()
    res = tr.run(cfg, Workspace.resolve(args.workspace))
    wall = time.perf_counter() - started
    steady = timer.steady(args.warmup)
    step_s = statistics.median(steady)
    emit({"side": "rtsent", "stage": "train", "batch_size": cfg.batch_size, "steps": res.steps,
          "precision": resolve_precision(cfg.precision, default_device()), "threads": torch.get_num_threads(),
          "steady_steps_timed": len(steady), "steady_step_s": round(step_s, 3),
          "steady_examples_per_s": round(cfg.batch_size / step_s, 2),
          "fastest_step_examples_per_s": round(cfg.batch_size / min(steady), 2),
          "trainer_examples_per_s": round(res.train_examples_per_s, 2), "train_seconds": round(res.seconds, 1),
          "wall_s": round(wall, 1), "best_accuracy": res.best_accuracy, "model_dir": str(res.model_dir),
          "step_times": [round(t, 2) for t in timer.times]})


def worker_floor(args) -> None:
    """The floor of a cold predict: python + import torch + transformers' GPT-2 + loading the weights."""
    t0 = time.perf_counter()
    import torch

    t1 = time.perf_counter()
    from transformers import GPT2LMHeadModel

    t2 = time.perf_counter()
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    model = GPT2LMHeadModel.from_pretrained(args.model, dtype=dtype, use_safetensors=True)
    t3 = time.perf_counter()
    emit({"import_torch_s": round(t1 - t0, 3), "import_transformers_gpt2_s": round(t2 - t1, 3),
          "weight_load_s": round(t3 - t2, 3), "params": sum(p.numel() for p in model.parameters())})


def worker_predict_split(args) -> None:
    """Where a predict's time goes inside rtsent (same calls as the CLI, timed)."""
    t0 = time.perf_counter()
    import rtsent.cli  # noqa: F401

    t1 = time.perf_counter()
    import rtsent.predict  # noqa: F401  (pulls torch, transformers)

    t2 = time.perf_counter()
    from rtsent.engines import open_classifier

    clf = open_classifier(args.model, engine="torch")
    t3 = time.perf_counter()
    clf.probabilities(["great movie"])
    t4 = time.perf_counter()
    emit({"import_cli_s": round(t1 - t0, 3), "import_torch_transformers_s": round(t2 - t1, 3),
          "open_classifier_s": round(t3 - t2, 3), "score_one_s": round(t4 - t3, 3), "precision": clf.precision})


WORKERS = {"rtsent-train": worker_rtsent_train, "floor": worker_floor, "predict-split": worker_predict_split}


# ----------------------------------------------------------------------------------------------- helpers
def median_wall(argv: list[str], n: int, env: dict | None = None) -> tuple[float, list[float], float]:
    walls, rss = [], 0.0
    for _ in range(n):
        c = check(run_child(argv, env=env), " ".join(argv[:4]))
        walls.append(c["wall_s"])
        rss = max(rss, c["peak_rss_mb"])
    return statistics.median(walls), walls, rss


def write_lines(path: Path, n: int) -> Path:
    if path.is_file() and sum(1 for _ in open(path, "rb")) == n:
        return path
    import pyarrow.parquet as pq

    texts = [t.replace("\n", " ") for t in pq.read_table(DATA / "train.parquet").column("text").to_pylist()]
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(texts[i % len(texts)] + "\n")
    return path


# ----------------------------------------------------------------------------------------------- benchmark
def bench_train(args) -> dict:
    """--mode train: the seed recipe's steady-state steps against one whole `rtsent train` epoch (defaults),
    each in its own process; the rtsent process's wall time covers everything a user waits for: start-up,
    the steps, the validation pass, the checkpoint, the temperature fit and the export (model + ONNX)."""
    p = MODES["train"]
    model = gpt2_small_in_child(Path(args.model))
    ws = Path(args.workspace or OUT / "bench-ws-train")
    res: dict = {"mode": "train", "date": time.strftime("%Y-%m-%d %H:%M"), "machine": cpu_description(),
                 "model": str(model), "data": str(DATA), "params": p, "load_average_start": os.getloadavg()}
    log("rtsent prepare")
    check(run_child(rtsent_cmd("prepare", "--data", str(DATA), "--model", str(model)), env={"RTSENT_HOME": str(ws)}),
          "prepare")
    log(f"baseline train: {p['bl_warmup']} warm-up + {p['bl_steps']} timed steps of 8")
    bt = check(run_child([PY, str(HERE / "baseline.py"), "train", "--model", str(model), "--steps", str(p["bl_steps"]),
                          "--warmup-steps", str(p["bl_warmup"])]), "baseline train")
    res["baseline_train"] = {**bt["result"], "peak_rss_mb": round(bt["peak_rss_mb"]), "process_wall_s": round(bt["wall_s"], 1)}
    res["train_steps"] = args.train_steps  # 0: one epoch
    length = ["--steps", str(args.train_steps)] if args.train_steps else ["--epochs", "1"]
    log(f"rtsent train: {' '.join(length)}, defaults")
    rt = check(run_child([PY, __file__, "--worker", "rtsent-train", "--model", str(model), "--workspace", str(ws),
                          "--run-name", f"bench-train-{int(time.time())}", *length, "--warmup", str(p["rt_warmup"])],
                         env={"RTSENT_HOME": str(ws)}), "rtsent train")
    res["rtsent_train"] = {**rt["result"], "peak_rss_mb": round(rt["peak_rss_mb"]), "process_wall_s": round(rt["wall_s"], 1)}
    res["load_average_end"] = os.getloadavg()
    b, r = res["baseline_train"], res["rtsent_train"]
    res["ratios"] = {"train_steady": round(r["steady_examples_per_s"] / b["examples_per_s"], 1)}
    return res


def markdown_train(r: dict) -> str:
    b, t, m = r["baseline_train"], r["rtsent_train"], r["machine"]
    epoch = not r.get("train_steps")  # --train-steps times a few steps, not an epoch: no epoch goal applies
    span, goal = ("one RT epoch", "< 5 min") if epoch else (f"{t['steps']} steps (--train-steps, not an epoch)", "")
    return "\n".join([
        f"**train mode**, {r['date']}: {m.get('model', '?')}, {m.get('cores')} cores, AMX "
        f"{'yes' if m.get('amx_bf16') else 'no'}, {m.get('ram_gb')} GB RAM; load average at start "
        f"{r['load_average_start'][0]:.1f}, at end {r['load_average_end'][0]:.1f}.",
        "",
        "| | baseline (seed recipe) | rtsent (defaults) | rtsent / baseline | goal |",
        "|---|---:|---:|---:|---|",
        f"| train examples/s, steady state | {b['examples_per_s']:.2f} ({b['steps_timed']} steps of 8 after "
        f"{b['warmup_steps']} warm-up) | {t['steady_examples_per_s']:.1f} (median of {t['steady_steps_timed']} steps of "
        f"{t['batch_size']}, {t['precision']}) | **{r['ratios']['train_steady']}x** | >= 30x |",
        f"| {span} of GPT-2 small, whole `train` process (start-up, {t['steps']} steps, validation, checkpoint, "
        f"temperature, export + ONNX) | hours (not run) | **{int(t['process_wall_s'] // 60)} min {t['process_wall_s'] % 60:.0f} s** "
        f"({t['train_seconds']:.0f} s in Trainer.train) | | {goal} |",
        f"| peak RSS | {b['peak_rss_mb']} MB | {t['peak_rss_mb']} MB | | <= 5.2 GB |",
    ]) + "\n"


def bench(args) -> dict:
    p = dict(MODES[args.mode])
    if args.mem_lines:
        p["mem_lines"] = tuple(int(x) for x in args.mem_lines.split(","))
    OUT.mkdir(parents=True, exist_ok=True)
    model = gpt2_small_in_child(Path(args.model))
    ws = Path(args.workspace or OUT / f"bench-ws-{args.mode}")
    env = {"RTSENT_HOME": str(ws)}
    res: dict = {"mode": args.mode, "date": time.strftime("%Y-%m-%d %H:%M"), "machine": cpu_description(),
                 "model": str(model), "data": str(DATA), "params": p}
    import torch
    import transformers

    res["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                       "threads": torch.get_num_threads()}
    res["load_average_start"] = os.getloadavg()

    log("rtsent prepare")
    prep = check(run_child(rtsent_cmd("prepare", "--data", str(DATA), "--model", str(model)), env=env), "prepare")
    res["prepare"] = {"wall_s": round(prep["wall_s"], 2), "peak_rss_mb": round(prep["peak_rss_mb"])}

    # --- baseline -------------------------------------------------------------------------------------
    log(f"baseline train: {p['bl_warmup']} warm-up + {p['bl_steps']} timed steps of 8")
    bt = check(run_child([PY, str(HERE / "baseline.py"), "train", "--model", str(model), "--steps", str(p["bl_steps"]),
                          "--warmup-steps", str(p["bl_warmup"])]), "baseline train")
    res["baseline_train"] = {**bt["result"], "peak_rss_mb": round(bt["peak_rss_mb"])}
    evals = []
    for n in p["bl_eval"]:
        log(f"baseline eval on {n} validation examples")
        be = check(run_child([PY, str(HERE / "baseline.py"), "eval", "--model", str(model), "--examples", str(n)]),
                   "baseline eval")
        evals.append({**be["result"], "peak_rss_mb": round(be["peak_rss_mb"])})
    (n1, r1), (n2, r2) = [(e["examples"], e["peak_rss_mb"]) for e in evals]
    slope = (r2 - r1) / (n2 - n1)
    res["baseline_eval"] = {
        "subsets": evals,
        "examples_per_s": round(statistics.fmean(e["examples_per_s"] for e in evals), 3),
        "peak_rss_mb_per_example": round(slope, 2),
        "peak_rss_mb_full_split_extrapolated": round(r2 + slope * (VALIDATION_ROWS - n2)),
        "full_split_logits_gb": round(VALIDATION_ROWS * MAX_LEN * VOCAB * 4 / 1e9, 1),
    }

    # --- rtsent ---------------------------------------------------------------------------------------
    run_name = f"bench-{args.mode}-{int(time.time())}"
    what = f"{p['rt_steps']} steps" if p["rt_steps"] else f"{p['rt_epochs']} epoch"
    log(f"rtsent train ({what}, defaults)")
    rt = check(run_child([PY, __file__, "--worker", "rtsent-train", "--model", str(model), "--workspace", str(ws),
                          "--run-name", run_name, "--steps", str(p["rt_steps"] or 0), "--epochs", str(p["rt_epochs"] or 1),
                          "--warmup", str(p["rt_warmup"])], env=env), "rtsent train")
    res["rtsent_train"] = {**rt["result"], "peak_rss_mb": round(rt["peak_rss_mb"])}
    exported = rt["result"]["model_dir"]

    log("rtsent evaluate (full validation split, CLI)")
    report_path = OUT / f"bench-{args.mode}-eval.json"
    ev = check(run_child(rtsent_cmd("evaluate", "--model", exported, "--output", str(report_path)), env=env),
               "rtsent evaluate")
    report = json.loads(report_path.read_text())
    res["rtsent_eval"] = {"examples": report["examples"], "examples_per_s": report["examples_per_s"],
                          "scoring_s": report["seconds"], "wall_s": round(ev["wall_s"], 2),
                          "precision": report["precision"], "accuracy": report["accuracy"],
                          "peak_rss_mb": round(ev["peak_rss_mb"])}

    # --- CLI latency -----------------------------------------------------------------------------------
    k = p["repeats"]
    log("rtsent --help / cold predict / floor")
    help_med, help_all, _ = median_wall(rtsent_cmd("--help"), k, env)
    help_entry, help_entry_all, _ = median_wall(["rtsent", "--help"], k, env) if _which("rtsent") else (None, [], 0)
    py_med, _, _ = median_wall([PY, "-c", "pass"], k)
    pred_med, pred_all, pred_rss = median_wall(rtsent_cmd("predict", "great movie", "--model", exported), k, env)
    split = check(run_child([PY, __file__, "--worker", "predict-split", "--model", exported], env=env), "split")["result"]
    dtype = split["precision"] if split["precision"] in ("bf16", "fp32") else "fp32"
    floors, floor_results = [], []
    for _ in range(k):
        c = check(run_child([PY, __file__, "--worker", "floor", "--model", exported, "--dtype", dtype]), "floor")
        floors.append(c["wall_s"])
        floor_results.append(c["result"])
    floor_med = statistics.median(floors)
    mid = floor_results[floors.index(sorted(floors)[len(floors) // 2])]
    res["cli"] = {
        "help_s": round(help_med, 3), "help_runs": [round(x, 3) for x in help_all],
        "help_console_script_s": round(help_entry, 3) if help_entry else None,
        "python_startup_s": round(py_med, 3),
        "predict_cold_s": round(pred_med, 3), "predict_runs": [round(x, 3) for x in pred_all],
        "predict_peak_rss_mb": round(pred_rss),
        "predict_split": split,
        "floor_s": round(floor_med, 3), "floor_runs": [round(x, 3) for x in floors],
        "floor_split": {"python_startup_s": round(py_med, 3), **{k2: v for k2, v in mid.items() if k2.endswith("_s")}},
        "predict_over_floor": round(pred_med / floor_med, 3),
    }

    # --- streaming ------------------------------------------------------------------------------------
    log(f"rtsent predict --file: {p['stream_lines']} lines on GPT-2 small")
    f = write_lines(OUT / f"stream-{p['stream_lines']}.txt", p["stream_lines"])
    with open(os.devnull, "wb") as null:
        s = check(run_child(rtsent_cmd("predict", "--file", str(f), "--model", exported), env=env, stdout=null), "stream")
    res["stream_gpt2_small"] = {"lines": p["stream_lines"], **predict_stats(s["stderr"]),
                                "wall_s": round(s["wall_s"], 1), "peak_rss_mb": round(s["peak_rss_mb"])}
    log("tiny model (n_layer=2, n_embd=64, n_head=4) for the memory-bound check")
    check(run_child(rtsent_cmd("train", "--model", str(model), "--from-scratch", "--config-overrides",
                                      "n_layer=2,n_embd=64,n_head=4", "--max-steps", "3", "--run-name", run_name + "-tiny"),
                           env=env), "tiny train")
    tiny_dir = str(ws / "runs" / (run_name + "-tiny") / "model")
    mem = []
    for n in p["mem_lines"]:
        log(f"rtsent predict --file: {n} lines on the tiny model")
        f = write_lines(OUT / f"stream-{n}.txt", n)
        with open(os.devnull, "wb") as null:
            s = check(run_child(rtsent_cmd("predict", "--file", str(f), "--model", tiny_dir), env=env, stdout=null),
                      "stream tiny")
        mem.append({"lines": n, "file_mb": round(f.stat().st_size / 1e6, 1), **predict_stats(s["stderr"]),
                    "wall_s": round(s["wall_s"], 1), "peak_rss_mb": round(s["peak_rss_mb"])})
    res["stream_memory_tiny"] = mem
    res["load_average_end"] = os.getloadavg()

    # --- ratios ---------------------------------------------------------------------------------------
    b_tr, r_tr = res["baseline_train"]["examples_per_s"], res["rtsent_train"]
    res["ratios"] = {
        "train_steady": round(r_tr["steady_examples_per_s"] / b_tr, 1),
        "train_end_to_end": round(r_tr["trainer_examples_per_s"] / b_tr, 1),
        "eval": round(res["rtsent_eval"]["examples_per_s"] / res["baseline_eval"]["examples_per_s"], 1),
        "eval_peak_rss": round(res["rtsent_eval"]["peak_rss_mb"] / res["baseline_eval"]["peak_rss_mb_full_split_extrapolated"], 3),
        "train_peak_rss": round(r_tr["peak_rss_mb"] / res["baseline_train"]["peak_rss_mb"], 2),
    }
    return res


def _which(name: str) -> bool:
    import shutil

    return shutil.which(name) is not None


# ----------------------------------------------------------------------------------------------- report
def markdown(r: dict) -> str:
    b_tr, b_ev, r_tr, r_ev, c = r["baseline_train"], r["baseline_eval"], r["rtsent_train"], r["rtsent_eval"], r["cli"]
    m = r["machine"]
    measured = ", ".join(f"{e['peak_rss_mb']} MB at {e['examples']}" for e in b_ev["subsets"])
    rt_what = f"{r_tr['steps']} steps" if r["mode"] == "small" else "1 epoch"
    lines = [
        f"**{r['mode']} mode**, {r['date']}: {m.get('model', '?')}, {m.get('cores')} cores, "
        f"AVX-512 BF16 {'yes' if m.get('avx512_bf16') else 'no'}, AMX {'yes' if m.get('amx_bf16') else 'no'}, "
        f"{m.get('ram_gb')} GB RAM; torch {r['versions']['torch']}, transformers {r['versions']['transformers']}; "
        f"load average at start {r['load_average_start'][0]:.1f}, at end {r['load_average_end'][0]:.1f}.",
        "",
        "| | baseline (seed recipe) | rtsent (defaults) | rtsent / baseline |",
        "|---|---:|---:|---:|",
        f"| train examples/s, steady state | {b_tr['examples_per_s']:.2f} ({b_tr['steps_timed']} steps of 8 after "
        f"{b_tr['warmup_steps']} warm-up) | {r_tr['steady_examples_per_s']:.1f} ({r_tr['steady_steps_timed']} steps of "
        f"{r_tr['batch_size']}, {r_tr['precision']}; fastest step {r_tr.get('fastest_step_examples_per_s', '?')}) | "
        f"**{r['ratios']['train_steady']}x** |",
        f"| train examples/s, end to end (Trainer figure, incl. validation pass + checkpoint) | n/a | "
        f"{r_tr['trainer_examples_per_s']:.1f} ({rt_what}) | {r['ratios']['train_end_to_end']}x |",
        f"| train peak RSS | {b_tr['peak_rss_mb']} MB | {r_tr['peak_rss_mb']} MB | {r['ratios']['train_peak_rss']} |",
        f"| eval examples/s | {b_ev['examples_per_s']:.2f} (subsets of "
        f"{', '.join(str(e['examples']) for e in b_ev['subsets'])}) | {r_ev['examples_per_s']:.1f} (full validation, "
        f"{r_ev['examples']}, {r_ev['precision']}) | **{r['ratios']['eval']}x** |",
        f"| eval peak RSS, full validation split | **{b_ev['peak_rss_mb_full_split_extrapolated']:,} MB, extrapolated** "
        f"(measured {measured}; logits alone "
        f"{b_ev['full_split_logits_gb']} GB) | {r_ev['peak_rss_mb']} MB (measured) | {r['ratios']['eval_peak_rss']} |",
        "",
        "| CLI | seconds (median of runs) |",
        "|---|---:|",
        f"| `rtsent --help` (`python -m rtsent`) | {c['help_s']:.3f} |",
    ]
    if c.get("help_console_script_s"):
        lines.append(f"| `rtsent --help` (console script) | {c['help_console_script_s']:.3f} |")
    fs, ps = c["floor_split"], c["predict_split"]
    lines += [
        f"| cold `rtsent predict \"great movie\"` | {c['predict_cold_s']:.2f} (peak RSS {c['predict_peak_rss_mb']} MB) |",
        f"| floor: python + import torch + transformers GPT-2 + weight load | {c['floor_s']:.2f} |",
        f"| &nbsp;&nbsp;split: python {fs['python_startup_s']:.2f} + torch {fs['import_torch_s']:.2f} + transformers "
        f"GPT-2 {fs['import_transformers_gpt2_s']:.2f} + weights {fs['weight_load_s']:.2f} | |",
        f"| &nbsp;&nbsp;rtsent split: import cli {ps['import_cli_s']:.2f}, torch+transformers "
        f"{ps['import_torch_transformers_s']:.2f}, open model {ps['open_classifier_s']:.2f}, score {ps['score_one_s']:.3f} | |",
        f"| **predict / floor** | **{c['predict_over_floor']:.2f}x** |",
        "",
        "| `rtsent predict --file` | lines | reviews/s | wall s | peak RSS |",
        "|---|---:|---:|---:|---:|",
    ]
    s = r["stream_gpt2_small"]
    lines.append(f"| GPT-2 small (throughput) | {s['lines']:,} | {s.get('reviews_per_s', '?')} | {s['wall_s']} | {s['peak_rss_mb']} MB |")
    for t in r["stream_memory_tiny"]:
        lines.append(f"| tiny 2-layer model (memory bound), {t['file_mb']} MB file | {t['lines']:,} | "
                     f"{t.get('reviews_per_s', '?')} | {t['wall_s']} | {t['peak_rss_mb']} MB |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=sorted(MODES), default="small")
    ap.add_argument("--model", default=str(GPT2_SMALL), help="GPT-2-small folder (built if missing)")
    ap.add_argument("--workspace", default=None, help="RTSENT_HOME for the rtsent side [default: out/bench-ws-MODE]")
    ap.add_argument("--train-steps", type=int, default=0,
                    help="train mode: time this many rtsent steps instead of one epoch [default: the epoch]")
    ap.add_argument("--mem-lines", default=None, help="two line counts for the memory-bound check, e.g. 100000,1000000")
    ap.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--run-name", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--epochs", type=float, default=1.0, help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="bf16", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        WORKERS[args.worker](args)
        return
    started = time.perf_counter()
    OUT.mkdir(parents=True, exist_ok=True)
    r = bench_train(args) if args.mode == "train" else bench(args)
    r["bench_wall_s"] = round(time.perf_counter() - started, 1)
    md = markdown_train(r) if args.mode == "train" else markdown(r)
    write_report(f"bench-{args.mode}", r, md)
    print(md)
    print(f"wrote {OUT / f'bench-{args.mode}.json'} and {OUT / f'bench-{args.mode}.md'} in {r['bench_wall_s']:.0f} s")


if __name__ == "__main__":
    main()
