"""rtsent export: an exported model folder gains the ONNX graph of its classifier (and with --int8 its checked
int8 copy), or with --seq-cls becomes a standard sequence-classification folder.

The stage only picks the folder and the validation data the int8 graph is checked on; the graphs themselves
are made in rtsent/artifacts/onnx_graph.py, the seq-cls folder in rtsent/seqcls.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from rtsent.artifacts.model import ModelMeta, resolve_model
from rtsent.artifacts.onnx_graph import Rows, export_folder
from rtsent.artifacts.workspace import Workspace
from rtsent.config import ExportConfig
from rtsent.errors import UsageError


def run(cfg: ExportConfig, ws: Workspace, log: Callable[[str], None] = lambda _: None) -> tuple[Path, dict[str, Any]]:
    """Export cfg.model (default: the latest run's model): its ONNX graphs, added to the folder, or with
    cfg.seq_cls a *ForSequenceClassification folder. Returns the folder written and what was recorded."""
    folder = Path(resolve_model(ws, cfg.model))
    if cfg.seq_cls:
        return _seq_cls(folder, cfg, ws, log)
    check = validation_rows(ModelMeta.read(folder), ws) if cfg.int8 else None
    return folder, export_folder(folder, cfg.int8, log, check)


def _seq_cls(folder: Path, cfg: ExportConfig, ws: Workspace, log: Callable[[str], None]) -> tuple[Path, dict[str, Any]]:
    """The sequence-classification folder, built beside its destination and renamed into place."""
    from rtsent.artifacts.cache import publish, scratch
    from rtsent.seqcls import SEQCLS_FILE, check_linear, export_seqcls

    check_linear(ModelMeta.read(folder))
    out = Path(cfg.output).expanduser() if cfg.output else _seqcls_destination(folder)
    if out.exists() and not (out / SEQCLS_FILE).is_file():
        raise UsageError(f"--output {out} already exists and is not a sequence-classification export; "
                         f"pass a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    with scratch(out.parent, f".{out.name}-") as tmp:
        log(f"writing the sequence-classification folder {out}")
        record = export_seqcls(folder, tmp, _validation_texts(ModelMeta.read(folder), ws), log)
        publish(tmp, out)
    return out, record


def _seqcls_destination(folder: Path) -> Path:
    """runs/<name>/seq-cls beside a run's model/, else <folder>-seq-cls."""
    return folder.parent / "seq-cls" if folder.name == "model" else folder.with_name(folder.name + "-seq-cls")


def _validation_texts(meta: ModelMeta, ws: Workspace, limit: int = 2000) -> list[str]:
    """Reviews to check the folder's tokenizer on: the model's validation split where it can be read."""
    from rtsent.artifacts.prepared import PreparedMeta, in_workspace
    from rtsent.errors import RtsentError
    from rtsent.sources.data import open_source

    folder = in_workspace(ws, meta.prepared)
    if folder is None or not meta.data:
        return []
    prepared = PreparedMeta.read(folder)
    try:
        source = open_source(meta.data, prepared.subset)
        table = source.read("validation" if "validation" in source.available else source.available[0]).table
        texts = table.column(prepared.text_column).to_pylist()[:limit]
    except (RtsentError, KeyError, OSError):
        return []
    return [t for t in texts if isinstance(t, str) and t.strip()]


def validation_rows(meta: ModelMeta, ws: Workspace) -> Rows | None:
    """The validation prompts and labels the model was selected on (its prepared data), None where gone."""
    from rtsent.artifacts.prepared import load_prepared
    from rtsent.errors import RtsentError

    try:
        dd = load_prepared(ws.prepared(meta.prepared), ws).dataset if meta.prepared else None
    except (RtsentError, OSError, KeyError):
        return None
    if dd is None or "validation" not in dd:
        return None
    return list(dd["validation"]["input_ids"]), list(dd["validation"]["labels"])
