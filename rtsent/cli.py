"""The Typer app: one thin command per stage (options -> config -> stage.run -> summary).

Heavy libraries (torch, transformers, datasets) are imported inside the commands, so `--help` and
option errors are instant. Errors are printed here and only here, as one line with an exit code.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from typing import Any, Callable, List, Optional

import typer

from rtsent.config import (DEFAULT_DATA, DEFAULT_LABEL_WORDS, DEFAULT_MODEL, DEFAULT_TEMPLATE, EvaluateConfig, ExportConfig,
                           PredictConfig, PrepareConfig, PromptConfig, PushConfig, ServeConfig, TrainConfig, split_list,
                           unescape)
from rtsent.errors import RtsentError

class _OneLineErrors(typer.core.TyperGroup):
    """Typer's command group, with usage errors (unknown option, bad value) printed as one line like
    every other rtsent error, instead of a usage block and a boxed panel."""

    def main(self, args: Any = None, *rest: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        argv = sys.argv[1:] if args is None else list(args)
        if not standalone_mode or not argv:  # bare `rtsent`: Typer shows the help
            return super().main(args, *rest, standalone_mode=standalone_mode, **kwargs)
        try:
            code = super().main(argv, *rest, standalone_mode=False, **kwargs)
        except typer.TyperException as exc:  # Typer's usage errors (its click's, vendored) derive from it
            ctx = getattr(exc, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            _error("error", exc.format_message().rstrip(".") + hint)
            sys.exit(getattr(exc, "exit_code", 2))
        except typer.Abort:
            _error("error", "aborted")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    name="rtsent",
    help="Fine-tune a causal LM (GPT-2 by default) as a label-word sentiment classifier: prepare -> train -> evaluate -> predict, then serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

WORKDIR_HELP = "Workspace folder for prepared data and runs (default: ./data)."
TEMPLATE_HELP = "Prompt template with {text} where the review goes (\\n understood)."
WORDS_HELP = "Comma-separated label words, one per class in class-id order, each one token (\\n understood)."
ENGINE_HELP = "auto (the ONNX graph when the model folder has one, else torch), torch or onnx."
SCORING_PRECISION_HELP = "auto, fp32, bf16 or fp16 (torch); auto, fp32 or int8 (onnx; auto is int8 when exported)."


def _stderr():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _log(message: str) -> None:
    _stderr().print(message, markup=False)


def _error(kind: str, message: str) -> None:
    from rich.text import Text

    _stderr().print(Text.assemble((f"{kind}: ", "bold red"), " ".join(message.split())), soft_wrap=True)


def _quiet_libraries() -> None:
    """Keep library chatter (download bars, advisory warnings) off the user's terminal."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\..*")


def handled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command, turning every failure into one line on stderr and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _quiet_libraries()
        debug = os.environ.get("RTSENT_DEBUG", "") not in ("", "0")
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except RtsentError as exc:
            if debug:
                raise
            _error("error", str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            _stderr().print("[red]interrupted[/red]")
            raise typer.Exit(130) from None
        except BrokenPipeError:  # `rtsent predict ... | head`: the reader is gone, stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(0) from None
        except OSError as exc:
            if debug:
                raise
            if _disk_full(exc, kwargs.get("workdir")):
                _error("error", f"the disk is full ({exc.filename or 'while writing'}); free space and run the command again")
            else:
                _error("error", f"{exc.strerror or exc} ({exc.filename}); check the path and its permissions")
            raise typer.Exit(1) from None
        except Exception as exc:  # the last line of defence: never a traceback without --debug
            if debug:
                raise
            if _disk_full(exc, kwargs.get("workdir")):  # torch/safetensors wrap ENOSPC in their own errors
                _error("error", "the disk is full (while writing); free space and run the command again")
                raise typer.Exit(1) from None
            _error("internal error", f"{type(exc).__name__}: {exc} (re-run with --debug for the traceback)")
            raise typer.Exit(1) from None

    return wrapper


# Below this much free space a failed write is taken for a full disk, whatever the error says
# (torch's checkpoint writer reports only "file write failed").
LOW_DISK_BYTES = 64 << 20


def _disk_full(exc: BaseException | None, workdir: Optional[str] = None) -> bool:
    seen = 0
    while exc is not None and seen < 10:
        if getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    import shutil

    try:
        where = _workspace(workdir).root.absolute()
        while not where.exists():
            where = where.parent
        return shutil.disk_usage(where).free < LOW_DISK_BYTES
    except (OSError, RtsentError):
        return False


def _workspace(workdir: Optional[str]):
    from rtsent.artifacts.workspace import Workspace

    return Workspace.resolve(workdir)


def _prompt(template: Optional[str], label_words: Optional[str], label_names: Optional[str],
            required: bool = True) -> Optional[PromptConfig]:
    if not required and template is None and label_words is None and label_names is None:
        return None
    kwargs: dict[str, Any] = {}
    if template is not None:
        kwargs["template"] = unescape(template)
    if label_words is not None:
        kwargs["label_words"] = split_list(label_words)
    if label_names is not None:
        kwargs["label_names"] = tuple(n.strip() for n in label_names.split(","))
    return PromptConfig(**kwargs)


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks (or set RTSENT_DEBUG=1)."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                 callback=lambda value: _print_version() if value else None),
) -> None:
    if debug:
        os.environ["RTSENT_DEBUG"] = "1"


