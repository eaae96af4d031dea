"""Datasets beyond Rotten Tomatoes: other columns, split mappings, a validation carved from train,
ClassLabel labels matched by name, hub subsets, every spelling of a label value (by example and with hypothesis).
Every dataset here is written by the test (no network)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from rtsent import prepare
from rtsent.cli import app
from rtsent.config import PrepareConfig
from rtsent.errors import DataError, UsageError
from rtsent.sources.data import label_id
from conftest import synthetic_review
from helpers import SETTINGS

runner = CliRunner()
PREFIX, SUFFIX = "Review: ", "\nSentiment:"


def reviews(n_neg: int, n_pos: int, tag: str) -> dict[str, list]:
    """Unique texts (a row tag at the end), negatives first, so each row can be traced after preparing."""
    import random

    rng = random.Random(tag)
    labels = [0] * n_neg + [1] * n_pos
    return {"text": [f"{synthetic_review(rng, y)} {tag}{i}" for i, y in enumerate(labels)], "label": labels}


def imdb_like(folder: Path, n_neg: int = 150, n_pos: int = 50) -> Path:
    """train + test csv, no validation (IMDB's layout), with an imbalanced train split."""
    folder.mkdir(parents=True, exist_ok=True)
    pcsv.write_csv(pa.table(reviews(n_neg, n_pos, "tr")), folder / "train.csv")
    pcsv.write_csv(pa.table(reviews(20, 20, "te")), folder / "test.csv")
    return folder


def texts_of(prepared: Path, split: str, model_dir: Path) -> list[str]:
    """Decode the prepared prompts back to review texts, with the tokenizer itself (not rtsent's encoder)."""
    import datasets
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    rows = datasets.load_from_disk(str(prepared))[split]
    decoded = [tok.decode(ids) for ids in rows["input_ids"]]
    assert all(d.startswith(PREFIX) and d.endswith(SUFFIX) for d in decoded)
    return [d[len(PREFIX): -len(SUFFIX)] for d in decoded]


def run_prepare(ws, model_dir, data, **options):
    return prepare.run(PrepareConfig(data=str(data), model=str(model_dir), max_len=48, **options), ws)


def test_sst2_like_folder_with_other_columns_and_no_test(tmp_path, tiny_model_dir, ws):
    data = tmp_path / "sst2"
    data.mkdir()
    for split, (neg, pos) in {"train": (30, 34), "validation": (8, 9)}.items():
        table = reviews(neg, pos, split)
        pq.write_table(pa.table({"idx": list(range(neg + pos)), "sentence": table["text"], "label": table["label"]}),
                       data / f"{split}.parquet")
    result = run_prepare(ws, tiny_model_dir, data, text_column="sentence")
    manifest = result.meta.to_dict()
    assert manifest["split_plan"] == {"train": "train", "validation": "validation", "test": None}
    assert sorted(manifest["splits"]) == ["train", "validation"]
    assert manifest["splits"]["validation"]["per_class"] == {"negative": 8, "positive": 9}
    assert texts_of(result.path, "validation", tiny_model_dir) == reviews(8, 9, "validation")["text"]


@pytest.mark.parametrize("name", ["dev", "val", "Valid"])
def test_a_dev_or_val_file_is_the_validation_split_not_carved_from_train(tmp_path, tiny_model_dir, ws, name):
    data = tmp_path / "mine"
    data.mkdir()
    for split, (neg, pos) in {"train": (30, 34), name: (8, 9)}.items():
        pq.write_table(pa.table(reviews(neg, pos, split)), data / f"{split}.parquet")
    result = run_prepare(ws, tiny_model_dir, data)
    assert result.meta.split_plan == {"train": "train", "validation": name, "test": None}
    assert result.meta.splits["train"]["rows"] == 64
    assert texts_of(result.path, "validation", tiny_model_dir) == reviews(8, 9, name)["text"]
    pq.write_table(pa.table(reviews(2, 2, "x")), data / "dev2.parquet")  # not a validation name: ignored
    assert run_prepare(ws, tiny_model_dir, data).meta.split_plan["validation"] == name


def test_missing_validation_is_carved_from_train_stratified_and_seeded(tmp_path, tiny_model_dir, ws):
    data = imdb_like(tmp_path / "imdb")
    result = run_prepare(ws, tiny_model_dir, data)
    manifest = result.meta.to_dict()
    assert manifest["split_plan"]["validation"] == {"carved_from": "train", "fraction": 0.1, "seed": 42}
    # round(0.1 x 150) negatives and round(0.1 x 50) positives held out; the rest stays in train
    assert manifest["splits"]["validation"]["per_class"] == {"negative": 15, "positive": 5}
    assert manifest["splits"]["train"]["per_class"] == {"negative": 135, "positive": 45}
    original = reviews(150, 50, "tr")
    label_of = dict(zip(original["text"], original["label"]))
    train, val = texts_of(result.path, "train", tiny_model_dir), texts_of(result.path, "validation", tiny_model_dir)
    assert sorted(train + val) == sorted(original["text"]) and not set(train) & set(val)
    assert Counter(label_of[t] for t in val) == {0: 15, 1: 5}
    assert texts_of(result.path, "test", tiny_model_dir) == reviews(20, 20, "te")["text"]

    again = run_prepare(ws, tiny_model_dir, data)
    assert again.cache_hit and again.meta.fingerprint == manifest["fingerprint"]
    other_seed = run_prepare(ws, tiny_model_dir, data, seed=7)
    assert set(texts_of(other_seed.path, "validation", tiny_model_dir)) != set(val)
    fingerprints = {manifest["fingerprint"], other_seed.meta.fingerprint,
                    run_prepare(ws, tiny_model_dir, data, validation_fraction=0.2).meta.fingerprint,
                    run_prepare(ws, tiny_model_dir, data, splits="validation=test").meta.fingerprint}
    assert len(fingerprints) == 4


def test_split_mapping_uses_test_as_validation(tmp_path, tiny_model_dir, ws):
    data = imdb_like(tmp_path / "imdb")
    result = run_prepare(ws, tiny_model_dir, data, splits="validation=test")
    assert result.meta.split_plan == {"train": "train", "validation": "test", "test": None}
    assert sorted(result.meta.splits) == ["train", "validation"]
    assert texts_of(result.path, "validation", tiny_model_dir) == reviews(20, 20, "te")["text"]
    assert result.meta.splits["train"]["rows"] == 200


def test_split_mapping_with_other_names_and_none(tmp_path, tiny_model_dir, ws):
    data = tmp_path / "named"
    data.mkdir()
    for split, tag in (("fit", "f"), ("dev", "d"), ("test", "t")):
        pcsv.write_csv(pa.table(reviews(10, 10, tag)), data / f"{split}.csv")
    result = run_prepare(ws, tiny_model_dir, data, splits="train=fit,validation=dev,test=none")
    assert result.meta.split_plan == {"train": "fit", "validation": "dev", "test": None}
    assert texts_of(result.path, "validation", tiny_model_dir) == reviews(10, 10, "d")["text"]
    with pytest.raises(DataError, match=r"has no split 'valid' \(--splits validation=valid\); found: dev, fit, test"):
        run_prepare(ws, tiny_model_dir, data, splits="train=fit,validation=valid")
    with pytest.raises(DataError, match="one source split for two roles"):
        run_prepare(ws, tiny_model_dir, data, splits="train=fit,validation=fit")


def saved_classlabel(folder: Path, names: list[str], test_labels: list[int] | None = None) -> Path:
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    splits = {"train": reviews(12, 12, "a"), "validation": reviews(4, 4, "b")}
    if test_labels is not None:
        splits["test"] = {"text": [f"review {i}" for i in range(len(test_labels))], "label": test_labels}
    datasets.DatasetDict({s: datasets.Dataset.from_dict(d, features=features) for s, d in splits.items()}).save_to_disk(str(folder))
    return folder


def test_classlabel_is_matched_by_name_not_by_position(tmp_path, tiny_model_dir, ws):
    import datasets

    # The dataset's class 0 is "positive": by name it is rtsent's class 1 (label words negative, positive).
    data = saved_classlabel(tmp_path / "saved", ["positive", "negative"])
    result = run_prepare(ws, tiny_model_dir, data)
    raw = reviews(12, 12, "a")["label"]
    assert datasets.load_from_disk(str(result.path))["train"]["labels"] == [1 - y for y in raw]
    assert result.meta.splits["train"]["per_class"] == {"negative": 12, "positive": 12}


def test_classlabel_parquet_written_by_datasets_is_matched_by_name(tmp_path, tiny_model_dir, ws):
    import datasets

    data = tmp_path / "pq"
    data.mkdir()
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["pos", "neg"])})
    for split in ("train", "validation"):
        datasets.Dataset.from_dict(reviews(6, 6, split), features=features).to_parquet(str(data / f"{split}.parquet"))
    result = run_prepare(ws, tiny_model_dir, data, prompt=_prompt("neg", "pos"))
    assert datasets.load_from_disk(str(result.path))["validation"]["labels"] == [1] * 6 + [0] * 6


