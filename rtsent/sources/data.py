"""Raw data: a hub dataset by name, or local parquet/csv/jsonl files or a save_to_disk folder."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from rtsent import compat
from rtsent.artifacts.cache import hash_files
from rtsent.errors import DataError, UsageError, first_line
from rtsent.sources.inputs import DELIMITERS, json_array_problem, table_format

ROLES = ("train", "validation", "test")
VALIDATION_NAMES = ("val", "valid", "dev")
"""Other names a source's validation split goes by (dev.csv, a hub dataset's "dev"): taken for validation when
the source has no split of that name and exactly one of these, rather than carving one out of train."""
NO_LABEL = -1  # datasets' ClassLabel value for "no label" (e.g. GLUE test splits, whose labels are hidden)


@dataclass
class Split:
    """One split's usable rows: texts and class ids, plus rows skipped for having no text."""

    texts: list[str]
    labels: list[int]
    skipped_empty: int = 0
    rows: list[int] | None = None
    """Each kept row's 0-based row number in the file (blank rows skipped), when read from one."""


@dataclass
class RawSplit:
    """One split of the source as read: an Arrow table, and the names of its ClassLabel columns."""

    table: Any
    class_names: dict[str, list[str]] = field(default_factory=dict)


class Source:
    """A dataset's named splits; each is read, and its content identified, only when a plan uses it."""

    name: str
    available: list[str]

    def split_id(self, split: str) -> str:
        """Content identity of one split (file bytes, arrow files, or the hub's fingerprint)."""
        raise NotImplementedError

    _last: tuple[str, RawSplit] | None = None

    def read(self, split: str) -> RawSplit:
        """One split as read. The last one read is kept: prepare looks at train's class names, then builds from
        train first, and reads it once."""
        if self._last is None or self._last[0] != split:
            self._last = (split, self._read(split))
        return self._last[1]

    def _read(self, split: str) -> RawSplit:
        raise NotImplementedError


class FolderSource(Source):
    """A folder with one <split>.parquet|.csv|.jsonl file per split (any split names)."""

    def __init__(self, folder: Path):
        self.name = str(folder)
        self.files: dict[str, Path] = {}
        for path in sorted(folder.iterdir()):
            if table_format(path) is None or not path.is_file():
                continue
            if path.stem in self.files:
                same = sorted(p.name for p in folder.iterdir() if p.stem == path.stem and table_format(p))
                raise DataError(f"{folder} has several files for split {path.stem!r}: {same}; keep one")
            self.files[path.stem] = path
        self.available = sorted(self.files)

    def split_id(self, split: str) -> str:
        return "file:" + hash_files([self.files[split]])[:16]

    def _read(self, split: str) -> RawSplit:
        return read_raw_file(self.files[split])


class DictSource(Source):
    """A datasets.DatasetDict: a save_to_disk folder or a hub dataset."""

    def __init__(self, name: str, dd: Any, identify: Callable[[str], str]):
        self.name = name
        self.dd = dd
        self.identify = identify
        self.available = sorted(dd)

    def split_id(self, split: str) -> str:
        return self.identify(split)

    def _read(self, split: str) -> RawSplit:
        return RawSplit(self.dd[split].data.table, _class_names(self.dd[split].features))


def open_source(data: str, subset: str | None = None) -> Source:
    """Find the splits of `data` (a folder, a saved DatasetDict, or a hub name with an optional subset).

    A name rtsent ships (rotten_tomatoes, see rtsent.datasets) reads the shipped files unless a folder of
    that name is in the working directory. Raises UsageError for a bad path or option, HubError when a name
    cannot be loaded, DataError for unreadable data.
    """
    from rtsent.datasets import shipped

    path = Path(data).expanduser()
    if not path.exists() and subset is None and (folder := shipped(data)) is not None:
        source = FolderSource(folder)
        source.name = f"{data} (shipped with rtsent)"
    elif path.is_dir():
        if subset is not None:
            raise UsageError(f"--subset {subset} applies to hub datasets only; --data {data} is a folder")
        source = _open_saved(path) if (path / "dataset_dict.json").is_file() else FolderSource(path)
    elif path.exists():
        raise UsageError(f"--data {data} is a file; pass a folder holding train/validation/test files")
    elif data.startswith((".", "/", "~")) or "\\" in data:
        raise UsageError(f"--data {data}: no such folder")
    else:
        source = _open_hub(data, subset)
    if not source.available:
        raise DataError(f"{data} has no splits; name the files train.parquet/validation.parquet/test.parquet "
                        f"(or .csv/.jsonl)")
    return source


