"""The Typer app: one thin command per stage (options -> config -> stage.run -> summary).

Heavy libraries (torch, transformers, datasets) are imported inside the commands, so `--help` and
option errors are instant. Errors are printed here and only here, as one line with an exit code.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import inspect
import os
import sys
import typing
from typing import Any, Callable, List, Optional

import typer

from rtsent.config import (DEFAULT_LABEL_WORDS, DEFAULT_TEMPLATE, TEMPLATE_HELP, WORDS_HELP, WORKDIR_HELP,
                           EvaluateConfig, ExportConfig, PredictConfig, PrepareConfig, PromptConfig, PushConfig,
                           ServeConfig, TrainConfig, split_list, unescape)
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
    help="Fine-tune a causal LM (GPT-2 by default) as a label-word text classifier: prepare -> train -> evaluate -> predict, then serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



def _stderr():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def _log(message: str) -> None:
    _stderr().print(message, markup=False, soft_wrap=True)  # one line each, for the terminal (or grep) to wrap


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
    kwargs["label_words"] = split_list(label_words) if label_words is not None else ()
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


# ---------------------------------------------------------------- options from the configs


def _option(name: str, default: Any, help: str, annotation: Any, flags: tuple[str, ...] = (), argument: bool = False,
            **extra: Any) -> inspect.Parameter:
    info = (typer.Argument(default, help=help, **extra) if argument
            else typer.Option(default, *flags, help=help, **extra))
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)


WORKDIR = _option("workdir", None, WORKDIR_HELP, Optional[str], envvar="RTSENT_HOME")


def _cli_type(hint: Any) -> Any:
    """The type Typer parses an option as: X | None as Optional[X], tuple[str, ...] as a comma-separated str."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is tuple:
        return Optional[str]
    if type(None) in typing.get_args(hint):
        return Optional[_cli_type(args[0])]
    return hint


def _from_cli(hint: Any, value: Any) -> Any:
    """The config's value of what Typer parsed: a tuple from repeated arguments or a comma-separated option."""
    if typing.get_origin(hint) is not tuple:
        return value
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return tuple(item.strip() for item in (value or "").split(",") if item.strip())