def _prompt(*names: str):
    from rtsent.config import PromptConfig

    return PromptConfig(label_names=names)


def test_classlabel_mismatch_is_one_line_showing_both_lists(tmp_path, tiny_model_dir):
    data = saved_classlabel(tmp_path / "saved", ["bad", "good"])
    # Without --label-words the ClassLabel's names are the classes ...
    result = runner.invoke(app, ["prepare", "--data", str(data), "--model", str(tiny_model_dir),
                                 "--workdir", str(tmp_path / "own")])
    assert result.exit_code == 0, result.output
    manifest = json.loads(next((tmp_path / "own" / "prepared").glob("*/manifest.json")).read_text())
    assert manifest["prompt"]["label_names"] == ["bad", "good"] and manifest["prompt"]["label_words"] == [" bad", " good"]
    # ... and words given for other classes are a one-line mismatch showing both lists.
    result = runner.invoke(app, ["prepare", "--data", str(data), "--model", str(tiny_model_dir),
                                 "--label-words", " negative, positive", "--workdir", str(tmp_path / "ws")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "['bad', 'good']" in lines[0] and "['negative', 'positive']" in lines[0]
    assert "--label-names bad,good" in lines[0]


def test_classlabel_abbreviations_match_the_label_names(tmp_path, tiny_model_dir, ws):
    import datasets

    data = saved_classlabel(tmp_path / "saved", ["pos", "neg"])  # imdb/rotten_tomatoes' names, order swapped
    result = run_prepare(ws, tiny_model_dir, data)
    assert datasets.load_from_disk(str(result.path))["train"]["labels"] == [1 - y for y in reviews(12, 12, "a")["label"]]
    with pytest.raises(DataError, match=r"classes \['pos', 'neg'\] do not match the label names \['bad', 'good'\]"):
        run_prepare(ws, tiny_model_dir, data, prompt=_prompt("bad", "good"))


def test_hidden_test_labels_point_to_dropping_the_split(tmp_path, tiny_model_dir, ws):
    data = saved_classlabel(tmp_path / "saved", ["negative", "positive"], test_labels=[-1, -1])
    with pytest.raises(DataError, match=r"label -1 means 'no label'.*--splits test=none"):
        run_prepare(ws, tiny_model_dir, data)
    assert "test" not in run_prepare(ws, tiny_model_dir, data, splits="test=none").meta.splits


def test_hub_path_passes_the_subset_and_keys_the_cache_on_it(tmp_path, tiny_model_dir, ws, monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(name, subset=None, **kwargs):  # the hub, as datasets.load_dataset answers
        calls.append((name, subset))
        return datasets.DatasetDict({
            "train": datasets.Dataset.from_dict(reviews(10, 10, f"{subset}-tr")),
            "test": datasets.Dataset.from_dict(reviews(5, 5, f"{subset}-te")),
        })

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    first = prepare.run(PrepareConfig(data="someone/reviews", subset="en", model=str(tiny_model_dir), max_len=48), ws)
    second = prepare.run(PrepareConfig(data="someone/reviews", subset="fr", model=str(tiny_model_dir), max_len=48), ws)
    assert calls == [("someone/reviews", "en"), ("someone/reviews", "fr")]
    assert first.meta.subset == "en" and first.meta.fingerprint != second.meta.fingerprint
    assert first.meta.split_plan["validation"]["carved_from"] == "train"


@pytest.mark.parametrize("options, message", [
    (["--splits", "dev=validation"], "--splits takes role=split pairs"),
    (["--splits", "test=a,test=b"], "--splits names test twice"),
    (["--validation-fraction", "1.5"], "--validation-fraction must be between 0 and 1"),
])
def test_bad_split_options_are_usage_errors(tmp_path, options, message):
    result = runner.invoke(app, ["prepare", "--workdir", str(tmp_path), *options])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_subset_with_a_local_folder_is_refused(tmp_path, tiny_model_dir, data_dir, ws):
    with pytest.raises(UsageError, match="--subset sst2 applies to hub datasets only"):
        run_prepare(ws, tiny_model_dir, data_dir, subset="sst2")


def test_too_small_train_cannot_be_carved(tmp_path, tiny_model_dir, ws):
    data = imdb_like(tmp_path / "tiny", n_neg=2, n_pos=2)
    with pytest.raises(DataError, match="too few to carve a validation split"):
        run_prepare(ws, tiny_model_dir, data)
    carved = run_prepare(ws, tiny_model_dir, data, validation_fraction=0.5).meta.splits["validation"]
    assert carved["per_class"] == {"negative": 1, "positive": 1}


def test_a_csv_label_column_of_numbers_and_names_is_read_whole(tmp_path):
    from rtsent.sources.data import build_raw_split, read_raw_file

    review = "a long review of the film " * 8  # ~200 bytes a row: the names come after pyarrow's first 1 MB block
    rows = [f"{review}{i},{i % 2}" for i in range(6000)] + [f"{review}last,positive", f"{review}float,1.0"]
    path = tmp_path / "train.csv"
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    assert path.stat().st_size > 1_100_000
    split = build_raw_split(read_raw_file(path), "train", "text", "label", ("negative", "positive"), str(path))
    assert len(split.texts) == 6002 and split.labels[:4] == [0, 1, 0, 1] and split.labels[-2:] == [1, 1]
    assert split.texts[-1] == review + "float"


def test_prepare_reads_each_split_once_when_it_takes_the_classes_from_the_data(tmp_path, tiny_model_dir, ws,
                                                                               monkeypatch):
    from rtsent.sources.data import FolderSource

    data = tmp_path / "named"
    data.mkdir()
    for split in ("train", "validation", "test"):
        table = reviews(5, 5, split)
        names = ["awful" if y == 0 else "great" for y in table["label"]]
        pq.write_table(pa.table({"text": table["text"], "label": names}), data / f"{split}.parquet")
    reads = []
    read = FolderSource._read
    monkeypatch.setattr(FolderSource, "_read", lambda self, split: reads.append(split) or read(self, split))
    result = run_prepare(ws, tiny_model_dir, data)
    assert result.meta.prompt.label_names == ("awful", "great")  # the classes came from train's labels ...
    assert sorted(reads) == ["test", "train", "validation"]  # ... and train was read once all the same
    assert {s: info["per_class"] for s, info in result.meta.splits.items()} == {
        s: {"awful": 5, "great": 5} for s in ("train", "validation", "test")}


@pytest.mark.parametrize("value, expected", [(0, 0), (1, 1), (1.0, 1), ("positive", 1), ("negative", 0), ("pos", 1),
                                             ("Negative", 0), (" POSITIVE ", 1), ("n", 0)])
def test_label_id_accepts_ids_and_names(value, expected):
    assert label_id(value, ("negative", "positive"), "row") == expected


@pytest.mark.parametrize("value", [2, -1, 0.5, float("nan"), None, "positively", "", " ", "neutral", True])
def test_label_id_rejects_what_is_not_a_class(value):
    with pytest.raises(DataError):
        label_id(value, ("negative", "positive"), "row 3")


NAMES = ("negative", "positive")


# Each way a label can say "class c" (the expected answer comes from the generator, not from the code) ...
spelled_classes = st.sampled_from([0, 1]).flatmap(lambda c: st.tuples(st.just(c), st.sampled_from(
    [c, float(c), str(c), f" {c} ", f"{c}\n", NAMES[c], NAMES[c].upper(), f" {NAMES[c].title()} ", NAMES[c][:3]])))


# ... and values that are no class of a two-class problem.
not_classes = st.one_of(
    st.none(), st.booleans(), st.integers().filter(lambda v: v not in (0, 1)),
    st.floats(allow_nan=True, allow_infinity=True).filter(lambda v: v not in (0.0, 1.0)),
    st.text(max_size=12).filter(lambda t: not t.strip().isdecimal() and not (  # nor a name's spelling or abbreviation
        t.strip() and any(n.startswith(t.strip().lower()) for n in NAMES))),
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
