"""Stage 2, train: a Trainer whose loss sits at the label position only; best model exported."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from transformers import TrainingArguments

from rtsent import __version__
from rtsent.artifacts import card
from rtsent.training import distributed, lora, speed
from rtsent.artifacts.cache import clean_stale, locked, publish, staging
from rtsent.artifacts.files import write_json
from rtsent.artifacts.model import ModelMeta, ModelPaths
from rtsent.artifacts.prepared import PreparedMeta, find_prepared, in_workspace, load_prepared, prepare_command
from rtsent.config import CPU_MICRO_BATCH_TOKENS, FEW_SHOT_CHOOSING_ROWS, TrainConfig, to_dict
from rtsent.errors import ArtifactError, Interrupted, UsageError
from rtsent.faults import crash_point
from rtsent.training.options import (class_weights, early_stopping_callbacks, early_stopping_record, record,
                                     layer_rate_scales, tracker_setup, trackers,
                                     train_last_layers)
from rtsent.training.trainer import (KeepHeapNearFirstStep, LabelCollator, LabelPositionTrainer, MetricsLog, RichProgress,
                                     SaveEveryBest, StopOnSignal, accuracy_metrics)
from rtsent.core.prompts import LabelWords
from rtsent.core.families import check_max_len
from rtsent.core.modeling import default_device, load_model, load_tokenizer, origin_note, saved_config
from rtsent.core.prompts import tokenizer_fingerprint
from rtsent.machine import Machine, resolve_precision
from rtsent.quiet import quiet_transformers
from rtsent.artifacts.workspace import RunPaths, Workspace
from rtsent.artifacts.files import read_json


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
        if cfg.resume and ModelPaths(paths.model).is_model():
            return _finished(cfg, paths, log)
        return _train(cfg, ws, paths, console, log)


def _finished(cfg: TrainConfig, paths: RunPaths, log: Callable[[str], None]) -> TrainResult:
    """--resume of a run whose model is exported (the export is training's last step): nothing is left to
    train, and the model folder, with the reports, card and graphs added to it since, stays as it is."""
    meta = ModelMeta.read(paths.model)
    best, timing = meta.best or {}, meta.training or {}
    log(f"run {paths.name} is finished (trained on prepared data {cfg.prepared}; its model is {paths.model}); "
        f"nothing to resume")
    return TrainResult(paths, paths.model, best.get("validation_accuracy"), best.get("step"), int(timing.get("steps") or 0),
                       float(timing.get("seconds") or 0.0), float(timing.get("train_examples_per_s") or 0.0),
                       meta.calibration)


RESUME_MAY_CHANGE = ("micro_batches", "micro_batch_tokens", "gradient_checkpointing", "report_to", "plots")
"""Options that change how a step is computed or logged, not the update: --resume takes them as given."""


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
    defaults = TrainConfig()
    given = {f: getattr(cfg, f) for f in RESUME_MAY_CHANGE if getattr(cfg, f) != getattr(defaults, f)}
    resumed = TrainConfig(**{**{k: v for k, v in saved.items() if k in fields}, **given, "resume": True,
                             "run_name": paths.name, "prepared": record.get("prepared") or saved.get("prepared")})
    if in_workspace(ws, resumed.prepared) is None:
        raise ArtifactError(
            f"run {paths.name} was trained on prepared dataset {resumed.prepared}, which is no longer in "
            f"{ws.prepared_dir}; re-create it with `{prepare_command(record.get('prepared_config'))}` and resume, "
            f"or start a new run"
        )
    for f in fields - {"resume", "run_name"}:
        given, kept = getattr(cfg, f), getattr(resumed, f)
        if given != getattr(defaults, f) and given != kept:
            log(f"ignoring --{f.replace('_', '-')} {given}: --resume continues with the run's saved value {kept}")
    return resumed, paths


@dataclass
class _Prepared:
    """The run's prepared data, as training uses it."""

    path: Path
    meta: PreparedMeta
    train: Any
    validation: Any
    """Sorted by length: sequential evaluation batches of similar length pad little."""

    @property
    def label_words(self) -> LabelWords:
        return self.meta.label_words


def _train(cfg: TrainConfig, ws: Workspace, paths: RunPaths, console: Any, log: Callable[[str], None]) -> TrainResult:
    """The training stage as named steps: data, model, run record, trainer, fit, temperature, export."""
    from transformers import set_seed

    data, tok = _load_data(cfg, ws)
    # run.json names the data, not "latest", and the rate and step floor it trained with.
    cfg = dataclasses.replace(cfg.for_data(bool(data.meta.shots), len(data.train)), prepared=data.meta.fingerprint)
    set_seed(cfg.seed)
    device = default_device()
    precision = resolve_precision(cfg.precision, device)
    model = _build_model(cfg, data, tok, device, precision)
    trainable, params = lora.parameter_counts(model)
    checkpoint = _resume_point(cfg, paths, log)
    weights = class_weights(cfg.class_weights, data.meta)
    _record_run(cfg, paths, data, weights)
    trainer, stopper, total = _make_trainer(cfg, paths, data, tok, model, device, precision, weights, console)
    del model  # the trainer's from here on; released before the ONNX export
    _announce(cfg, paths, data, total, precision, device, log)
    output, seconds = _fit(trainer, stopper, checkpoint, device, paths)
    state = trainer.state
    if is_main_process() and cfg.early_stopping:
        record(paths.config, early_stopping=early_stopping_record(cfg.early_stopping, state, total))
    calibration = _fit_temperature(trainer, data.validation)  # every rank: predict() is collective under DDP
    trainer.release_optimizer()
    timing = {"seconds": round(seconds, 3), "steps": output.global_step, "train_examples": len(data.train),
              "train_examples_per_s": round(output.metrics.get("train_samples_per_second", 0.0), 2)}
    plots: tuple[Path, ...] = ()
    if is_main_process():
        _export(trainer, tok, ws, paths, cfg, data, state, calibration, timing, log)
        plots = _plots(cfg, paths, state.best_global_step, weights is not None)
    return TrainResult(paths, paths.model, state.best_metric, state.best_global_step, output.global_step, seconds,
                       timing["train_examples_per_s"], calibration, plots, trainable, params)


def _load_data(cfg: TrainConfig, ws: Workspace) -> tuple[_Prepared, Any]:
    """The prepared dataset the run trains on and the model's tokenizer, checked to be the one it was made with."""
    prepared = load_prepared(find_prepared(ws, cfg.prepared), ws)
    prepared_path, dd = prepared.path, prepared.dataset
    tok = load_tokenizer(cfg.model)
    if tokenizer_fingerprint(tok) != prepared.meta.tokenizer:
        raise ArtifactError(
            f"prepared data {prepared_path.name} was tokenized for {prepared.meta.model}, whose vocabulary differs from "
            f"{cfg.model}'s; run `rtsent prepare --model {cfg.model}` (with the same data/prompt options)"
        )
    if "validation" not in dd:
        raise ArtifactError(f"prepared data {prepared_path} has no validation split; re-run `rtsent prepare`")
    # In memory, so that training never writes a cache file into the shared, published prepared folder
    # (datasets' own sort() writes one even with keep_in_memory=True).
    order = np.argsort(np.asarray(dd["validation"]["length"]), kind="stable")
    validation = dd["validation"].select(order, keep_in_memory=True)
    return _Prepared(prepared_path, prepared.meta, dd["train"], validation), tok


def _build_model(cfg: TrainConfig, data: _Prepared, tok: Any, device: torch.device, precision: str) -> Any:
    """The model to train: fp32 master weights, the trained part chosen (all, --train-layers, --lora), levers on."""
    # On CPU, SDPA's flash-attention backward is the slowest op of a step (a quarter of it, measured);
    # the eager attention's plain matmuls train 1.4x faster. GPUs keep SDPA.
    attn = "eager" if device.type == "cpu" else None
    # fp32 master weights whatever the stored dtype (most hub models store bf16); autocast does the rest.
    model = load_model(cfg.model, cfg.from_scratch, cfg.config_overrides, dtype=torch.float32, compute=precision,
                       dropout=cfg.dropout, attn=attn)
    check_max_len(model.config, data.meta.max_len, cfg.model,
                  f"prepared data {data.path.name} is too long for it: re-run `rtsent prepare --model {cfg.model}` "
                  "--max-len {tokens} or less")
    model.config.pad_token_id = tok.pad_token_id
    if cfg.lora:
        model = lora.wrap(model, cfg)
    elif cfg.train_layers:
        train_last_layers(model, cfg.train_layers)
    if cfg.layer_decay != 1:  # before the run is recorded: a model it cannot split leaves no run behind
        _check_layer_decay(model, cfg.layer_decay)
    if distributed.world_size() == 1 and not cfg.compile:  # DDP's reducer takes gradients from autograd's sums
        speed.tied_embedding_rows_into_grad(model)
    vocab = model.get_output_embeddings().weight.shape[0]
    if max(t for word in data.label_words.words for t in word) >= vocab:
        raise ArtifactError(f"model {cfg.model} has {vocab} output tokens, fewer than the tokenizer's; use a matching model")
    return model


def _check_layer_decay(model: Any, decay: float) -> None:
    """--layer-decay needs the model's blocks (UsageError from layer_rate_scales where it has none found) and
    unsharded parameters: FSDP and DeepSpeed regroup them into flat tensors of mixed depth."""
    if distributed.sharded():
        raise UsageError("--layer-decay needs whole parameters, and this launch shards them (FSDP or DeepSpeed); "
                         "leave --layer-decay out, or train with DDP")
    layer_rate_scales(model, decay)


def micro_batch_tokens(cfg: TrainConfig, device: torch.device) -> int:
    """--micro-batch-tokens as given, else CPU_MICRO_BATCH_TOKENS on CPU and 0 (whole batches) on a GPU."""
    if cfg.micro_batch_tokens is not None:
        return cfg.micro_batch_tokens
    return CPU_MICRO_BATCH_TOKENS if device.type == "cpu" else 0


def _resume_point(cfg: TrainConfig, paths: RunPaths, log: Callable[[str], None]) -> Path | None:
    if is_main_process():
        paths.dir.mkdir(parents=True, exist_ok=True)
    checkpoint = _last_complete_checkpoint(paths.checkpoints) if cfg.resume else None
    if cfg.resume and checkpoint is None:
        log(f"run {paths.name} has no complete checkpoint yet; starting it from the beginning")
    return checkpoint


def _record_run(cfg: TrainConfig, paths: RunPaths, data: _Prepared, weights: list[float] | None) -> None:
    """run.json: the resolved config and the data it trains on (what --resume and `rtsent report` read)."""
    if is_main_process():
        write_json(paths.config, {"rtsent_version": __version__, "config": to_dict(cfg),
                                  "prepared": data.meta.fingerprint, "prepared_path": str(data.path),
                                  "prepared_config": data.meta.config, "class_weights": weights})


def _make_trainer(cfg: TrainConfig, paths: RunPaths, data: _Prepared, tok: Any, model: Any, device: torch.device,
                  precision: str, weights: list[float] | None, console: Any) -> tuple[LabelPositionTrainer, StopOnSignal, int]:
    """The Trainer with rtsent's callbacks (and the number of steps it will make)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    report_to, tracker_callbacks = tracker_setup(trackers(cfg.report_to), paths)
    args, total = _training_arguments(cfg, paths, device, precision, len(data.train), report_to,
                                      validation_rows=len(data.validation))
    stopper = StopOnSignal()
    trainer = LabelPositionTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.validation,
        processing_class=tok,
        data_collator=LabelCollator(tok.pad_token_id, multiple=16 if cfg.compile else 1),
        compute_metrics=accuracy_metrics,
        callbacks=[MetricsLog(paths.metrics), SaveEveryBest(), RichProgress(console), stopper, *tracker_callbacks,
                   *early_stopping_callbacks(cfg.early_stopping)],
        label_words=data.label_words,
        loss_kind=cfg.loss,
        class_weights=weights,
        micro_batch_tokens=micro_batch_tokens(cfg, device),
        layer_decay=cfg.layer_decay,
        label_smoothing=cfg.label_smoothing,
    )
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    return trainer, stopper, total


def _announce(cfg: TrainConfig, paths: RunPaths, data: _Prepared, total: int, precision: str, device: torch.device,
              log: Callable[[str], None]) -> None:
    note = origin_note(cfg.model)
    if note:
        log(f"model {note}")
    processes = f" x {distributed.world_size()} processes" if distributed.world_size() > 1 else ""
    caution = Machine.here().bf16_caution(precision) if device.type == "cpu" else ""
    log(f"training {paths.name} on {data.meta.describe()}: {len(data.train)} examples, {total} steps, "
        f"{precision} on {device.type}{processes}{caution}")


def _fit(trainer: LabelPositionTrainer, stopper: StopOnSignal, checkpoint: Path | None, device: torch.device,
         paths: RunPaths) -> tuple[Any, float]:
    """Trainer.train (from the checkpoint when resuming); raises Interrupted after a Ctrl-C/SIGTERM."""
    started = time.perf_counter()
    stopper.install()
    try:
        with speed.reused_heap() if device.type == "cpu" else contextlib.nullcontext() as reused:
            if reused:
                trainer.add_callback(KeepHeapNearFirstStep())
            output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:
        stopper.uninstall()
    if stopper.stopped_at is not None:
        raise Interrupted(
            f"training stopped at step {stopper.stopped_at}; a checkpoint is saved in {paths.checkpoints}; "
            f"continue with `rtsent train --resume --run-name {paths.name}`"
        )
    return output, time.perf_counter() - started


def _plots(cfg: TrainConfig, paths: RunPaths, best_step: int | None, class_weighted: bool) -> tuple[Path, ...]:
    if not cfg.plots:
        return ()
    from rtsent.plots import training_curves

    return (training_curves(paths.metrics, paths.plots / "training.png", best_step, class_weighted=class_weighted).path,)


def _fit_temperature(trainer: LabelPositionTrainer, eval_ds: Any) -> dict[str, Any]:
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
                        train_rows: int, report_to: list[str] | str = "none",
                        validation_rows: int = 0) -> tuple[TrainingArguments, int]:
    """The Trainer's arguments for a config, and the number of optimizer steps they make.

    Evaluation happens every eval_every steps, else once per epoch (or at max_steps; training stretched to
    --min-steps: about ten times, or once at the end where validation has fewer than FEW_SHOT_CHOOSING_ROWS rows),
    and always at the end; checkpoints follow evaluations so the best one can be kept.
    """
    # An epoch is a pass of the global batch: every process takes batch_size examples per step.
    steps_per_epoch = math.ceil(train_rows / (cfg.batch_size * distributed.world_size()))
    planned = math.ceil(steps_per_epoch * cfg.epochs)
    total = cfg.max_steps if cfg.max_steps > 0 else max(planned, cfg.min_steps or 0)
    # A few-shot split would make a handful of steps in --epochs: it trains for --min-steps instead. A development
    # set of a few examples a class cannot tell checkpoints apart (the final weights did better on the whole
    # validation split), a larger one can (FEW_SHOT_CHOOSING_ROWS, docs/method.md): evaluated (and checkpointed)
    # once, at the end, or about ten times. --early-stopping counts evaluations, so it always has about ten.
    few = cfg.max_steps <= 0 and total > planned
    choose = cfg.early_stopping or validation_rows >= FEW_SHOT_CHOOSING_ROWS
    few_every = max(1, total // 10) if choose else total
    eval_steps = cfg.eval_every or (cfg.max_steps if cfg.max_steps > 0 else few_every if few else steps_per_epoch)
    args = TrainingArguments(
        output_dir=str(paths.checkpoints),
        per_device_train_batch_size=cfg.batch_size // cfg.micro_batches,
        gradient_accumulation_steps=cfg.micro_batches,
        per_device_eval_batch_size=cfg.eval_batch_size,
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        max_steps=total if few else cfg.max_steps,
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


def _export(trainer: LabelPositionTrainer, tok: Any, ws: Workspace, paths: RunPaths, cfg: TrainConfig,
            data: "_Prepared", state: Any, calibration: dict[str, Any], timing: dict[str, Any],
            log: Callable[[str], None]) -> None:
    """Write the (best) model as a standalone HF folder plus rtsent.json (and its ONNX graph), atomically."""
    prepared = data.meta
    with staging(ws, f"export-{paths.name}") as tmp:
        trainable = lora.parameter_counts(trainer.model)[0]
        model = lora.for_export(trainer.model, cfg.lora_export, lora.base_reference(cfg.model))
        with saved_config(model):  # the base architecture, not rtsent's run-time training choices
            model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        crash_point("export:before-meta")
        ModelMeta.new(
            prompt=prepared.prompt, label_words=prepared.label_words,
            max_len=prepared.max_len, tokenizer=prepared.tokenizer, prepared=prepared.fingerprint,
            data=prepared.data, run=paths.name, train=to_dict(cfg),
            best={"step": state.best_global_step, "validation_accuracy": state.best_metric},
            calibration=calibration, training=timing,
            lora={"export": cfg.lora_export, "base_model": lora.base_reference(cfg.model),
                  "trainable_params": trainable} if cfg.lora else None,
        ).write(tmp)
        card.write(tmp)
        if cfg.onnx:
            from rtsent.artifacts.onnx_graph import after_training

            trainer.release_model()
            check = (list(data.validation["input_ids"]), list(data.validation["labels"])) if cfg.int8 else None
            after_training(tmp, log, cfg.int8, check)
        publish(tmp, paths.model)
