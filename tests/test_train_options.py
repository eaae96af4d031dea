"""Training options (and TrainConfig's checks of them): --train-layers N, --layer-decay D, --class-weights auto,
--label-smoothing E, --early-stopping N, --report-to (TensorBoard events in the run)."""

from __future__ import annotations

import importlib.util
import json
import math
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from rtsent import prepare, train
from rtsent.cli import app
from rtsent.artifacts.prepared import PreparedMeta
from rtsent.config import PrepareConfig, PromptConfig, TrainConfig
from rtsent.errors import UsageError
from rtsent.core.label_scores import ScoringLayout, loss_from_logits
from rtsent.core.prompts import LabelWords
from rtsent.training.options import class_weights
from conftest import synthetic_review

runner = CliRunner()
# Small enough that no float32 weight moves (their ulp is ~1e-9): validation accuracy can never improve.
FROZEN_LR = 1e-12


def imbalanced(folder: Path, n_neg: int = 48, n_pos: int = 16) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(5)
    for split, (neg, pos) in {"train": (n_neg, n_pos), "validation": (12, 4)}.items():
        labels = [0] * neg + [1] * pos
        pq.write_table(pa.table({"text": [synthetic_review(rng, y) for y in labels], "label": labels}),
                       folder / f"{split}.parquet")
    return folder


def hand_cross_entropy(row: list[float], target: int) -> float:
    return math.log(sum(math.exp(v) for v in row)) - row[target]


LOGITS = [[0.5, -1.0, 2.0, 0.1, 1.5], [1.0, 0.3, -0.5, 2.5, 0.0], [-0.2, 1.2, 0.4, 0.9, -1.1]]
LABELS = [0, 1, 1]
LABEL_IDS = [3, 1]  # class 0 is token 3, class 1 is token 1
WEIGHTS = [2.0, 0.5]


def label_position_loss(logits, labels, label_ids, kind, weights=None, smoothing=0.0):
    """The training loss of one single-token word per class, from full-vocabulary logits at the label position."""
    layout = ScoringLayout(LabelWords.from_list(label_ids.tolist()))
    return loss_from_logits(layout, logits, None, labels, kind, weights, smoothing)[0]


def test_weighted_lm_loss_matches_hand_computation():
    losses = [hand_cross_entropy(row, LABEL_IDS[y]) for row, y in zip(LOGITS, LABELS)]
    w = [WEIGHTS[y] for y in LABELS]
    expected = sum(wi * li for wi, li in zip(w, losses)) / sum(w)
    got = label_position_loss(torch.tensor(LOGITS), torch.tensor(LABELS), torch.tensor(LABEL_IDS), "lm",
                              torch.tensor(WEIGHTS))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert expected != pytest.approx(sum(losses) / 3)  # the weights matter on this batch
    unweighted = label_position_loss(torch.tensor(LOGITS), torch.tensor(LABELS), torch.tensor(LABEL_IDS), "lm")
    assert unweighted.item() == pytest.approx(sum(losses) / 3, rel=1e-6)


def test_weighted_label_loss_matches_hand_computation():
    losses = [hand_cross_entropy([row[t] for t in LABEL_IDS], y) for row, y in zip(LOGITS, LABELS)]
    w = [WEIGHTS[y] for y in LABELS]
    expected = sum(wi * li for wi, li in zip(w, losses)) / sum(w)
    got = label_position_loss(torch.tensor(LOGITS), torch.tensor(LABELS), torch.tensor(LABEL_IDS), "label",
                              torch.tensor(WEIGHTS))
    assert got.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("kind", ["lm", "label"])
