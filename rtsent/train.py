"""Stage 2, train: a Trainer whose loss sits at the label position only; best model exported."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from rtsent import __version__, prepare
from rtsent.artifacts import card
from rtsent.training import distributed, lora, speed
from rtsent.artifacts.cache import clean_stale, locked, publish, staging, write_json
from rtsent.artifacts.model import ModelMeta
from rtsent.config import TrainConfig, prompt_from_dict, to_dict
from rtsent.errors import ArtifactError, Interrupted, UsageError
from rtsent.faults import crash_point, interrupt_point
from rtsent.training.options import (class_weights, early_stopping_callbacks, early_stopping_record, label_position_loss,
                                  record, tracker_setup, trackers, train_last_layers)
from rtsent.core.families import check_max_len
from rtsent.core.modeling import (default_device, load_model, load_tokenizer, next_token_logits, origin_note, pad_batch,
                             quiet_transformers, resolve_precision, saved_config)
from rtsent.core.prompts import tokenizer_fingerprint
from rtsent.artifacts.workspace import MANIFEST, RunPaths, Workspace, read_json


@dataclass(frozen=True)
class TrainResult:
    run: RunPaths
    model_dir: Path
    best_accuracy: float | None
    best_step: int | None
    steps: int
    seconds: float
    train_examples_per_s: float
    calibration: dict[str, Any] | None = None
    plots: tuple[Path, ...] = ()
    trainable_params: int = 0
    total_params: int = 0


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


class LabelPositionTrainer(Trainer):
    """Trainer whose loss is the cross-entropy of the label word at the last prompt token.

    loss="lm" scores the whole vocabulary there (the seed recipe's objective); loss="label" scores
    the label words only. Evaluation returns [batch, classes] label-word logits, nothing larger.
    """

    def __init__(self, *args: Any, label_token_ids: list[int], loss_kind: str,
                 class_weights: list[float] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.label_token_ids = torch.tensor(label_token_ids, dtype=torch.long)
        self.loss_kind = loss_kind
        self.class_weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        # Our loss is already a per-example mean; let Trainer scale it for gradient accumulation.
        self.model_accepts_loss_kwargs = False
        # Validation scores of each evaluation by step, so the best model's need not be computed again.
        self.validation_scores: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _get_train_sampler(self, train_dataset: Any = None) -> SeededLengthSampler:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return SeededLengthSampler(list(dataset[self.args.length_column_name]), batch, self.args.data_seed)

    def _clip_grad_norm(self, model):
        # The same clipping, with the division done inside fused AdamW's pass (rtsent.training.speed).
        if (self.is_fsdp_enabled or self.is_deepspeed_enabled or self._has_mixed_mesh_grads(model)
                or not speed.can_fold_clipping(self.optimizer, self.accelerator.scaler)):
            return super()._clip_grad_norm(model)
        return speed.fold_clipping_into_adamw(self.optimizer, model.parameters(), self.args.max_grad_norm)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        if metric_key_prefix == "eval" and output.predictions is not None:
            self.validation_scores[self.state.global_step] = (output.predictions, output.label_ids)
        return output

    def _load_best_model(self) -> None:
        # The best checkpoint is the last step's: the model in memory holds exactly its weights already.
        if self.state.best_global_step != self.state.global_step:
            super()._load_best_model()

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

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        # Weights, optimizer and RNG are on disk, trainer_state.json (the completion mark) is not yet.
        crash_point("checkpoint:before-state", self.state.global_step)

    def _loss_and_scores(self, model: Any, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = next_token_logits(model, inputs["input_ids"], inputs["attention_mask"]).float()
        label_ids = self.label_token_ids.to(logits.device)
        scores = logits[:, label_ids]
        weights = self.class_weights.to(logits.device) if self.class_weights is not None else None
        return label_position_loss(logits, inputs["labels"], label_ids, self.loss_kind, weights), scores

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, scores = self._loss_and_scores(model, inputs)
        return (loss, {"scores": scores}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, scores = self._loss_and_scores(model, inputs)
        return loss.detach(), scores.detach(), inputs["labels"]


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


is_main_process = distributed.is_main_process


def run(cfg: TrainConfig, ws: Workspace, console: Any = None, log: Callable[[str], None] = lambda _: None) -> TrainResult:
    """Fine-tune cfg.model on a prepared dataset and export the best checkpoint to runs/<name>/model.

    Raises UsageError for bad options, ArtifactError for missing/mismatched inputs, BusyError when the
    run is in use, Interrupted after a Ctrl-C/SIGTERM (with a checkpoint saved for --resume).
    """
    distributed.init_process_group()
    if is_main_process():
        ws.ensure()
        clean_stale(ws)
    distributed.barrier()
    log = log if is_main_process() else (lambda _: None)
    cfg, paths = _resolve_run(cfg, ws, log)
    trackers(cfg.report_to)  # an unknown or uninstalled integration fails before anything is written
    lock = locked(ws, f"run-{paths.name}", f"run {paths.name}") if is_main_process() else contextlib.nullcontext()
    with lock, quiet_transformers():
        return _train(cfg, ws, paths, console, log)


def _resolve_run(cfg: TrainConfig, ws: Workspace, log: Callable[[str], None]) -> tuple[TrainConfig, RunPaths]:
    if not cfg.resume:
        # One name for all ranks: each rank's own clock could straddle a second and make two folders.
        name = cfg.run_name or distributed.from_main(time.strftime("run-%Y%m%d-%H%M%S"))
        paths = ws.run(name)
        if paths.config.exists():
            raise UsageError(f"run {name!r} already exists; continue it with --resume or pick another --run-name")
        return cfg, paths
    paths = ws.run(cfg.run_name) if cfg.run_name else ws.latest_run()
    if not paths.config.exists():
        raise ArtifactError(f"no run {paths.name!r} in {ws.runs_dir} to resume; start it with "
                            f"`rtsent train --run-name {paths.name}` (without --resume)")
    record = read_json(paths.config, f"run {paths.name} cannot be resumed; start a new run")
    saved = record.get("config", {})
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    # A run continues on its own data, never on whatever was prepared since.
    resumed = TrainConfig(**{**{k: v for k, v in saved.items() if k in fields}, "resume": True, "run_name": paths.name,
                             "prepared": record.get("prepared") or saved.get("prepared")})
    if resumed.prepared is None or not (ws.prepared(resumed.prepared) / MANIFEST).is_file():
        raise ArtifactError(
            f"run {paths.name} was trained on prepared dataset {resumed.prepared}, which is no longer in "
            f"{ws.prepared_dir}; re-create it with `{_prepare_command(record.get('prepared_config'))}` and resume, "
            f"or start a new run"
        )
    defaults = TrainConfig()
    for f in fields - {"resume", "run_name"}:
        given, kept = getattr(cfg, f), getattr(resumed, f)
        if given != getattr(defaults, f) and given != kept:
            log(f"ignoring --{f.replace('_', '-')} {given}: --resume continues with the run's saved value {kept}")
    return resumed, paths


def _prepare_command(config: dict[str, Any] | None) -> str:
    """The `rtsent prepare` command that rebuilds a run's dataset (same options, same fingerprint)."""
    if not config:
        return "rtsent prepare <the run's options>"
    prompt = config["prompt"]
    words = ",".join(prompt["label_words"]).replace("\n", "\\n")
    return (f"rtsent prepare --data {config['data']} --model {config['model']} --max-len {config['max_len']} "
            f"--template '{prompt['template']}' --label-words '{words}'".replace("\n", "\\n"))


def _train(cfg: TrainConfig, ws: Workspace, paths: RunPaths, console: Any, log: Callable[[str], None]) -> TrainResult:
    from transformers import set_seed

    prepared_path = ws.find_prepared(cfg.prepared)
    dd, manifest = prepare.load(prepared_path, ws)
    cfg = dataclasses.replace(cfg, prepared=manifest["fingerprint"])  # run.json names the data, not "latest"
    tok = load_tokenizer(cfg.model)
    if tokenizer_fingerprint(tok) != manifest["tokenizer"]:
        source = manifest["config"]["model"]
        raise ArtifactError(
            f"prepared data {prepared_path.name} was tokenized for {source}, whose vocabulary differs from "
            f"{cfg.model}'s; run `rtsent prepare --model {cfg.model}` (with the same data/prompt options)"
        )
    if "validation" not in dd:
        raise ArtifactError(f"prepared data {prepared_path} has no validation split; re-run `rtsent prepare`")
    set_seed(cfg.seed)
    device = default_device()
    precision = resolve_precision(cfg.precision, device)
    # On CPU, SDPA's flash-attention backward is the slowest op of a step (a quarter of it, measured);
    # the eager attention's plain matmuls train 1.4x faster. GPUs keep SDPA.
    attn = "eager" if device.type == "cpu" else None
    # fp32 master weights whatever the stored dtype (most hub models store bf16); autocast does the rest.
    model = load_model(cfg.model, cfg.from_scratch, cfg.config_overrides, dtype=torch.float32, compute=precision,
                       dropout=cfg.dropout, attn=attn)
    check_max_len(model.config, manifest["max_len"], cfg.model,
                  f"prepared data {prepared_path.name} is too long for it: re-run `rtsent prepare --model {cfg.model}` "
                  "--max-len {tokens} or less")
    model.config.pad_token_id = tok.pad_token_id
    if cfg.lora:
        model = lora.wrap(model, cfg)
    elif cfg.train_layers:
        train_last_layers(model, cfg.train_layers)
    if distributed.world_size() == 1 and not cfg.compile:  # DDP's reducer expects a sparse Embedding's grad sparse
        speed.sparse_tied_embedding_grad(model)
    trainable, params = lora.parameter_counts(model)
    vocab = model.get_output_embeddings().weight.shape[0]
    if max(manifest["label_ids"]) >= vocab:
        raise ArtifactError(f"model {cfg.model} has {vocab} output tokens, fewer than the tokenizer's; use a matching model")

    if is_main_process():
        paths.dir.mkdir(parents=True, exist_ok=True)
    checkpoint = _last_complete_checkpoint(paths.checkpoints) if cfg.resume else None
    if cfg.resume and checkpoint is None:
        log(f"run {paths.name} has no complete checkpoint yet; starting it from the beginning")
    weights = class_weights(cfg.class_weights, manifest)
    if is_main_process():
        write_json(paths.config, {"rtsent_version": __version__, "config": to_dict(cfg),
                                  "prepared": manifest["fingerprint"], "prepared_path": str(prepared_path),
                                  "prepared_config": manifest["config"], "class_weights": weights})

    train_ds = dd["train"]
    # Sequential eval batches of similar length pad little; in memory, so that training never writes
    # a cache file into the shared, published prepared folder.
    # (datasets' own sort() writes one even with keep_in_memory=True.)
    order = np.argsort(np.asarray(dd["validation"]["length"]), kind="stable")
    eval_ds = dd["validation"].select(order, keep_in_memory=True)
    report_to, tracker_callbacks = tracker_setup(trackers(cfg.report_to), paths)
    args, total = _training_arguments(cfg, paths, device, precision, len(train_ds), report_to)
    stopper = StopOnSignal()
    trainer = LabelPositionTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tok,
        data_collator=LabelCollator(tok.pad_token_id, multiple=16 if cfg.compile else 1),
        compute_metrics=accuracy_metrics,
        callbacks=[MetricsLog(paths.metrics), SaveEveryBest(), RichProgress(console), stopper, *tracker_callbacks,
                   *early_stopping_callbacks(cfg.early_stopping)],
        label_token_ids=manifest["label_ids"],
        loss_kind=cfg.loss,
        class_weights=weights,
    )
    del model  # the trainer's from here on; released before the ONNX export
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    note = origin_note(cfg.model)
    if note:
        log(f"model {note}")
    log(f"training {paths.name} on {prepare.describe(manifest)}: {len(train_ds)} examples, {total} steps, "
        f"{precision} on {device.type}" + (f" x {distributed.world_size()} processes" if distributed.world_size() > 1 else ""))
    started = time.perf_counter()
    stopper.install()
    try:
        with speed.reused_heap() if device.type == "cpu" else contextlib.nullcontext():
            output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:
        stopper.uninstall()
    seconds = time.perf_counter() - started
    if stopper.stopped_at is not None:
        raise Interrupted(
            f"training stopped at step {stopper.stopped_at}; a checkpoint is saved in {paths.checkpoints}; "
            f"continue with `rtsent train --resume --run-name {paths.name}`"
        )
    state = trainer.state
    best_step = state.best_global_step
    if is_main_process() and cfg.early_stopping:
        record(paths.config, early_stopping=early_stopping_record(cfg.early_stopping, state, total))
    calibration = _fit_temperature(trainer, eval_ds)  # every rank: predict() is collective under DDP
    trainer.release_optimizer()
    timing = {"seconds": round(seconds, 3), "steps": output.global_step, "train_examples": len(train_ds),
              "train_examples_per_s": round(output.metrics.get("train_samples_per_second", 0.0), 2)}
    plots: tuple[Path, ...] = ()
    if is_main_process():
        _export(trainer, tok, ws, paths, cfg, manifest, state, calibration, timing, log)
        if cfg.plots:
            from rtsent.plots import training_curves

            plots = (training_curves(paths.metrics, paths.dir / "plots" / "training.png", best_step,
                                     class_weighted=weights is not None).path,)
    return TrainResult(paths, paths.model, state.best_metric, best_step, output.global_step, seconds,
                       timing["train_examples_per_s"], calibration, plots, trainable, params)


