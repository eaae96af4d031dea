"""Unit tests of the small pieces: config validation, prompts, fingerprints, data checks, metrics."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from rtsent.artifacts.cache import clean_stale, fingerprint, publish, staging, write_json
from rtsent.config import PromptConfig, TrainConfig, split_list, unescape
from rtsent.sources.data import label_id
from rtsent.errors import DataError, UsageError
from rtsent.core.calibration import reliability
from rtsent.core.metrics import probability_report
from rtsent.core.modeling import label_logits, last_token_hidden, load_model, load_tokenizer, next_token_logits, pad_batch
from rtsent.core.prompts import PromptEncoder


# --- config -----------------------------------------------------------------------------------

def test_unescape_and_split_keep_spaces():
    assert unescape("{text}\\nSentiment:") == "{text}\nSentiment:"
    assert unescape("a\\\\nb") == "a\\nb"
    assert split_list(" negative, positive") == (" negative", " positive")
    assert split_list("neg,pos") == ("neg", "pos")


@pytest.mark.parametrize("kwargs, fragment", [
    ({"template": "no slot"}, "exactly once"),
    ({"template": "{text} {text}"}, "exactly once"),
    ({"label_words": (" a",)}, "at least two"),
    ({"label_words": (" a", " a")}, "repeats"),
    ({"label_words": (" a", " ")}, "empty word"),
    ({"label_names": ("x",)}, "1 names for 2"),
])
def test_prompt_config_rejects(kwargs, fragment):
    with pytest.raises(UsageError, match=fragment):
        PromptConfig(**kwargs)


def test_prompt_config_defaults_label_names_to_stripped_words():
    assert PromptConfig().label_names == ("negative", "positive")
    assert PromptConfig(label_words=("neg", "pos")).label_names == ("neg", "pos")


def test_one_prompt_comparison_covers_every_field_but_the_names():
    import dataclasses

    from rtsent.config import prompt_from_dict, to_dict

    default = PromptConfig()
    assert default.same_scoring(PromptConfig(label_names=("bad", "good")))  # names only name the classes
    assert not default.same_scoring(PromptConfig(template="{text} Review:"))
    assert not default.same_scoring(PromptConfig(label_words=(" bad", " good")))
    # A field is compared unless it says it changes nothing that is scored, and every field is read back.
    assert [f.name for f in dataclasses.fields(PromptConfig) if not f.metadata["scoring"]] == ["label_names"]
    full = PromptConfig(template="Q: {text}\nA:", label_words=(" no| nope", " yes"), label_names=("n", "y"))
    assert prompt_from_dict(to_dict(full)) == full
    assert prompt_from_dict({"template": full.template, "label_words": list(full.label_words)}) == dataclasses.replace(
        full, label_names=("no", "yes"))


def test_train_config_collects_every_problem():
    with pytest.raises(UsageError) as err:
        TrainConfig(lr=0, loss="mse", save_every=10, run_name="../x")
    message = str(err.value)
    for fragment in ("--lr", "--loss", "--save-every", "--run-name"):
        assert fragment in message
    with pytest.raises(UsageError, match="multiple"):
        TrainConfig(eval_every=4, save_every=6)


# --- prompts ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return load_tokenizer(str(tokenizer_dir))


def test_tokenizer_pads_with_eos_on_the_right(tok):
    assert tok.pad_token_id == tok.eos_token_id and tok.padding_side == "right"


def test_encoder_matches_joint_tokenization_when_it_fits(tok):
    enc = PromptEncoder(PromptConfig(), tok, max_len=64)
    texts = ["a great movie", "the plot is dull ...", "it"]
    joint = [tok(t + "\nSentiment:", add_special_tokens=False)["input_ids"] for t in texts]
    batch = enc.encode(texts)
    assert batch.input_ids == joint and batch.truncated == [False] * 3


def test_encoder_truncates_the_review_never_the_template(tok):
    enc = PromptEncoder(PromptConfig(template="Review: {text}\nSentiment:"), tok, max_len=16)
    long_text = " ".join(["wonderful"] * 50)
    batch = enc.encode([long_text])
    ids = batch.input_ids[0]
    assert len(ids) == 16 and batch.truncated == [True]
    assert ids[-len(enc.suffix_ids):] == enc.suffix_ids
    body = tok("Review: " + long_text, add_special_tokens=False)["input_ids"]
    assert ids[: -len(enc.suffix_ids)] == body[: 16 - len(enc.suffix_ids)]  # the head of the review survives


def test_encoder_label_word_checks(tok):
    ids = PromptEncoder(PromptConfig(), tok, 32).label_ids
    assert [tok.decode([i]) for i in ids] == [" negative", " positive"]  # decoding is the independent inverse
    # A word of several tokens is scored token by token: its tokens are those the tokenizer gives after the prompt.
    words = PromptEncoder(PromptConfig(label_words=(" negative", " wonderfully-terrible")), tok, 32).label_words
    prompt = tok("a film\nSentiment:")["input_ids"]
    assert list(words.classes[1][0]) == tok("a film\nSentiment: wonderfully-terrible")["input_ids"][len(prompt):]
    assert len(words.classes[1][0]) > 1 and words.head_ids is None
    with pytest.raises(UsageError, match="max-len"):
        PromptEncoder(PromptConfig(template="Review of a movie: {text}\nSentiment:"), tok, 3)


# --- modeling ---------------------------------------------------------------------------------

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


# --- cache ------------------------------------------------------------------------------------

def test_fingerprint_is_stable_and_sensitive():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_publish_replaces_atomically_and_staging_cleans_up(ws):
    ws.ensure()
    dest = ws.root / "artifact"
    for content in ("one", "two"):
        with staging(ws, "t") as tmp:
            (tmp / "f").write_text(content)
            publish(tmp, dest)
        assert (dest / "f").read_text() == content
    with pytest.raises(RuntimeError):
        with staging(ws, "t") as tmp:
            raise RuntimeError("build failed")
    assert not tmp.exists()
    assert list(ws.tmp_dir.iterdir()) == []


def test_clean_stale_removes_only_dead_processes_folders(ws):
    ws.ensure()
    dead = ws.tmp_dir / "999999999-prepare-x"
    mine = ws.tmp_dir / f"{os.getpid()}-prepare-y"
    dead.mkdir()
    mine.mkdir()
    clean_stale(ws)
    assert not dead.exists() and mine.exists()


def test_write_json_leaves_no_temp_files(tmp_path):
    write_json(tmp_path / "m.json", {"a": [1, "é"]})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": [1, "é"]}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


# --- data -------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [(0, 0), (1, 1), (1.0, 1), ("positive", 1), ("negative", 0)])
def test_label_id_accepts_ids_and_names(value, expected):
    assert label_id(value, ("negative", "positive"), "row") == expected


@pytest.mark.parametrize("value", [2, -1, 0.5, float("nan"), None, "pos", True])
def test_label_id_rejects_what_is_not_a_class(value):
    with pytest.raises(DataError):
        label_id(value, ("negative", "positive"), "row 3")


# --- metrics ----------------------------------------------------------------------------------

def test_probability_report_by_hand():
    # predictions: [0, 1, 1, 0, 1]; truth: [0, 1, 0, 0, 1]
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])
    report = probability_report(probs, [0, 1, 0, 0, 1], ("neg", "pos"))
    assert report["accuracy"] == pytest.approx(0.8)
    assert report["confusion_matrix"]["rows_true_cols_predicted"] == [[2, 1], [0, 2]]
    assert report["per_class"]["neg"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert report["per_class"]["pos"]["precision"] == pytest.approx(2 / 3)
    assert report["macro_f1"] == pytest.approx(0.8)
    # NLL of the true classes' probabilities 0.9, 0.7, 0.2, 0.6, 0.9
    assert report["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.7, 0.2, 0.6, 0.9])))


def test_ece_zero_when_confidence_matches_accuracy_and_large_when_overconfident():
    probs = np.array([[0.75, 0.25]] * 4)
    assert reliability(probs, np.array([0, 0, 0, 1]), 10)["ece"] == pytest.approx(0.0)
    sure = np.array([[0.99, 0.01]] * 4)
    assert reliability(sure, np.array([1, 1, 0, 1]), 10)["ece"] == pytest.approx(0.99 - 0.25)


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
