"""The onnx engine against the torch engine, in one run, on this machine.

    python benchmarks/engines.py                 # ~15-25 minutes on 2 shared cores
    python benchmarks/engines.py --repeats 3 --skip-real

What runs (every measured program is its own subprocess; peak RSS is os.wait4's ru_maxrss of that child):
  export      `rtsent export MODEL --int8` on a GPT-2-small-shaped folder (random weights + rtsent.json):
              a fused fp32 graph (onnxruntime.transformers' GELU/LayerNorm fusions) and an int8 graph
              quantized from the unfused one, the variants that measured faster
  variants    the alternatives built beside them for comparison: the unfused fp32 graph, and the fused
              graph quantized to int8
  CLI         `rtsent --help`; cold `rtsent predict "great movie"` with --engine onnx (int8 and fp32
              graphs) and --engine torch (bf16 where the CPU has it), interleaved, median wall time,
              peak RSS of each child (the parent stays small: it never imports torch, because a forked
              child's ru_maxrss starts at its parent's size)
  throughput  the evaluate scoring loop (classifier.scores over the 1066 RT validation prompts, batch
              64) for torch bf16/fp32 and every ONNX variant, two interleaved rounds, best of two
  int8        a small GPT-2 trained from scratch on the real data (the recipe of tests/test_real_data.py),
              exported with --int8: validation accuracy of each engine and argmax agreement with torch fp32

Writes benchmarks/out/engines.json and a ready-to-paste benchmarks/out/engines.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, GPT2_SMALL, OUT, check, cpu_description, emit, gpt2_small_scorer, log, run_child  # noqa: E402
from common import write_report  # noqa: E402
from common import rtsent_cmd as rtsent  # noqa: E402

PY = sys.executable
WORK = OUT / "engines"
ALTERNATIVES = {"fp32": "model.unfused.onnx", "int8": "model.int8.fused.onnx"}
REAL_RECIPE = ["--from-scratch", "--config-overrides", "n_layer=2,n_embd=64,n_head=2", "--lr", "1e-3", "--epochs", "2"]


# ----------------------------------------------------------------------------------------------- workers
def _validation() -> tuple[list[str], list[int]]:
    import pyarrow.parquet as pq

    table = pq.read_table(DATA / "validation.parquet")
    return table.column("text").to_pylist(), table.column("label").to_pylist()


def _classifier(model: str, variant: str):
    """torch-bf16, torch-fp32, onnx-fp32, onnx-int8 (as exported), or an alternative graph
    (onnx-fp32-unfused, onnx-int8-fused)."""
    from rtsent.engines import open_classifier

    engine, precision, *alternative = variant.split("-")
    if not alternative:
        return open_classifier(model, precision=precision, engine=engine)
    from rtsent.engines.base import read_model_meta
    from rtsent.engines.onnx import OnnxClassifier

    meta, prompt = read_model_meta(model)
    return OnnxClassifier(model, meta, prompt, meta.get("max_len", 128), Path(model) / ALTERNATIVES[precision], precision)


def worker_throughput(args) -> None:
    """The evaluate scoring loop on the RT validation prompts (after a warm-up batch)."""
    clf = _classifier(args.model, args.variant)
    texts, _ = _validation()
    rows = clf.encoder.encode(texts).input_ids
    clf.scores(rows[:64], 64)
    started = time.perf_counter()
    scores = clf.scores(rows, 64)
    seconds = time.perf_counter() - started
    emit({"variant": args.variant, "precision": clf.precision, "examples": len(rows), "seconds": round(seconds, 2),
          "examples_per_s": round(len(rows) / seconds, 1), "scores_head": scores[:4].tolist()})


def worker_scores(args) -> None:
    """Validation scores of each variant of a trained model, saved for the agreement table."""
    import numpy as np

    texts, labels = _validation()
    out = {}
    for variant in args.variant.split(","):
        clf = _classifier(args.model, variant)
        rows = clf.encoder.encode(texts).input_ids
        out[variant] = clf.scores(rows, 64)
    np.savez(args.out, labels=np.asarray(labels), **out)
    emit({"variants": list(out)})


def worker_setup(args) -> None:
    emit({"model": str(gpt2_small_model())})


def worker_alternatives(args) -> None:
    """Beside an exported folder: the unfused fp32 graph and the fused graph quantized to int8."""
    import json as _json

    from rtsent.artifacts import onnx_graph

    folder = Path(args.model)
    meta = _json.loads((folder / "rtsent.json").read_text())
    started = time.perf_counter()
    onnx_graph._export_fp32(str(folder), meta["onnx"]["label_ids"], folder / ALTERNATIVES["fp32"])
    onnx_graph._quantize(folder / "model.onnx", folder / ALTERNATIVES["int8"])
    emit({"fused_fp32": meta["onnx"]["fused_fp32"], "seconds": round(time.perf_counter() - started, 1)})


WORKERS = {"throughput": worker_throughput, "scores": worker_scores, "setup": worker_setup,
           "alternatives": worker_alternatives}


# ----------------------------------------------------------------------------------------------- setup
def gpt2_small_model() -> Path:
    """GPT-2 small (random weights, real tokenizer) as a model folder with rtsent.json, the default prompt."""
    return gpt2_small_scorer(WORK / "gpt2-small-model", "random weights: for speed and memory only")


def median_runs(argvs: dict[str, list[str]], repeats: int) -> dict[str, dict]:
    """Each command `repeats` times, interleaved (a, b, c, a, b, c, ...): median wall, max peak RSS."""
    runs: dict[str, list[dict]] = {k: [] for k in argvs}
    for _ in range(repeats):
        for key, argv in argvs.items():
            runs[key].append(check(run_child(argv), key))
    return {k: {"median_s": round(statistics.median(r["wall_s"] for r in v), 3),
                "runs_s": [round(r["wall_s"], 2) for r in v],
                "peak_rss_mb": round(max(r["peak_rss_mb"] for r in v), 1)} for k, v in runs.items()}


# ----------------------------------------------------------------------------------------------- bench
def worker(name: str, *args: str) -> dict:
    return check(run_child([PY, __file__, "--worker", name, *args]), name)["result"]


def bench_cli(model: Path, repeats: int) -> dict:
    log("rtsent --help")
    result = {"help": median_runs({"help": rtsent("--help")}, repeats)["help"]}
    log("cold predict, interleaved")
    predict = rtsent("predict", "great movie", "--model", str(model))
    result["predict"] = median_runs({
        "onnx-int8": predict + ["--engine", "onnx"],
        "onnx-fp32": predict + ["--engine", "onnx", "--precision", "fp32"],
        "torch-auto": predict + ["--engine", "torch"],
    }, repeats)
    return result


def bench(args) -> dict:
    result: dict = {"machine": cpu_description(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "load_avg_start": os.getloadavg()}
    model = Path(worker("setup")["model"])
    log(f"export {model} --int8")
    exported = check(run_child(rtsent("export", str(model), "--int8")), "export")
    result["export"] = {"wall_s": round(exported["wall_s"], 1), "peak_rss_mb": round(exported["peak_rss_mb"], 1),
                        "sizes_mb": {f: round((model / f).stat().st_size / 1e6, 1)
                                     for f in ("model.safetensors", "model.onnx", "model.int8.onnx")}}
    log("alternative graphs")
    result["fusions"] = worker("alternatives", "--model", str(model))
    result.update(bench_cli(model, args.repeats))

    log("evaluate throughput, two interleaved rounds")
    variants = ["torch-bf16", "torch-fp32", "onnx-fp32", "onnx-int8", "onnx-fp32-unfused", "onnx-int8-fused"]
    rounds: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(2):
        for v in variants:
            eps = worker("throughput", "--model", str(model), "--variant", v)["examples_per_s"]
            rounds[v].append(eps)
            log(f"  {v}: {eps} ex/s")
    result["throughput"] = {v: {"best": max(r), "runs": r} for v, r in rounds.items()}

    if not args.skip_real:
        result["real"] = real_data(args)
    result["load_avg_end"] = os.getloadavg()
    return result


def real_data(args) -> dict:
    """Train the small real-data model (train exports fp32 itself), add int8, compare engines on validation."""
    import numpy as np

    ws = WORK / "ws"
    shutil.rmtree(ws, ignore_errors=True)
    base = GPT2_SMALL
    log("real data: prepare + train (2 layers, width 64)")
    check(run_child(rtsent("prepare", "--data", str(DATA), "--model", str(base), "--workdir", str(ws))), "prepare")
    trained = check(run_child(rtsent("train", "--model", str(base), *REAL_RECIPE, "--run-name", "rt", "--workdir", str(ws))), "train")
    model = ws / "runs/rt/model"
    exported_at_train = json.loads((model / "rtsent.json").read_text()).get("onnx", {}).get("graphs")
    check(run_child(rtsent("export", str(model), "--int8")), "export --int8")
    worker("alternatives", "--model", str(model))
    variants = ["torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8", "onnx-fp32-unfused", "onnx-int8-fused"]
    npz = WORK / "real-scores.npz"
    check(run_child([PY, __file__, "--worker", "scores", "--model", str(model), "--variant", ",".join(variants),
                     "--out", str(npz)]), "scores")
    data = np.load(npz)
    labels, ref = data["labels"], data["torch-fp32"]
    table = {}
    for v in variants:
        s = data[v]
        table[v] = {"accuracy": round(float((s.argmax(1) == labels).mean()), 4),
                    "agreement_with_torch_fp32": round(float((s.argmax(1) == ref.argmax(1)).mean()), 4),
                    "changed_decisions": int((s.argmax(1) != ref.argmax(1)).sum()),
                    "max_abs_score_diff": round(float(np.abs(s - ref).max()), 5)}
    margin = np.abs(ref[:, 1] - ref[:, 0])
    return {"train_wall_s": round(trained["wall_s"], 1), "graphs_written_by_train": exported_at_train,
            "examples": int(len(labels)), "median_margin_torch_fp32": round(float(np.median(margin)), 4),
            "variants": table}


def markdown(r: dict) -> str:
    m, p, t = r["machine"], r["predict"], r["throughput"]
    torch_pred = p["torch-auto"]["median_s"]
    bf16 = t["torch-bf16"]["best"]
    lines = [
        f"Machine: {m.get('model', '?')}, {m.get('cores')} cores, {m.get('ram_gb')} GB RAM (shared with other jobs: "
        f"load average {r['load_avg_start'][0]:.1f} at the start, {r['load_avg_end'][0]:.1f} at the end). "
        f"Command: `python benchmarks/engines.py --repeats {r['repeats']}`, {r['started']}. "
        "GPT-2 small shape (124 M parameters, random weights) unless noted.",
        "",
        "| what | onnx engine | torch engine | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for key, name in (("onnx-int8", "int8 graph (auto)"), ("onnx-fp32", "fp32 graph")):
        lines.append(f"| cold `rtsent predict \"great movie\"`, {name}: median s | {p[key]['median_s']:.2f} | "
                     f"{torch_pred:.2f} | {torch_pred / p[key]['median_s']:.1f}x faster |")
        lines.append(f"| peak RSS of that predict, MB | {p[key]['peak_rss_mb']:.0f} | {p['torch-auto']['peak_rss_mb']:.0f} | "
                     f"{p['torch-auto']['peak_rss_mb'] / p[key]['peak_rss_mb']:.1f}x less |")
    lines += [f"| `rtsent --help`, median s | {r['help']['median_s']:.2f} | | |", "",
              "Evaluate scoring throughput on the 1066 RT validation prompts (batch 64; best of two interleaved rounds):", "",
              "| variant | examples/s | vs torch bf16 |", "| --- | ---: | ---: |"]
    for v, row in t.items():
        lines.append(f"| {v} | {row['best']:.1f} | {row['best'] / bf16:.2f}x |")
    f = r["fusions"]
    lines += ["", f"Fused in the exported fp32 graph: {f['fused_fp32']}. Export (`rtsent export --int8`): "
              f"{r['export']['wall_s']} s (peak RSS {r['export']['peak_rss_mb']:.0f} MB), sizes {r['export']['sizes_mb']} MB."]
    if "real" in r:
        q = r["real"]
        lines += ["", f"Trained small model (real RT data, `rtsent train {' '.join(REAL_RECIPE)}`; train wrote "
                  f"{q['graphs_written_by_train']}; median |score margin| {q['median_margin_torch_fp32']}), "
                  f"validation ({q['examples']} reviews):", "",
                  "| variant | accuracy | agreement with torch fp32 | changed decisions | max abs score diff |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for v, row in q["variants"].items():
            lines.append(f"| {v} | {row['accuracy']:.4f} | {row['agreement_with_torch_fp32']:.4f} | "
                         f"{row['changed_decisions']} | {row['max_abs_score_diff']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-real", action="store_true", help="skip training the real-data model (int8 accuracy)")
    ap.add_argument("--only-cli", action="store_true", help="re-measure only --help and cold predict (needs a previous run)")
    ap.add_argument("--worker", choices=sorted(WORKERS))
    ap.add_argument("--model")
    ap.add_argument("--variant")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.worker:
        WORKERS[args.worker](args)
        return
    WORK.mkdir(parents=True, exist_ok=True)
    if args.only_cli:  # re-export and re-measure the CLI rows on the GPT-2 small folder, keep the rest
        result = json.loads((OUT / "engines.json").read_text())
        model = WORK / "gpt2-small-model"
        exported = check(run_child(rtsent("export", str(model), "--int8")), "export")
        result["export"].update(wall_s=round(exported["wall_s"], 1), peak_rss_mb=round(exported["peak_rss_mb"], 1))
        result["fusions"] = {"fused_fp32": json.loads((model / "rtsent.json").read_text())["onnx"]["fused_fp32"]}
        result.update(bench_cli(model, args.repeats))
        result["load_avg_end"] = os.getloadavg()
        result["cli_remeasured"] = time.strftime("%Y-%m-%d %H:%M:%S")
    else:
        result = bench(args)
    result["repeats"] = args.repeats
    write_report("engines", result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
