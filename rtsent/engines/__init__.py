"""Scoring engines behind one interface: evaluate, predict and serve score reviews through open_classifier().

It returns a `Classifier` (engines/base.py): `scores(rows)` -> raw label-word scores [n, classes],
`calibrate(scores)` and `probabilities(texts)` -> calibrated softmax over the label words. Nothing heavy
is imported here: the onnx engine never loads torch or transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rtsent.artifacts.model import ModelMeta
    from rtsent.config import PromptConfig
    from rtsent.engines.base import Classifier


def open_classifier(model: str, prompt: "PromptConfig | None" = None, max_len: int | None = None,
                    precision: str = "auto", engine: str = "auto", job: str = "bulk") -> "Classifier":
    """An exported rtsent model (its rtsent.json gives the prompt), or a base model with an explicit prompt.

    What auto means is decided once by engines.choice for the job ("cold" or "bulk") on this machine, and
    checked there; the engine runs that choice as it is, and the classifier's `choice` says what and why.
    Raises ArtifactError for a folder without rtsent.json when no prompt is given or without the graph an
    explicit onnx engine needs, UsageError when a given prompt contradicts the model's or the engine or the
    machine cannot run the precision.
    """
    from rtsent.artifacts.model import DEFAULT_MAX_LEN
    from rtsent.engines.base import onnx_graphs, read_model_meta
    from rtsent.engines.choice import check, choose

    meta, prompt = read_model_meta(model, prompt)
    max_len = fitting_max_len(model, max_len or (meta.max_len if meta else None), DEFAULT_MAX_LEN)
    graphs = onnx_graphs(model, meta)
    choice = check(choose(job, graphs, meta is not None and meta.int8_validated, engine, precision))
    if choice.engine == "onnx":
        _check_graph(model, meta, graphs, choice.precision)
        from rtsent.engines.onnx import OnnxClassifier

        clf: Classifier = OnnxClassifier(model, meta, prompt, max_len, graphs[choice.precision], choice.precision)
    else:
        from rtsent.engines.torch import TorchClassifier

        clf = TorchClassifier(model, meta, prompt, max_len, choice.precision)
    clf.choice = choice
    return clf


def _check_graph(model: str, meta: "ModelMeta | None", graphs: dict[str, Any], precision: str) -> None:
    """ArtifactError unless the folder holds the graph the onnx engine was chosen to run."""
    from rtsent.errors import ArtifactError

    if meta is None:  # a base model: `rtsent export` takes only folders that `rtsent train` made
        raise ArtifactError(f"{model} is a base model, which has no ONNX graph (only models made by `rtsent "
                            f"train` are exported); use --engine torch")
    if precision not in graphs:
        which = "int8 ONNX graph" if precision == "int8" else "ONNX graph"
        flag = " --int8" if precision == "int8" else ""
        raise ArtifactError(f"{model} has no {which}; run `rtsent export {model}{flag}` first (or use --engine torch)")


def fitting_max_len(model: str, max_len: int | None, default: int) -> int:
    """The prompt length to score with: the one asked for (or trained with), refused with one line when
    it exceeds the model's context; when none was asked for, the default cut to the context."""
    from rtsent.core.families import check_max_len, context_length

    config = _config(model)
    if config is None:
        return max_len or default
    if max_len is None:
        return min(default, (context_length(config) or ("", default))[1])
    check_max_len(config, max_len, model, "pass --max-len {tokens} or less")
    return max_len


def _config(model: str) -> Any:
    """The model's config: config.json read as JSON (no transformers), or through transformers for a hub name."""
    import json
    from pathlib import Path
    from types import SimpleNamespace

    from rtsent.artifacts.model import ModelPaths

    folder = Path(model).expanduser()
    path = ModelPaths(folder).config
    if path.is_file():
        try:
            return SimpleNamespace(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None
    from rtsent.sources import gguf

    if folder.exists() and not gguf.is_gguf(model) and not (folder.is_dir() and gguf.find_in_folder(folder)):
        return None
    from rtsent.core.modeling import load_config  # a hub name, or a GGUF file's converted folder

    return load_config(model)
