"""Raw data: a hub dataset by name, or local parquet/csv/jsonl files or a save_to_disk folder."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rtsent.cache import hash_files
from rtsent.errors import DataError, UsageError

FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json", ".json": "json"}
REQUIRED_SPLITS = ("train", "validation")
OPTIONAL_SPLITS = ("test",)


@dataclass
class Split:
    """One split's usable rows: texts and class ids, plus rows skipped for having no text."""

    texts: list[str]
    labels: list[int]
    skipped_empty: int = 0


@dataclass
class Source:
    """A dataset source, identified by content (local files) or by the hub's fingerprint."""

    name: str
    id: str
    tables: dict[str, Any] = field(default_factory=dict)


def open_source(data: str) -> Source:
    """Find the splits of `data` and compute the source's identity; raises UsageError/HubError/DataError."""
    path = Path(data).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            return _open_saved(path)
        return _open_files(path)
    if path.exists():
        raise UsageError(f"--data {data} is a file; pass a folder holding train/validation/test files")
    if data.startswith((".", "/", "~")) or "\\" in data:
        raise UsageError(f"--data {data}: no such folder")
    return _open_hub(data)


def _open_files(folder: Path) -> Source:
    found: dict[str, Path] = {}
    for split in REQUIRED_SPLITS + OPTIONAL_SPLITS:
        matches = [folder / f"{split}{ext}" for ext in FORMATS if (folder / f"{split}{ext}").is_file()]
        if len(matches) > 1:
            raise DataError(f"{folder} has several files for split {split!r}: {[m.name for m in matches]}; keep one")
        if matches:
            found[split] = matches[0]
    _require_splits(found, folder)
    tables = {split: _read_file(p) for split, p in found.items()}
    ordered = [found[s] for s in sorted(found)]
    return Source(str(folder), "files:" + hash_files(ordered)[:16] + ":" + ",".join(sorted(found)), tables)


def _open_saved(folder: Path) -> Source:
    import datasets

    try:
        dd = datasets.load_from_disk(str(folder))
    except Exception as exc:  # datasets raises several kinds for damaged folders
        raise DataError(f"cannot read the saved dataset in {folder}: {exc}") from None
    _require_splits(dd, folder)
    files = sorted(p for p in folder.rglob("*.arrow"))
    return Source(str(folder), "saved:" + hash_files(files)[:16], {s: dd[s].data.table for s in dd})


def _open_hub(name: str) -> Source:
    from rtsent.hub import explain, probe

    probe(name, "dataset")
    import datasets

    try:
        dd = datasets.load_dataset(name)
    except Exception as exc:  # offline, unknown name, gated: explain() reads huggingface_hub's error types
        raise explain(exc, name, "dataset") from None
    _require_splits(dd, name)
    fp = ",".join(f"{s}={dd[s]._fingerprint}" for s in sorted(dd) if s in REQUIRED_SPLITS + OPTIONAL_SPLITS)
    return Source(name, f"hub:{name}:{fp}", {s: dd[s].data.table for s in dd})


def _require_splits(found: Any, where: Any) -> None:
    missing = [s for s in REQUIRED_SPLITS if s not in found]
    if missing:
        raise DataError(
            f"{where} has no {' or '.join(missing)} split (found: {sorted(found) or 'nothing'}); "
            f"name the files train.parquet/validation.parquet/test.parquet (or .csv/.jsonl)"
        )


def _read_file(path: Path) -> Any:
    import pyarrow as pa

    kind = FORMATS[path.suffix]
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        if kind == "csv":
            import pyarrow.csv as pcsv

            return pcsv.read_csv(path)
        import pyarrow.json as pjson

        return pjson.read_json(path)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        reason = str(exc).splitlines()[0]
        if "UTF8" in reason or "utf-8" in reason.lower() or "utf8" in reason.lower():
            reason = "it is not valid UTF-8 text; re-save it as UTF-8"
        elif path.stat().st_size == 0:
            reason = "the file is empty"
        raise DataError(f"cannot read {path}: {reason}") from None


def column(table: Any, name: str, role: str, where: str) -> list[Any]:
    """A column as Python values; a missing one is a DataError naming the columns there are."""
    if name not in table.column_names:
        raise DataError(
            f"{where} has no {role} column {name!r} (columns: {', '.join(table.column_names)}); "
            f"pass --{role}-column"
        )
    return table.column(name).to_pylist()


def build_split(table: Any, split: str, text_column: str, label_column: str,
                label_names: Sequence[str], where: str) -> Split:
    """Validate and convert one split: string texts, labels mapped to class ids 0..K-1.

    Rows whose text is empty or whitespace are skipped and counted; any unusable label is an error.
    """
    texts = column(table, text_column, "text", f"{where} ({split})")
    labels = column(table, label_column, "label", f"{where} ({split})")
    kept_texts, kept_labels, skipped = [], [], 0
    for row, (text, label) in enumerate(zip(texts, labels)):
        if isinstance(text, bytes):  # pyarrow reads a CSV column with invalid UTF-8 as binary
            raise DataError(f"{where} ({split}) row {row}: the text is not valid UTF-8; re-save the file as UTF-8")
        if text is not None and not isinstance(text, str):
            raise DataError(f"{where} ({split}) row {row}: text {text!r} is not a string; check --text-column")
        if text is None or not text.strip():
            skipped += 1
            continue
        kept_texts.append(text)
        kept_labels.append(label_id(label, label_names, f"{where} ({split}) row {row}"))
    if not kept_texts:
        raise DataError(f"{where} ({split}) has no rows with text")
    return Split(kept_texts, kept_labels, skipped)


def label_id(label: Any, names: Sequence[str], where: str) -> int:
    """Class id of a label: an integer 0..K-1, or a label name."""
    k = len(names)
    if isinstance(label, bool) or label is None or (isinstance(label, float) and math.isnan(label)):
        raise DataError(f"{where}: label {label!r} is missing or not a class; labels must be 0..{k - 1} or one of {list(names)}")
    if isinstance(label, str):
        if label in names:
            return names.index(label)
        if not label.strip().isdecimal():  # "1" read as text (e.g. a quoted CSV cell) is still class 1
            raise DataError(
                f"{where}: label {label!r} is not one of the label names {list(names)}; pass --label-names to match"
            )
        label = int(label)
    if isinstance(label, float):
        if not label.is_integer():
            raise DataError(f"{where}: label {label!r} is not a whole number; labels must be 0..{k - 1} or one of {list(names)}")
        label = int(label)
    if isinstance(label, int) and 0 <= label < k:
        return label
    raise DataError(
        f"{where}: label {label!r} is outside the label set 0..{k - 1} ({k} label words); "
        f"pass one --label-words entry per class"
    )
