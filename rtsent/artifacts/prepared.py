"""The prepared dataset: its folder (PreparedPaths), its record manifest.json (PreparedMeta), which dataset a
command means (find_prepared) and the dataset opened with its record (load_prepared). No other module spells a
file name or a key of it; `rtsent prepare` (prepare.py) builds it, every other stage reads it through here.

    <workdir>/prepared/<fingerprint>/
      dataset_dict.json, <split>/   the DatasetDict (save_to_disk): input_ids, labels, length per example
      manifest.json                 PreparedMeta: options, source, tokenizer, prompt, label words, counts; written last
    <workdir>/current.json          {"prepared": <fingerprint>}: what train and evaluate use when not told otherwise
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rtsent.artifacts.cache import locked
from rtsent.artifacts.files import read_json, write_json
from rtsent.artifacts.workspace import Workspace
from rtsent.errors import ArtifactError, UsageError

MANIFEST = "manifest.json"
MANIFEST_VERSION = 2
"""1: datasets written before the field existed (read as they are; label words as "label_words", or, before
label words of several tokens, one token id per class as "label_ids"); 2: adds "version"."""
REQUIRED_KEYS = ("fingerprint", "config", "tokenizer", "prompt", "max_len", "splits")
TOKENIZE_CHUNK = 2048
"""Texts encoded per call when tokenizing a split (prepare, and evaluate's --data)."""
LOCK_WAIT_S = 600.0
"""How long a reader waits for a `prepare --force` that is replacing the same dataset."""
REBUILD_HINT = "rebuild it with `rtsent prepare --force`"


@dataclass(frozen=True)
class PreparedPaths:
    """The files of one prepared dataset's folder."""

    dir: Path

    @property
    def manifest(self) -> Path:
        return self.dir / MANIFEST

    @property
    def fingerprint(self) -> str:
        return self.dir.name

    def is_prepared(self) -> bool:
        """Whether the folder is a complete prepared dataset (its manifest is written last)."""
        return self.manifest.is_file()


@dataclass(frozen=True)
class PreparedMeta:
    """manifest.json: how a prepared dataset was made (every part of its fingerprint) and what it holds.

    `config` (the PrepareConfig as stored) and `splits` (per split: rows, per_class, skipped_empty, truncated,
    length statistics) stay the JSON objects they are on disk.
    """

    config: dict[str, Any]
    tokenizer: str
    """tokenizer_fingerprint of the tokenizer the prompts were made with."""
    prompt: Any
    """The resolved PromptConfig (classes known)."""
    max_len: int
    label_words: Any = None
    """The LabelWords: each class's words as token ids after the prompt."""
    fingerprint: str = ""
    source: str | None = None
    subset: str | None = None
    split_plan: dict[str, Any] | None = None
    columns: list[str] = field(default_factory=list)
    encoding: int | None = None
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    rtsent_version: str = ""
    created: str = ""
    version: int = MANIFEST_VERSION
    """The format the record was read in; it is always written in the current one."""

    @property
    def data(self) -> str:
        """--data the dataset was prepared from."""
        return self.config["data"]

    @property
    def model(self) -> str:
        """--model whose tokenizer made the prompts."""
        return self.config["model"]

    @property
    def shots(self) -> int:
        return int(self.config.get("shots") or 0)

    @property
    def text_column(self) -> str:
        return self.config.get("text_column", "text")

    def rows(self, split: str) -> int | None:
        return self.splits.get(split, {}).get("rows")

    def class_counts(self, split: str) -> list[int]:
        """Examples of each class in the split, in class-id order."""
        per_class = self.splits[split]["per_class"]
        return [per_class[name] for name in self.prompt.label_names]

    def cache_key(self) -> dict[str, Any]:
        """The fields the fingerprint hashes: everything that changes the prepared output (docs/pipeline.md)."""
        from rtsent.config import to_dict

        return {"source": self.source, "subset": self.subset, "split_plan": self.split_plan,
                "tokenizer": self.tokenizer, "prompt": to_dict(self.prompt), "max_len": self.max_len,
                "columns": list(self.columns), "encoding": self.encoding}

    def describe(self) -> str:
        """One line naming the dataset: fingerprint, data, max-len and template."""
        return (f"prepared dataset {self.fingerprint} ({self.data}, max-len {self.max_len}, "
                f"template {self.prompt.template!r})")

    def replace(self, **changes: Any) -> "PreparedMeta":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {"version": MANIFEST_VERSION, "fingerprint": self.fingerprint, "created": self.created,
                "rtsent_version": self.rtsent_version, "config": self.config, **self.cache_key(),
                "label_words": self.label_words.to_list(), "splits": self.splits}

    @classmethod
    def new(cls, **fields: Any) -> "PreparedMeta":
        """A record stamped with this rtsent's version and the current time."""
        from rtsent import __version__

        return cls(rtsent_version=__version__, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PreparedMeta":
        """Read any version of the record (older ones lack the version, some keep "label_ids")."""
        from rtsent.config import prompt_from_dict
        from rtsent.core.prompts import LabelWords

        known = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in data.items() if k in known}
        fields["prompt"] = prompt_from_dict(data["prompt"])
        fields["label_words"] = LabelWords.from_list(data.get("label_ids") or data["label_words"])
        fields["max_len"] = int(data["max_len"])
        fields["version"] = int(data.get("version", 1))
        return cls(**fields)

    @classmethod
    def read(cls, folder: str | Path) -> "PreparedMeta":
        """The record of a prepared folder; ArtifactError (with the fix) when it is missing, incomplete or damaged."""
        paths = PreparedPaths(Path(folder))
        hint = f"{REBUILD_HINT} (or delete {paths.dir})"
        data = read_json(paths.manifest, hint)
        missing = [k for k in REQUIRED_KEYS if k not in data] + (
            [] if "label_words" in data or "label_ids" in data else ["label_words"])
        if missing:
            raise ArtifactError(f"{paths.manifest} lacks {', '.join(missing)}; {hint}")
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError, UsageError) as exc:
            raise ArtifactError(f"{paths.manifest} is not a valid prepared dataset record ({exc}); {hint}") from None

    def write(self, folder: str | Path) -> Path:
        """Write manifest.json into folder, atomically; returns its path."""
        path = PreparedPaths(Path(folder)).manifest
        write_json(path, self.to_dict())
        return path