def test_label_smoothing_matches_hand_computation(kind):
    """--label-smoothing 0.2: -(0.8 log p(true) + 0.2 x the mean over the classes of log p(class)), p over the
    whole vocabulary (lm) or over the two label words (label), class-weighted as without smoothing."""
    def logp(row, token):  # log p(token), normalised over the vocabulary (lm) or the label words (label)
        support = row if kind == "lm" else [row[t] for t in LABEL_IDS]
        return row[token] - math.log(sum(math.exp(v) for v in support))

    losses = [-(0.8 * logp(row, LABEL_IDS[y]) + 0.2 * sum(logp(row, t) for t in LABEL_IDS) / 2)
              for row, y in zip(LOGITS, LABELS)]
    w = [WEIGHTS[y] for y in LABELS]
    args = (torch.tensor(LOGITS), torch.tensor(LABELS), torch.tensor(LABEL_IDS), kind)
    got = label_position_loss(*args, torch.tensor(WEIGHTS), smoothing=0.2)
    assert got.item() == pytest.approx(sum(wi * li for wi, li in zip(w, losses)) / sum(w), rel=1e-6)
    assert label_position_loss(*args, smoothing=0.2).item() == pytest.approx(sum(losses) / 3, rel=1e-6)
    assert label_position_loss(*args).item() != pytest.approx(sum(losses) / 3, rel=1e-3)  # it changes the loss


def test_label_smoothing_reaches_the_training_loss(tmp_path, tiny_model_dir, ws):
    """rtsent train --label-smoothing: the first logged training loss is the smoothed loss of the model's own
    forward on the first batch, recorded in run.json; without the option it is the plain LM loss."""
    from transformers import AutoModelForCausalLM

    prepared = _prepared(tmp_path, tiny_model_dir, ws)
    losses = {}
    for smoothing in (0.0, 0.3):
        result = train.run(TrainConfig(model=str(tiny_model_dir), lr=FROZEN_LR, batch_size=64, max_steps=1,
                                       precision="fp32", run_name=f"smooth{smoothing}", label_smoothing=smoothing,
                                       onnx=False), ws)
        run = json.loads(result.run.config.read_text())
        assert run["config"]["label_smoothing"] == smoothing
        logged = [json.loads(line) for line in result.run.metrics.read_text().splitlines()]
        losses[smoothing] = next(row["loss"] for row in logged if "loss" in row)

    import datasets

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    rows = datasets.load_from_disk(str(prepared.path))["train"]  # 64 rows: the first step's batch is all of them
    label_ids = [w[0][0] for w in prepared.meta.label_words.to_list()]
    plain = smoothed = 0.0
    with torch.no_grad():
        for ids, y in zip(rows["input_ids"], rows["labels"]):
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].double(), dim=-1)[label_ids]
            plain -= logp[y].item()
            smoothed -= 0.7 * logp[y].item() + 0.3 * logp.mean().item()
    assert losses[0.0] == pytest.approx(plain / len(rows), rel=1e-4)
    assert losses[0.3] == pytest.approx(smoothed / len(rows), rel=1e-4)


def test_auto_class_weights_are_inverse_frequency():
    meta = PreparedMeta(config={}, tokenizer="", prompt=PromptConfig(label_names=("negative", "positive")), max_len=8,
                        splits={"train": {"per_class": {"negative": 30, "positive": 10}}})
    assert class_weights("auto", meta) == pytest.approx([40 / 60, 40 / 20])
    assert class_weights("none", meta) is None
    meta.splits["train"]["per_class"]["positive"] = 0
    with pytest.raises(UsageError, match="no examples of positive"):
        class_weights("auto", meta)


def _prepared(tmp_path, tiny_model_dir, ws):
    return prepare.run(PrepareConfig(data=str(imbalanced(tmp_path / "data")), model=str(tiny_model_dir), max_len=32), ws)


