"""LoRA on the tiny GPT-2: trainable parameters, merged and adapter exports, identical scores, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import synthetic_split, write_splits
from rtsent import prepare, train
from rtsent.cli import app
from rtsent.config import PrepareConfig, TrainConfig
from rtsent.errors import Interrupted
from rtsent.artifacts.workspace import Workspace

runner = CliRunner()
R = 4


def _cfg(model: Path, **kw) -> TrainConfig:
    base = dict(model=str(model), lr=2e-2, batch_size=16, max_steps=8, eval_every=4, precision="fp32", warmup=0.0,
                lora=True, lora_r=R)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory, tiny_model_dir):
    ws = Workspace.resolve(tmp_path_factory.mktemp("lora-ws"))
    data = write_splits(tmp_path_factory.mktemp("lora-data"), sizes=(96, 32, 32))
    prepare.run(PrepareConfig(data=str(data), model=str(tiny_model_dir), max_len=32), ws)
    merged = train.run(_cfg(tiny_model_dir, run_name="merged"), ws)
    adapter = train.run(_cfg(tiny_model_dir, run_name="adapter", lora_export="adapter"), ws)
    return ws, merged, adapter


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_only_the_adapters_train_and_their_count_is_r_times_in_plus_out(lora_runs, tiny_model_dir):
    _, merged, _ = lora_runs
    # GPT-2's c_attn maps width 32 to 3 * 32: A is r x 32, B is 96 x r, in each of the 2 layers.
    assert merged.trainable_params == 2 * R * (32 + 96)
    base = _weights(tiny_model_dir)
    assert merged.total_params == sum(t.numel() for k, t in base.items() if k != "lm_head.weight") + merged.trainable_params
    out = _weights(merged.model_dir)
    assert out.keys() == base.keys()
    changed = {k for k in base if not torch.equal(base[k], out[k])}
    assert changed == {"transformer.h.0.attn.c_attn.weight", "transformer.h.1.attn.c_attn.weight"}


def test_merged_export_is_a_plain_folder_that_loads_without_peft(lora_runs):
    from rtsent.engines import open_classifier

    _, merged, _ = lora_runs
    assert not (merged.model_dir / "adapter_config.json").exists()
    clf = open_classifier(str(merged.model_dir), precision="fp32")
    prompt = clf.prompt.template.format(text="a brilliant film")
    # No adapter_config.json: transformers loads it as a plain model, never asking peft.
    from transformers import pipeline

    generate = pipeline("text-generation", model=str(merged.model_dir), device="cpu")
    assert type(generate.model).__module__.startswith("transformers.")
    text = generate(prompt, max_new_tokens=1, do_sample=False, return_full_text=False)[0]["generated_text"]
    assert isinstance(text, str) and text
    with torch.no_grad():
        logits = generate.model(**generate.tokenizer(prompt, return_tensors="pt")).logits[0, -1, clf.encoder.label_ids]
    np.testing.assert_allclose(clf.scores(clf.encoder.encode(["a brilliant film"]).input_ids)[0], logits.numpy(), atol=1e-4)


def test_adapter_export_records_its_base_and_scores_like_the_merged_export(lora_runs, tiny_model_dir):
    from rtsent.engines import open_classifier

    ws, merged, adapter = lora_runs
    assert (adapter.model_dir / "adapter_config.json").is_file() and not (adapter.model_dir / "model.safetensors").exists()
    meta = json.loads((adapter.model_dir / "rtsent.json").read_text())
    assert meta["lora"] == {"export": "adapter", "base_model": str(Path(tiny_model_dir).resolve()),
                            "trainable_params": 2 * R * (32 + 96)}
    texts = ["a brilliant and moving film", "dull, bland and tedious", "the plot is charming", "it"]
    a = open_classifier(str(adapter.model_dir), precision="fp32")
    m = open_classifier(str(merged.model_dir), precision="fp32")
    rows = a.encoder.encode(texts).input_ids
    np.testing.assert_allclose(a.scores(rows), m.scores(rows), rtol=0, atol=1e-5)
    # and both are what the base model scores differently: the adapter was applied
    base = open_classifier(str(tiny_model_dir), prompt=a.prompt, precision="fp32")
    assert not np.allclose(base.scores(rows), a.scores(rows), atol=1e-3)


def test_evaluate_and_predict_give_identical_results_for_both_exports(lora_runs):
    ws, merged, adapter = lora_runs
    results = []
    for folder in (merged.model_dir, adapter.model_dir):
        report = runner.invoke(app, ["evaluate", "--model", str(folder), "--split", "test", "--precision", "fp32",
                                     "--output", str(folder.parent / "eval.json"), "--workdir", str(ws.root)])
        assert report.exit_code == 0, report.output
        predicted = runner.invoke(app, ["predict", "great fun", "a dull mess", "--model", str(folder), "--format", "json",
                                        "--precision", "fp32", "--workdir", str(ws.root)])
        assert predicted.exit_code == 0, predicted.output
        scores = json.loads((folder.parent / "eval.json").read_text())
        results.append((scores["accuracy"], scores["confusion_matrix"], json.loads(predicted.stdout)))
    assert results[0][:2] == results[1][:2]
    for x, y in zip(results[0][2], results[1][2]):
        assert x["label"] == y["label"] and x["probability"] == pytest.approx(y["probability"], abs=1e-5)


def test_interrupted_lora_run_resumes_to_the_same_weights(lora_runs, tiny_model_dir, monkeypatch):
    ws, merged, _ = lora_runs
    monkeypatch.setenv("RTSENT_INTERRUPT_AT_STEP", "5")
    with pytest.raises(Interrupted, match="stopped at step 5"):
        train.run(_cfg(tiny_model_dir, run_name="resumed"), ws)
    monkeypatch.delenv("RTSENT_INTERRUPT_AT_STEP")
    assert (ws.run("resumed").checkpoints / "checkpoint-5" / "adapter_model.safetensors").is_file()
    resumed = train.run(TrainConfig(resume=True, run_name="resumed"), ws)
    assert (resumed.steps, resumed.best_step, resumed.best_accuracy) == (merged.steps, merged.best_step, merged.best_accuracy)
    a, b = _weights(merged.model_dir), _weights(resumed.model_dir)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


@pytest.mark.parametrize("args, message", [
    (["--lora-r", "4"], "--lora-r needs --lora"),
    (["--lora", "--lora-export", "both"], "--lora-export must be merged or adapter"),
    (["--lora", "--lora-export", "adapter", "--from-scratch"], "needs saved base weights"),
])
def test_lora_option_mistakes_are_usage_errors(tmp_path, tiny_model_dir, args, message):
    out = runner.invoke(app, ["train", "--model", str(tiny_model_dir), *args, "--workdir", str(tmp_path)])
    assert out.exit_code == 2 and message in out.output


def test_unknown_lora_target_lists_the_layers_there_are(lora_runs, tiny_model_dir):
    ws, _, _ = lora_runs
    out = runner.invoke(app, ["train", "--model", str(tiny_model_dir), "--lora", "--lora-targets", "q_proj",
                              "--max-steps", "1", "--workdir", str(ws.root)])
    assert out.exit_code == 2 and "no such layer" in out.output and "c_attn" in out.output


def test_lora_defaults_to_its_own_learning_rate_and_an_explicit_lr_wins():
    from rtsent.train import _training_arguments

    def lr(few_shot=False, **kw):
        return TrainConfig(**kw).for_data(few_shot).lr

    assert lr() == 1e-4 and lr(lora=True) == 5e-4 and lr(few_shot=True) == 3e-5 and lr(True, lora=True) == 5e-4
    assert TrainConfig().batch_size == 64 and TrainConfig(lora=True).batch_size == 32  # each one's measured best
    assert TrainConfig(lora=True, batch_size=8).batch_size == 8
    assert lr(lora=True, lr=1e-3) == 1e-3 and lr(True, lr=1e-3) == 1e-3
    assert TrainConfig().for_data(True).min_steps == 30 and TrainConfig().for_data(False).min_steps == 0
    assert TrainConfig(min_steps=5).for_data(True).min_steps == 5
    # Fewer training rows than 30: one step a row (8 reviews a class overfit in 30 steps; docs/method.md).
    assert TrainConfig().for_data(True, 16).min_steps == 16 and TrainConfig().for_data(True, 32).min_steps == 30
    assert TrainConfig(min_steps=40).for_data(True, 16).min_steps == 40 and TrainConfig().for_data(False, 16).min_steps == 0
    args, _ = _training_arguments(TrainConfig(lora=True).for_data(False), Workspace.resolve("unused").run("x"),
                                  torch.device("cpu"), "fp32", 64)
    assert args.learning_rate == 5e-4


def test_onnx_graph_of_an_adapter_over_a_bf16_base_scores_like_torch_fp32(ws, tiny_model_dir, tmp_path):
    """A finding of the pretrained-model review (was test_review_fixes.py, finding 4):
    --lora-export adapter over a base stored in bf16: the ONNX graph merges in fp32, as
    the torch engine does."""
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
