"""Do rtsent.training.speed's step levers compute the same function? Train twice, levers on and off, and compare.

    python benchmarks/archive/same_function.py [--precision fp32|bf16] [--steps 120]

A small from-scratch GPT-2 (n_layer=2, n_embd=64) on Rotten Tomatoes, seed 1, lr 1e-3, evaluated every
60 steps; prints each run's best validation accuracy and the largest difference between the two exported
weight sets. In fp32 the levers only reorder float sums, so the weights stay within ~1e-6; in bf16 any
rounding difference sends training down another path.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/, for common
from accuracy import levers_off  # noqa: E402
from common import DATA, OUT, emit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(OUT / "gpt2-small"), help="folder whose config/tokenizer are used")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--steps", type=int, default=120)
    args = ap.parse_args()

    import shutil
    import time

    from safetensors.torch import load_file

    from rtsent import prepare, train
    from rtsent.config import PrepareConfig, TrainConfig
    from rtsent.artifacts.workspace import Workspace

    ws = Workspace.resolve(str(OUT / "same-function-ws"))
    prep = prepare.run(PrepareConfig(data=str(DATA), model=args.model), ws)
    stamp, runs = int(time.time()), {}
    for variant in ("levers on", "levers off"):
        levers_off(variant == "levers off")
        cfg = TrainConfig(model=args.model, prepared=str(prep.path), from_scratch=True, seed=1, lr=1e-3,
                          config_overrides="n_layer=2,n_embd=64,n_head=2", precision=args.precision,
                          max_steps=args.steps, eval_every=args.steps // 2, onnx=False, plots=False,
                          run_name=f"same-{stamp}-{args.precision}-{variant.split()[1]}")
        res = train.run(cfg, ws)
        runs[variant] = (res.best_accuracy, res.best_step, load_file(str(res.model_dir / "model.safetensors")))
        shutil.rmtree(res.run.dir / "checkpoints", ignore_errors=True)
    levers_off(False)
    on, off = runs["levers on"][2], runs["levers off"][2]
    emit({"precision": args.precision, "steps": args.steps,
          "best": {k: {"validation_accuracy": v[0], "step": v[1]} for k, v in runs.items()},
          "max_abs_weight_difference": max((on[k] - off[k]).abs().max().item() for k in on),
          "max_abs_weight": max(on[k].abs().max().item() for k in on)})


if __name__ == "__main__":
    main()
