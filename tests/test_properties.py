"""Property-based tests (hypothesis): the prompt builder and predict hold their promises for any text."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import reference_probabilities

from rtsent.config import TEXT_SLOT, PredictConfig, PromptConfig
from rtsent.errors import DataError, UsageError

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any unicode (hypothesis leaves out lone surrogates, which no decoded text can hold), newlines included.
texts = st.text(max_size=300)
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


@pytest.fixture(scope="module")
def classifier(trained):
    from rtsent.engines import open_classifier

    return open_classifier(str(trained[1].model_dir), precision="fp32")


@SETTINGS
@given(text=texts)
def test_predict_on_any_string_gives_a_label_and_probabilities_or_a_clear_error(classifier, text):
    from rtsent import predict

    try:
        cfg = PredictConfig(texts=(text,))
    except UsageError as exc:
        assert not text.strip() and "text 1 is empty" in str(exc)
        return
    (row,) = list(predict.predictions(cfg, classifier))
    assert row["text"] == text
    # The batched scorer against the model's own full forward on the same (possibly truncated) prompt ids.
    (expected,) = reference_probabilities(classifier.name, classifier.encoder.encode([text]).input_ids)
    assert [row["probabilities"][n] for n in ("negative", "positive")] == pytest.approx(expected, abs=1e-4)
    assert row["label"] == ("negative", "positive")[int(expected.argmax())] or abs(expected[0] - expected[1]) < 1e-4


NAMES = ("negative", "positive")
# Each way a label can say "class c" (the expected answer comes from the generator, not from the code) ...
spelled_classes = st.sampled_from([0, 1]).flatmap(lambda c: st.tuples(st.just(c), st.sampled_from(
    [c, float(c), str(c), f" {c} ", f"{c}\n", NAMES[c]])))
# ... and values that are no class of a two-class problem.
not_classes = st.one_of(
    st.none(), st.booleans(), st.integers().filter(lambda v: v not in (0, 1)),
    st.floats(allow_nan=True, allow_infinity=True).filter(lambda v: v not in (0.0, 1.0)),
    st.text(max_size=12).filter(lambda t: t not in NAMES and not t.strip().isdecimal()),
    st.integers(min_value=2, max_value=10**6).map(str))


@SETTINGS
@given(case=spelled_classes)
def test_every_spelling_of_a_class_gives_its_id(case):
    from rtsent.sources.data import label_id

    expected, label = case
    assert label_id(label, NAMES, "train.csv row 0") == expected


@SETTINGS
@given(label=not_classes)
def test_a_value_that_is_no_class_is_a_data_error_naming_the_row(label):
    from rtsent.sources.data import label_id

    with pytest.raises(DataError) as info:
        label_id(label, NAMES, "train.csv row 0")
    assert str(info.value).startswith("train.csv row 0: label ")
