"""The prepare stage and the prepared data it writes: cached by fingerprint, what the fingerprint covers,
truncation that keeps the template tail, the file formats, and which dataset "latest" is."""

from __future__ import annotations

import json
import shutil

import pytest

from rtsent import prepare
from rtsent.artifacts.prepared import MANIFEST, find_prepared, load_prepared
from rtsent.config import PrepareConfig, PromptConfig
from rtsent.errors import ArtifactError
from helpers import prep, short_train


def test_prepare_is_cached_by_fingerprint(tiny_model_dir, data_dir, ws):
    cfg = PrepareConfig(data=str(data_dir), model=str(tiny_model_dir), max_len=32)
    first = prepare.run(cfg, ws)
    assert not first.cache_hit and (first.path / MANIFEST).is_file()
    mtime = (first.path / MANIFEST).stat().st_mtime_ns
    second = prepare.run(cfg, ws)
    assert second.cache_hit and second.path == first.path
    assert (first.path / MANIFEST).stat().st_mtime_ns == mtime  # nothing rewritten
    forced = prepare.run(PrepareConfig(data=str(data_dir), model=str(tiny_model_dir), max_len=32, force=True), ws)
    assert not forced.cache_hit and forced.path == first.path
    other = prepare.run(PrepareConfig(data=str(data_dir), model=str(tiny_model_dir), max_len=16), ws)
    assert other.path != first.path
    seed = prepare.run(PrepareConfig(data=str(data_dir), model=str(tiny_model_dir),
                                     prompt=PromptConfig(template="{text} Sentiment: ", label_words=("neg", "pos"))), ws)
    assert seed.path not in (first.path, other.path)
    assert seed.meta.to_dict()["prompt"]["label_words"] == ["neg", "pos"]


def test_prepare_counts_truncation_and_keeps_the_template_tail(tiny_model_dir, data_dir, ws):
    from rtsent.core.modeling import load_tokenizer

    result = prepare.run(PrepareConfig(data=str(data_dir), model=str(tiny_model_dir), max_len=12), ws)
    loaded = load_prepared(result.path)
    dd, manifest = loaded.dataset, loaded.meta.to_dict()
    tok = load_tokenizer(str(tiny_model_dir))
    tail = tok("\nSentiment:", add_special_tokens=False)["input_ids"]
    assert manifest["splits"]["train"]["truncated"] > 0
    assert manifest["splits"]["train"]["length"]["max"] <= 12
    for ids in dd["train"]["input_ids"][:50]:
        assert len(ids) <= 12 and list(ids[-len(tail):]) == tail


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_prepare_reads_csv_and_jsonl(tmp_path, tiny_model_dir, ws, fmt):
    from conftest import write_splits

    folder = write_splits(tmp_path / fmt, fmt=fmt, sizes=(20, 10, 10))
    result = prepare.run(PrepareConfig(data=str(folder), model=str(tiny_model_dir)), ws)
    assert result.meta.splits["train"]["rows"] == 20


def test_a_cache_hit_makes_its_dataset_the_one_train_uses(ws, tiny_model_dir, data_dir):
    """Issue #7, workflows off the happy path (was test_workflows.py, item 1):
    "latest" is the dataset the last prepare named, hit or build."""
    short = prep(ws, tiny_model_dir, data_dir, max_len=16)
    prep(ws, tiny_model_dir, data_dir, max_len=32)
    again = prep(ws, tiny_model_dir, data_dir, max_len=16)
    assert again.cache_hit and again.path == short.path
    result, logs = short_train(ws, tiny_model_dir, run_name="r")
    record = json.loads(result.run.config.read_text())
    assert record["prepared"] == short.meta.fingerprint
    header = next(line for line in logs if line.startswith("training r"))
    assert short.meta.fingerprint in header and "max-len 16" in header and "Review: {text}\\nSentiment:" in header


def test_resume_after_another_prepare_keeps_the_runs_data_or_refuses(ws, tiny_model_dir, data_dir):
    """Issue #7, workflows off the happy path (was test_workflows.py, item 2):
    resume continues on the run's own data."""
    first = prep(ws, tiny_model_dir, data_dir, max_len=16)
    short_train(ws, tiny_model_dir, run_name="r")
    other = prep(ws, tiny_model_dir, data_dir, max_len=32)
    assert find_prepared(ws, None) == other.path
    resumed, logs = short_train(ws, tiny_model_dir, run_name="r", resume=True)
    assert json.loads(resumed.run.config.read_text())["prepared"] == first.meta.fingerprint
    assert any(first.meta.fingerprint in line for line in logs)

    shutil.rmtree(first.path)
    with pytest.raises(ArtifactError, match=r"no longer in .*rtsent prepare --data .* --max-len 16"):
        short_train(ws, tiny_model_dir, run_name="r", resume=True)


def test_same_vocabulary_other_merges_is_another_tokenizer(tokenizer_dir, tmp_path):
    """Issue #7, workflows off the happy path (was test_workflows.py, item 7):
    the tokenizer fingerprint covers what decides the ids."""
    from rtsent.core.modeling import load_tokenizer
    from rtsent.core.prompts import tokenizer_fingerprint

    other = tmp_path / "fewer-merges"
    shutil.copytree(tokenizer_dir, other)
    lines = (other / "merges.txt").read_text().splitlines()
    (other / "merges.txt").write_text("\n".join(lines[: len(lines) // 2]) + "\n")  # same vocab.json
    a, b = load_tokenizer(str(tokenizer_dir)), load_tokenizer(str(other))
    assert a.get_vocab() == b.get_vocab()
    assert a("Great", add_special_tokens=False)["input_ids"] != b("Great", add_special_tokens=False)["input_ids"]
    assert tokenizer_fingerprint(a) != tokenizer_fingerprint(b)
    assert tokenizer_fingerprint(a) == tokenizer_fingerprint(load_tokenizer(str(tokenizer_dir)))


def test_prepare_fingerprint_follows_data_tokenizer_label_names_and_columns(ws, tiny_model_dir, data_dir, tmp_path):
    """Issue #7, workflows off the happy path (was test_workflows.py, item 7):
    the tokenizer fingerprint covers what decides the ids."""
    import pyarrow.parquet as pq

    base = prep(ws, tiny_model_dir, data_dir, max_len=32).meta.fingerprint
    changed = tmp_path / "changed"
    shutil.copytree(data_dir, changed)
    table = pq.read_table(changed / "train.parquet")
    pq.write_table(table.slice(1), changed / "train.parquet")  # one review fewer
    renamed = tmp_path / "renamed"
    shutil.copytree(data_dir, renamed)
    for split in ("train", "validation", "test"):
        t = pq.read_table(renamed / f"{split}.parquet")
        pq.write_table(t.rename_columns(["review", "label"]), renamed / f"{split}.parquet")
    prints = {
        "data": prep(ws, tiny_model_dir, changed, max_len=32),
        "names": prep(ws, tiny_model_dir, data_dir, max_len=32,
                       prompt=PromptConfig(label_names=("bad", "good"))),
        "columns": prep(ws, tiny_model_dir, renamed, max_len=32, text_column="review"),
    }
    for what, result in prints.items():
        assert result.meta.fingerprint != base, what