def _print_version() -> None:
    # An eager callback: a group's own body never runs without a command, so `rtsent --version` would fail.
    from rtsent import __version__

    typer.echo(__version__)
    raise typer.Exit()


@app.command()
@handled
def prepare(
    data: str = typer.Option(DEFAULT_DATA, help="Hub dataset name, or a folder of train/validation/test .parquet/.csv/.jsonl files, or a save_to_disk folder."),
    model: str = typer.Option(DEFAULT_MODEL, help="Model (hub name or folder) whose tokenizer to use."),
    template: str = typer.Option(DEFAULT_TEMPLATE.replace("\n", "\\n"), help=TEMPLATE_HELP),
    label_words: str = typer.Option(",".join(DEFAULT_LABEL_WORDS), help=WORDS_HELP),
    label_names: Optional[str] = typer.Option(None, help="Comma-separated class names (default: the label words, stripped)."),
    max_len: int = typer.Option(PrepareConfig.max_len, help="Longest prompt in tokens; longer reviews lose their tail, never the template."),
    text_column: str = typer.Option(PrepareConfig.text_column, help="Column holding the review text."),
    label_column: str = typer.Option(PrepareConfig.label_column, help="Column holding the label (0..K-1, a label name, or a ClassLabel matched by name)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if this exact dataset is cached."),
    subset: Optional[str] = typer.Option(None, help="Hub dataset configuration, e.g. --data glue --subset sst2."),
    splits: str = typer.Option(PrepareConfig.splits, help="Which dataset split feeds train/validation/test, e.g. validation=test,test=none (default: the same names; none drops test, or carves validation from train)."),
    validation_fraction: float = typer.Option(PrepareConfig.validation_fraction, help="Without a validation split: share of each class of train held out as validation."),
    seed: int = typer.Option(PrepareConfig.seed, help="Seed of the held-out validation draw."),
    workdir: Optional[str] = typer.Option(None, envvar="RTSENT_HOME", help=WORKDIR_HELP),
) -> None:
    """Tokenize the dataset once and cache it in the workspace, keyed by a fingerprint."""
    cfg = PrepareConfig(data=data, model=model, prompt=_prompt(template, label_words, label_names), max_len=max_len,
                        text_column=text_column, label_column=label_column, force=force, subset=subset,
                        splits=splits, validation_fraction=validation_fraction, seed=seed)
    from rtsent import prepare as stage
    from rtsent.console import print_prepared

    print_prepared(stage.run(cfg, _workspace(workdir), _log))