def _open_saved(folder: Path) -> Source:
    import datasets

    try:
        dd = datasets.load_from_disk(str(folder))
    except Exception as exc:  # datasets raises several kinds for damaged folders
        raise DataError(f"cannot read the saved dataset in {folder}: {exc}") from None
    if not isinstance(dd, datasets.DatasetDict):
        raise DataError(f"{folder} holds a single Dataset; save a DatasetDict with train (and validation/test) splits")
    return DictSource(str(folder), dd, lambda s: "saved:" + hash_files(sorted((folder / s).rglob("*.arrow")))[:16])


def _open_hub(name: str, subset: str | None) -> Source:
    from rtsent.sources.hub import explain, probe

    probe(name, "dataset")
    import datasets

    try:
        dd = datasets.load_dataset(name, subset)
    except Exception as exc:  # offline, unknown name or subset, gated: explain() reads huggingface_hub's error types
        raise explain(exc, f"{name}:{subset}" if subset else name, "dataset") from None
    return DictSource(name, dd, lambda s: f"hub:{name}:{subset}:{compat.dataset_fingerprint(dd[s])}")


def _class_names(features: Any) -> dict[str, list[str]]:
    import datasets

    return {col: list(f.names) for col, f in features.items() if isinstance(f, datasets.ClassLabel)}


def _class_names_in_schema(schema: Any) -> dict[str, list[str]]:
    """ClassLabel names kept in a parquet file written by datasets (its "huggingface" schema metadata)."""
    if not schema.metadata or b"huggingface" not in schema.metadata:
        return {}
    import datasets

    return _class_names(datasets.Features.from_arrow_schema(schema))


# --- which source split feeds each prepared split -----------------------------------------------------

@dataclass(frozen=True)
class Carve:
    """Validation carved out of the train split: a stratified `fraction` of each class, drawn with `seed`."""

    fraction: float
    seed: int


@dataclass(frozen=True)
class SplitPlan:
    """Where each prepared split comes from: a source split's name, a Carve (validation only), or None."""

    train: str
    validation: str | Carve
    test: str | None
    shots: int = 0
    """K > 0: keep K rows per class of train and of validation (drawn with shots_seed)."""
    shots_seed: int = 0

    def describe(self) -> dict[str, Any]:
        """The plan as JSON (manifest and fingerprint): split names, or the carve's fraction and seed; the
        few-shot draw where there is one."""
        val = self.validation
        carved = {"carved_from": self.train, "fraction": val.fraction, "seed": val.seed} if isinstance(val, Carve) else val
        out: dict[str, Any] = {"train": self.train, "validation": carved, "test": self.test}
        if self.shots:
            out["shots"] = {"per_class": self.shots, "seed": self.shots_seed}
        return out


def plan_splits(source: Source, mapping: dict[str, str | None], fraction: float, seed: int) -> SplitPlan:
    """Resolve --splits against the splits the source has.

    `mapping` maps a prepared split (train/validation/test) to a source split name, or to None: no test
    split, or a validation carved from train. Unmapped splits use their own name when the source has it
    and no other role claims it; validation, else the one split named as VALIDATION_NAMES are; a missing
    validation is carved from train. Raises DataError naming the
    splits there are.
    """
    claimed = set(mapping.values())

    def pick(role: str) -> str | None:
        if role not in mapping and role != "train" and role in claimed:
            return None  # e.g. validation=test: the test split now serves as validation, not as test too
        name = mapping.get(role, role)
        if name is None or name in source.available:
            return name
        if role in mapping:
            raise DataError(f"{source.name} has no split {name!r} (--splits {role}={name}); "
                            f"found: {', '.join(source.available)}")
        if role == "validation":
            other = [a for a in source.available if a.lower() in VALIDATION_NAMES and a not in claimed]
            return other[0] if len(other) == 1 else None
        if role != "train":
            return None
        raise DataError(
            f"{source.name} has no train split (found: {source.available}); name the files "
            f"train/validation/test.parquet (or .csv/.jsonl), or pass --splits train=NAME"
        )

    train, validation, test = (pick(role) for role in ROLES)
    if train is None:
        raise DataError("--splits train=none: training needs a train split")
    plan = SplitPlan(train, validation if validation is not None else Carve(fraction, seed), test)
    used = [s for s in (plan.train, plan.validation, plan.test) if isinstance(s, str)]
    if len(set(used)) != len(used):
        raise DataError(f"--splits uses one source split for two roles ({plan.describe()}); "
                        f"give each of train/validation/test its own split (validation=none carves one from train)")
    return plan


