"""rtsent.training.speed: each training-step lever computes what the plain code computes, and does what it says."""

from __future__ import annotations

import sys

import pytest
import torch


def tiny_gpt2(tied: bool = True, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=97, n_layer=2, n_embd=16, n_head=2, n_positions=32, tie_word_embeddings=tied,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


def batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 97, (6, 9), generator=g)
    ids[:, 3] = 5  # a token repeated in every row: its gradient rows must add up
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    return ids, mask, torch.randint(0, 97, (6,), generator=g)


def loss_of(model, ids, mask, targets):
    from rtsent.core.modeling import next_token_logits

    return torch.nn.functional.cross_entropy(next_token_logits(model, ids, mask), targets)


# --- sparse input-embedding gradient -----------------------------------------------------------

def test_sparse_tied_embedding_grad_is_the_dense_gradient():
    from rtsent.training.speed import sparse_tied_embedding_grad

    dense, sparse = tiny_gpt2(), tiny_gpt2()
    assert sparse_tied_embedding_grad(sparse) and sparse.transformer.wte.sparse
    for model in (dense, sparse):
        loss_of(model, *batch()).backward()
    g_dense, g_sparse = dense.transformer.wte.weight.grad, sparse.transformer.wte.weight.grad
    # Still one dense tensor (what fused AdamW takes), equal to the plain one up to summation order.
    assert not g_sparse.is_sparse and g_sparse.shape == g_dense.shape
    torch.testing.assert_close(g_sparse, g_dense, rtol=1e-5, atol=1e-7)
    for (name, a), b in zip(dense.named_parameters(), sparse.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_sparse_embedding_grad_is_left_off_for_untied_or_frozen_embeddings():
    from rtsent.training.speed import sparse_tied_embedding_grad

    untied = tiny_gpt2(tied=False)
    assert not sparse_tied_embedding_grad(untied) and not untied.transformer.wte.sparse
    frozen = tiny_gpt2()
    frozen.transformer.wte.weight.requires_grad_(False)
    assert not sparse_tied_embedding_grad(frozen) and not frozen.transformer.wte.sparse


# --- clipping folded into fused AdamW --------------------------------------------------------------

def two_steps(max_norm: float, fold: bool, lr: float = 1e-2):
    """Two AdamW steps of a tiny GPT-2 with gradient clipping; the second one always plain."""
    from rtsent.training import speed

    model = tiny_gpt2()
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, fused=True)
    norms = []
    for step in range(2):
        loss_of(model, *batch(seed=step + 1)).backward()
        if fold and step == 0:
            assert speed.can_fold_clipping(opt, scaler=None)
            norms.append(speed.fold_clipping_into_adamw(opt, params, max_norm))
        else:
            norms.append(torch.nn.utils.clip_grad_norm_(params, max_norm))
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step == 0:
            after_first = [p.detach().clone() for p in params]
    return after_first, [p.detach().clone() for p in params], norms


@pytest.mark.parametrize("max_norm", [0.05, 1e6], ids=["clipping", "under-the-norm"])
def test_folded_clipping_steps_like_clip_grad_norm(max_norm):
    plain_first, plain_second, plain_norms = two_steps(max_norm, fold=False)
    fold_first, fold_second, fold_norms = two_steps(max_norm, fold=True)
    torch.testing.assert_close(fold_norms[0], plain_norms[0])
    if max_norm < 1:
        assert plain_norms[0] > 10 * max_norm  # the clip really scaled the gradients down
    for a, b in zip(plain_first, fold_first):  # dividing inside AdamW vs multiplying before: 1 ulp apart
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    # The division applies to its own step only: the next, plain step is the same as the reference's.
    for a, b in zip(plain_second, fold_second):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_clipping_is_not_folded_with_a_grad_scaler_or_an_unfused_optimizer():
    from rtsent.training.speed import can_fold_clipping

    params = list(tiny_gpt2().parameters())
    assert not can_fold_clipping(torch.optim.AdamW(params, foreach=True), scaler=None)
    assert not can_fold_clipping(torch.optim.SGD(params, lr=0.1), scaler=None)
    assert not can_fold_clipping(torch.optim.AdamW(params, fused=True), scaler=object())


# --- reused heap -----------------------------------------------------------------------------------

def faults_of_a_reallocation(libc, size: int = 96 * 2**20) -> int:
    """Minor page faults of malloc + writing `size` bytes right after the same malloc + write + free."""
    import ctypes
    import resource

    libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
    first = libc.malloc(size)
    ctypes.memset(first, 1, size)
    libc.free(first)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    second = libc.malloc(size)
    ctypes.memset(second, 2, size)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    libc.free(second)
    return faults


def heap_probe() -> None:
    """Run in a fresh process: faults of a 96 MB reallocation before, inside and after reused_heap."""
    from rtsent.training import speed

    libc = speed._glibc()
    if libc is None:
        print("not glibc")
        return
    outside = faults_of_a_reallocation(libc)
    with speed.reused_heap() as applied:
        inside = faults_of_a_reallocation(libc)
    after = faults_of_a_reallocation(libc)
    print(applied, outside, inside, after)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_reused_heap_makes_glibc_reuse_a_freed_big_block():
    import inspect
    import subprocess

    # A fresh process: in this one, earlier tests' training leaves big free chunks in the heap, which then
    # serve a 96 MB malloc without a fresh mmap whatever the settings (CI once saw 0 faults "outside").
    # Plain malloc, not torch: torch's posix_memalign asks for a few bytes more than it freed, so whether
    # its block is reused depends on where the heap happens to start (see speed.reused_heap).
    code = "\n".join([inspect.getsource(faults_of_a_reallocation), inspect.getsource(heap_probe), "heap_probe()"])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    if out == ["not", "glibc"]:
        pytest.skip("not glibc")
    applied, (outside, inside, after) = out[0] == "True", map(int, out[1:])
    assert applied
    assert outside >= 96 * 2**20 // 4096 // 2, outside  # by default: a fresh mmap, every page faults again
    assert inside < outside // 100, (inside, outside)
    assert after >= outside // 2, (after, outside)  # the defaults are back once the block ends
