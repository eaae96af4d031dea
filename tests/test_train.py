"""The train stage: a run that learns and exports a standalone model, the loss it minimises, bf16, and which
checkpoint is saved and exported. (Its options: test_train_options.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rtsent import evaluate, prepare, train
from rtsent.artifacts.model import META_FILE
from rtsent.config import EvaluateConfig, PrepareConfig, TrainConfig
from helpers import prep, short_train


def test_trained_run_exports_a_standalone_model_that_learned(trained):
    space, result = trained
    model = result.model_dir
    for name in ("config.json", "model.safetensors", "tokenizer.json", META_FILE):
        assert (model / name).is_file(), name
    meta = json.loads((model / META_FILE).read_text())
    assert meta["prompt"]["template"] == "Review: {text}\nSentiment:"
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


def test_label_loss_is_cross_entropy_over_the_label_words_of_the_full_forward(tiny_model_dir):
    """A path that had no test before issue #7 (was test_workflows.py)."""
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
    trainer.label_smoothing = 0.0
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
    """A path that had no test before issue #7 (was test_workflows.py)."""
    prep(ws, tiny_model_dir, data_dir, max_len=32)
    result, _ = short_train(ws, tiny_model_dir, loss="label", lr=1e-2, max_steps=48, eval_every=16, run_name="label")
    assert result.best_accuracy >= 0.9


def test_bf16_training_path_runs_and_learns(ws, tiny_model_dir, data_dir):
    """A path that had no test before issue #7 (was test_workflows.py)."""
    from rtsent.machine import cpu_has_fast_bf16

    if not cpu_has_fast_bf16():
        pytest.skip("this CPU has no native bf16 (AVX-512 BF16/AMX); rtsent's auto precision would not use it")
    prep(ws, tiny_model_dir, data_dir, max_len=32)
    result, logs = short_train(ws, tiny_model_dir, precision="bf16", loss="label", lr=1e-2, max_steps=48, eval_every=16,
                          run_name="bf16")
    assert any("bf16 on cpu" in line for line in logs)
    assert result.best_accuracy >= 0.9


def test_export_is_the_best_checkpoint_not_the_last(ws, tiny_model_dir, data_dir, monkeypatch):
    """A path that had no test before issue #7 (was test_workflows.py)."""
    from safetensors.torch import load_file

    # The best evaluation is the first by construction (accuracy falls at each evaluation), whatever
    # trajectory this CPU's arithmetic gives the tiny model.
    falling = iter([0.9, 0.8, 0.7])
    monkeypatch.setattr(train, "accuracy_metrics", lambda pred: {"accuracy": next(falling)})
    prep(ws, tiny_model_dir, data_dir, max_len=32)
    result, _ = short_train(ws, tiny_model_dir, lr=1e-2, max_steps=6, eval_every=2, run_name="falling")
    steps = sorted(int(p.name.split("-")[1]) for p in result.run.checkpoints.glob("checkpoint-*"))
    assert result.best_step == 2 and result.best_accuracy == 0.9 and steps == [2, 6], (result.best_step, steps)
    exported = load_file(result.model_dir / "model.safetensors")
    best = load_file(result.run.checkpoints / f"checkpoint-{result.best_step}" / "model.safetensors")
    last = load_file(result.run.checkpoints / f"checkpoint-{steps[-1]}" / "model.safetensors")
    assert all(torch.equal(exported[k], best[k]) for k in best)
    assert any(not torch.equal(exported[k], last[k]) for k in last)


def test_the_best_evaluation_is_saved_and_exported_when_save_every_skips_its_step(ws, tiny_model_dir, data_dir,
                                                                                  monkeypatch):
    """A finding of the pretrained-model review (was test_review_fixes.py, finding 2):
    --save-every a multiple of --eval-every: the best evaluation is always saved."""
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