def prepare_command(config: dict[str, Any] | None) -> str:
    """The `rtsent prepare` command that rebuilds a dataset from its stored options (same fingerprint)."""
    if not config:
        return "rtsent prepare <the run's options>"
    prompt = config["prompt"]
    return prompt_command(config["model"], prompt["template"], prompt["label_words"],
                          f"--data {config['data']} ", f" --max-len {config['max_len']}")


def prompt_command(model: str, template: str, label_words: Sequence[str], before: str = "", after: str = "") -> str:
    """`rtsent prepare --model <model> --template '…' --label-words '…'`, newlines typed as \\n (a class's "|"
    between words stays as typed); `before`/`after` are more options around --model."""
    return (f"rtsent prepare {before}--model {model}{after} --template '{template}' "
            f"--label-words '{','.join(label_words)}'").replace("\n", "\\n")


@dataclass(frozen=True)
class PreparedData:
    """An opened prepared dataset: its folder, its DatasetDict and its record."""

    path: Path
    dataset: Any
    meta: PreparedMeta


def load_prepared(path: Path, ws: Workspace | None = None) -> PreparedData:
    """The prepared dataset in path, opened; an incomplete or inconsistent folder is an ArtifactError.

    With the workspace given, the dataset's prepare lock is held while opening it, so a concurrent
    `prepare --force` never swaps the folder mid-open (once open, the memory-mapped files stay valid).
    """
    if ws is None:
        return _load(Path(path))
    with locked(ws, lock_key(path.name), f"prepared dataset {path}", wait=LOCK_WAIT_S):
        return _load(Path(path))


def lock_key(fingerprint: str) -> str:
    """The lock prepare holds while building (or replacing) the dataset, and readers while opening it."""
    return f"prepare-{fingerprint}"


def _load(path: Path) -> PreparedData:
    import datasets

    hint = f"{REBUILD_HINT} (or delete {path})"
    meta = PreparedMeta.read(path)
    try:
        dd = datasets.load_from_disk(str(path))
    except Exception as exc:  # damaged arrow files surface as several exception types
        raise ArtifactError(f"prepared dataset {path} is damaged ({exc}); {hint}") from None
    for split, info in meta.splits.items():
        if split not in dd or len(dd[split]) != info.get("rows"):
            raise ArtifactError(f"prepared dataset {path} does not match its manifest ({split}); {hint}")
    return PreparedData(path, dd, meta)


def find_prepared(ws: Workspace, ref: str | None) -> Path:
    """A prepared dataset by folder path or fingerprint, or the one the last `rtsent prepare` named.

    "Last" is the pointer every prepare (cache hit or build) writes, never file times: a cache hit
    on an older dataset makes it current again. Raises ArtifactError when there is no such dataset.
    """
    if ref is not None:
        path = Path(ref)
        if not path.is_dir():
            path = ws.prepared(ref)
        if not PreparedPaths(path).is_prepared():
            raise ArtifactError(
                f"no prepared dataset at {ref} (no {MANIFEST}); run `rtsent prepare` and pass its folder"
            )
        return path
    if ws.current_file.is_file():
        current = read_json(ws.current_file, "run `rtsent prepare` again").get("prepared")
        path = ws.prepared(str(current))
        if not PreparedPaths(path).is_prepared():
            raise ArtifactError(f"the last prepared dataset {current} is gone from {ws.prepared_dir}; "
                                f"run `rtsent prepare` again or pass --prepared")
        return path
    found = sorted(p.parent for p in ws.prepared_dir.glob(f"*/{MANIFEST}"))
    if not found:
        raise ArtifactError(f"no prepared dataset in {ws.prepared_dir}; run `rtsent prepare` first")
    if len(found) > 1:  # a workspace from before the pointer existed: refuse to guess
        raise ArtifactError(f"{ws.prepared_dir} holds {len(found)} prepared datasets and none is marked "
                            f"current; run `rtsent prepare` with the options you want, or pass --prepared")
    return found[0]


def in_workspace(ws: Workspace, fingerprint: str | None) -> Path | None:
    """The folder of the dataset with this fingerprint, None when it is not (or no longer) in the workspace."""
    if not fingerprint:
        return None
    path = ws.prepared(fingerprint)
    return path if PreparedPaths(path).is_prepared() else None


def make_current(ws: Workspace, fingerprint: str) -> None:
    """Point the workspace at this dataset: what `train` and `evaluate` use when not told otherwise."""
    write_json(ws.current_file, {"prepared": fingerprint})
