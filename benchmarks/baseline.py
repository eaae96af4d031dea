"""The seed recipe, re-implemented faithfully and self-contained (no rtsent code), as the benchmark baseline.

    python benchmarks/baseline.py train --model M --steps 5 --warmup-steps 2
    python benchmarks/baseline.py eval  --model M --examples 32

Recipe: plain HF Trainer + GPT2LMHeadModel; prompt "{text} Sentiment: " followed by the label token
("neg"/"pos"); every example padded to max_length=128 (eos as pad); labels -100 everywhere except the
label token, so the model's own shifted LM loss sits on that token only; gradient checkpointing; fp32;
batch size 8 (the Trainer default); evaluation through Trainer.evaluate, whose compute_metrics receives
the full-vocabulary logits for every position ([n, 128, 50257] fp32). The device is the Trainer's own choice
(a CUDA GPU where there is one, as the recipe would run there), or the CPU with --cpu; the JSON names it.

A full baseline epoch takes hours on a 2-core CPU, so `train` times a fixed number of optimizer steps
after --warmup-steps excluded steps; `eval` runs on a small subset (bench.py extrapolates its memory).
Prints one JSON line (rates, own peak RSS) last.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, OUT, StepTimer, emit, self_peak_rss_mb  # noqa: E402

PROMPT = "{text} Sentiment: "
LABEL_WORDS = ("neg", "pos")
MAX_LEN = 128


def encode(tok, texts, labels):
    """Prompt + label token, padded to 128; labels = -100 except at the label token."""
    label_ids = [tok.convert_tokens_to_ids(w) for w in LABEL_WORDS]
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for text, label in zip(texts, labels):
        prompt = tok(PROMPT.format(text=text), truncation=True, max_length=MAX_LEN - 1)["input_ids"]
        ids = prompt + [label_ids[label]]
        pad = MAX_LEN - len(ids)
        rows["input_ids"].append(ids + [tok.pad_token_id] * pad)
        rows["attention_mask"].append([1] * len(ids) + [0] * pad)
        rows["labels"].append([-100] * len(prompt) + [label_ids[label]] + [-100] * pad)
    return rows, label_ids


def load_split(split: str, n: int | None, seed: int = 0):
    import pyarrow.parquet as pq

    table = pq.read_table(DATA / f"{split}.parquet")
    texts, labels = table.column("text").to_pylist(), table.column("label").to_pylist()
    idx = list(range(len(texts)))
    if n is not None and n < len(idx):
        idx = sorted(random.Random(seed).sample(idx, n))
    return [texts[i] for i in idx], [int(labels[i]) for i in idx]


def build(model_dir: str, split: str, n: int | None):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.pad_token = tok.eos_token
    texts, labels = load_split(split, n)
    rows, label_ids = encode(tok, texts, labels)
    ds = datasets.Dataset.from_dict(rows)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.config.pad_token_id = tok.pad_token_id
    return tok, model, ds, label_ids


def training_args(out: str, **kw):
    from transformers import TrainingArguments

    base = dict(output_dir=out, per_device_train_batch_size=8, per_device_eval_batch_size=8, learning_rate=5e-5,
                num_train_epochs=1, weight_decay=0.01, logging_steps=50, report_to="none", disable_tqdm=True,
                save_strategy="no", eval_strategy="no")
    base.update(kw)
    try:
        return TrainingArguments(gradient_checkpointing=True, **base)
    except TypeError:  # transformers 5.x renamed it
        return TrainingArguments(activation_checkpointing=True, **base)


def cmd_train(args) -> None:
    from transformers import Trainer, default_data_collator

    tok, model, ds, _ = build(args.model, "train", (args.steps + args.warmup_steps) * 8 * 2)
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model=model, args=training_args(tmp, max_steps=args.steps + args.warmup_steps,
                                                          use_cpu=args.cpu),
                          train_dataset=ds, data_collator=default_data_collator, callbacks=[timer])
        started = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - started
    steady = timer.steady(args.warmup_steps)
    step_s = statistics.median(steady)
    emit({"side": "baseline", "stage": "train", "device": str(trainer.args.device), "batch_size": 8,
          "steps_timed": len(steady), "warmup_steps": args.warmup_steps, "step_times": [round(t, 2) for t in timer.times],
          "steady_step_s": round(step_s, 3), "examples_per_s": round(8 / step_s, 3), "wall_s": round(total, 1)})


def cmd_eval(args) -> None:
    import numpy as np
    from transformers import Trainer, default_data_collator

    tok, model, ds, label_ids = build(args.model, "validation", args.examples)
    rss_loaded = self_peak_rss_mb()
    seen = {}

    def compute_metrics(pred):
        logits, labels = pred.predictions, pred.label_ids  # [n, 128, vocab] fp32, the seed recipe's metric input
        seen["logits_shape"] = list(logits.shape)
        seen["logits_gb"] = logits.nbytes / 1e9
        pos = (labels != -100).argmax(-1)
        rows = np.arange(len(labels))
        scores = logits[rows, pos - 1][:, label_ids]
        return {"accuracy": float((np.asarray(label_ids)[scores.argmax(-1)] == labels[rows, pos]).mean())}

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(model=model, args=training_args(tmp, use_cpu=args.cpu), eval_dataset=ds,
                          data_collator=default_data_collator, compute_metrics=compute_metrics)
        started = time.perf_counter()
        metrics = trainer.evaluate()
        seconds = time.perf_counter() - started
    emit({"side": "baseline", "stage": "eval", "device": str(trainer.args.device), "examples": len(ds),
          "seconds": round(seconds, 2), "examples_per_s": round(len(ds) / seconds, 3), "accuracy": metrics.get("eval_accuracy"),
          "rss_after_load_mb": round(rss_loaded, 1), **seen})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--model", default=str(OUT / "gpt2-small"))
    t.add_argument("--steps", type=int, default=3, help="timed steady-state steps")
    t.add_argument("--warmup-steps", type=int, default=1, help="excluded first steps")
    e = sub.add_parser("eval")
    e.add_argument("--model", default=str(OUT / "gpt2-small"))
    e.add_argument("--examples", type=int, default=32)
    for parser in (t, e):
        parser.add_argument("--cpu", action="store_true", help="run on the CPU even where a GPU is")
    args = ap.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    {"train": cmd_train, "eval": cmd_eval}[args.cmd](args)


if __name__ == "__main__":
    main()
