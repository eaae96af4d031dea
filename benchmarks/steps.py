"""One training step, several ways, interleaved in one process: which levers make a step cheaper?

    python benchmarks/steps.py [--rounds 4] [--steps 3] [--variants autocast,master,...]

Every variant owns its own GPT-2-small model (random weights, rtsent's load_model: exact GELU in
bf16, dropout 0, eager attention) and optimizer, and trains on the same batches of 32 Rotten Tomatoes
prompts (length-grouped, as rtsent's sampler groups them) with the seed objective (full-vocabulary
cross-entropy at the label position). Variants run in turn, `--steps` steps each, for `--rounds`
rounds; the first round is warm-up. Reports the median step per variant (examples/s) as JSON.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, OUT, emit  # noqa: E402

LR, WD, CLIP = 5e-5, 0.01, 1.0


def batches(model_dir: str, n: int, batch_size: int, seed: int = 0):
    from rtsent import prepare
    from rtsent.artifacts.prepared import load_prepared
    from rtsent.config import PrepareConfig
    from rtsent.core.modeling import load_tokenizer, pad_batch
    from rtsent.training.trainer import SeededLengthSampler
    from rtsent.artifacts.workspace import Workspace

    import torch

    ws = Workspace.resolve(str(OUT / "ws"))
    prep = prepare.run(PrepareConfig(data=str(DATA), model=model_dir), ws)
    train = load_prepared(prep.path, ws).dataset["train"]
    order = list(SeededLengthSampler(list(train["length"]), batch_size, seed))
    groups = [order[i:i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
    # n batches at evenly spaced quantiles of batch length: the epoch's mix of short and long batches
    groups.sort(key=lambda rows: max(train[i]["length"] for i in rows))
    picked = [groups[round((k + 0.5) * len(groups) / n)] for k in range(n)]
    pad = load_tokenizer(model_dir).pad_token_id
    out = []
    for rows in picked:
        b = pad_batch([train[i]["input_ids"] for i in rows], pad)
        b["labels"] = torch.tensor([train[i]["labels"] for i in rows])
        out.append(b)
    return out, prep.meta.label_words.head_ids


class Variant:
    """One way of making a step; `levers` names what differs from rtsent's method before #12:

    heap    glibc keeps freed memory for reuse (rtsent.training.speed.reused_heap)
    sparse  sparse input-embedding gradient, summed by autograd with the tied head's (the #12 lever)
    rows    input-embedding gradient rows added into the tied weight's .grad in place
            (speed.tied_embedding_rows_into_grad, which replaced `sparse` in #19)
    fold    clipping folded into fused AdamW's grad_scale (speed.fold_clipping_into_adamw)
    master  bf16 weights in the model, fp32 master weights and AdamW state in the optimizer
    frozen  token and position embeddings frozen (changes what is trained)
    fp32    no bf16 autocast: the step `--precision auto` takes on CPUs without native bf16 (AVX2 only)
    shadow  (with heap, rows, fold) the Conv1D matrices as bf16 shadows of fp32 master weights kept in flat
            buffers with their AdamW moments, all updated by one torch.compile'd kernel (class Shadow)
    """

    def __init__(self, model_dir: str, label_ids: list[int], levers: set[str]):
        import torch

        from rtsent.training import speed
        from rtsent.core.modeling import load_model

        self.levers = levers
        self.model = load_model(model_dir, dtype=torch.float32, compute="fp32" if "fp32" in levers else "bf16",
                                dropout=0.0, attn="eager")
        self.model.train()
        for name, p in self.model.named_parameters():
            if "frozen" in levers and ("wte" in name or "wpe" in name):
                p.requires_grad_(False)
        if "sparse" in levers:
            self.model.get_input_embeddings().sparse = True
        if "rows" in levers:
            assert speed.tied_embedding_rows_into_grad(self.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if "master" in levers:  # fp32 copies first, then the model goes bf16
            self.master = [p.detach().clone() for p in self.params]
            self.grad32 = [torch.empty_like(m) for m in self.master]
            self.model.to(torch.bfloat16)
            self.opt = torch.optim.AdamW(self.master, lr=LR, weight_decay=WD, fused=True)
        else:
            self.opt = torch.optim.AdamW(self.params, lr=LR, weight_decay=WD, fused=True)
        self.label_ids = torch.tensor(label_ids)

    def loss(self, batch):
        import contextlib

        import torch
        import torch.nn.functional as F

        from rtsent.core.modeling import next_token_logits

        plain = "master" in self.levers or "fp32" in self.levers
        ctx = contextlib.nullcontext() if plain else torch.autocast("cpu", dtype=torch.bfloat16)
        with ctx:
            logits = next_token_logits(self.model, batch["input_ids"], batch["attention_mask"]).float()
        return F.cross_entropy(logits, self.label_ids[batch["labels"]])

    def step(self, batch) -> float:
        from rtsent.training import speed

        # rtsent holds reused_heap over the whole training; here it is switched per variant without the
        # trim at the end of the block (which would hand the memory back and make it fault again)
        speed.heap_reuse("heap" in self.levers)
        loss = self.loss(batch)
        loss.backward()
        self.update()
        self.opt.zero_grad(set_to_none=True)
        for p in self.params:
            p.grad = None
        return float(loss.detach())

    def update(self) -> None:
        import torch

        from rtsent.training import speed

        if "master" in self.levers:
            torch.nn.utils.clip_grad_norm_(self.params, CLIP)
            torch._foreach_copy_(self.grad32, [p.grad for p in self.params])
            for m, g in zip(self.master, self.grad32):
                m.grad = g
            self.opt.step()
            torch._foreach_copy_([p.data for p in self.params], self.master)
        elif "fold" in self.levers:
            speed.fold_clipping_into_adamw(self.opt, self.params, CLIP)
            self.opt.step()
        else:
            torch.nn.utils.clip_grad_norm_(self.params, CLIP)
            self.opt.step()


B1, B2, EPS = 0.9, 0.999, 1e-8


def _shadow_update(master, g16, m, v, out16, lr, step, scale):
    """AdamW on the flat fp32 master weights from bf16 gradients, writing the bf16 shadow; one compiled kernel."""
    g = g16.float() * scale
    master.mul_(1 - lr * WD)
    m.lerp_(g, 1 - B1)
    v.mul_(B2).addcmul_(g, g, value=1 - B2)
    denom = (v.sqrt() / (1 - B2 ** step).sqrt()).add_(EPS)
    master.addcdiv_(m, denom, value=-1.0 * lr / (1 - B1 ** step))
    out16.copy_(master)
    g16.zero_()


class Shadow(Variant):
    """heap+rows+fold, with the Conv1D matrices (85 M of GPT-2 small's 124 M) as bf16 tensors in the model:
    the values autocast would cast them to, so the forward skips those casts and the backward writes bf16
    gradients into preassigned views of one flat buffer; the rest keeps fused AdamW."""

    def __init__(self, model_dir: str, label_ids: list[int], levers: set[str]):
        import torch
        from transformers.pytorch_utils import Conv1D

        super().__init__(model_dir, label_ids, levers - {"shadow"})
        self.levers = levers
        conv = [m.weight for m in self.model.modules() if isinstance(m, Conv1D)]
        n = sum(p.numel() for p in conv)
        self.master, self.m, self.v = torch.empty(n), torch.zeros(n), torch.zeros(n)
        self.flat16, self.g16 = torch.empty(n, dtype=torch.bfloat16), torch.zeros(n, dtype=torch.bfloat16)
        offset = 0
        for p in conv:
            k = p.numel()
            self.master[offset:offset + k].copy_(p.data.view(-1))
            p.data = self.flat16[offset:offset + k].view_as(p)
            p.grad = self.g16[offset:offset + k].view_as(p)  # autograd accumulates into it in place
            offset += k
        self.flat16.copy_(self.master)
        ids = {id(p) for p in conv}
        self.others = [p for p in self.params if id(p) not in ids]
        self.opt = torch.optim.AdamW(self.others, lr=LR, weight_decay=WD, fused=True)
        self.t = 0
        self.update_kernel = torch.compile(_shadow_update, dynamic=False)

    def step(self, batch) -> float:
        import torch

        from rtsent import compat
        from rtsent.training import speed

        speed.heap_reuse(True)
        loss = self.loss(batch)
        loss.backward()
        self.t += 1
        grads = [p.grad for p in self.others if p.grad is not None]
        norm2 = torch.nn.utils.get_total_norm(grads).float() ** 2 + torch.linalg.vector_norm(self.g16, dtype=torch.float32) ** 2
        scale = torch.clamp(CLIP / (norm2.sqrt() + 1e-6), max=1.0)
        compat.set_grad_scale(self.opt, (1.0 / scale).reshape(()))
        self.opt.step()
        compat.set_grad_scale(self.opt, None)
        started = time.perf_counter()
        self.update_kernel(self.master, self.g16, self.m, self.v, self.flat16, torch.tensor(LR), torch.tensor(float(self.t)), scale)
        if self.t == 1:
            print(f"shadow: first update (compiles) {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        for p in self.others:
            p.grad = None
        return float(loss.detach())


LEVERS = {"heap", "sparse", "rows", "fold", "master", "frozen", "shadow", "fp32"}


def levers(name: str) -> set[str]:
    """A variant's levers from its name: `before` (none) or levers joined by '+', e.g. heap+rows+fold."""
    chosen = set() if name == "before" else set(name.split("+"))
    if chosen - LEVERS:
        raise SystemExit(f"unknown lever(s) {sorted(chosen - LEVERS)} in {name!r}; known: before, {sorted(LEVERS)}")
    return chosen


def profile(v: "Variant", data) -> None:
    import torch.profiler as tp

    for b in data:
        v.step(b)
    with tp.profile(activities=[tp.ProfilerActivity.CPU]) as prof:
        for b in data:
            v.step(b)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
    (OUT / f"profile-steps-{'+'.join(sorted(v.levers)) or 'before'}.txt").write_text(table)
    print(table)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(OUT / "gpt2-small"))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--variants", default="before,heap,heap+sparse+fold,heap+rows+fold,heap+sparse+master")
    ap.add_argument("--profile", default=None, help="a variant to profile over --steps steady steps")
    args = ap.parse_args()
    import torch

    data, label_ids = batches(args.model, args.steps, args.batch_size)
    chosen = args.variants.split(",")
    if args.profile:
        return profile(Variant(args.model, label_ids, levers(args.profile)), data)
    runs = {name: (Shadow if "shadow" in levers(name) else Variant)(args.model, label_ids, levers(name))
            for name in chosen}
    times: dict[str, list[float]] = {name: [] for name in chosen}
    losses: dict[str, list[float]] = {name: [] for name in chosen}
    for r in range(args.rounds):
        for name, v in runs.items():
            for b in data:
                t = time.perf_counter()
                losses[name].append(v.step(b))
                if r:
                    times[name].append(time.perf_counter() - t)
        print(f"round {r}: " + ", ".join(f"{n} {statistics.median(t) if t else 0:.3f}s" for n, t in times.items()),
              file=sys.stderr, flush=True)
    tokens = sum(int(b["attention_mask"].sum()) for b in data) / len(data)
    base = statistics.median(times[chosen[0]])
    out = {"batch_size": args.batch_size, "mean_tokens_per_example": round(tokens / args.batch_size, 1),
           "threads": torch.get_num_threads(), "variants": {}}
    for name in chosen:
        med = statistics.median(times[name])
        out["variants"][name] = {"levers": sorted(levers(name)), "step_s": round(med, 3),
                                 "examples_per_s": round(args.batch_size / med, 2),
                                 "vs_first": round(base / med, 3), "last_losses": [round(x, 4) for x in losses[name][-3:]]}
    emit(out)


if __name__ == "__main__":
    main()