def source_id(source: Source, plan: SplitPlan) -> str:
    """The content identity of exactly the source splits the plan reads."""
    used = [s for s in (plan.train, plan.validation, plan.test) if isinstance(s, str)]
    return ",".join(f"{s}={source.split_id(s)}" for s in used)


def build_splits(source: Source, plan: SplitPlan, text_column: str, label_column: str,
                 label_names: Sequence[str], log: Callable[[str], None] = lambda _: None) -> dict[str, Split]:
    """Read, validate and convert the planned splits; carve validation from train when planned.

    Returns {"train", "validation"[, "test"]} -> Split. Raises DataError for unusable data.
    """
    splits = {}
    for role in ROLES:
        name = getattr(plan, role)
        if not isinstance(name, str):
            continue
        splits[role] = build_raw_split(source.read(name), name, text_column, label_column, label_names, source.name)
    if isinstance(plan.validation, Carve):
        splits["train"], splits["validation"] = carve(splits["train"], plan.validation, source.name)
        log(f"validation: carved {len(splits['validation'].texts)} rows ({plan.validation.fraction:g} of each class, "
            f"seed {plan.validation.seed}) out of {source.name} ({plan.train})")
    if plan.shots:
        splits["train"] = draw_shots(splits["train"], plan.shots, plan.shots_seed, label_names, "train", strict=True)
        splits["validation"] = draw_shots(splits["validation"], plan.shots, plan.shots_seed, label_names, "validation")
        log(f"--shots {plan.shots}: kept {len(splits['train'].texts)} training and {len(splits['validation'].texts)} "
            f"validation rows (seed {plan.shots_seed})")
    return {role: splits[role] for role in ROLES if role in splits}


