"""Workflows off the happy path (issue #7): each test here failed on the code before its fix."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import reference_scores

from rtsent.artifacts.prepared import find_prepared
from rtsent import evaluate, prepare, train
from rtsent.cli import app
from rtsent.config import EvaluateConfig, PrepareConfig, PromptConfig, TrainConfig
from rtsent.errors import ArtifactError

runner = CliRunner()


def _prep(ws, model, data, **kw):
    return prepare.run(PrepareConfig(data=str(data), model=str(model), **kw), ws)


def _train(ws, model, **kw):
    kw = {"lr": 1e-3, "batch_size": 16, "max_steps": 2, "eval_every": 2, "precision": "fp32", "warmup": 0.0, **kw}
    logs: list[str] = []
    return train.run(TrainConfig(model=str(model), **kw), ws, log=logs.append), logs


# 1. "latest" is the dataset the last prepare named, hit or build ----------------------------------

def test_a_cache_hit_makes_its_dataset_the_one_train_uses(ws, tiny_model_dir, data_dir):
    short = _prep(ws, tiny_model_dir, data_dir, max_len=16)
    _prep(ws, tiny_model_dir, data_dir, max_len=32)
    again = _prep(ws, tiny_model_dir, data_dir, max_len=16)
    assert again.cache_hit and again.path == short.path
    result, logs = _train(ws, tiny_model_dir, run_name="r")
    record = json.loads(result.run.config.read_text())
    assert record["prepared"] == short.meta.fingerprint
    header = next(line for line in logs if line.startswith("training r"))
    assert short.meta.fingerprint in header and "max-len 16" in header and "{text}\\nSentiment:" in header


# 2. resume continues on the run's own data -------------------------------------------------------

def test_resume_after_another_prepare_keeps_the_runs_data_or_refuses(ws, tiny_model_dir, data_dir):
    first = _prep(ws, tiny_model_dir, data_dir, max_len=16)
    _train(ws, tiny_model_dir, run_name="r")
    other = _prep(ws, tiny_model_dir, data_dir, max_len=32)
    assert find_prepared(ws, None) == other.path
    resumed, logs = _train(ws, tiny_model_dir, run_name="r", resume=True)
    assert json.loads(resumed.run.config.read_text())["prepared"] == first.meta.fingerprint
    assert any(first.meta.fingerprint in line for line in logs)

    shutil.rmtree(first.path)
    with pytest.raises(ArtifactError, match=r"no longer in .*rtsent prepare --data .* --max-len 16"):
        _train(ws, tiny_model_dir, run_name="r", resume=True)


# 3. evaluate never writes into a model folder rtsent did not make -----------------------------------

def test_zero_shot_report_goes_under_the_workspace(ws, tiny_model_dir, data_dir, tmp_path):
    model = tmp_path / "users-model"
    shutil.copytree(tiny_model_dir, model)
    before = sorted(p.name for p in model.iterdir())
    _prep(ws, model, data_dir, max_len=32)
    report = evaluate.run(EvaluateConfig(model=str(model), prompt=PromptConfig()), ws)
    assert sorted(p.name for p in model.iterdir()) == before
    written = ws.evals_dir / report["written_to"].split("/evals/")[1]
    # The file under evals/ holds this model's figures: the accuracy of its own forward on the split.
    import pyarrow.parquet as pq

    table = pq.read_table(data_dir / "validation.parquet").to_pydict()
    pred = reference_scores(model, [t + "\nSentiment:" for t in table["text"]]).argmax(1)
    expected = float((pred == np.array(table["label"])).mean())
    assert written.is_file() and json.loads(written.read_text())["accuracy"] == pytest.approx(expected)
    assert json.loads(written.read_text())["model"] == str(model)


# 4. predict keeps one output row per input row, and carries columns ------------------------------------

@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_predict_file_rows_stay_aligned_with_ids(trained, tmp_path, fmt):
    import pyarrow as pa

    space, result = trained
    table = pa.table({"id": ["a", "b", "c"], "text": ["a brilliant film", "", "a dull plot"]})
    path = tmp_path / f"in.{fmt}"
    if fmt == "csv":
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, path)
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
    out = runner.invoke(app, ["predict", "--file", str(path), "--model", str(result.model_dir), "--keep-columns", "id",
                              "--format", "jsonl"])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["id"], r["text"], r["label"]) for r in rows] == [
        ("a", "a brilliant film", "positive"), ("b", "", None), ("c", "a dull plot", "negative")]
    assert rows[1]["error"] == "empty text"


def test_predict_csv_output_has_a_row_for_a_blank_line(trained, tmp_path):
    import csv
    import io

    space, result = trained
    path = tmp_path / "in.txt"
    path.write_text("a brilliant film\n\na dull plot\n")
    out = runner.invoke(app, ["predict", "--file", str(path), "--model", str(result.model_dir), "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [(r["text"], r["label"], r["error"]) for r in rows] == [
        ("a brilliant film", "positive", ""), ("", "", "empty text"), ("a dull plot", "negative", "")]


# 7. the tokenizer fingerprint covers what decides the ids ------------------------------------------

def test_same_vocabulary_other_merges_is_another_tokenizer(tokenizer_dir, tmp_path):
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
    import pyarrow.parquet as pq

    base = _prep(ws, tiny_model_dir, data_dir, max_len=32).meta.fingerprint
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
        "data": _prep(ws, tiny_model_dir, changed, max_len=32),
        "names": _prep(ws, tiny_model_dir, data_dir, max_len=32,
                       prompt=PromptConfig(label_names=("bad", "good"))),
        "columns": _prep(ws, tiny_model_dir, renamed, max_len=32, text_column="review"),
    }
    for what, result in prints.items():
        assert result.meta.fingerprint != base, what


# 9. precision auto on GPUs: native bf16 only ---------------------------------------------------------

@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp16")])
def test_auto_precision_on_gpus_picks_native_bf16_or_fp16(monkeypatch, native, expected):
    from rtsent.machine import resolve_precision

    # A V100/T4 reports bf16 support through emulation only; an A100 natively.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    assert resolve_precision("auto", torch.device("cuda")) == expected


# evaluation and training paths that had no test ---------------------------------------------------------

def test_zero_shot_metrics_equal_a_full_forward_by_hand(ws, tiny_model_dir, data_dir):
    import pyarrow.parquet as pq

    _prep(ws, tiny_model_dir, data_dir, max_len=64)
    report = evaluate.run(EvaluateConfig(model=str(tiny_model_dir), prompt=PromptConfig(), precision="fp32"), ws)
    table = pq.read_table(data_dir / "validation.parquet").to_pydict()
    scores = reference_scores(tiny_model_dir, [t + "\nSentiment:" for t in table["text"]])
    pred = scores.argmax(1)
    truth = np.array(table["label"])
    assert report["accuracy"] == pytest.approx((pred == truth).mean(), abs=1e-9)
    assert report["confusion_matrix"]["rows_true_cols_predicted"] == [
        [int(((truth == t) & (pred == p)).sum()) for p in (0, 1)] for t in (0, 1)]


def test_label_loss_is_cross_entropy_over_the_label_words_of_the_full_forward(tiny_model_dir):
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from rtsent.core.modeling import pad_batch

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    rows, labels, label_ids = [[5, 6, 7, 8], [9, 10]], torch.tensor([1, 0]), [3, 4]
    from rtsent.training.trainer import LabelPositionTrainer

    trainer = LabelPositionTrainer.__new__(LabelPositionTrainer)
    from rtsent.core.label_scores import ScoringLayout
    from rtsent.core.prompts import LabelWords

    trainer.layout, trainer.loss_kind, trainer.class_weights = ScoringLayout(LabelWords.from_list(label_ids)), "label", None
    batch = {**pad_batch(rows, pad_id=0), "labels": labels}
    with torch.no_grad():
        loss, _ = trainer._loss_and_scores(model, batch)
        by_hand = torch.stack([model(torch.tensor([r])).logits[0, -1, label_ids] for r in rows])
        trainer.loss_kind = "lm"
        lm_loss, _ = trainer._loss_and_scores(model, batch)
        full = torch.stack([model(torch.tensor([r])).logits[0, -1] for r in rows])
    torch.testing.assert_close(loss, F.cross_entropy(by_hand, labels), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lm_loss, F.cross_entropy(full, torch.tensor(label_ids)[labels]), rtol=1e-5, atol=1e-5)
    assert not torch.isclose(loss, lm_loss)


def test_label_loss_trains_end_to_end(ws, tiny_model_dir, data_dir):
    _prep(ws, tiny_model_dir, data_dir, max_len=32)
    result, _ = _train(ws, tiny_model_dir, loss="label", lr=1e-2, max_steps=48, eval_every=16, run_name="label")
    assert result.best_accuracy >= 0.9


def test_bf16_training_path_runs_and_learns(ws, tiny_model_dir, data_dir):
    from rtsent.machine import cpu_has_fast_bf16

    if not cpu_has_fast_bf16():
        pytest.skip("this CPU has no native bf16 (AVX-512 BF16/AMX); rtsent's auto precision would not use it")
    _prep(ws, tiny_model_dir, data_dir, max_len=32)
    result, logs = _train(ws, tiny_model_dir, precision="bf16", loss="label", lr=1e-2, max_steps=48, eval_every=16,
                          run_name="bf16")
    assert any("bf16 on cpu" in line for line in logs)
    assert result.best_accuracy >= 0.9


def test_export_is_the_best_checkpoint_not_the_last(ws, tiny_model_dir, data_dir, monkeypatch):
    from safetensors.torch import load_file

    # The best evaluation is the first by construction (accuracy falls at each evaluation), whatever
    # trajectory this CPU's arithmetic gives the tiny model.
    falling = iter([0.9, 0.8, 0.7])
    monkeypatch.setattr(train, "accuracy_metrics", lambda pred: {"accuracy": next(falling)})
    _prep(ws, tiny_model_dir, data_dir, max_len=32)
    result, _ = _train(ws, tiny_model_dir, lr=1e-2, max_steps=6, eval_every=2, run_name="falling")
    steps = sorted(int(p.name.split("-")[1]) for p in result.run.checkpoints.glob("checkpoint-*"))
    assert result.best_step == 2 and result.best_accuracy == 0.9 and steps == [2, 6], (result.best_step, steps)
    exported = load_file(result.model_dir / "model.safetensors")
    best = load_file(result.run.checkpoints / f"checkpoint-{result.best_step}" / "model.safetensors")
    last = load_file(result.run.checkpoints / f"checkpoint-{steps[-1]}" / "model.safetensors")
    assert all(torch.equal(exported[k], best[k]) for k in best)
    assert any(not torch.equal(exported[k], last[k]) for k in last)