def config_options(config: type, *extras: inspect.Parameter) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one option per field of its config (default, help and flags from the field's opt()),
    plus `extras`; the command receives the config's fields as one dict, the extras by name."""
    hints = typing.get_type_hints(config)
    fields = [f for f in dataclasses.fields(config) if f.metadata.get("cli", True)]
    params = []
    for f in fields:
        argument = f.metadata.get("argument", False)
        default = ... if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING else (
            f.default if f.default is not dataclasses.MISSING else f.default_factory())
        hint = List[str] if argument and typing.get_origin(hints[f.name]) is tuple else _cli_type(hints[f.name])
        if typing.get_origin(hints[f.name]) is tuple:
            default = None
        params.append(_option(f.name, default, f.metadata["help"], hint, f.metadata.get("flags", ()), argument))
    params += extras
    names = {f.name for f in fields}

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def command(**values: Any) -> Any:
            given = {k: _from_cli(hints[k], v) for k, v in values.items() if k in names}
            return fn(given, **{k: v for k, v in values.items() if k not in names})

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


PROMPT_OPTIONS = (
    _option("template", DEFAULT_TEMPLATE.replace("\n", "\\n"), TEMPLATE_HELP, str),
    _option("label_words", None, WORDS_HELP + " Default: the class names (a ClassLabel's names or the string labels, "
            "after a space), or '" + ",".join(DEFAULT_LABEL_WORDS) + "' for labels 0/1.", Optional[str]),
    _option("label_names", None, "Comma-separated class names in class-id order (default: the data's names, else each "
            "class's first word, stripped).", Optional[str]),
)
ZERO_SHOT_OPTIONS = (
    _option("zero_shot", False, "Score a base model (no rtsent.json): with the prompt the prepared data was made "
                                "with, unless --template/--label-words say otherwise (--data: the default prompt).",
            bool, ("--zero-shot",)),
    _option("template", None, "Zero-shot: " + TEMPLATE_HELP, Optional[str]),
    _option("label_words", None, "Zero-shot: " + WORDS_HELP, Optional[str]),
    _option("label_names", None, "Zero-shot: comma-separated class names.", Optional[str]),
)


# ---------------------------------------------------------------- commands


@app.command()
@handled
@config_options(PrepareConfig, *PROMPT_OPTIONS, WORKDIR)
def prepare(fields: dict[str, Any], template: str, label_words: Optional[str], label_names: Optional[str],
            workdir: Optional[str]) -> None:
    """Tokenize the dataset once and cache it in the workspace, keyed by a fingerprint."""
    cfg = PrepareConfig(**fields, prompt=_prompt(template, label_words, label_names))
    from rtsent import prepare as stage
    from rtsent.console import print_prepared

    print_prepared(stage.run(cfg, _workspace(workdir), _log))


@app.command()
@handled
@config_options(TrainConfig, WORKDIR)
def train(fields: dict[str, Any], workdir: Optional[str]) -> None:
    """Fine-tune on the prepared data; keep the best checkpoint by validation accuracy and export it."""
    cfg = TrainConfig(**fields)
    from rtsent import train as stage
    from rtsent.console import print_trained

    result = stage.run(cfg, _workspace(workdir), _stderr(), _log)
    if stage.is_main_process():  # under torchrun every rank runs this command; one summary is enough
        print_trained(result)


@app.command()
@handled
@config_options(EvaluateConfig, _option("model", None, "Exported model folder or run name, or a base model for "
                                        "zero-shot (default: the latest run's model); repeat to compare models side "
                                        "by side.", Optional[List[str]]), *ZERO_SHOT_OPTIONS, WORKDIR)
def evaluate(fields: dict[str, Any], model: Optional[List[str]], zero_shot: bool, template: Optional[str],
             label_words: Optional[str], label_names: Optional[str], workdir: Optional[str]) -> None:
    """Accuracy, macro-F1, per-class precision/recall, confusion matrix and calibration on a split."""
    models = list(model or [])
    # --zero-shot alone: prompt None, and evaluate takes the prepared data's (or, for --data, the default)
    cfg = EvaluateConfig(**fields, model=models[0] if len(models) == 1 else None, zero_shot=zero_shot,
                         prompt=_prompt(template, label_words, label_names, required=False))
    from rtsent import console
    from rtsent import evaluate as stage

    if len(models) > 1:
        console.print_comparison(stage.compare(cfg, models, _workspace(workdir), _log))
    else:
        console.print_evaluation(stage.run(cfg, _workspace(workdir), _log))


@app.command()
@handled
@config_options(PredictConfig, *(_option(o.name, None, "Zero-shot base model only: " + h, Optional[str])
                                 for o, h in zip(PROMPT_OPTIONS[:2], (TEMPLATE_HELP, WORDS_HELP))), WORKDIR)
def predict(fields: dict[str, Any], template: Optional[str], label_words: Optional[str], workdir: Optional[str]) -> None:
    """Label and probability (softmax over the label words) for each review; one output row per input row."""
    if fields["texts"] == ("-",):
        fields = {**fields, "texts": (), "file": "-"}
    cfg = PredictConfig(**fields)
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
    from rtsent import report
    from rtsent.console import print_run

    summary = report.run_report(_workspace(workdir), run)
    if output_format == "table":
        print_run(summary)
    else:
        typer.echo(f"report written to {report.write_report(summary, output_format, output)}")


@app.command("runs")
@handled
def runs_(
    output_format: str = typer.Option("table", "--format", help="table or json."),
    workdir: Optional[str] = typer.Option(None, envvar="RTSENT_HOME", help=WORKDIR_HELP),
) -> None:
    """The workspace's runs with their key metrics, newest first."""
    from rtsent import report
    from rtsent.console import print_runs

    listed = report.list_runs(_workspace(workdir), output_format)
    if output_format == "json":
        import json

        typer.echo(json.dumps(listed, indent=2))
    else:
        print_runs(listed)


@app.command("export")
@handled
@config_options(ExportConfig, WORKDIR)
def export_(fields: dict[str, Any], workdir: Optional[str]) -> None:
    """Add an ONNX graph and tokenizer.json to a model folder (predict without torch), or --seq-cls: export
    the classifier as a standard sequence-classification folder."""
    cfg = ExportConfig(**fields)
    from rtsent import export as stage

    folder, record = stage.run(cfg, _workspace(workdir), _log)
    if cfg.seq_cls:
        _log(f"wrote {folder}: pipeline('text-classification', model='{folder}'), vLLM and text-embeddings-inference "
             f"serve it; clients send {record['client_sends']!r}")
    else:
        _log(f"wrote {', '.join(record['graphs'].values())} in {folder} (the onnx engine)")


@app.command()
@handled
@config_options(PushConfig, WORKDIR)
def push(fields: dict[str, Any], workdir: Optional[str]) -> None:
    """Upload an exported model (weights, tokenizer, rtsent.json, model card) to the Hugging Face hub."""
    from rtsent import push as stage

    typer.echo(stage.run(PushConfig(**fields), _workspace(workdir), _log))


@app.command()
@handled
@config_options(ServeConfig, WORKDIR)
def serve(fields: dict[str, Any], workdir: Optional[str]) -> None:
    """Serve the classifier over HTTP: POST /predict (Hugging Face's shape), POST /classify (vLLM's), GET /health,
    /info, /metrics, /docs."""
    from rtsent import serve as stage

    stage.run(ServeConfig(**fields), _workspace(workdir), _log)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