def _fit_temperature(trainer: Trainer, eval_ds: Any) -> dict[str, Any]:
    """Temperature of the best model's label-word scores, fitted on validation (its NLL, one scalar)."""
    from rtsent.core.calibration import temperature_record

    best = trainer.state.best_global_step
    if best in trainer.validation_scores:  # scored by this process at that step: the same model, the same batches
        scores, labels = trainer.validation_scores[best]
    else:  # the best evaluation happened before a resume
        out = trainer.predict(eval_ds)
        scores, labels = out.predictions, out.label_ids
    return temperature_record(np.asarray(scores, dtype=np.float64), np.asarray(labels))


def _training_arguments(cfg: TrainConfig, paths: RunPaths, device: torch.device, precision: str,
                        train_rows: int, report_to: list[str] | str = "none") -> tuple[TrainingArguments, int]:
    """The Trainer's arguments for a config, and the number of optimizer steps they make.

    Evaluation happens every eval_every steps, else once per epoch (or at max_steps), and always at
    the end; checkpoints follow evaluations so the best one can be kept.
    """
    # An epoch is a pass of the global batch: every process takes batch_size examples per step.
    steps_per_epoch = math.ceil(train_rows / (cfg.batch_size * distributed.world_size()))
    eval_steps = cfg.eval_every or (cfg.max_steps if cfg.max_steps > 0 else steps_per_epoch)
    total = cfg.max_steps if cfg.max_steps > 0 else math.ceil(steps_per_epoch * cfg.epochs)
    args = TrainingArguments(
        output_dir=str(paths.checkpoints),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        warmup_steps=cfg.warmup if cfg.warmup < 1 else int(cfg.warmup),
        weight_decay=cfg.weight_decay,
        eval_strategy="steps",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=cfg.save_every or eval_steps,
        save_total_limit=cfg.save_limit,
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        greater_is_better=True,
        logging_strategy="steps",
        logging_steps=max(1, min(50, total // 20)),
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device.type == "cpu",
        activation_checkpointing=cfg.gradient_checkpointing,
        torch_compile=cfg.compile,
        length_column_name="length",  # read by SeededLengthSampler, our length-grouped order
        remove_unused_columns=False,
        label_names=["labels"],
        report_to=report_to,
        run_name=paths.name,
        disable_tqdm=True,
        log_level_replica="error",
        ddp_find_unused_parameters=False,  # the loss uses every parameter; skip DDP's extra graph walk
        dataloader_num_workers=0,
    )
    return args, total


def _last_complete_checkpoint(folder: Path) -> Path | None:
    """Newest checkpoint whose trainer_state.json (the last file the Trainer writes) is whole.

    Incomplete checkpoints (a kill mid-save) are removed, by rank 0 alone, so the Trainer's own rotation
    never keeps them; the other ranks look once it is done.
    """
    if is_main_process():
        found = _complete_checkpoints(folder, remove_incomplete=True)
    distributed.barrier()
    if not is_main_process():
        found = _complete_checkpoints(folder, remove_incomplete=False)
    return max(found)[1] if found else None


def _complete_checkpoints(folder: Path, remove_incomplete: bool) -> list[tuple[int, Path]]:
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    found = []
    for entry in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if folder.is_dir() else ():
        try:
            step = int(entry.name.rsplit("-", 1)[1])
            json.loads((entry / "trainer_state.json").read_text())
        except (ValueError, OSError):
            if remove_incomplete:
                shutil.rmtree(entry, ignore_errors=True)
            continue
        found.append((step, entry))
    return found


def _export(trainer: Trainer, tok: Any, ws: Workspace, paths: RunPaths, cfg: TrainConfig,
            manifest: dict[str, Any], state: Any, calibration: dict[str, Any], timing: dict[str, Any],
            log: Callable[[str], None]) -> None:
    """Write the (best) model as a standalone HF folder plus rtsent.json (and its ONNX graph), atomically."""
    with staging(ws, f"export-{paths.name}") as tmp:
        trainable = lora.parameter_counts(trainer.model)[0]
        model = lora.for_export(trainer.model, cfg.lora_export, lora.base_reference(cfg.model))
        with saved_config(model):  # the base architecture, not rtsent's run-time training choices
            model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        crash_point("export:before-meta")
        ModelMeta.new(
            prompt=prompt_from_dict(manifest["prompt"]), label_ids=tuple(manifest["label_ids"]),
            max_len=manifest["max_len"], tokenizer=manifest["tokenizer"], prepared=manifest["fingerprint"],
            data=manifest["config"]["data"], run=paths.name, train=to_dict(cfg),
            best={"step": state.best_global_step, "validation_accuracy": state.best_metric},
            calibration=calibration, training=timing,
            lora={"export": cfg.lora_export, "base_model": lora.base_reference(cfg.model),
                  "trainable_params": trainable} if cfg.lora else None,
        ).write(tmp)
        card.write(tmp)
        if cfg.onnx:
            from rtsent.export import after_training

            trainer.release_model()
            after_training(tmp, log)
        publish(tmp, paths.model)
