"""LoRA vs full fine-tuning on GPT-2 small (random weights), side by side in one process, rtsent's own
training path (rtsent.train.run) with a step timer.

    python benchmarks/archive/lora.py [--steps 24] [--skip 4] [--rounds 2] [--batch-size 32] [--precision auto]

Runs full, LoRA, full, LoRA, ... (`--rounds` pairs) on Rotten Tomatoes' train split (validation cut to
64 rows so the evaluation at the end costs little). Prints each run's steady-state train examples/s
(the first --skip steps excluded; median step time), trainable parameters, and the LoRA/full ratio,
then a JSON line.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/, for common
from common import DATA, OUT, StepTimer, cpu_description, emit, gpt2_small  # noqa: E402


def small_validation(out: Path) -> Path:
    """RT train and test as they are, validation cut to its first 64 rows."""
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        pq.write_table(pq.read_table(DATA / f"{split}.parquet"), out / f"{split}.parquet")
    pq.write_table(pq.read_table(DATA / "validation.parquet").slice(0, 64), out / "validation.parquet")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--skip", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--precision", default="auto")
    args = ap.parse_args()

    from rtsent import prepare, train
    from rtsent.config import PrepareConfig, TrainConfig
    from rtsent.artifacts.workspace import Workspace

    model = str(gpt2_small())
    ws = Workspace.resolve(tempfile.mkdtemp(prefix="rtsent-lora-bench-", dir=OUT))
    prep = prepare.run(PrepareConfig(data=str(small_validation(OUT / "rt-val64")), model=model), ws)
    import rtsent.train as tr

    timers: list = []

    class TimedTrainer(tr.LabelPositionTrainer):  # the step timer of the run in progress
        def __init__(self, *a, callbacks=None, **kw):
            super().__init__(*a, callbacks=[*(callbacks or []), timers[-1]], **kw)

    tr.LabelPositionTrainer = TimedTrainer
    results: dict[str, list[float]] = {"full": [], "lora": []}
    params: dict[str, tuple[int, int]] = {}
    for round_ in range(args.rounds):
        for kind in ("full", "lora"):
            timer = StepTimer()
            timers.append(timer)
            cfg = TrainConfig(model=model, prepared=str(prep.path), batch_size=args.batch_size, max_steps=args.steps,
                              eval_every=args.steps, precision=args.precision, run_name=f"{kind}-{round_}",
                              lora=kind == "lora", save_limit=1)
            result = train.run(cfg, ws)
            step = statistics.median(timer.steady(args.skip))
            results[kind].append(args.batch_size / step)
            params[kind] = (result.trainable_params, result.total_params)
            print(f"round {round_} {kind}: {args.batch_size / step:.2f} train examples/s (median step {step:.2f} s), "
                  f"trainable {result.trainable_params:,} of {result.total_params:,}", flush=True)
    full, lora = statistics.median(results["full"]), statistics.median(results["lora"])
    print(f"LoRA / full: {lora / full:.2f}x train examples/s")
    emit({"cpu": cpu_description(), "steps": args.steps, "skip": args.skip, "batch_size": args.batch_size,
          "precision": args.precision, "examples_per_s": results, "ratio_lora_over_full": round(lora / full, 3),
          "trainable_params": params})


if __name__ == "__main__":
    main()
