"""The wrong results found in the pretrained-model review, each with a test that fails on the old code."""

from __future__ import annotations

import json

import numpy as np

from conftest import synthetic_split
from rtsent import evaluate, prepare, train
from rtsent.config import EvaluateConfig, PrepareConfig, TrainConfig


# 1. evaluate --data matches a ClassLabel column to the label names by name, as prepare does ------------

def test_evaluate_data_reads_a_classlabel_column_by_name_not_by_position(trained, tmp_path):
    import datasets

    space, result = trained
    rows = synthetic_split(64, seed=11)
    names = ["negative", "positive"]
    # The same reviews twice: labels as plain names (matched by name, no ClassLabel), and as a ClassLabel
    # whose class order is the reverse of the model's label words.
    plain = tmp_path / "plain.parquet"
    datasets.Dataset.from_dict({"text": rows["text"], "label": [names[y] for y in rows["label"]]}).to_parquet(plain)
    reversed_names = ["positive", "negative"]
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=reversed_names)})
    labelled = tmp_path / "classlabel.parquet"
    datasets.Dataset.from_dict({"text": rows["text"], "label": [1 - y for y in rows["label"]]},
                               features=features).to_parquet(labelled)

    def accuracy(path):
        cfg = EvaluateConfig(model=str(result.model_dir), data=str(path), precision="fp32", plots=False,
                             output=str(tmp_path / f"{path.stem}.json"))
        return evaluate.run(cfg, space)["accuracy"]

    by_name = accuracy(plain)
    assert by_name > 0.75  # far from 0.5, so a swap (1 - accuracy) cannot pass for it
    assert accuracy(labelled) == by_name


# 2. --save-every a multiple of --eval-every: the best evaluation is always saved -----------------------

def test_the_best_evaluation_is_saved_and_exported_when_save_every_skips_its_step(ws, tiny_model_dir, data_dir,
                                                                                  monkeypatch):
    from safetensors.torch import load_file

    falling = iter([0.9, 0.8, 0.7])  # evaluations at steps 2, 4, 6: the best is step 2, which --save-every 4 skips
    monkeypatch.setattr(train, "accuracy_metrics", lambda pred: {"accuracy": next(falling)})
    prepare.run(PrepareConfig(data=str(data_dir), model=str(tiny_model_dir), max_len=32), ws)
    result = train.run(TrainConfig(model=str(tiny_model_dir), lr=1e-2, batch_size=16, max_steps=6, eval_every=2,
                                   save_every=4, precision="fp32", warmup=0.0, run_name="sparse-saves"), ws)
    meta = json.loads((result.model_dir / "rtsent.json").read_text())
    assert result.best_step == 2 and meta["best"] == {"step": 2, "validation_accuracy": 0.9}
    best = load_file(result.run.checkpoints / "checkpoint-2" / "model.safetensors")
    last = load_file(result.run.checkpoints / "checkpoint-6" / "model.safetensors")
    exported = load_file(result.model_dir / "model.safetensors")
    assert all(np.array_equal(exported[k].numpy(), best[k].numpy()) for k in best)
    assert any(not np.array_equal(exported[k].numpy(), last[k].numpy()) for k in last)


# 3. evaluate --calibrate on a model with a temperature: content-free probabilities on the same scale --------

def test_contextual_calibration_uses_the_temperature_of_the_reviews_it_corrects(trained, tmp_path):
    import torch

    from conftest import _reference_model
    from rtsent.core.calibration import CONTENT_FREE
    from rtsent.engines import open_classifier

    import shutil

    space, result = trained
    # The tiny run gets all validation right, so its fitted T is 1: give a copy of it a temperature of 2.5,
    # far enough from 1 that the two scales differ.
    folder = tmp_path / "model"
    shutil.copytree(result.model_dir, folder)
    meta = json.loads((folder / "rtsent.json").read_text())
    t = meta["calibration"]["temperature"] = 2.5
    (folder / "rtsent.json").write_text(json.dumps(meta))
    report = evaluate.run(EvaluateConfig(model=str(folder), split="test", precision="fp32", plots=False,
                                         calibrate=True, output=str(tmp_path / "cal.json")), space)
    # The content-free prompts' label-word logits from the model's own forward, one prompt at a time.
    rows = open_classifier(str(folder), engine="torch", precision="fp32").encoder.encode(list(CONTENT_FREE))
    tok, model = _reference_model(str(result.model_dir))
    with torch.no_grad():
        z = np.array([model(torch.tensor([r])).logits[0, -1, [w[0][0] for w in meta["label_words"]]].double().numpy()
                      for r in rows.input_ids])
    scaled = np.exp(z / t) / np.exp(z / t).sum(axis=1, keepdims=True)
    unscaled = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    p_cf = np.array(report["calibration"]["contextual"]["p_cf"])
    np.testing.assert_allclose(p_cf, scaled.mean(axis=0), atol=1e-5)
    assert np.abs(p_cf - unscaled.mean(axis=0)).max() > 1e-3


# 4. --lora-export adapter over a base stored in bf16: the ONNX graph merges in fp32, as the torch engine does --

def test_onnx_graph_of_an_adapter_over_a_bf16_base_scores_like_torch_fp32(ws, tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from conftest import write_splits
    from rtsent.engines import open_classifier

    base = tmp_path / "bf16-base"
    AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).to(torch.bfloat16).save_pretrained(str(base))
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(str(base))
    data = write_splits(tmp_path / "data", sizes=(96, 32, 32))
    prepare.run(PrepareConfig(data=str(data), model=str(base), max_len=32), ws)
    result = train.run(TrainConfig(model=str(base), lr=2e-2, batch_size=16, max_steps=4, eval_every=4, warmup=0.0,
                                   precision="fp32", lora=True, lora_export="adapter", run_name="bf16-adapter"), ws)
    texts = synthetic_split(32, seed=5)["text"]
    onnx = open_classifier(str(result.model_dir), engine="onnx", precision="fp32")
    torch_fp32 = open_classifier(str(result.model_dir), engine="torch", precision="fp32")
    a = onnx.scores(onnx.encoder.encode(texts).input_ids)
    b = torch_fp32.scores(torch_fp32.encoder.encode(texts).input_ids)
    # fp32 graph vs fp32 torch: 1.2e-7 here; a bf16-rounded merge in the graph differed by 4.7e-5.
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


# Smaller: evaluate's headline on validation, the split that chose the checkpoint, carries a warning ----------

def test_evaluating_the_validation_split_of_a_trained_model_warns_that_it_is_optimistic(trained, tmp_path):
    from typer.testing import CliRunner

    from rtsent.cli import app

    space, result = trained
    common = ["--workdir", str(space.root), "--model", str(result.model_dir), "--precision", "fp32", "--no-plots"]
    on_validation = CliRunner().invoke(app, ["evaluate", "--split", "validation", "--output", str(tmp_path / "v.json"),
                                             *common])
    on_test = CliRunner().invoke(app, ["evaluate", "--split", "test", "--output", str(tmp_path / "t.json"), *common])
    assert on_validation.exit_code == 0 and on_test.exit_code == 0
    assert "optimistic" in json.loads((tmp_path / "v.json").read_text())["warning"]
    assert "note: validation chose this model's checkpoint" in " ".join(on_validation.output.split())
    assert "warning" not in json.loads((tmp_path / "t.json").read_text()) and "optimistic" not in on_test.output
