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

from rtsent.config import (DEFAULT_DATA, DEFAULT_LABEL_WORDS, DEFAULT_MODEL, DEFAULT_TEMPLATE, EvaluateConfig, PredictConfig,
                           PrepareConfig, PromptConfig, ServeConfig, TrainConfig, split_list, unescape)
from rtsent.errors import RtsentError

class _OneLineErrors(typer.core.TyperGroup):
    """Typer's command group, with usage errors (unknown option, bad value) printed as one line like
    every other rtsent error, instead of a usage block and a boxed panel."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except _CLICK_ERROR as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `rtsent`: the help is the message
                if not typer.core.HAS_RICH:
                    exc.show()
            else:
                ctx = getattr(exc, "ctx", None)
                hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
                _error("error", exc.format_message().rstrip(".") + hint)
            sys.exit(exc.exit_code)
        except typer.Abort:
            _error("error", "aborted")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


# Typer may vendor click; its usage errors all derive from the ClickException that BadParameter does.
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


app = typer.Typer(
    cls=_OneLineErrors,
    name="rtsent",
    help="Fine-tune GPT-2 as a causal-LM sentiment classifier: prepare -> train -> evaluate -> predict.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

WORKDIR_HELP = "Workspace folder for prepared data and runs (default: ./data)."
TEMPLATE_HELP = "Prompt template with {text} where the review goes (\\n understood)."
WORDS_HELP = "Comma-separated label words, one per class in class-id order, each one token (\\n understood)."


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
    from rtsent.workspace import Workspace

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
    label_column: str = typer.Option(PrepareConfig.label_column, help="Column holding the label (0..K-1 or a label name)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if this exact dataset is cached."),
    workdir: Optional[str] = typer.Option(None, envvar="RTSENT_HOME", help=WORKDIR_HELP),
) -> None:
    """Tokenize the dataset once and cache it in the workspace, keyed by a fingerprint."""
    cfg = PrepareConfig(data=data, model=model, prompt=_prompt(template, label_words, label_names), max_len=max_len,
                        text_column=text_column, label_column=label_column, force=force)
    from rtsent import prepare as stage
    from rtsent.report import print_prepared

    print_prepared(stage.run(cfg, _workspace(workdir), _log))


@app.command()
@handled
def train(
    model: str = typer.Option(TrainConfig.model, help="Starting model: hub name or local folder."),
    prepared: Optional[str] = typer.Option(None, help="Prepared dataset folder or fingerprint (default: the latest)."),
    lr: float = typer.Option(TrainConfig.lr, help="Peak learning rate."),
    batch_size: int = typer.Option(TrainConfig.batch_size, help="Training examples per step."),
    eval_batch_size: int = typer.Option(TrainConfig.eval_batch_size, help="Examples per evaluation batch."),
    epochs: float = typer.Option(TrainConfig.epochs, help="Passes over the training split."),
    max_steps: int = typer.Option(TrainConfig.max_steps, help="Stop after N steps (overrides --epochs when > 0)."),
    warmup: float = typer.Option(TrainConfig.warmup, help="Warm-up: a ratio of all steps when < 1, else steps."),
    weight_decay: float = typer.Option(TrainConfig.weight_decay, help="AdamW weight decay."),
    eval_every: Optional[int] = typer.Option(None, help="Evaluate on validation every N steps (default: once per epoch)."),
    save_every: Optional[int] = typer.Option(None, help="Checkpoint every N steps, a multiple of --eval-every (default: at each evaluation)."),
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
    config_overrides: str = typer.Option("", help="With --from-scratch: config changes such as n_layer=2,n_embd=64."),
    workdir: Optional[str] = typer.Option(None, envvar="RTSENT_HOME", help=WORKDIR_HELP),
) -> None:
    """Fine-tune on the prepared data; keep the best checkpoint by validation accuracy and export it."""
    cfg = TrainConfig(model=model, prepared=prepared, lr=lr, batch_size=batch_size, eval_batch_size=eval_batch_size,
                      epochs=epochs, max_steps=max_steps, warmup=warmup, weight_decay=weight_decay,
                      eval_every=eval_every, save_every=save_every, save_limit=save_limit, seed=seed, loss=loss,
                      precision=precision, dropout=dropout, gradient_checkpointing=gradient_checkpointing, compile=compile,
                      run_name=run_name, resume=resume, from_scratch=from_scratch,
                      config_overrides=config_overrides)
    from rtsent import train as stage
    from rtsent.report import print_trained

    result = stage.run(cfg, _workspace(workdir), _stderr(), _log)
    if stage.is_main_process():  # under torchrun every rank runs this command; one summary is enough
        print_trained(result)


@app.command()
@handled
def evaluate(
    model: Optional[str] = typer.Option(None, help="Exported model folder, or a base model for zero-shot (default: the latest run's model)."),
    split: str = typer.Option(EvaluateConfig.split, help="validation or test."),
    prepared: Optional[str] = typer.Option(None, help="Prepared dataset folder or fingerprint (default: the model's, else the latest)."),
    zero_shot: bool = typer.Option(False, "--zero-shot", help="Score a base model (no rtsent.json) with the default prompt."),
    template: Optional[str] = typer.Option(None, help="Zero-shot: " + TEMPLATE_HELP),
    label_words: Optional[str] = typer.Option(None, help="Zero-shot: " + WORDS_HELP),
    label_names: Optional[str] = typer.Option(None, help="Zero-shot: comma-separated class names."),
    batch_size: int = typer.Option(EvaluateConfig.batch_size, help="Examples per batch."),
    precision: str = typer.Option(EvaluateConfig.precision, help="auto, fp32, bf16 or fp16."),
    output: Optional[str] = typer.Option(None, help="Where to write the JSON report (default: next to the model)."),
    workdir: Optional[str] = typer.Option(None, envvar="RTSENT_HOME", help=WORKDIR_HELP),
) -> None:
    """Accuracy, macro-F1, per-class precision/recall, confusion matrix and calibration on a split."""
    prompt = _prompt(template, label_words, label_names, required=zero_shot)
    cfg = EvaluateConfig(model=model, split=split, prepared=prepared, prompt=prompt, batch_size=batch_size,
                         precision=precision, output=output)
    from rtsent import evaluate as stage
    from rtsent.report import print_evaluation

    print_evaluation(stage.run(cfg, _workspace(workdir), _log))


@app.command()
@handled
def predict(
    texts: Optional[List[str]] = typer.Argument(None, help="Reviews to classify; '-' reads one per line from stdin."),
    file: Optional[str] = typer.Option(None, "--file", "-f", help="txt (one review a line), csv, jsonl or parquet."),
    text_column: str = typer.Option(PredictConfig.text_column, help="Text column of a csv/jsonl/parquet file."),
    model: Optional[str] = typer.Option(None, help="Exported model folder (default: the latest run's model)."),
    output_format: str = typer.Option(PredictConfig.format, "--format", help="auto (table for arguments, jsonl for files), table, json, jsonl or csv."),
    batch_size: int = typer.Option(PredictConfig.batch_size, help="Reviews per batch."),
    precision: str = typer.Option(PredictConfig.precision, help="auto, fp32, bf16 or fp16."),
    max_len: Optional[int] = typer.Option(None, help="Longest prompt in tokens (default: the model's training max-len)."),
    template: Optional[str] = typer.Option(None, help="Zero-shot base model only: " + TEMPLATE_HELP),
    label_words: Optional[str] = typer.Option(None, help="Zero-shot base model only: " + WORDS_HELP),
    workdir: Optional[str] = typer.Option(None, envvar="RTSENT_HOME", help=WORKDIR_HELP),
) -> None:
    """Label and probability (softmax over the label words) for each review."""
    texts = list(texts or [])
    if texts == ["-"]:
        texts, file = [], "-"
    cfg = PredictConfig(model=model, texts=tuple(texts), file=file, text_column=text_column, format=output_format,
                        batch_size=batch_size, precision=precision, max_len=max_len)
    from rtsent import predict as stage

    stats = stage.run(cfg, _workspace(workdir), prompt=_prompt(template, label_words, None, required=False))
    if cfg.file:
        _log(f"{stats.count} reviews in {stats.seconds:.1f} s ({stats.per_second:.0f} reviews/s; "
             f"model loaded in {stats.load_seconds:.1f} s)")


@app.command()
@handled
def serve(
    model: Optional[str] = typer.Option(None, help="Exported model folder (default: the latest run's model)."),
    host: str = typer.Option(ServeConfig.host, help="Interface to listen on (0.0.0.0 opens it to the network)."),
    port: int = typer.Option(ServeConfig.port, help="TCP port (0 picks a free one)."),
    engine: str = typer.Option(ServeConfig.engine, help="auto (the fastest the model folder supports), torch or onnx."),
    precision: str = typer.Option(ServeConfig.precision, help="auto, fp32, bf16 or fp16."),
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
