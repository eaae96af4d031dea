"""rtsent.training.speed: each training-step lever computes what the plain code computes, and does what it says."""

from __future__ import annotations

import sys

import pytest

from rtsent.training import speed
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


# --- tied input-embedding gradient rows added in place ---------------------------------------------

def tiny_llama(seed: int = 0, padding_idx: int | None = None):
    """Tied embeddings and no position embeddings: the lookup's output is the only path to the rows."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=97, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=32, tie_word_embeddings=True,
                         pad_token_id=padding_idx)
    return LlamaForCausalLM(config)


def grads_after(model, batches, rows_lever: bool, autocast: bool = False):
    """Parameter gradients accumulated over the batches' backward passes (as micro-batches do)."""
    from rtsent.training.speed import tied_embedding_rows_into_grad

    if rows_lever:
        assert tied_embedding_rows_into_grad(model) and "forward" in vars(model.get_input_embeddings())
    for b in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = loss_of(model, *b)
        loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("make", [tiny_gpt2, tiny_llama, lambda: tiny_llama(padding_idx=5)],
                         ids=["gpt2", "llama-no-position-embeddings", "llama-padding-idx"])
@pytest.mark.parametrize("micro_batches", [1, 2])
def test_rows_into_grad_is_the_plain_gradient(make, micro_batches):
    """The plain model's autograd is the reference: every parameter's gradient, the tied one included, is
    the same, for one backward pass and for two accumulated ones."""
    batches = [batch(seed) for seed in range(1, 1 + micro_batches)]
    plain, lever = grads_after(make(), batches, False), grads_after(make(), batches, True)
    for name, g in plain.items():
        assert not lever[name].is_sparse
        torch.testing.assert_close(lever[name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_rows_into_grad_under_bf16_autocast():
    plain, lever = grads_after(tiny_gpt2(), [batch()], False, True), grads_after(tiny_gpt2(), [batch()], True, True)
    for name, g in plain.items():
        torch.testing.assert_close(lever[name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_rows_into_grad_with_gradient_checkpointing():
    """The recipe's --gradient-checkpointing re-runs each block's forward in the backward pass."""
    def checkpointed():
        model = tiny_gpt2()
        model.gradient_checkpointing_enable()
        model.train()
        return model

    plain, lever = grads_after(checkpointed(), [batch()], False), grads_after(checkpointed(), [batch()], True)
    for name, g in plain.items():
        torch.testing.assert_close(lever[name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_rows_into_grad_is_left_off_for_untied_or_frozen_embeddings():
    from rtsent.training.speed import tied_embedding_rows_into_grad

    untied = tiny_gpt2(tied=False)
    assert not tied_embedding_rows_into_grad(untied) and "forward" not in vars(untied.transformer.wte)
    frozen = tiny_gpt2()
    frozen.transformer.wte.weight.requires_grad_(False)
    assert not tied_embedding_rows_into_grad(frozen) and "forward" not in vars(frozen.transformer.wte)


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


def test_heap_ceiling_trims_only_past_the_first_steps_footprint(monkeypatch):
    """The first step's resident set (plus the margin) is the ceiling; a step that ends above it gives the free
    pages back (malloc_trim), one that ends below does not."""
    sizes = iter([1000, 1100, 1300, 900, 1201])
    trims = []
    monkeypatch.setattr(speed, "resident_bytes", lambda: next(sizes))
    monkeypatch.setattr(speed, "release_free_memory", lambda: trims.append(True))
    ceiling = speed.HeapCeiling(margin=200, share=0.1)  # the margin: 200 > a tenth of 1000
    assert [ceiling.after_step() for _ in range(5)] == [False, False, True, False, True]
    assert ceiling.ceiling == 1200 and ceiling.trims == 2 and len(trims) == 2
    sizes = iter([1000, 1250, 1300])
    share = speed.HeapCeiling(margin=200, share=0.3)  # a share of the first footprint: 300 > 200
    assert [share.after_step() for _ in range(3)] == [False, False, False] and share.ceiling == 1300


def test_resident_bytes_sees_an_allocation():
    before = speed.resident_bytes()
    if before is None:
        pytest.skip("no /proc/self/statm here")
    block = bytearray(64 << 20)  # 64 MB, touched
    block[::4096] = b"x" * len(block[::4096])
    assert speed.resident_bytes() - before > 48 << 20
