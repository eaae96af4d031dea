"""Training-step levers that change how fast a step runs, never what it computes.

Each was kept on an interleaved side-by-side measurement (benchmarks/steps.py, docs/benchmarks.md):

* reused_heap: on glibc, freed memory is reused instead of returned to the kernel, so the 150 MB
  gradient buffers of a step do not page-fault again on every step.
* tied_embedding_rows_into_grad: with tied input/output embeddings, the input embedding's gradient (a
  few hundred rows) is added in place into the output layer's dense one already in `.grad`, instead of
  being scattered into a zeroed 50,257-row matrix and summed with it into a third one.
  (The lever before it, a sparse input-embedding gradient, saved the zeroed matrix but not the sum's
  copy: 2.5 % of a GPT-2-small step slower, benchmarks/steps.py.)
* fold_clipping_into_adamw: gradient-norm clipping through fused AdamW's grad_scale, so the
  gradients are divided inside the optimizer's one pass instead of in a separate pass.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
from typing import Any, Iterator

import torch

from rtsent import compat

# glibc's mallopt parameters (malloc.h) and its defaults for 64-bit Linux.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536


@functools.cache
def _glibc() -> Any | None:
    """The process's own C library when it is glibc (no ctypes.util.find_library: it forks ldconfig)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None)
    # glibc only: musl has mallopt's name but ignores these parameters.
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


@contextlib.contextmanager
def reused_heap() -> Iterator[bool]:
    """Within the block, glibc serves large allocations from its heap and keeps freed memory there.

    glibc hands every allocation over 32 MB out as a fresh mmap and unmaps it on free, so a step's
    gradient-sized tensors page-fault (the kernel zeroes each 4 KB page) on every step. Inside the
    block freed memory stays in the heap for the next allocation; on exit the defaults come back and
    the unused heap is returned to the system (malloc_trim). torch allocates with posix_memalign, whose
    request is a few bytes larger than the block it freed, so not every allocation finds its old
    block; over a training run the faults still fall about fivefold (docs/benchmarks.md).
    Yields whether the setting could be applied (glibc on Linux); elsewhere it does nothing.
    """
    applied = heap_reuse(True)
    try:
        yield applied
    finally:
        if applied:
            heap_reuse(False)
            release_free_memory()


