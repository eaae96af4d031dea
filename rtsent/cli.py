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

from rtsent.config import (WORKDIR_HELP, EvaluateConfig, ExportConfig, PredictConfig, PrepareConfig, PushConfig,
                           ReportConfig, RunsConfig, ServeConfig, TrainConfig)
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


def _default(f: dataclasses.Field) -> Any:
    """A field's default value (... for a required one)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else ...


def _field_option(f: dataclasses.Field, hint: Any) -> inspect.Parameter:
    """The option (or argument) of one config field."""
    argument, many = f.metadata.get("argument", False), typing.get_origin(hint) is tuple
    cli_hint = (List[str] if argument and many else Optional[List[str]] if f.metadata.get("repeat")
                else _cli_type(hint))
    return _option(f.name, None if many else _default(f), f.metadata["help"], cli_hint, f.metadata.get("flags", ()),
                   argument)


def _nested_options(f: dataclasses.Field, hint: Any) -> list[inspect.Parameter]:
    """The options of a config inside the command's config (--template, --label-words, ... of its prompt): one per
    inner field the field's Nested names, with this command's help and the field's default shown."""
    nested, default = f.metadata["nested"], _default(f)
    inner = _inner_type(hint)
    inner_hints, inner_fields = typing.get_type_hints(inner), {g.name: g for g in dataclasses.fields(inner)}
    params = []
    for name, help in nested.options.items():
        g = inner_fields[name]
        many = typing.get_origin(inner_hints[name]) is tuple
        shown = None if default is None or many else (g.metadata.get("show") or (lambda v: v))(getattr(default, name))
        cli_hint = _cli_type(inner_hints[name]) if default is not None else Optional[_cli_type(inner_hints[name])]
        params.append(_option(name, shown, nested.prefix + (help or g.metadata["help"]), cli_hint))
    return params


def _inner_type(hint: Any) -> type:
    """The config class of a field typed X or X | None."""
    return next(a for a in (typing.get_args(hint) or (hint,)) if a is not type(None))


def _nested_value(f: dataclasses.Field, hint: Any, values: dict[str, Any]) -> Any:
    """The inner config from its options' values: the base with the given ones in place (None where none is given
    and the field has no default)."""
    nested, default = f.metadata["nested"], _default(f)
    given = {k: v for k, v in values.items() if v is not None}
    if not given and default is None:
        return None
    inner = {g.name: g for g in dataclasses.fields(_inner_type(hint))}
    base = nested.base() if nested.base is not None else default
    return dataclasses.replace(base, **{k: inner[k].metadata["parse"](v) for k, v in given.items()})


def config_options(config: type, *extras: inspect.Parameter) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one option per field of its config (default, help and flags from the field's opt(); a config
    inside it as the options its Nested names), plus `extras`; the command receives the config's fields as one
    dict (a repeated option's as the list), the extras by name."""
    hints = typing.get_type_hints(config)
    fields = [f for f in dataclasses.fields(config) if f.metadata.get("cli", True)]
    params, groups = [], {}
    for f in fields:
        own = _nested_options(f, hints[f.name]) if f.metadata.get("nested") else [_field_option(f, hints[f.name])]
        params += own
        groups[f.name] = [p.name for p in own]
    params += extras
    taken = [p.name for p in params]
    if len(set(taken)) != len(taken):
        raise TypeError(f"{config.__name__}: two options of one name in {taken}")

    def read(f: dataclasses.Field, values: dict[str, Any]) -> Any:
        if f.metadata.get("nested"):
            return _nested_value(f, hints[f.name], {n: values[n] for n in groups[f.name]})
        return values[f.name] if f.metadata.get("repeat") else _from_cli(hints[f.name], values[f.name])

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def command(**values: Any) -> Any:
            grouped = {n for names in groups.values() for n in names}
            return fn({f.name: read(f, values) for f in fields}, **{k: v for k, v in values.items() if k not in grouped})

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate


# ---------------------------------------------------------------- commands


@app.command()
@handled
@config_options(PrepareConfig, WORKDIR)
def prepare(fields: dict[str, Any], workdir: Optional[str]) -> None:
    """Tokenize the dataset once and cache it in the workspace, keyed by a fingerprint."""
    cfg = PrepareConfig(**fields)
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
@config_options(EvaluateConfig, WORKDIR)
def evaluate(fields: dict[str, Any], workdir: Optional[str]) -> None:
    """Accuracy, macro-F1, per-class precision/recall, confusion matrix and calibration on a split."""
    models = list(fields["model"] or [])
    # --zero-shot alone: prompt None, and evaluate takes the prepared data's (or, for --data, the default)
    cfg = EvaluateConfig(**{**fields, "model": models[0] if len(models) == 1 else None})
    from rtsent import console
    from rtsent import evaluate as stage

    if len(models) > 1:
        console.print_comparison(stage.compare(cfg, models, _workspace(workdir), _log))
    else:
        console.print_evaluation(stage.run(cfg, _workspace(workdir), _log))


@app.command()
@handled
@config_options(PredictConfig, WORKDIR)
def predict(fields: dict[str, Any], workdir: Optional[str]) -> None:
    """Label and probability (softmax over the label words) for each review; one output row per input row."""
    if fields["texts"] == ("-",):
        fields = {**fields, "texts": (), "file": "-"}
    cfg = PredictConfig(**fields)
    from rtsent import predict as stage

    stats = stage.run(cfg, _workspace(workdir))
    if stats.note:
        _log(stats.note)
    if cfg.file:
        _log(f"{stats.count} reviews in {stats.seconds:.1f} s ({stats.per_second:.0f} reviews/s; "
             f"model loaded in {stats.load_seconds:.1f} s)")
        if stats.unlabelled:
            _log(f"{stats.unlabelled} rows had no text: their output rows have no label and an \"error\"")


@app.command("report")
@handled
@config_options(ReportConfig, WORKDIR)
def report_(fields: dict[str, Any], workdir: Optional[str]) -> None:
    """Summary of a run: config, data, best step, validation/test metrics, timing, calibration, plots."""
    from rtsent import report
    from rtsent.console import print_run

    cfg = ReportConfig(**fields)
    summary = report.run_report(_workspace(workdir), cfg.run)
    if cfg.format == "table":
        print_run(summary)
    else:
        typer.echo(f"report written to {report.write_report(summary, cfg.format, cfg.output)}")


@app.command("runs")
@handled
@config_options(RunsConfig, WORKDIR)
def runs_(fields: dict[str, Any], workdir: Optional[str]) -> None:
    """The workspace's runs with their key metrics, newest first."""
    from rtsent import report
    from rtsent.console import print_runs

    cfg = RunsConfig(**fields)
    listed = report.list_runs(_workspace(workdir), cfg.format)
    if cfg.format == "json":
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