def draw_shots(split: Split, k: int, seed: int, label_names: Sequence[str], role: str, strict: bool = False) -> Split:
    """K rows of each class drawn with the seed, in their original order. A class with fewer than K rows is
    a DataError for train (strict: the user asked for K examples of it), and kept whole for validation."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.asarray(split.labels)
    chosen = []
    for cls, name in enumerate(label_names):
        rows = np.flatnonzero(labels == cls)
        if strict and len(rows) < k:
            raise DataError(f"--shots {k}: class {name!r} has only {len(rows)} {role} rows; "
                            f"pass --shots {len(rows)} or less" if len(rows) else
                            f"--shots {k}: class {name!r} has no {role} rows")
        chosen.extend(rng.permutation(rows)[:k].tolist())
    keep = sorted(chosen)
    return Split([split.texts[i] for i in keep], [split.labels[i] for i in keep], split.skipped_empty)


def data_class_names(source: Source, plan: SplitPlan, label_column: str) -> list[str] | None:
    """The classes the training data names: a ClassLabel column's names, or its distinct string labels
    sorted; None where the labels are class ids (0..K-1) or the column is missing (build_split says so)."""
    raw = source.read(plan.train)
    if label_column in raw.class_names:
        return list(raw.class_names[label_column])
    if label_column not in raw.table.column_names:
        return None
    values = raw.table.column(label_column).to_pylist()
    strings = {v.strip() for v in values if isinstance(v, str)}  # " positive" written by hand is "positive"
    if not strings or any(_number(v) is not None for v in strings if v):  # class ids, some perhaps read as text
        return None
    if "" in strings:  # a csv's empty cell: the row has no label
        row = next(i for i, v in enumerate(values) if isinstance(v, str) and not v.strip())
        raise DataError(f"{source.name} ({plan.train}) row {row}: label {values[row]!r} is empty; fill it in or drop "
                        f"the row")
    if len(strings) < 2:
        raise DataError(f"{source.name} ({plan.train}): train's labels name one class {sorted(strings)}; a classifier "
                        f"needs two or more (check --label-column, or pass --label-words and --label-names)")
    return sorted(strings)


def class_label_ids(class_names: Sequence[str] | None, label_names: Sequence[str], where: str) -> list[int] | None:
    """For a ClassLabel label column: the rtsent class id of each of its ids, matched by name.

    Names match when equal ignoring case, or when one abbreviates the other from its start ("neg" and
    "negative", as in rotten_tomatoes and imdb); the match must pair the names one to one. None when
    the column is not a ClassLabel. Raises DataError showing both lists when they cannot be matched.
    """
    if class_names is None:
        return None
    names = [n.lower() for n in label_names]
    ids = [_match_name(c.lower(), names) for c in class_names]
    if None in ids or len(set(ids)) != len(ids) or len(ids) != len(names):
        raise DataError(
            f"{where}: the label column's classes {list(class_names)} do not match the label names "
            f"{list(label_names)}; pass --label-names {','.join(class_names)} (one --label-words entry per class, "
            f"in the same order)"
        )
    return ids


def _match_name(name: str, names: list[str]) -> int | None:
    """Index of the one label name equal to `name`, else of the one it abbreviates or that abbreviates it."""
    if name in names:
        return names.index(name)
    prefix = [i for i, n in enumerate(names) if name and n and (n.startswith(name) or name.startswith(n))]
    return prefix[0] if len(prefix) == 1 else None


def carve(train: Split, plan: Carve, where: str) -> tuple[Split, Split]:
    """Split train into (train, validation): round(fraction x rows) of each class, drawn with the seed.

    Stratified, so an imbalanced train split keeps its class balance in both parts; rows keep their order.
    """
    import numpy as np

    rng = np.random.default_rng(plan.seed)
    labels = np.asarray(train.labels)
    chosen = []
    for cls in np.unique(labels):
        rows = np.flatnonzero(labels == cls)
        chosen.extend(rng.permutation(rows)[: round(plan.fraction * len(rows))].tolist())
    if not chosen or len(chosen) == len(labels):
        raise DataError(
            f"{where}: train has {len(labels)} rows, too few to carve a validation split of "
            f"--validation-fraction {plan.fraction:g}; add a validation file or change the fraction"
        )
    held = np.zeros(len(labels), dtype=bool)
    held[chosen] = True

    def subset(mask: Any, skipped: int) -> Split:
        idx = np.flatnonzero(mask)
        return Split([train.texts[i] for i in idx], [train.labels[i] for i in idx], skipped)

    return subset(~held, train.skipped_empty), subset(held, 0)


def read_table_file(path: Path) -> Any:
    """A parquet, csv or jsonl file as an Arrow table; an unreadable one is a DataError naming why."""
    import pyarrow as pa

    kind = table_format(path)
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        if kind in DELIMITERS:
            import pyarrow.csv as pcsv

            return pcsv.read_csv(path, parse_options=pcsv.ParseOptions(delimiter=DELIMITERS[kind]))
        array = json_array_problem(path)
        if array:
            raise DataError(array)
        import pyarrow.json as pjson

        return pjson.read_json(path)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        reason = first_line(exc)
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


def read_raw_file(path: Path) -> RawSplit:
    """A parquet/csv/jsonl file as a RawSplit: its table and the ClassLabel names its schema keeps."""
    table = read_table_file(path)
    return RawSplit(table, _class_names_in_schema(table.schema))


def build_raw_split(raw: RawSplit, split: str, text_column: str, label_column: str, label_names: Sequence[str],
                    where: str) -> Split:
    """build_split for a split as read, with a ClassLabel label column matched to label_names by name."""
    ids = class_label_ids(raw.class_names.get(label_column), label_names, f"{where} ({split})")
    return build_split(raw.table, split, text_column, label_column, label_names, where, ids)


def build_split(table: Any, split: str, text_column: str, label_column: str,
                label_names: Sequence[str], where: str, class_ids: Sequence[int] | None = None) -> Split:
    """Validate and convert one split: string texts, labels mapped to class ids 0..K-1.

    `class_ids` translates a ClassLabel column's ids (see class_label_ids). Rows whose text is empty
    or whitespace are skipped and counted; any unusable label is an error.
    """
    texts = column(table, text_column, "text", f"{where} ({split})")
    labels = column(table, label_column, "label", f"{where} ({split})")
    kept_texts, kept_labels, kept_rows, skipped = [], [], [], 0
    for row, (text, label) in enumerate(zip(texts, labels)):
        if isinstance(text, bytes):  # pyarrow reads a CSV column with invalid UTF-8 as binary
            raise DataError(f"{where} ({split}) row {row}: the text is not valid UTF-8; re-save the file as UTF-8")
        if text is not None and not isinstance(text, str):
            raise DataError(f"{where} ({split}) row {row}: text {text!r} is not a string; check --text-column")
        if text is None or not text.strip():
            skipped += 1
            continue
        kept_texts.append(text)
        kept_rows.append(row)
        if class_ids is not None:
            label = _translate(label, class_ids, f"{where} ({split}) row {row}")
        kept_labels.append(label_id(label, label_names, f"{where} ({split}) row {row}"))
    if not kept_texts:
        raise DataError(f"{where} ({split}) has no rows with text")
    return Split(kept_texts, kept_labels, skipped, kept_rows)


def _translate(label: Any, class_ids: Sequence[int], where: str) -> Any:
    if label == NO_LABEL:
        raise DataError(f"{where}: label -1 means 'no label' (this split's labels are hidden); "
                        f"leave the split out, e.g. --splits test=none")
    return class_ids[label] if isinstance(label, int) and 0 <= label < len(class_ids) else label


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def label_id(label: Any, names: Sequence[str], where: str) -> int:
    """Class id of a label: a label name (as written, else spelled otherwise: see _spelled_name), a number among
    names that are numbers ("1" … "5" star ratings), or an integer 0..K-1."""
    k = len(names)
    if isinstance(label, bool) or label is None or (isinstance(label, float) and math.isnan(label)):
        raise DataError(f"{where}: label {label!r} is missing or not a class; labels must be 0..{k - 1} or one of {list(names)}")
    numbered = _numbered_names(names)
    if isinstance(label, str):
        if label in names:
            return names.index(label)
        if not label.strip():
            raise DataError(f"{where}: label {label!r} is empty; fill it in or drop the row")
        if _number(label) is None:  # a number written as text is read as the number below
            matched = _spelled_name(label, names)
            if matched is not None:
                return matched
        # "1.0" read as text: a csv label column that also holds names is read as strings whole
        if not label.strip().isdecimal() and _number(label) is not None:
            return label_id(_number(label), names, where)
        if not label.strip().isdecimal():  # "1" read as text (e.g. a quoted CSV cell) is still class 1
            raise DataError(
                f"{where}: label {label!r} is not one of the label names {list(names)}; pass --label-names to match"
            )
        label = int(label)
    if numbered and isinstance(label, (int, float)):  # names that are numbers: a number is matched by value
        if label in numbered:
            return numbered.index(label)
        raise DataError(f"{where}: label {label!r} is not one of the label names {list(names)}")
    if isinstance(label, float):
        if not label.is_integer():
            raise DataError(f"{where}: label {label!r} is not a whole number; labels must be 0..{k - 1} or one of {list(names)}")
        label = int(label)
    if isinstance(label, int) and 0 <= label < k:
        return label
    raise DataError(
        f"{where}: label {label!r} is outside the class ids 0..{k - 1} of the {k} classes; integer labels count "
        f"classes from 0: for labels that name their classes (e.g. stars 1-5), pass them as --label-names"
    )


def _spelled_name(label: str, names: Sequence[str]) -> int | None:
    """The one name a label spells otherwise: the same ignoring case and surrounding spaces ("Positive",
    "positive "), else the one name it abbreviates from the start ("neg", "pos"). Never a longer label
    ("goodish" is not "good"): a class the names lack is refused, not folded into another."""
    text = label.strip().lower()
    lowered = [n.strip().lower() for n in names]
    if text in lowered:
        return lowered.index(text) if lowered.count(text) == 1 else None
    starts = [i for i, n in enumerate(lowered) if n.startswith(text)]
    return starts[0] if len(starts) == 1 else None


def _numbered_names(names: Sequence[str]) -> list[float] | None:
    """The names' values where every name is a number (--label-names 1,2,3,4,5), else None."""
    values = [_number(n) for n in names]
    return None if None in values else values
