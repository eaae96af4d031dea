"""End to end on tiny data: the four stages, their artifacts, and the cache."""

from __future__ import annotations

import json

import pytest

from rtsent import evaluate, predict, prepare
from rtsent.config import EvaluateConfig, PredictConfig, PrepareConfig, PromptConfig
from rtsent.artifacts.prepared import MANIFEST, load_prepared
from rtsent.artifacts.model import META_FILE


def test_trained_run_exports_a_standalone_model_that_learned(trained):
    space, result = trained
    model = result.model_dir
    for name in ("config.json", "model.safetensors", "tokenizer.json", META_FILE):
        assert (model / name).is_file(), name
    meta = json.loads((model / META_FILE).read_text())
    assert meta["prompt"]["template"] == "{text}\nSentiment:"
    assert meta["prompt"]["label_words"] == [" negative", " positive"]
    # The Trainer's evaluation chose the best step; rescoring the export through evaluate's own path agrees.
    rescored = evaluate.run(EvaluateConfig(model=str(model), precision="fp32", output=str(model.parent / "re.json")),
                            space)
    assert meta["best"]["validation_accuracy"] == rescored["accuracy"]
    # The synthetic sentiment words make the task easy: a model that trains at the label position learns it.
    assert result.best_accuracy >= 0.9
    checkpoints = list((result.run.checkpoints).glob("checkpoint-*"))
    assert 1 <= len(checkpoints) <= 2
    lines = [json.loads(line) for line in result.run.metrics.read_text().splitlines()]
    assert any("eval_accuracy" in line for line in lines) and any("loss" in line for line in lines)


def test_evaluate_reports_metrics_and_writes_json(trained, data_dir):
    space, result = trained
    report = evaluate.run(EvaluateConfig(), space)  # default: the latest run's model
    assert report["model"] == str(result.model_dir)
    assert report["examples"] == 64
    assert report["accuracy"] >= 0.9
    import pyarrow.parquet as pq
    from conftest import reference_scores

    validation = pq.read_table(data_dir / "validation.parquet").to_pydict()
    prompts = [t + "\nSentiment:" for t in validation["text"]]  # short enough for max-len 32 (no truncation)
    pred = reference_scores(result.model_dir, prompts).argmax(1)
    truth = validation["label"]
    assert report["confusion_matrix"]["rows_true_cols_predicted"] == [
        [sum(1 for t, p in zip(truth, pred) if (t, p) == (i, j)) for j in (0, 1)] for i in (0, 1)]
    assert report["accuracy"] == sum(int(t == p) for t, p in zip(truth, pred)) / 64
    written = json.loads((result.model_dir / "eval-validation.json").read_text())  # what the file on disk says
    assert written["accuracy"] == sum(int(t == p) for t, p in zip(truth, pred)) / 64


def test_predict_labels_and_probabilities(trained, capsys):
    space, result = trained
    rows = list(predict.predictions(
        PredictConfig(texts=("a brilliant and wonderful film", "a dull and tedious plot")),
        predict.open_classifier(str(result.model_dir), precision="fp32"),
    ))
    assert [r["label"] for r in rows] == ["positive", "negative"]
    from conftest import reference_probabilities

    expected = reference_probabilities(result.model_dir, [r["text"] + "\nSentiment:" for r in rows])
    for row, probs in zip(rows, expected):
        assert [row["probabilities"]["negative"], row["probabilities"]["positive"]] == pytest.approx(probs, abs=1e-4)
        assert row["probability"] == pytest.approx(probs.max(), abs=1e-4)


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

    result = prepare.run(PrepareConfig(data=str(data_dir), model=str(tiny_model_dir), max_len=8), ws)
    loaded = load_prepared(result.path)
    dd, manifest = loaded.dataset, loaded.meta.to_dict()
    tok = load_tokenizer(str(tiny_model_dir))
    tail = tok("\nSentiment:", add_special_tokens=False)["input_ids"]
    assert manifest["splits"]["train"]["truncated"] > 0
    assert manifest["splits"]["train"]["length"]["max"] <= 8
    for ids in dd["train"]["input_ids"][:50]:
        assert len(ids) <= 8 and list(ids[-len(tail):]) == tail


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_prepare_reads_csv_and_jsonl(tmp_path, tiny_model_dir, ws, fmt):
    from conftest import write_splits

    folder = write_splits(tmp_path / fmt, fmt=fmt, sizes=(20, 10, 10))
    result = prepare.run(PrepareConfig(data=str(folder), model=str(tiny_model_dir)), ws)
    assert result.meta.splits["train"]["rows"] == 20