def test_class_weighted_training_records_weights_and_evaluates_the_weighted_loss(tmp_path, tiny_model_dir, ws,
                                                                                 monkeypatch):
    from transformers import AutoModelForCausalLM

    from rtsent import plots

    drawn_curves: dict = {}
    real_curves = plots.training_curves
    monkeypatch.setattr(plots, "training_curves",
                        lambda *a, **k: drawn_curves.update(real_curves(*a, **k).drawn) or real_curves(*a, **k))
    prepared = _prepared(tmp_path, tiny_model_dir, ws)
    result = train.run(TrainConfig(model=str(tiny_model_dir), lr=FROZEN_LR, batch_size=16, eval_batch_size=64,
                                   max_steps=1, eval_every=1, precision="fp32", run_name="weighted",
                                   class_weights="auto"), ws)
    run = json.loads(result.run.config.read_text())
    assert run["class_weights"] == pytest.approx([64 / 96, 64 / 32])  # 48 negatives, 16 positives in train
    assert run["config"]["class_weights"] == "auto"

    # The eval loss the Trainer logged equals the weighted cross-entropy of the model's own full forward.
    import datasets

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    val = datasets.load_from_disk(str(prepared.path))["validation"]
    label_ids = [w[0][0] for w in prepared.meta.label_words.to_list()]
    num = den = 0.0
    with torch.no_grad():
        for ids, y in zip(val["input_ids"], val["labels"]):
            logits = model(torch.tensor([ids])).logits[0, -1]
            loss = -torch.log_softmax(logits.double(), -1)[label_ids[y]].item()
            w = [64 / 96, 64 / 32][y]
            num, den = num + w * loss, den + w
    logged = [json.loads(line) for line in result.run.metrics.read_text().splitlines()]
    eval_loss = next(e["eval_loss"] for e in logged if "eval_loss" in e)
    assert eval_loss == pytest.approx(num / den, rel=1e-4)
    plain = sum(-torch.log_softmax(model(torch.tensor([i])).logits[0, -1].double(), -1)[label_ids[y]].item()
                for i, y in zip(val["input_ids"], val["labels"])) / len(val)
    assert eval_loss != pytest.approx(plain, rel=1e-4)
    # ... and the run's training plot says so.
    assert set(drawn_curves) >= {"train loss (class-weighted)", "validation loss (class-weighted)"}


def test_early_stopping_stops_after_patience_plus_one_evaluations(tmp_path, tiny_model_dir, ws):
    _prepared(tmp_path, tiny_model_dir, ws)
    result = train.run(TrainConfig(model=str(tiny_model_dir), lr=FROZEN_LR, batch_size=8, max_steps=30, eval_every=1,
                                   precision="fp32", run_name="early", early_stopping=2, warmup=0.0), ws)
    evaluations = [json.loads(line) for line in result.run.metrics.read_text().splitlines() if "eval_accuracy" in line]
    assert len(evaluations) == 3 and result.steps == 3  # the first evaluation sets the best, two fail to beat it
    record = json.loads(result.run.config.read_text())["early_stopping"]
    assert record == {"patience": 2, "stopped": True, "step": 3, "evaluations": 3}
    assert (result.run.model / "rtsent.json").is_file()


def test_training_stretched_to_min_steps_is_evaluated_once_or_ten_times_by_validation_size(ws):
    """Few-shot data (32 rows, batch 64: one step an epoch) trains --min-steps steps and evaluates only at the
    last one: a development set of a few examples a class cannot choose a checkpoint; from 200 validation rows it
    is evaluated about ten times. --early-stopping, which counts evaluations, keeps about ten; full data keeps one
    an epoch; --eval-every wins over all."""
    def cadence(rows, validation=0, **kw):
        args, total = train._training_arguments(TrainConfig(**kw).for_data(False), ws.run("x"),
                                                torch.device("cpu"), "fp32", rows, validation_rows=validation)
        return args.eval_steps, args.save_steps, args.max_steps, total

    assert cadence(32, min_steps=30) == (30, 30, 30, 30)
    assert cadence(320, validation=199, min_steps=30) == (30, 30, 30, 30)  # SST-5 K = 64 with 199 validation rows
    assert cadence(320, validation=200, min_steps=30) == (3, 3, 30, 30)  # K = 64 of 5 classes: ten evaluations
    assert cadence(32, validation=1066, min_steps=30) == (3, 3, 30, 30)  # a whole validation split: ten
    assert cadence(32, min_steps=30, early_stopping=2) == (3, 3, 30, 30)
    assert cadence(32, min_steps=30, eval_every=5) == (5, 5, 30, 30)
    assert cadence(640, epochs=2.0) == (10, 10, -1, 20)  # 640 rows, batch 64: an evaluation an epoch


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed")
def test_report_to_tensorboard_writes_events_into_the_run(tmp_path, tiny_model_dir, ws):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _prepared(tmp_path, tiny_model_dir, ws)
    result = train.run(TrainConfig(model=str(tiny_model_dir), lr=1e-3, batch_size=16, max_steps=4, eval_every=2,
                                   precision="fp32", run_name="board", report_to="tensorboard"), ws)
    events = list((ws.runs_dir / "board" / "tensorboard").glob("events.out.tfevents.*"))
    assert events, list(result.run.dir.rglob("*"))
    board = EventAccumulator(str(events[0].parent))
    board.Reload()
    logged = [json.loads(line) for line in result.run.metrics.read_text().splitlines()]
    accuracies = [e["eval_accuracy"] for e in logged if "eval_accuracy" in e]
    assert [s.value for s in board.Scalars("eval/accuracy")] == pytest.approx(accuracies)
    assert not (result.run.checkpoints / "runs").exists()  # not transformers' default dated folder


