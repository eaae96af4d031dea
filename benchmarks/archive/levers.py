"""Measure one training lever at a time on rtsent's real train code path (rtsent.train.run).

    python benchmarks/archive/levers.py --sweep [STEPS] [NAME-SUBSTRING ...]   # every lever, one process each
    python benchmarks/archive/levers.py --steps 8 [--batch-size 32] [--precision auto|fp32|bf16] [--optim adamw_torch_fused]
        [--threads 2] [--attn sdpa|eager] [--compile] [--workers 0] [--profile]

rtsent is not edited: options it does not expose (optimizer, thread count, attention kernel, DataLoader
workers) are injected by wrapping rtsent.train.TrainingArguments / load_model for this process only.
Reports steady-state train examples/s (first --skip steps excluded) as the last stdout line (JSON).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/, for common
from common import OUT, DATA, StepTimer, emit  # noqa: E402


def patch_rtsent(optim: str | None = None, workers: int | None = None, attn: str | None = None,
                 timer=None, extra_args: dict | None = None, act: str | None = None) -> None:
    import rtsent.train as tr

    real_args, real_trainer, real_load = tr.TrainingArguments, tr.LabelPositionTrainer, tr.load_model

    def args_factory(*a, **kw):
        if optim:
            kw["optim"] = optim
        if workers is not None:
            kw["dataloader_num_workers"] = workers
            if workers:
                kw["dataloader_persistent_workers"] = True
        kw.update(extra_args or {})
        return real_args(*a, **kw)

    class Trainer(real_trainer):
        def __init__(self, *a, callbacks=None, **kw):
            callbacks = list(callbacks or [])
            if timer is not None:
                callbacks.append(timer)
            super().__init__(*a, callbacks=callbacks, **kw)


    def load_model(*a, **kw):
        model = real_load(*a, **kw)
        if attn:
            model.set_attn_implementation(attn)
        if act:  # same function, one fused kernel: "gelu_pytorch_tanh" == GPT-2's "gelu_new"
            from transformers.activations import ACT2FN

            model.config.activation_function = act
            for block in model.base_model.h:
                block.mlp.act = ACT2FN[act]
        return model

    tr.TrainingArguments = args_factory
    tr.LabelPositionTrainer = Trainer
    tr.load_model = load_model


SWEEP = [
    ("default (auto=bf16, bs 32, fused AdamW, sdpa, 2 threads)", []),
    ("fp32", ["--precision", "fp32"]),
    ("fused tanh-GELU (gelu_pytorch_tanh)", ["--act", "gelu_pytorch_tanh"]),
    ("batch 64", ["--batch-size", "64"]),
    ("eager attention", ["--attn", "eager"]),
    ("AdamW single-tensor loop (optim=adamw_torch)", ["--optim", "adamw_torch"]),
    ("1 thread", ["--threads", "1"]),
    ("default again", []),
]
EXTRA = [  # measured on request: levers.py --sweep 5 --extra
    ("batch 16", ["--batch-size", "16"]),
    ("random sampling (no length grouping)", ["--sampling", "random"]),
    ("1 DataLoader worker", ["--workers", "1"]),
    ("loss=label", ["--loss", "label"]),
    ("torch.compile (lengths bucketed to 16)", ["--compile"]),
]


def sweep(steps: int, only: list[str] | None) -> None:
    """Each variant in its own process, one after the other; writes out/levers.json and levers.md."""
    import json

    from common import run_child

    rows = []
    for name, extra in (EXTRA if "--extra" in sys.argv else SWEEP):
        if only and not any(o in name for o in only):
            continue
        c = run_child([sys.executable, __file__, "--steps", str(steps), *extra])
        r = c["result"] or {"error": c["stderr"][-500:]}
        r.update({"variant": name, "argv": extra, "wall_s": round(c["wall_s"], 1), "peak_rss_mb": round(c["peak_rss_mb"])})
        rows.append(r)
        print(json.dumps(r), flush=True)
    stem = "levers-extra" if "--extra" in sys.argv else "levers"
    (OUT / f"{stem}.json").write_text(json.dumps(rows, indent=2))
    lines = ["| variant | steady train examples/s | step s (median) | peak RSS MB |", "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r.get('steady_examples_per_s', 'error')} | {r.get('steady_step_s', '')} | {r['peak_rss_mb']} |")
    (OUT / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    if "--sweep" in sys.argv:
        i = sys.argv.index("--sweep")
        steps = int(sys.argv[i + 1]) if len(sys.argv) > i + 1 and sys.argv[i + 1].isdigit() else 6
        only = [a for a in sys.argv[i + 1:] if not a.isdigit() and a != "--extra"] or None
        return sweep(steps, only)
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(OUT / "gpt2-small"))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--skip", type=int, default=2, help="warm-up steps excluded from the steady-state rate")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--optim", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--attn", default=None)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--loss", default="lm")
    ap.add_argument("--act", default=None, help="e.g. gelu_pytorch_tanh (fused tanh-GELU, same function as gelu_new)")
    ap.add_argument("--sampling", default=None, help="train_sampling_strategy override, e.g. random")
    ap.add_argument("--grad-ckpt", action="store_true")
    ap.add_argument("--dropout", type=float, default=0.0, help="-1 keeps the model config's dropout")
    ap.add_argument("--profile", action="store_true", help="torch.profiler over 2 steady-state steps")
    ap.add_argument("--with-eval", action="store_true",
                    help="keep rtsent's end-of-training evaluation and checkpoint (off: only the steps are timed)")
    ap.add_argument("--workspace", default=str(OUT / "ws"))
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import rtsent.train as tr
    from rtsent import prepare
    from rtsent.config import PrepareConfig, TrainConfig
    from rtsent.artifacts.workspace import Workspace

    ws = Workspace.resolve(args.workspace)
    prep = prepare.run(PrepareConfig(data=str(DATA), model=args.model), ws)
    timer = StepTimer()
    prof_holder = {}
    if args.profile:
        import torch.profiler as tp
        from transformers import TrainerCallback

        class Prof(TrainerCallback):
            def on_step_begin(self, a, state, control, **kw):
                if state.global_step == args.skip:
                    prof_holder["p"] = tp.profile(activities=[tp.ProfilerActivity.CPU])
                    prof_holder["p"].__enter__()

            def on_step_end(self, a, state, control, **kw):
                if state.global_step == args.skip + 2 and "p" in prof_holder:
                    prof_holder["p"].__exit__(None, None, None)

        extra_cb = Prof()
    no_eval = {} if args.with_eval else {"eval_strategy": "no", "save_strategy": "no", "load_best_model_at_end": False}
    if args.sampling:
        no_eval["train_sampling_strategy"] = args.sampling
    patch_rtsent(args.optim, args.workers, args.attn, timer, no_eval, args.act)
    if args.profile:
        real = tr.LabelPositionTrainer

        class WithProf(real):
            def __init__(self, *a, callbacks=None, **kw):
                super().__init__(*a, callbacks=list(callbacks or []) + [extra_cb], **kw)

        tr.LabelPositionTrainer = WithProf
    cfg = TrainConfig(model=args.model, prepared=str(prep.path), batch_size=args.batch_size, max_steps=args.steps,
                      precision=args.precision, compile=args.compile, loss=args.loss,
                      gradient_checkpointing=args.grad_ckpt, dropout=None if args.dropout < 0 else args.dropout,
                      run_name=f"lever-{int(time.time() * 1000)}")
    started = time.perf_counter()
    res = tr.run(cfg, ws)
    total = time.perf_counter() - started
    steady = timer.steady(args.skip)
    step_s = statistics.median(steady)
    import shutil

    shutil.rmtree(res.run.dir, ignore_errors=True)
    out = {
        "batch_size": args.batch_size, "precision": args.precision, "optim": args.optim or "default",
        "threads": torch.get_num_threads(), "attn": args.attn or "default", "compile": args.compile,
        "workers": args.workers, "loss": args.loss, "act": args.act or "default", "sampling": args.sampling or "group_by_length", "grad_ckpt": args.grad_ckpt,
        "steps": res.steps, "step_times": [round(t, 3) for t in timer.times],
        "steady_step_s": round(step_s, 3), "steady_examples_per_s": round(args.batch_size / step_s, 2),
        "trainer_examples_per_s": round(res.train_examples_per_s, 2), "run_total_s": round(total, 1),
    }
    if "p" in prof_holder:
        table = prof_holder["p"].key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
        (OUT / "profile_train.txt").write_text(table)
        print(table)
    emit(out)


if __name__ == "__main__":
    main()