def heap_reuse(on: bool) -> bool:
    """Switch glibc's large-allocation reuse on or off (see reused_heap); False where not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    mmap_max, trim = (0, 2**31 - 1) if on else (DEFAULT_MMAP_MAX, DEFAULT_TRIM_THRESHOLD)
    return bool(libc.mallopt(M_MMAP_MAX, mmap_max) and libc.mallopt(M_TRIM_THRESHOLD, trim))


class _RowsIntoGrad(torch.autograd.Function):
    """An embedding lookup whose backward adds its rows' gradients into the weight's `.grad` in place.

    The weight is handed over inside a tuple, not as a tensor argument, so autograd draws no edge from this
    node to the weight: the weight's gradient from the output layer is stored in `.grad` as soon as the
    backward pass has it (no sum in autograd's input buffer, which for a dense plus a sparse gradient
    allocates a third full-size tensor), and the rows are added into it here, at the end of the pass.
    `anchor` is a scalar that requires grad, so that the lookup's output does even without position
    embeddings; it never receives a gradient.
    """

    @staticmethod
    def forward(ctx: Any, anchor: torch.Tensor, ids: torch.Tensor, holder: tuple[torch.nn.Embedding]) -> torch.Tensor:
        (emb,) = holder
        ctx.save_for_backward(ids)
        ctx.holder = holder
        return torch.nn.functional.embedding(ids, emb.weight.detach(), emb.padding_idx)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, None]:
        (ids,) = ctx.saved_tensors
        (emb,) = ctx.holder
        weight = emb.weight
        ids, rows = ids.reshape(-1), grad.reshape(-1, grad.shape[-1]).to(weight.dtype)
        if emb.padding_idx is not None:  # as the plain lookup: the padding row gets no gradient
            keep = ids != emb.padding_idx
            ids, rows = ids[keep], rows[keep]
        if weight.grad is None:  # the output layer's gradient has not arrived (or there is none)
            weight.grad = torch.zeros_like(weight)
        weight.grad.index_add_(0, ids, rows)
        return None, None, None


def tied_embedding_rows_into_grad(model: Any) -> bool:
    """Make the tied input embedding add its gradient rows into the weight's `.grad` in place (see _RowsIntoGrad).

    Only for an nn.Embedding that shares its trained weight with the output layer, in one process (DDP's
    reducer takes gradients from autograd's accumulation, which this bypasses), without max_norm or
    scale_grad_by_freq. Returns whether it was switched on.
    """
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if not isinstance(emb, torch.nn.Embedding) or head is None or emb.weight is not head.weight:
        return False
    if not emb.weight.requires_grad or emb.max_norm is not None or emb.scale_grad_by_freq or emb.sparse:
        return False
    anchor, holder = torch.zeros((), requires_grad=True), (emb,)
    emb.forward = lambda ids: _RowsIntoGrad.apply(anchor, ids, holder)
    return True


def unwrap_optimizer(optimizer: Any) -> Any:
    """The torch optimizer inside accelerate's AcceleratedOptimizer (or the optimizer itself)."""
    return getattr(optimizer, "optimizer", optimizer)


def can_fold_clipping(optimizer: Any, scaler: Any) -> bool:
    """Fused torch AdamW/Adam without an AMP grad scaler (which uses grad_scale for itself)."""
    inner = unwrap_optimizer(optimizer)
    return (scaler is None and isinstance(inner, torch.optim.Adam | torch.optim.AdamW)
            and all(group.get("fused") for group in inner.param_groups))


def fold_clipping_into_adamw(optimizer: Any, parameters: Any, max_norm: float) -> torch.Tensor:
    """clip_grad_norm_(parameters, max_norm), with the division left to fused AdamW's next step.

    torch's clip multiplies every gradient by min(1, max_norm / (norm + 1e-6)); fused AdamW divides
    every gradient by its `grad_scale` tensor as it reads it. Returns the total norm, as clip_grad_norm_.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads)
    inner = unwrap_optimizer(optimizer)
    if not getattr(inner, "_rtsent_clears_grad_scale", False):  # the division applies to one step only
        inner.register_step_post_hook(lambda opt, args, kwargs: compat.set_grad_scale(opt, None))
        inner._rtsent_clears_grad_scale = True
    compat.set_grad_scale(inner, (1.0 / torch.clamp(max_norm / (norm.float() + 1e-6), max=1.0)).reshape(()))
    return norm


def release_free_memory() -> None:
    """Hand the heap's free pages back to the system (glibc), before a big allocation. (Dropped tensors are
    freed at once: nothing in a Trainer keeps them in a reference cycle, so no gc.collect, which costs
    a test process with many objects ~0.2 s a call.)"""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def resident_bytes() -> int | None:
    """This process's resident set size (Linux /proc/self/statm), None where it cannot be read."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class HeapCeiling:
    """The reused heap, kept near the footprint of the first (longest) step.

    Batches come longest first, so the first step's resident set is what training needs; later steps'
    differently sized tensors do not always fit the holes the last ones left, and a heap that is never trimmed
    grows by gigabytes over an epoch (SmolLM2-135M: 8.9 GB after the first step, 11.2 GB forty steps later).
    When the resident set passes that footprint by more than a fifth (at least `margin`), the heap's free pages
    go back to the system (one malloc_trim; the next steps fault them in again), so the peak stays near the
    first step's. A fifth: a tenth trimmed after most steps (155 times in 134) and trained 11 % slower for
    0.6 GB less (docs/benchmarks.md).
    """

    def __init__(self, margin: int = 256 << 20, share: float = 0.2):
        self.margin = margin
        self.share = share
        self.ceiling: int | None = None
        self.trims = 0

    def after_step(self) -> bool:
        """Call after each optimizer step; True when it gave the free pages back."""
        rss = resident_bytes()
        if rss is None:
            return False
        if self.ceiling is None:
            self.ceiling = rss + max(self.margin, int(rss * self.share))
            return False
        if rss <= self.ceiling:
            return False
        release_free_memory()
        self.trims += 1
        return True
