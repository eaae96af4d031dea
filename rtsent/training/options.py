"""Opt-in training behaviours: training the last layers only, layer-wise learning rates, class-weighted loss,
early stopping, experiment trackers (--report-to)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from rtsent.artifacts.files import write_json
from rtsent.artifacts.prepared import PreparedMeta
from rtsent.errors import UsageError
from rtsent.artifacts.workspace import RunPaths
from rtsent.artifacts.files import read_json


def transformer_blocks(model: Any, option: str = "--train-layers") -> torch.nn.ModuleList:
    """The model's stack of transformer blocks: its ModuleList of config.num_hidden_layers modules. `option` is
    the option that needs them, named in the UsageError raised where they cannot be found."""
    layers = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == layers:
            return module
    raise UsageError(f"{option}: cannot find the {layers} transformer blocks of this {model.config.model_type} "
                     f"model; leave {option} out")


def last_blocks(model: Any, n: int) -> range:
    """Indices of the last n transformer blocks; UsageError when the model has fewer."""
    total = len(transformer_blocks(model))
    if n > total:
        raise UsageError(f"--train-layers {n}: the model has {total} transformer blocks; pass at most {total}")
    return range(total - n, total)


def train_last_layers(model: Any, n: int) -> None:
    """Freeze every parameter before the last n transformer blocks (embeddings, earlier blocks); what
    follows them (final norm, an untied output layer) stays trainable.

    Parameters are registered in the order the forward uses them (embeddings, blocks, final norm), so
    "before" is their order in model.parameters(). Raises UsageError when n exceeds the block count.
    """
    first = transformer_blocks(model)[last_blocks(model, n).start]
    trained = {id(p) for p in first.parameters()}
    for p in model.parameters():
        if id(p) in trained:
            break
        p.requires_grad_(False)


def layer_rate_scales(model: Any, decay: float) -> dict[int, float]:
    """--layer-decay: the learning-rate multiplier of each parameter (by id) of a model of L blocks.

    Block i (0-based) trains at decay^(L - i): the last block at decay, the first at decay^L. What comes before
    the blocks (the input embeddings, GPT-2's positions) trains at decay^(L + 1), and what follows them (the
    final norm, the output layer) at the full rate. An output layer tied to the input embeddings (GPT-2,
    SmolLM2) is one tensor with both roles; it counts as the output layer, since the label words' rows of it
    are the classifier under the LM loss. The order of model.parameters() (the order the forward uses them)
    tells before from after, as in train_last_layers.
    """
    blocks = transformer_blocks(model, "--layer-decay")
    depth = len(blocks)
    block_of = {id(p): i for i, block in enumerate(blocks) for p in block.parameters()}
    output = model.get_output_embeddings()
    head = {id(p) for p in output.parameters()} if output is not None else set()
    scales: dict[int, float] = {}
    after_blocks = False
    for p in model.parameters():
        if id(p) in block_of:
            after_blocks = block_of[id(p)] == depth - 1 or after_blocks
            scales[id(p)] = decay ** (depth - block_of[id(p)])
        else:
            scales[id(p)] = 1.0 if after_blocks or id(p) in head else decay ** (depth + 1)
    return scales


def class_weights(mode: str, prepared: PreparedMeta) -> list[float] | None:
    """--class-weights auto: n / (k x n_c) for each class c of the prepared train split (inverse frequency,
    1.0 for every class when balanced); None for "none". Raises UsageError when a class has no examples."""
    if mode == "none":
        return None
    names = prepared.prompt.label_names
    counts = prepared.class_counts("train")
    empty = [name for name, n in zip(names, counts) if n == 0]
    if empty:
        raise UsageError(f"--class-weights auto: the train split has no examples of {', '.join(empty)}; "
                         f"add some, or train without --class-weights")
    return [sum(counts) / (len(counts) * n) for n in counts]


def early_stopping_callbacks(patience: int | None) -> list[Any]:
    """The Trainer's own EarlyStoppingCallback: stop after `patience` evaluations without a better accuracy."""
    if not patience:
        return []
    from transformers import EarlyStoppingCallback

    return [EarlyStoppingCallback(early_stopping_patience=patience)]


def early_stopping_record(patience: int | None, state: Any, planned_steps: int) -> dict[str, Any] | None:
    """What early stopping did, for run.json: the step training ended at and the evaluations it made."""
    if not patience:
        return None
    evaluations = sum(1 for entry in state.log_history if "eval_accuracy" in entry)
    stopped = state.global_step < planned_steps
    return {"patience": patience, "stopped": stopped, "step": state.global_step, "evaluations": evaluations}


def record(path: Path, **fields: Any) -> None:
    """Add fields to run.json (atomically)."""
    write_json(path, {**read_json(path, "the run's record is damaged"), **fields})


def trackers(report_to: str) -> list[str]:
    """--report-to as a list of Trainer integrations; raises UsageError for unknown or uninstalled ones."""
    names = [n.strip() for n in report_to.split(",") if n.strip()]
    if names in ([], ["none"]):
        return []
    from transformers.integrations import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations

    unknown = [n for n in names if n not in INTEGRATION_TO_CALLBACK]
    if unknown:
        raise UsageError(f"--report-to {','.join(unknown)}: unknown; choose from none, "
                         f"{', '.join(sorted(INTEGRATION_TO_CALLBACK))}")
    missing = [n for n in names if n not in get_available_reporting_integrations()]
    if missing:
        raise UsageError(f"--report-to {','.join(missing)}: not installed; pip install {' '.join(missing)} "
                         f"(tensorboard: pip install 'rtsent[tensorboard]')")
    return names


def tracker_setup(names: Sequence[str], paths: RunPaths) -> tuple[list[str] | str, list[Any]]:
    """The report_to list for TrainingArguments, and callbacks rtsent adds itself.

    TensorBoard is added here rather than by name so that its events land in runs/<name>/tensorboard
    (transformers 5 has no logging_dir; its default is a dated folder under the checkpoints).
    """
    if "tensorboard" not in names:
        return list(names) or "none", []
    from transformers.integrations import TensorBoardCallback

    board = TensorBoardCallback()
    board.logging_dir = str(paths.tensorboard)  # read when training begins, on the main process only
    rest = [n for n in names if n != "tensorboard"]
    return rest or "none", [board]
