"""core.modeling: the label position of each row, padding, scores in input order whatever the batching,
fast kernels swapped in at run time, config overrides."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtsent.config import PromptConfig
from rtsent.core.modeling import label_logits, last_token_hidden, load_model, next_token_logits, pad_batch
from rtsent.errors import UsageError


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_model(str(tiny_model_dir)).eval()


def test_label_position_is_each_rows_last_real_token(model):
    rows = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    batch = pad_batch(rows, pad_id=0)
    with torch.no_grad():
        logits = next_token_logits(model, **batch)
        hidden = last_token_hidden(model, **batch)
        for i, row in enumerate(rows):  # each row alone, unpadded: the ground truth
            alone = model(torch.tensor([row])).logits[0, -1]
            torch.testing.assert_close(logits[i], alone, rtol=1e-4, atol=1e-4)
        label_ids = torch.tensor([3, 4])
        torch.testing.assert_close(label_logits(model, hidden, label_ids), logits[:, label_ids], rtol=1e-4, atol=1e-4)


def test_pad_batch_masks_and_rounds_up():
    batch = pad_batch([[1, 2, 3], [4]], pad_id=9, multiple=8)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["attention_mask"].sum(-1).tolist() == [3, 1]
    assert batch["input_ids"][1, 1:].eq(9).all()


def test_classifier_scores_rows_in_input_order_whatever_the_batching(tiny_model_dir):
    from conftest import reference_scores

    from rtsent.engines import open_classifier

    clf = open_classifier(str(tiny_model_dir), prompt=PromptConfig(), engine="torch", precision="fp32")
    rows = [[5, 6, 7, 8, 9, 10], [11], [12, 13, 14], [15, 16], [17, 18, 19, 20]]
    expected = reference_scores(tiny_model_dir, rows)  # the model's own forward, one unpadded row at a time
    for batch_size in (1, 2, 5):  # length-sorted batches, padded, written back to each row's place
        np.testing.assert_allclose(clf.scores(rows, batch_size), expected, rtol=0, atol=1e-5)


def test_fast_kernels_are_swapped_at_run_time_and_the_config_keeps_gelu_new(tiny_model_dir):
    from transformers.activations import ACT2FN

    fp32 = load_model(str(tiny_model_dir), compute="fp32", dropout=0.0)
    bf16 = load_model(str(tiny_model_dir), compute="bf16", dropout=None)
    assert fp32.config.activation_function == bf16.config.activation_function == "gelu_new"
    assert type(fp32.transformer.h[0].mlp.act) is type(ACT2FN["gelu_pytorch_tanh"])
    assert type(bf16.transformer.h[0].mlp.act) is type(ACT2FN["gelu"])
    assert fp32.config.resid_pdrop == 0.0 and bf16.config.resid_pdrop == 0.1
    assert fp32.rtsent_restore["resid_pdrop"] == 0.1  # put back before the model is saved
    x = torch.linspace(-8, 8, 20001)
    reference = ACT2FN["gelu_new"](x)
    torch.testing.assert_close(ACT2FN["gelu_pytorch_tanh"](x), reference, rtol=1e-6, atol=1e-6)  # same function
    # exact GELU differs from tanh-GELU by < 5e-4; bf16 alone rounds an activation of 1 by up to 4e-3
    assert (ACT2FN["gelu"](x) - reference).abs().max() < 5e-4


def test_config_overrides_with_indivisible_heads_say_which_to_add(tiny_model_dir):
    with pytest.raises(UsageError, match="add n_head"):
        load_model(str(tiny_model_dir), from_scratch=True, overrides="n_embd=33")
    assert load_model(str(tiny_model_dir), from_scratch=True, overrides="n_embd=48,n_head=3").config.n_embd == 48
