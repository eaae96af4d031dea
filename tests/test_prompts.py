"""Prompts: the config that describes them (templates, escapes, label words) and the encoder that turns
reviews into prompt ids, by example and property-based (hypothesis) for any text and template."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from rtsent.config import TEXT_SLOT, PromptConfig, split_list, unescape
from rtsent.core.modeling import load_tokenizer
from rtsent.core.prompts import PromptEncoder
from rtsent.errors import UsageError
from helpers import SETTINGS, default_prompt, texts


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


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return load_tokenizer(str(tokenizer_dir))


def test_tokenizer_pads_with_eos_on_the_right(tok):
    assert tok.pad_token_id == tok.eos_token_id and tok.padding_side == "right"


def test_encoder_matches_joint_tokenization_when_it_fits(tok):
    enc = PromptEncoder(PromptConfig(), tok, max_len=64)
    texts = ["a great movie", "the plot is dull ...", "it"]
    joint = [tok(default_prompt(t), add_special_tokens=False)["input_ids"] for t in texts]
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


template_parts = st.text(max_size=24).filter(lambda s: "{" not in s and "}" not in s)


templates = st.builds(lambda pre, post: pre + TEXT_SLOT + post, template_parts, template_parts)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from rtsent.core.modeling import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@SETTINGS
@given(text=texts, template=templates, others=st.lists(texts, max_size=3), max_len=st.integers(2, 48))
def test_prompt_keeps_the_template_tail_fits_max_len_and_ends_at_the_label_position(tokenizer, text, template,
                                                                                     others, max_len):
    from rtsent.core.modeling import pad_batch
    from rtsent.core.prompts import PromptEncoder

    assume(text.strip())
    try:
        encoder = PromptEncoder(PromptConfig(template=template), tokenizer, max_len)
    except UsageError as exc:  # only when the template alone does not fit
        assert f"--max-len {max_len} leaves no room" in str(exc)
        return
    batch = [text] + [t for t in others if t.strip()]
    ids = encoder.encode(batch).input_ids
    for row in ids:
        assert 1 <= len(row) <= max_len
        if encoder.suffix_ids:
            assert row[-len(encoder.suffix_ids):] == encoder.suffix_ids
    # Right padding, built by hand: each row, then pad ids; the mask marks exactly the row's own tokens.
    padded = pad_batch(ids, tokenizer.pad_token_id)
    width = max(len(r) for r in ids)
    for i, row in enumerate(ids):
        assert padded["input_ids"][i].tolist() == row + [tokenizer.pad_token_id] * (width - len(row))
        assert padded["attention_mask"][i].tolist() == [1] * len(row) + [0] * (width - len(row))


@SETTINGS
@given(text=texts)
def test_untruncated_prompt_is_the_review_between_prefix_and_suffix(tokenizer, text):
    from rtsent.core.prompts import PromptEncoder

    assume(text.strip())
    encoder = PromptEncoder(PromptConfig(template="Review: {text}\nSentiment:"), tokenizer, 4096)
    (row,) = encoder.encode([text]).input_ids
    assert tokenizer.decode(row) == f"Review: {text}\nSentiment:"
