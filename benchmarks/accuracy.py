"""Speed must not cost accuracy: rtsent's fast defaults vs an fp32 reference, over several seeds.

    reference  --precision fp32 with the model config's dropout (GPT-2: 0.1) and tanh-GELU
    defaults   --precision auto (bf16 on this CPU), dropout 0, exact GELU in bf16
    no-speed   the defaults with rtsent.training.speed's step levers switched off (#12: reused heap, tied-embedding
               rows added into .grad, clipping folded into fused AdamW), i.e. the step as before them
    batch32    the defaults at batch 32 and half the rate (the defaults before #19)

    python benchmarks/accuracy.py --variants reference,defaults,no-speed

    python benchmarks/accuracy.py [--seeds 1,2,3] [--epochs 2] [--lr 5e-5] [--template 'Review: {text}\\nSentiment:']

Trains a small from-scratch model (`rtsent train --from-scratch --config-overrides n_layer=2,n_embd=64,n_head=4`,
everything else rtsent's defaults) on Rotten Tomatoes once per seed and precision, and reports the best
validation accuracy of each run, then `rtsent evaluate` of the exported model in the same precision.
Writes benchmarks/out/accuracy.json and accuracy.md.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, OUT, gpt2_small_config, write_report  # noqa: E402


def levers_off(off: bool) -> None:
    """Switch rtsent.training.speed's levers off (or back on) for the runs that follow, in this process."""
    import contextlib

    from rtsent.training import speed

    if off:
        speed.reused_heap = lambda: contextlib.nullcontext(False)
        speed.tied_embedding_rows_into_grad = lambda model: False
        speed.can_fold_clipping = lambda optimizer, scaler: False
    else:
        import importlib

        importlib.reload(speed)  # train.py reads them as speed.<name> at each call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(OUT / "gpt2-small"), help="folder whose config/tokenizer are used")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--variants", default="reference,defaults")
    ap.add_argument("--epochs", type=float, default=None, help="default: rtsent's")
    ap.add_argument("--lr", type=float, default=None,
                    help="the rate at batch 32, doubled at rtsent's default 64 as its default rate is (default: rtsent's)")
    ap.add_argument("--loss", default=None, help="default: rtsent's (lm); label learns faster from scratch")
    ap.add_argument("--overrides", default="n_layer=2,n_embd=64,n_head=2")
    ap.add_argument("--workspace", default=str(OUT / "accuracy-ws"))
    ap.add_argument("--template", default=None, help="prepare's --template (default: rtsent's)")
    ap.add_argument("--tag", default="", help="suffix of the output files (accuracy<tag>.json)")
    args = ap.parse_args()

    from rtsent import evaluate, prepare, train
    from rtsent.config import FULL_BATCH, EvaluateConfig, PrepareConfig, PromptConfig, TrainConfig, unescape
    from rtsent.core.modeling import default_device
    from rtsent.machine import resolve_precision
    from rtsent.artifacts.workspace import Workspace

    ws = Workspace.resolve(args.workspace)
    if not (Path(args.model) / "config.json").is_file():
        gpt2_small_config(Path(args.model))  # --from-scratch needs only the config and the tokenizer
    prompt = PromptConfig.unresolved(**({"template": unescape(args.template)} if args.template else {}))
    prep = prepare.run(PrepareConfig(data=str(DATA), model=args.model, prompt=prompt), ws)
    extra = {k: v for k, v in (("epochs", args.epochs), ("loss", args.loss)) if v is not None}
    rows = []
    stamp = int(time.time())
    for seed in [int(s) for s in args.seeds.split(",")]:
        for variant in args.variants.split(","):
            precision, dropout = ("fp32", None) if variant == "reference" else ("auto", TrainConfig.dropout)
            batch = 32 if variant == "batch32" else FULL_BATCH
            lr = {} if args.lr is None else {"lr": args.lr * batch / 32}
            levers_off(variant == "no-speed")
            resolved = (f"{variant} ({resolve_precision(precision, default_device())}, dropout "
                        f"{'config' if dropout is None else dropout}, batch {batch})")
            cfg = TrainConfig(model=args.model, prepared=str(prep.path), from_scratch=True,
                              config_overrides=args.overrides, seed=seed, precision=precision, dropout=dropout,
                              batch_size=batch, run_name=f"acc-{stamp}-s{seed}-{variant}", **extra, **lr)
            started = time.perf_counter()
            res = train.run(cfg, ws)
            seconds = time.perf_counter() - started
            rep = evaluate.run(EvaluateConfig(model=str(res.model_dir), precision=precision,
                                              output=str(res.run.dir / "eval-validation.json")), ws)
            rows.append({"seed": seed, "precision": resolved, "best_val_accuracy_in_training": res.best_accuracy,
                         "evaluate_accuracy": rep["accuracy"], "steps": res.steps, "train_s": round(seconds, 1),
                         "train_examples_per_s": round(res.train_examples_per_s, 1)})
            print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for precision in sorted({r["precision"] for r in rows}):
        accs = [r["evaluate_accuracy"] for r in rows if r["precision"] == precision]
        summary[precision] = {"mean": statistics.fmean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                              "runs": accs}
    n = rows and 1066
    p = statistics.fmean(r["evaluate_accuracy"] for r in rows)
    binomial_se = math.sqrt(p * (1 - p) / n)
    result = {"config": {"overrides": args.overrides, "template": prep.meta.config["prompt"]["template"], **extra, "lr_at_batch_32": args.lr, "seeds": args.seeds}, "runs": rows, "summary": summary,
              "binomial_se_one_run": binomial_se}
    lines = ["| seed | " + " | ".join(summary) + " |", "|---|" + "---:|" * len(summary)]
    for seed in sorted({r["seed"] for r in rows}):
        cells = [next((f"{r['evaluate_accuracy']:.4f}" for r in rows if r["seed"] == seed and r["precision"] == pr), "")
                 for pr in summary]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    lines.append("| mean ± std | " + " | ".join(f"{s['mean']:.4f} ± {s['std']:.4f}" for s in summary.values()) + " |")
    names = list(summary)
    lines.append("")
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            sa, sb = summary[a], summary[b]
            lines.append(f"- {a} vs {b}: difference of means {abs(sa['mean'] - sb['mean']):.4f}; seed-to-seed std "
                         f"{max(sa['std'], sb['std']):.4f}")
    lines.append(f"- binomial standard error of one run on 1066 examples: {binomial_se:.4f}")
    md = "\n".join(lines) + "\n"
    write_report(f"accuracy{args.tag}", result, md)
    print(md)


if __name__ == "__main__":
    main()