def test_unknown_report_to_is_a_one_line_usage_error(tmp_path):
    result = runner.invoke(app, ["train", "--report-to", "tensorboard,nosuch", "--workdir", str(tmp_path)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "--report-to nosuch: unknown; choose from none," in lines[0] and "wandb" in lines[0]
    assert not list((tmp_path / "runs").glob("*/run.json"))


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_uninstalled_report_to_says_what_to_install(tmp_path):
    result = runner.invoke(app, ["train", "--report-to", "wandb", "--workdir", str(tmp_path)])
    assert result.exit_code == 2 and "--report-to wandb: not installed; pip install wandb" in result.output


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


# The tiny GPT-2: width 32, 2 blocks; a block holds 2 LayerNorms (2 x 64), c_attn (32 x 96 + 96),
# c_proj (32 x 32 + 32), c_fc (32 x 128 + 128) and mlp.c_proj (128 x 32 + 32): 12,704 weights.
BLOCK_PARAMS = 2 * 64 + (32 * 96 + 96) + (32 * 32 + 32) + (32 * 128 + 128) + (128 * 32 + 32)


@pytest.mark.parametrize("lora", [False, True])
def test_train_layers_changes_only_the_last_blocks_and_what_follows(tmp_path, tiny_model_dir, ws, lora):
    _prepared(tmp_path, tiny_model_dir, ws)
    adapters = {"lora": True, "lora_r": 4} if lora else {}
    result = train.run(TrainConfig(model=str(tiny_model_dir), lr=2e-2, batch_size=16, max_steps=3, precision="fp32",
                                   run_name="last", train_layers=1, warmup=0.0, onnx=False, **adapters), ws)
    base, out = _weights(tiny_model_dir), _weights(result.model_dir)
    changed = {k for k in base if not torch.equal(base[k], out[k])}
    if lora:  # an adapter on block 1's c_attn only (A: 4 x 32, B: 96 x 4), merged at export
        assert changed == {"transformer.h.1.attn.c_attn.weight"}
        assert result.trainable_params == 4 * (32 + 96)
    else:  # block 1 and the final LayerNorm; the tied embeddings, the positions and block 0 stay as they were
        assert changed == {k for k in base if k.startswith(("transformer.h.1.", "transformer.ln_f."))}
        assert result.trainable_params == BLOCK_PARAMS + 64


@pytest.mark.parametrize("decay", [1.0, 0.5])
def test_layer_decay_scales_each_blocks_first_step(tmp_path, tiny_model_dir, ws, decay):
    """AdamW's first step moves every weight whose gradient is not tiny by exactly its rate (m / sqrt(v) = +-1):
    read off the exported weights, the largest move of each tensor is --lr times its layer's scale. The tiny
    GPT-2 has 2 blocks: block 1 at d, block 0 at d^2, the positions at d^3, the final norm and the embeddings
    (tied to the output layer) at the full rate."""
    _prepared(tmp_path, tiny_model_dir, ws)
    lr = 1e-3
    result = train.run(TrainConfig(model=str(tiny_model_dir), lr=lr, batch_size=16, max_steps=1, precision="fp32",
                                   run_name=f"decay{decay}", layer_decay=decay, warmup=0.0, weight_decay=0.0,
                                   onnx=False), ws)
    base, out = _weights(tiny_model_dir), _weights(result.model_dir)
    depth = {"transformer.wpe.": 3, "transformer.h.0.": 2, "transformer.h.1.": 1, "transformer.ln_f.": 0,
             "transformer.wte.": 0}
    for key in base:
        power = next(d for prefix, d in depth.items() if key.startswith(prefix))
        moved = (out[key] - base[key]).abs().max().item()
        assert moved == pytest.approx(lr * decay ** power, rel=1e-3), key


def test_layer_decay_groups_keep_weight_decay_off_biases_and_norms(tmp_path, tiny_model_dir, ws, monkeypatch):
    """With weight decay on, each parameter's optimizer group has its layer's rate and AdamW's decay on the
    matrices and embeddings only (not on biases and LayerNorms, as without --layer-decay)."""
    from rtsent.training.trainer import LabelPositionTrainer

    seen: dict[str, tuple[float, float]] = {}
    real = LabelPositionTrainer.create_optimizer

    def spy(self, model=None):
        optimizer = real(self, model)
        names = {id(p): n for n, p in self.model.named_parameters()}
        for group in optimizer.param_groups:
            seen.update({names[id(p)]: (group["lr"], group["weight_decay"]) for p in group["params"]})
        return optimizer

    monkeypatch.setattr(LabelPositionTrainer, "create_optimizer", spy)
    _prepared(tmp_path, tiny_model_dir, ws)
    train.run(TrainConfig(model=str(tiny_model_dir), lr=1e-3, batch_size=16, max_steps=1, precision="fp32",
                          run_name="groups", layer_decay=0.5, weight_decay=0.1, onnx=False), ws)
    depth = {"transformer.wpe.": 3, "transformer.h.0.": 2, "transformer.h.1.": 1, "transformer.ln_f.": 0,
             "transformer.wte.": 0}
    assert seen and len(seen) == len(_weights(tiny_model_dir))  # every saved tensor (lm_head is wte, tied)
    for name, (lr, decay) in seen.items():
        power = next(d for prefix, d in depth.items() if name.startswith(prefix))
        matrix = name.endswith(".weight") and ".ln_" not in name
        assert (lr, decay) == (pytest.approx(1e-3 * 0.5 ** power), 0.1 if matrix else 0.0), name


def test_layer_decay_under_a_sharded_launch_is_one_line_and_leaves_no_run(tmp_path, tiny_model_dir, ws, monkeypatch):
    _prepared(tmp_path, tiny_model_dir, ws)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    result = runner.invoke(app, ["train", "--model", str(tiny_model_dir), "--layer-decay", "0.9", "--run-name",
                                 "sharded", "--workdir", str(ws.root)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "--layer-decay needs whole parameters" in lines[0]
    assert not (ws.runs_dir / "sharded").exists()  # the same command without the option can run at once


def test_layer_decay_gives_an_untied_output_layer_the_full_rate_and_the_embeddings_the_lowest():
    from transformers import LlamaConfig, LlamaForCausalLM

    from rtsent.training.options import layer_rate_scales

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False))
    scales = layer_rate_scales(model, 0.5)
    by_name = {name: scales[id(p)] for name, p in model.named_parameters()}
    assert by_name["model.embed_tokens.weight"] == 0.125 and by_name["lm_head.weight"] == 1.0
    assert by_name["model.norm.weight"] == 1.0
    assert {v for k, v in by_name.items() if k.startswith("model.layers.0.")} == {0.25}
    assert {v for k, v in by_name.items() if k.startswith("model.layers.1.")} == {0.5}


def test_backward_stops_below_the_trained_blocks(tiny_model_dir):
    from rtsent.core.modeling import load_model, next_token_logits
    from rtsent.training.options import train_last_layers

    model = load_model(str(tiny_model_dir), dtype=torch.float32)
    train_last_layers(model, 1)
    tracked = {}  # whether autograd records each block's output: block 0's is a constant to it

    def track(i):
        def hook(module, args, out):
            tracked[i] = (out[0] if isinstance(out, tuple) else out).requires_grad
        return hook

    for i, block in enumerate(model.transformer.h):
        block.register_forward_hook(track(i))
    ids = torch.tensor([[5, 6, 7, 8]])
    next_token_logits(model, ids, torch.ones_like(ids)).sum().backward()
    assert tracked == {0: False, 1: True}
    assert model.transformer.h[0].attn.c_attn.weight.grad is None and model.transformer.wte.weight.grad is None
    assert model.transformer.h[1].attn.c_attn.weight.grad is not None


@pytest.mark.parametrize("options, message", [
    (["--early-stopping", "0"], "--early-stopping must be a positive number"),
    (["--class-weights", "balanced"], "--class-weights must be one of none, auto"),
    (["--report-to", "none,tensorboard"], "--report-to takes none or comma-separated integrations"),
    (["--train-layers", "0"], "--train-layers must be a positive number of blocks"),
    (["--layer-decay", "0"], "--layer-decay must be in (0, 1], got 0.0"),
    (["--layer-decay", "1.5"], "--layer-decay must be in (0, 1], got 1.5"),
    (["--label-smoothing", "1"], "--label-smoothing must be in [0, 1), got 1.0"),
    (["--label-smoothing", "-0.1"], "--label-smoothing must be in [0, 1), got -0.1"),
])
def test_bad_training_options_are_usage_errors(tmp_path, options, message):
    result = runner.invoke(app, ["train", *options, "--workdir", str(tmp_path)])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_more_train_layers_than_the_model_has_is_one_line(tmp_path, tiny_model_dir, ws):
    _prepared(tmp_path, tiny_model_dir, ws)
    result = runner.invoke(app, ["train", "--model", str(tiny_model_dir), "--train-layers", "3", "--workdir", str(ws.root)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "--train-layers 3: the model has 2 transformer blocks; pass at most 2" in lines[0]


def test_micro_batches_make_the_same_update_as_the_whole_batch(tmp_path, tiny_model_dir, ws):
    """--micro-batches 4: 64 examples in steps of 24 (the last one 16, so micro-batches of 6, 6 and 4), class
    weights on: the weights after the epoch equal the one-batch run's. Counting every micro-batch alike (the
    Trainer's own accumulation) moves every tensor by 2e-3 to 7e-2 (measured); summation order by < 1e-5."""
    _prepared(tmp_path, tiny_model_dir, ws)
    common = dict(model=str(tiny_model_dir), lr=2e-2, batch_size=24, epochs=1, precision="fp32", warmup=0.0,
                  class_weights="auto", onnx=False, plots=False)
    whole = _weights(train.run(TrainConfig(**common, run_name="whole"), ws).model_dir)
    micro = _weights(train.run(TrainConfig(**common, micro_batches=4, run_name="micro"), ws).model_dir)
    base = _weights(tiny_model_dir)
    for name in whole:
        torch.testing.assert_close(micro[name], whole[name], atol=1e-4, rtol=0)
    assert min((whole[k] - base[k]).abs().max().item() for k in whole) > 1e-3  # every tensor really moved


def test_micro_batches_must_divide_the_batch(tmp_path):
    result = runner.invoke(app, ["train", "--batch-size", "32", "--micro-batches", "3", "--workdir", str(tmp_path)])
    assert result.exit_code == 2 and "--micro-batches must be a positive divisor of --batch-size 32, got 3" in result.output


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_micro_batch_tokens_make_the_same_update_as_the_whole_batch(tmp_path, tiny_model_dir, ws, monkeypatch,
                                                                   micro_batches):
    """--micro-batch-tokens 48: every batch of 24 rows (or its micro-batches of 12) runs as row slices of at most
    48 padded tokens, each trimmed to its own longest row, class weights on: the weights after the epoch equal the
    one-batch run's (as for --micro-batches)."""
    from rtsent.training import trainer as trainer_module

    _prepared(tmp_path, tiny_model_dir, ws)
    common = dict(model=str(tiny_model_dir), lr=2e-2, batch_size=24, epochs=1, precision="fp32", warmup=0.0,
                  class_weights="auto", onnx=False, plots=False)
    whole = _weights(train.run(TrainConfig(**common, run_name="whole"), ws).model_dir)
    sliced, real = [], trainer_module.token_slices
    monkeypatch.setattr(trainer_module, "token_slices", lambda inputs, budget: sliced.append(real(inputs, budget)) or sliced[-1])
    cut = _weights(train.run(TrainConfig(**common, micro_batches=micro_batches, micro_batch_tokens=48,
                                         run_name="cut"), ws).model_dir)
    assert sum(len(parts) > 1 for parts in sliced) >= max(1, len(sliced) - 1)  # (nearly) every batch was cut
    assert all(p["input_ids"].numel() <= 48 or len(p["labels"]) == 1 for parts in sliced for p in parts)
    for name in whole:
        torch.testing.assert_close(cut[name], whole[name], atol=1e-4, rtol=0)


def test_token_slices_keep_every_row_in_order_and_trim_each_slice():
    from rtsent.training.trainer import token_slices

    lengths = [9, 8, 8, 5, 3, 2]
    ids = torch.zeros(6, 9, dtype=torch.long)
    mask = torch.zeros(6, 9, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.arange(1, n + 1) + 10 * row
        mask[row, :n] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.arange(6)}
    assert token_slices(batch, 0) == [batch] and token_slices(batch, 54) == [batch]
    parts = token_slices(batch, 20)  # 54 padded tokens -> 3 slices of 2 rows
    assert [p["labels"].tolist() for p in parts] == [[0, 1], [2, 3], [4, 5]]
    assert [p["input_ids"].shape[1] for p in parts] == [9, 8, 3]  # each cut to its own longest row
    for p in parts:
        for row, label in enumerate(p["labels"].tolist()):
            n = lengths[label]
            assert p["input_ids"][row, :n].tolist() == ids[label, :n].tolist()
            assert p["attention_mask"][row].sum().item() == n
    assert len(token_slices(batch, 1)) == 6  # never less than one row a slice


def test_train_config_collects_every_problem():
    with pytest.raises(UsageError) as err:
        TrainConfig(lr=0, loss="mse", save_every=10, run_name="../x")
    message = str(err.value)
    for fragment in ("--lr", "--loss", "--save-every", "--run-name"):
        assert fragment in message
    with pytest.raises(UsageError, match="multiple"):
        TrainConfig(eval_every=4, save_every=6)


def test_micro_batch_tokens_default_by_device():
    from rtsent.train import micro_batch_tokens

    assert micro_batch_tokens(TrainConfig(), torch.device("cpu")) == 1024
    assert micro_batch_tokens(TrainConfig(), torch.device("cuda")) == 0  # a GPU keeps its batches whole
    assert micro_batch_tokens(TrainConfig(micro_batch_tokens=0), torch.device("cpu")) == 0
    assert micro_batch_tokens(TrainConfig(micro_batch_tokens=512), torch.device("cuda")) == 512


def test_epochs_default_to_one_pass_over_pretrained_weights_and_two_from_scratch(tiny_model_dir, data_dir, ws):
    from helpers import prep, short_train

    assert TrainConfig().epochs == 1.0 and TrainConfig(from_scratch=True).epochs == 2.0
    assert TrainConfig(epochs=3).epochs == 3 and TrainConfig(from_scratch=True, epochs=0.5).epochs == 0.5
    with pytest.raises(UsageError, match="--epochs must be positive"):
        TrainConfig(epochs=0)
    rows = prep(ws, tiny_model_dir, data_dir, max_len=32).meta.splits["train"]["rows"]
    result, _ = short_train(ws, tiny_model_dir, max_steps=-1, eval_every=None, int8=False, run_name="one-pass")
    assert result.steps == math.ceil(rows / 16)  # one pass at batch 16, without --epochs
    assert json.loads(result.run.config.read_text())["config"]["epochs"] == 1.0  # run.json has the value used