@app.command()
@handled
def train(
    model: str = typer.Option(TrainConfig.model, help="Starting model: hub name or local folder."),
    prepared: Optional[str] = typer.Option(None, help="Prepared dataset folder or fingerprint (default: the latest)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default 5e-5; 5e-4 with --lora)."),
    batch_size: int = typer.Option(TrainConfig.batch_size, help="Training examples per step."),
    eval_batch_size: int = typer.Option(TrainConfig.eval_batch_size, help="Examples per evaluation batch."),
    epochs: float = typer.Option(TrainConfig.epochs, help="Passes over the training split."),
    max_steps: int = typer.Option(TrainConfig.max_steps, help="Stop after N steps (overrides --epochs when > 0)."),
    warmup: float = typer.Option(TrainConfig.warmup, help="Warm-up: a ratio of all steps when < 1, else steps."),
    weight_decay: float = typer.Option(TrainConfig.weight_decay, help="AdamW weight decay."),
    eval_every: Optional[int] = typer.Option(None, help="Evaluate on validation every N steps (default: once per epoch)."),
    save_every: Optional[int] = typer.Option(None, help="Checkpoint every N steps, a multiple of --eval-every, and at every new best evaluation (default: at each evaluation)."),
    save_limit: int = typer.Option(TrainConfig.save_limit, help="Checkpoints kept on disk (best and latest included)."),
    seed: int = typer.Option(TrainConfig.seed, help="Random seed (weights init, data order)."),
    loss: str = typer.Option(TrainConfig.loss, help="lm: cross-entropy over the vocabulary (seed recipe); label: over the label words only."),
    precision: str = typer.Option(TrainConfig.precision, help="auto (bf16 where the CPU/GPU is fast at it, fp16 on older GPUs, else fp32), fp32, bf16 or fp16."),
    dropout: float = typer.Option(TrainConfig.dropout, help="Dropout of every dropout layer; 0.1 restores GPT-2's pretraining value (slower on CPU)."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing", help="Recompute activations to save memory (slower)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model (lengths bucketed to multiples of 16)."),
    run_name: Optional[str] = typer.Option(None, help="Name of the run folder (default: run-<date>-<time>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue a run (--run-name, default the latest) from its last checkpoint."),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="Random weights from the model's config instead of its weights."),
    config_overrides: str = typer.Option("", help="With --from-scratch: config changes such as n_layer=2,n_embd=64,n_head=2 (the config's own key names)."),
    early_stopping: Optional[int] = typer.Option(None, help="Stop after N evaluations without a better validation accuracy."),
    class_weights: str = typer.Option(TrainConfig.class_weights, help="auto: weight each class's loss by its inverse frequency in train (imbalanced data); none."),
    report_to: str = typer.Option(TrainConfig.report_to, help="Also log to these Trainer integrations: tensorboard (events in runs/<name>/tensorboard), wandb, mlflow, ... (comma-separated, installed ones), or none."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Skip the training-curves PNG (runs/<name>/plots/)."),
    onnx: bool = typer.Option(TrainConfig.onnx, "--onnx/--no-onnx", help="Also export an ONNX graph of the model (the fast predict engine)."),
    train_layers: Optional[int] = typer.Option(None, help="Train only the last N transformer blocks (and the final norm); embeddings and earlier blocks stay frozen, and the backward pass stops there (faster, less memory). Default: every block."),
    lora: bool = typer.Option(False, "--lora", help="Train LoRA adapters (peft) instead of every weight."),
    lora_r: int = typer.Option(TrainConfig.lora_r, help="LoRA rank."),
    lora_alpha: float = typer.Option(TrainConfig.lora_alpha, help="LoRA alpha (the update is scaled by alpha/r)."),
    lora_dropout: float = typer.Option(TrainConfig.lora_dropout, help="Dropout on the LoRA input."),
    lora_targets: Optional[str] = typer.Option(None, help="Comma-separated layer names to adapt (default: the model family's, e.g. c_attn for GPT-2, q_proj,v_proj for Llama)."),
    lora_export: str = typer.Option(TrainConfig.lora_export, help="merged: a plain model folder (no peft needed to load); adapter: the adapter alone, loaded with its base model."),
    workdir: Optional[str] = typer.Option(None, envvar="RTSENT_HOME", help=WORKDIR_HELP),
) -> None:
    """Fine-tune on the prepared data; keep the best checkpoint by validation accuracy and export it."""
    cfg = TrainConfig(model=model, prepared=prepared, lr=lr, batch_size=batch_size, eval_batch_size=eval_batch_size,
                      epochs=epochs, max_steps=max_steps, warmup=warmup, weight_decay=weight_decay,
                      eval_every=eval_every, save_every=save_every, save_limit=save_limit, seed=seed, loss=loss,
                      precision=precision, dropout=dropout, gradient_checkpointing=gradient_checkpointing, compile=compile,
                      run_name=run_name, resume=resume, from_scratch=from_scratch,
                      config_overrides=config_overrides, early_stopping=early_stopping, class_weights=class_weights,
                      report_to=report_to, plots=not no_plots, onnx=onnx, train_layers=train_layers, lora=lora, lora_r=lora_r,
                      lora_alpha=lora_alpha, lora_dropout=lora_dropout, lora_targets=lora_targets,
                      lora_export=lora_export)
    from rtsent import train as stage
    from rtsent.console import print_trained

    result = stage.run(cfg, _workspace(workdir), _stderr(), _log)
    if stage.is_main_process():  # under torchrun every rank runs this command; one summary is enough
        print_trained(result)


@app.command()
@handled
def evaluate(
    model: Optional[List[str]] = typer.Option(None, help="Exported model folder, or a base model for zero-shot (default: the latest run's model); repeat to compare models side by side."),
    split: str = typer.Option(EvaluateConfig.split, help="validation or test."),
    prepared: Optional[str] = typer.Option(None, help="Prepared dataset folder or fingerprint (default: the model's, else the latest)."),
    data: Optional[str] = typer.Option(None, help="Score a labelled .csv/.jsonl/.parquet file (or a folder's <split> file) instead of prepared data."),
    text_column: str = typer.Option(EvaluateConfig.text_column, help="With --data: the text column."),
    label_column: str = typer.Option(EvaluateConfig.label_column, help="With --data: the label column (class ids or label names)."),
    zero_shot: bool = typer.Option(False, "--zero-shot", help="Score a base model (no rtsent.json) with the default prompt."),
    template: Optional[str] = typer.Option(None, help="Zero-shot: " + TEMPLATE_HELP),
    label_words: Optional[str] = typer.Option(None, help="Zero-shot: " + WORDS_HELP),
    label_names: Optional[str] = typer.Option(None, help="Zero-shot: comma-separated class names."),
    calibrate: bool = typer.Option(False, "--calibrate", help="Contextual calibration (content-free inputs 'N/A', '', '[MASK]'); reports accuracy and ECE with and without."),
    errors: Optional[int] = typer.Option(None, help="Print the N most confident mistakes; write every mistake to <report>-errors.jsonl."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Skip the PNG figures written next to the report."),
    batch_size: int = typer.Option(EvaluateConfig.batch_size, help="Examples per batch."),
    precision: str = typer.Option(EvaluateConfig.precision, help=SCORING_PRECISION_HELP),
    engine: str = typer.Option(EvaluateConfig.engine, help=ENGINE_HELP),
    output: Optional[str] = typer.Option(None, help="Where to write the JSON report (default: next to the model)."),
    workdir: Optional[str] = typer.Option(None, envvar="RTSENT_HOME", help=WORKDIR_HELP),
) -> None:
    """Accuracy, macro-F1, per-class precision/recall, confusion matrix and calibration on a split."""
    prompt = _prompt(template, label_words, label_names, required=zero_shot)
    models = list(model or [])
    cfg = EvaluateConfig(model=models[0] if len(models) == 1 else None, split=split, prepared=prepared, prompt=prompt,
                         batch_size=batch_size, precision=precision, engine=engine, output=output, data=data, text_column=text_column,
                         label_column=label_column, calibrate=calibrate, errors=errors, plots=not no_plots)
    from rtsent import evaluate as stage
    from rtsent import console as report

    if len(models) > 1:
        report.print_comparison(stage.compare(cfg, models, _workspace(workdir), _log))
    else:
        report.print_evaluation(stage.run(cfg, _workspace(workdir), _log))


@app.command()
@handled
def predict(
    texts: Optional[List[str]] = typer.Argument(None, help="Reviews to classify; '-' reads one per line from stdin."),
    file: Optional[str] = typer.Option(None, "--file", "-f", help="txt (one review a line), csv, jsonl or parquet."),
    text_column: str = typer.Option(PredictConfig.text_column, help="Text column of a csv/jsonl/parquet file."),
    keep_columns: Optional[str] = typer.Option(None, help="Comma-separated columns of a csv/jsonl/parquet file to copy into each output row, e.g. id."),
    model: Optional[str] = typer.Option(None, help="Exported model folder (default: the latest run's model)."),
    output_format: str = typer.Option(PredictConfig.format, "--format", help="auto (table for arguments, jsonl for files), table, json, jsonl or csv."),
    batch_size: int = typer.Option(PredictConfig.batch_size, help="Reviews per batch."),
    precision: str = typer.Option(PredictConfig.precision, help=SCORING_PRECISION_HELP),
    engine: str = typer.Option(PredictConfig.engine, help=ENGINE_HELP),
    max_len: Optional[int] = typer.Option(None, help="Longest prompt in tokens (default: the model's training max-len)."),
    template: Optional[str] = typer.Option(None, help="Zero-shot base model only: " + TEMPLATE_HELP),
    label_words: Optional[str] = typer.Option(None, help="Zero-shot base model only: " + WORDS_HELP),
    workdir: Optional[str] = typer.Option(None, envvar="RTSENT_HOME", help=WORKDIR_HELP),
) -> None:
    """Label and probability (softmax over the label words) for each review; one output row per input row."""
    texts = list(texts or [])
    if texts == ["-"]:
        texts, file = [], "-"
    cfg = PredictConfig(model=model, texts=tuple(texts), file=file, text_column=text_column, format=output_format,
                        batch_size=batch_size, precision=precision, engine=engine, max_len=max_len,
                        keep_columns=tuple(c.strip() for c in keep_columns.split(",") if c.strip()) if keep_columns else ())
    from rtsent import predict as stage

    stats = stage.run(cfg, _workspace(workdir), prompt=_prompt(template, label_words, None, required=False))
    if stats.note:
        _log(stats.note)
    if cfg.file:
        _log(f"{stats.count} reviews in {stats.seconds:.1f} s ({stats.per_second:.0f} reviews/s; "
             f"model loaded in {stats.load_seconds:.1f} s)")
        if stats.unlabelled:
            _log(f"{stats.unlabelled} rows had no text: their output rows have no label and an \"error\"")


@app.command("report")
@handled
def report_(
    run: Optional[str] = typer.Argument(None, help="Run name or folder (default: the latest run)."),
    output_format: str = typer.Option("table", "--format", help="table (print), md or json (write the report file)."),
    output: Optional[str] = typer.Option(None, help="Where to write md/json (default: runs/<name>/report.md|json)."),
    workdir: Optional[str] = typer.Option(None, envvar="RTSENT_HOME", help=WORKDIR_HELP),
) -> None:
    """Summary of a run: config, data, best step, validation/test metrics, timing, calibration, plots."""
    from rtsent import report as runs
    from rtsent.console import print_run

    summary = runs.run_report(_workspace(workdir), run)
    if output_format == "table":
        print_run(summary)
    else:
        typer.echo(f"report written to {runs.write_report(summary, output_format, output)}")


@app.command("runs")
@handled
def runs_(
    output_format: str = typer.Option("table", "--format", help="table or json."),
    workdir: Optional[str] = typer.Option(None, envvar="RTSENT_HOME", help=WORKDIR_HELP),
) -> None:
    """The workspace's runs with their key metrics, newest first."""
    from rtsent import report as runs
    from rtsent.console import print_runs

    listed = runs.list_runs(_workspace(workdir), output_format)
    if output_format == "json":
        import json

        typer.echo(json.dumps(listed, indent=2))
    else:
        print_runs(listed)


@app.command("export")
@handled
def export_(
    model: Optional[str] = typer.Argument(None, help="Model folder written by `rtsent train` (default: the latest run's model)."),
    int8: bool = typer.Option(ExportConfig.int8, "--int8", help="Also write a dynamically quantized int8 graph."),
    seq_cls: bool = typer.Option(ExportConfig.seq_cls, "--seq-cls", help="Write a standard *ForSequenceClassification folder instead: transformers' text-classification pipeline, vLLM and text-embeddings-inference serve it as it is."),
    output: Optional[str] = typer.Option(None, help="With --seq-cls: the folder to write (default: runs/<name>/seq-cls)."),
    workdir: Optional[str] = typer.Option(None, envvar="RTSENT_HOME", help=WORKDIR_HELP),
) -> None:
    """Add an ONNX graph and tokenizer.json to a model folder (predict without torch), or --seq-cls: export
    the classifier as a standard sequence-classification folder."""
    cfg = ExportConfig(model=model, int8=int8, seq_cls=seq_cls, output=output)
    from rtsent import export as stage

    folder, record = stage.run(cfg, _workspace(workdir), _log)
    if seq_cls:
        sends = record["client_sends"]
        _log(f"wrote {folder}: pipeline('text-classification', model='{folder}'), vLLM and text-embeddings-inference "
             f"serve it; clients send {sends!r}")
    else:
        _log(f"wrote {', '.join(record['graphs'].values())} in {folder} (the onnx engine)")


@app.command()
@handled
def push(
    run: str = typer.Argument(..., help="Run name (its exported model) or an exported model folder."),
    repo_id: str = typer.Option(..., help="Hub repository to upload to: user/name or org/name."),
    private: bool = typer.Option(False, "--private", help="Create the repository as private."),
    workdir: Optional[str] = typer.Option(None, envvar="RTSENT_HOME", help=WORKDIR_HELP),
) -> None:
    """Upload an exported model (weights, tokenizer, rtsent.json, model card) to the Hugging Face hub."""
    cfg = PushConfig(run=run, repo_id=repo_id, private=private)
    from rtsent import push as stage

    typer.echo(stage.run(cfg, _workspace(workdir), _log))


@app.command()
@handled
def serve(
    model: Optional[str] = typer.Option(None, help="Exported model folder (default: the latest run's model)."),
    host: str = typer.Option(ServeConfig.host, help="Interface to listen on (0.0.0.0 opens it to the network)."),
    port: int = typer.Option(ServeConfig.port, help="TCP port (0 picks a free one)."),
    engine: str = typer.Option(ServeConfig.engine, help="auto (the fastest the model folder supports), torch or onnx."),
    precision: str = typer.Option(ServeConfig.precision, help="auto, fp32, bf16, fp16 or int8 (the onnx engine's int8 graph)."),
    max_batch_size: int = typer.Option(ServeConfig.max_batch_size, help="Most texts scored together in one forward pass."),
    max_wait_ms: float = typer.Option(ServeConfig.max_wait_ms, help="How long a request waits for others to join its batch."),
    max_queue: int = typer.Option(ServeConfig.max_queue, help="Requests waiting for the model before new ones get 429."),
    max_texts: int = typer.Option(ServeConfig.max_texts, help="Most texts in one request (413 beyond)."),
    max_body_bytes: int = typer.Option(ServeConfig.max_body_bytes, help="Largest request body in bytes (413 beyond)."),
    timeout_s: float = typer.Option(ServeConfig.timeout_s, help="Seconds before a request is answered 504."),
    workdir: Optional[str] = typer.Option(None, envvar="RTSENT_HOME", help=WORKDIR_HELP),
) -> None:
    """Serve the classifier over HTTP: POST /predict (batched), GET /health, /info, /metrics, /docs."""
    cfg = ServeConfig(model=model, host=host, port=port, engine=engine, precision=precision, max_batch_size=max_batch_size,
                      max_wait_ms=max_wait_ms, max_queue=max_queue, max_texts=max_texts,
                      max_body_bytes=max_body_bytes, timeout_s=timeout_s)
    from rtsent import serve as stage

    stage.run(cfg, _workspace(workdir), _log)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
