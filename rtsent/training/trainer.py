"""The Trainer rtsent trains with: loss at the label position, a replayable length-grouped order, and
the callbacks that log, checkpoint every new best, show progress and stop cleanly on a signal."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from transformers import TrainerCallback

from rtsent import compat
from rtsent.core import label_scores
from rtsent.core.modeling import pad_batch
from rtsent.core.prompts import LabelWords
from rtsent.faults import crash_point, interrupt_point
from rtsent.training import distributed, options, speed


class LabelCollator:
    """Right-pads a batch to its longest prompt (eos as pad) and stacks the class ids."""

    def __init__(self, pad_id: int, multiple: int = 1):
        self.pad_id = pad_id
        self.multiple = multiple

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = pad_batch([f["input_ids"] for f in features], self.pad_id, self.multiple)
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return batch


class SeededLengthSampler(torch.utils.data.Sampler):
    """Length-grouped training order drawn from (seed, epoch) alone, so a resumed run replays it exactly.

    transformers' own LengthGroupedSampler draws from the global RNG; on a mid-epoch resume the Trainer
    builds the epoch's order before restoring that RNG, so the resumed run would see other batches.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        from transformers.trainer_pt_utils import get_length_grouped_indices

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class LabelPositionTrainer(compat.trainer_base()):  # type: ignore[misc]
    """Trainer whose loss is the cross-entropy of the label words after the prompt (core/label_scores.py).

    loss="lm" scores the whole vocabulary there (the seed recipe's objective); loss="label" scores
    the classes only. Evaluation returns [batch, classes] class scores, nothing larger.
    """

    def __init__(self, *args: Any, label_words: LabelWords, loss_kind: str,
                 class_weights: list[float] | None = None, micro_batch_tokens: int = 0, layer_decay: float = 1.0,
                 label_smoothing: float = 0.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.layer_decay = layer_decay
        self.micro_batch_tokens = micro_batch_tokens if distributed.world_size() == 1 else 0
        self.layout = label_scores.ScoringLayout(label_words)
        self.loss_kind = loss_kind
        self.label_smoothing = label_smoothing
        self.class_weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        # Our loss is already a per-example mean; let Trainer scale it for gradient accumulation.
        self.model_accepts_loss_kwargs = False
        # Validation scores of each evaluation by step, so the best model's need not be computed again.
        self.validation_scores: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._step_weight: float | None = None  # the step's examples (class-weighted) over its micro-batches

    def train_sampler(self, dataset: Any) -> SeededLengthSampler:
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return SeededLengthSampler(list(dataset[self.args.length_column_name]), batch, self.args.data_seed)

    def create_optimizer(self, model: Any = None) -> Any:
        """The Trainer's own optimizer; with --layer-decay its parameter groups are split by learning rate as well
        as by weight decay (options.layer_rate_scales). Each group's rate is --lr times its scale, and the
        schedule multiplies every group's rate by the same factor, so the ratios hold at every step."""
        if self.layer_decay == 1.0 or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        scales = options.layer_rate_scales(opt_model, self.layer_decay)
        decayed = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
        for name, p in opt_model.named_parameters():
            if p.requires_grad:
                key = (scales[id(p)], self.args.weight_decay if name in decayed else 0.0)
                groups.setdefault(key, []).append(p)
        optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls([{"params": params, "weight_decay": decay, "lr": self.args.learning_rate * scale}
                                        for (scale, decay), params in groups.items()], **kwargs)
        return self.optimizer

    def clip_gradients(self, model: Any, default: Callable[[Any], Any]) -> Any:
        # The same clipping, with the division done inside fused AdamW's pass (rtsent.training.speed).
        if self.distributed_gradients(model) or not speed.can_fold_clipping(self.optimizer, self.accelerator.scaler):
            return default(model)
        return speed.fold_clipping_into_adamw(self.optimizer, model.parameters(), self.args.max_grad_norm)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if metric_key_prefix == "eval" and output.predictions is not None:
            self.validation_scores[self.state.global_step] = (output.predictions, output.label_ids)
        return output

    def reload_best_model(self) -> bool:
        # When the best checkpoint is the last step's, the model in memory holds exactly its weights already.
        return self.state.best_global_step != self.state.global_step

    def release_optimizer(self) -> None:
        """After training only the model is needed: free AdamW's state (twice the weights) before export."""
        self.accelerator.free_memory()
        self.optimizer = self.lr_scheduler = None
        self.callback_handler.optimizer = self.callback_handler.lr_scheduler = None

    def release_model(self) -> None:
        """Once the model folder is written, the ONNX exporter (which loads that folder) has the memory:
        the model's and, released just before, AdamW's."""
        self.model = self.model_wrapped = self.callback_handler.model = None
        speed.release_free_memory()

    def after_rng_saved(self, output_dir: str) -> None:
        # Weights, optimizer and RNG are on disk, trainer_state.json (the completion mark) is not yet.
        crash_point("checkpoint:before-state", self.state.global_step)

    def _loss_and_scores(self, model: Any, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        device = inputs["input_ids"].device
        self.layout = self.layout.to(device)
        weights = self.class_weights.to(device) if self.class_weights is not None else None
        return label_scores.loss_and_scores(model, self.layout, inputs, self.loss_kind, weights,
                                           self.label_smoothing)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """A step's micro-batches (--micro-batches): their total weight, so that each one's mean loss counts
        by its size, the step's gradient then being that of the whole batch even when the sizes differ."""
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._step_weight = float(sum(self._example_weights(b["labels"]).sum() for b in batches)) if len(batches) > 1 else None
        return batches, num_items

    def _example_weights(self, labels: torch.Tensor) -> torch.Tensor:
        return self.class_weights[labels.cpu()] if self.class_weights is not None else torch.ones(len(labels))

    def training_step(self, model, inputs, num_items_in_batch=None):
        """A batch longer than --micro-batch-tokens (padded tokens) runs as row slices of at most that many, each
        trimmed to its own longest row, whose gradients add up to the whole batch's: the activation memory of a
        step is bounded by tokens, not rows, and the short batches (most of them) run whole, as before."""
        parts = token_slices(inputs, self.micro_batch_tokens)
        if len(parts) == 1:
            return super().training_step(model, inputs, num_items_in_batch)
        whole = self._step_weight
        if whole is None:  # one micro-batch: the slices' shares are of this batch
            self._step_weight = float(self._example_weights(inputs["labels"]).sum())
        try:
            return sum(super(LabelPositionTrainer, self).training_step(model, part, num_items_in_batch)
                       for part in parts)
        finally:
            self._step_weight = whole

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, scores = self._loss_and_scores(model, inputs)
        if model.training and self._step_weight:
            # Trainer divides each micro-batch's loss by their count; this makes it sum / the step's total weight.
            share = float(self._example_weights(inputs["labels"]).sum()) / self._step_weight
            loss = loss * share * self.current_gradient_accumulation_steps
        return (loss, {"scores": scores}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self.prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, scores = self._loss_and_scores(model, inputs)
        return loss.detach(), scores.detach(), inputs["labels"]


def token_slices(inputs: dict[str, torch.Tensor], budget: int) -> list[dict[str, torch.Tensor]]:
    """The batch as consecutive row slices of at most `budget` padded tokens each (at least one row a slice), each
    cut to its own longest row (right padding); the batch itself when it fits or budget is 0."""
    rows, width = inputs["input_ids"].shape
    if budget <= 0 or rows * width <= budget or rows == 1:
        return [inputs]
    count = -(-rows // max(1, budget // width))  # balanced slices of at most budget // width rows
    lengths = inputs["attention_mask"].sum(dim=1)
    bounds = [round(i * rows / count) for i in range(count + 1)]
    parts = []
    for start, stop in zip(bounds, bounds[1:]):
        keep = int(lengths[start:stop].max())
        parts.append({key: (value[start:stop, :keep] if value.dim() == 2 else value[start:stop])
                      for key, value in inputs.items()})
    return parts


def accuracy_metrics(pred: Any) -> dict[str, float]:
    return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}


class MetricsLog(TrainerCallback):
    """Appends every training/eval log event to metrics.jsonl."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")


class KeepHeapNearFirstStep(TrainerCallback):
    """speed.HeapCeiling after every optimizer step, while the reused heap is on (CPU training). (A trim after
    each evaluation as well did not lower an epoch's peak, which comes at the last evaluation and checkpoint:
    measured, not kept.)"""

    def __init__(self) -> None:
        self.ceiling = speed.HeapCeiling()

    def on_step_end(self, args, state, control, **kwargs):
        self.ceiling.after_step()


class SaveEveryBest(TrainerCallback):
    """Checkpoint at every evaluation that improves the best accuracy, whatever --save-every says.

    With --save-every a multiple of --eval-every, the best evaluation could otherwise fall on a step that
    was never saved: the Trainer would reload another checkpoint while rtsent.json, the card and the
    temperature describe the unsaved best step. Runs before the Trainer records the new best.
    """

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(f"eval_{args.metric_for_best_model}")
        if value is not None and (state.best_metric is None or value > state.best_metric):
            control.should_save = True


class RichProgress(TrainerCallback):
    """A Rich progress bar for training, with the latest loss and validation accuracy."""

    def __init__(self, console: Any):
        self.console = console
        self.progress = None

    def on_train_begin(self, args, state, control, **kwargs):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        if not state.is_world_process_zero or self.console is None:
            return
        self.progress = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=self.console)
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, info="")
        self.progress.start()

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress:
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.progress or not logs:
            return
        if "eval_accuracy" in logs:
            self.progress.console.print(
                f"step {state.global_step}: validation accuracy {logs['eval_accuracy']:.4f}, loss {logs['eval_loss']:.4f}"
            )
        elif "loss" in logs:
            self.progress.update(self.task, info=f"loss {logs['loss']:.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress:
            self.progress.stop()


class StopOnSignal(TrainerCallback):
    """Turns Ctrl-C / SIGTERM into 'save a checkpoint at the end of this step, then stop'."""

    def __init__(self) -> None:
        self.stopped_at: int | None = None
        self._requested = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading_main():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self._requested:  # a second Ctrl-C: stop now, the last complete checkpoint stays valid
            raise KeyboardInterrupt
        self._requested = True

    def on_step_end(self, args, state, control, **kwargs):
        interrupt_point(state.global_step)
        # Under torchrun a signal may reach one rank only: every rank must stop at the same step, or
        # the others wait forever in the next collective.
        if distributed.any_rank(self._requested):
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
