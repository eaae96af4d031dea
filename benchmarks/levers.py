"""Measure one training lever at a time on rtsent's real train code path (rtsent.train.run).

    python benchmarks/levers.py --steps 8 [--batch-size 32] [--precision auto|fp32|bf16] [--optim adamw_torch_fused]
        [--threads 2] [--attn sdpa|eager] [--compile] [--workers 0] [--profile]

rtsent is not edited: options it does not expose (optimizer, thread count, attention kernel, DataLoader
workers) are injected by wrapping rtsent.train.TrainingArguments / load_model for this process only.
Reports steady-state train examples/s (first --skip steps excluded) as the last stdout line (JSON).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, DATA, StepTimer, emit  # noqa: E402


def patch_rtsent(optim: str | None = None, workers: int | None = None, attn: str | None = None,
                 timer=None, extra_args: dict | None = None) -> None:
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
        return model

    tr.TrainingArguments = args_factory
    tr.LabelPositionTrainer = Trainer
    tr.load_model = load_model


def main() -> None:
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
    ap.add_argument("--grad-ckpt", action="store_true")
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
    from rtsent.workspace import Workspace

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
    patch_rtsent(args.optim, args.workers, args.attn, timer, no_eval)
    if args.profile:
        real = tr.LabelPositionTrainer

        class WithProf(real):
            def __init__(self, *a, callbacks=None, **kw):
                super().__init__(*a, callbacks=list(callbacks or []) + [extra_cb], **kw)

        tr.LabelPositionTrainer = WithProf
    cfg = TrainConfig(model=args.model, prepared=str(prep.path), batch_size=args.batch_size, max_steps=args.steps,
                      precision=args.precision, compile=args.compile, loss=args.loss,
                      gradient_checkpointing=args.grad_ckpt, run_name=f"lever-{int(time.time() * 1000)}")
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
        "workers": args.workers, "loss": args.loss, "grad_ckpt": args.grad_ckpt,
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
