"""The exported model folder: the files in it (ModelPaths), its record rtsent.json (ModelMeta), and which
folder a command means (resolve_model). No other module spells a file name of the folder.

    <model>/
      config.json, model.safetensors   the Hugging Face model (or adapter_config.json + the adapter)
      tokenizer files, tokenizer.json  the tokenizer (tokenizer.json is what the onnx engine reads)
      rtsent.json                      ModelMeta: prompt, label ids, provenance, calibration, graphs; written last
      model.onnx, model.int8.onnx      ONNX graphs of the classifier (`rtsent export`)
      README.md                        model card, rewritten from rtsent.json and the eval reports
      eval-<split>.json                `rtsent evaluate` reports of this model (plots/ beside them)
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rtsent.artifacts.files import read_json, write_json
from rtsent.errors import ArtifactError, UsageError

META_FILE = "rtsent.json"
META_VERSION = 3
"""1: folders written before the field existed (read as they are: the same keys); 2: adds "version";
3: "label_words" (each class's words as token ids) replaces "label_ids" (one token id per class)."""
DEFAULT_MAX_LEN = 128
EVAL_ORDER = ("validation", "test")


@dataclass(frozen=True)
class ModelPaths:
    """Every file of an exported model folder."""

    dir: Path

    @property
    def meta(self) -> Path:
        return self.dir / META_FILE

    @property
    def config(self) -> Path:
        return self.dir / "config.json"

    @property
    def weights(self) -> Path:
        return self.dir / "model.safetensors"

    @property
    def adapter_config(self) -> Path:
        return self.dir / "adapter_config.json"

    @property
    def tokenizer_json(self) -> Path:
        return self.dir / "tokenizer.json"

    @property
    def card(self) -> Path:
        return self.dir / "README.md"

    @property
    def plots(self) -> Path:
        return self.dir / "plots"

    @staticmethod
    def onnx_name(precision: str) -> str:
        return {"fp32": "model.onnx", "int8": "model.int8.onnx"}[precision]

    def onnx(self, precision: str) -> Path:
        return self.dir / self.onnx_name(precision)

    def eval_report(self, split: str) -> Path:
        return self.dir / f"eval-{split}.json"

    def eval_reports(self) -> list[Path]:
        """The folder's evaluation reports: validation, test, then the others (eval-data-<file>) by name."""
        rank = {f"eval-{s}": i for i, s in enumerate(EVAL_ORDER)}
        return sorted(self.dir.glob("eval-*.json"), key=lambda p: (rank.get(p.stem, len(rank)), p.name))

    def is_model(self) -> bool:
        return self.meta.is_file()


def read_eval_reports(paths: ModelPaths) -> dict[str, dict[str, Any]]:
    """The folder's readable evaluation reports by split (a damaged or foreign file is skipped).

    Only reports that describe what the folder does count: one with contextual calibration (which
    predict, serve and the exports never apply) or scored on a prepared dataset other than the model's
    own (older rtsent wrote both into the folder) is left out, so the card never credits it."""
    import json

    try:
        trained_on = json.loads(paths.meta.read_text(encoding="utf-8")).get("prepared")
    except (OSError, ValueError, AttributeError):
        trained_on = None
    found = {}
    for path in paths.eval_reports():
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(report, dict) or "accuracy" not in report:
            continue
        contextual = isinstance(report.get("calibration"), dict) and report["calibration"].get("contextual")
        if contextual or (trained_on and report.get("prepared") not in (None, trained_on)):
            continue
        found[report.get("split") or path.stem.removeprefix("eval-")] = {**report, "path": str(path)}
    return found


@dataclass(frozen=True)
class ModelMeta:
    """rtsent.json: what makes a model folder a classifier, and where it came from.

    The nested records stay the JSON objects they are on disk: `train` (the TrainConfig), `best` (step,
    validation_accuracy), `calibration` (temperature record), `training` (timing), `lora` (export,
    base_model, trainable_params) and `onnx` (graphs, tokenizer, label_words fingerprint, pad_id, ...).
    """

    prompt: Any
    """The PromptConfig the model was trained with."""
    label_words: Any
    """The LabelWords: each class's words as token ids after the prompt (rtsent.json "label_words"; records
    before version 3 kept one token id per class as "label_ids")."""
    max_len: int = DEFAULT_MAX_LEN
    tokenizer: str | None = None
    """tokenizer_fingerprint of the tokenizer the prompts were made with."""
    prepared: str | None = None
    data: str | None = None
    run: str | None = None
    train: dict[str, Any] = field(default_factory=dict)
    best: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    lora: dict[str, Any] | None = None
    onnx: dict[str, Any] | None = None
    rtsent_version: str = ""
    created: str = ""
    version: int = META_VERSION
    """The format the record was read in; it is always written in the current one."""

    @property
    def temperature(self) -> float:
        """Temperature fitted on validation, 1.0 when the model has none."""
        return float((self.calibration or {}).get("temperature", 1.0))

    @property
    def adapter_base(self) -> str | None:
        """The base model an adapter export loads over (None for merged or full models)."""
        return (self.lora or {}).get("base_model")

    def graphs(self) -> dict[str, str]:
        """The ONNX graphs the folder holds by precision ({"fp32": "model.onnx", ...})."""
        return dict((self.onnx or {}).get("graphs") or {})

    @property
    def int8_validated(self) -> bool:
        """The int8 graph agreed with the fp32 one on validation when it was exported (onnx "int8_check")."""
        return bool(((self.onnx or {}).get("int8_check") or {}).get("accepted"))

    def replace(self, **changes: Any) -> "ModelMeta":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        from rtsent.config import to_dict

        out = {"version": META_VERSION, "rtsent_version": self.rtsent_version, "created": self.created,
               "prompt": to_dict(self.prompt), "label_words": self.label_words.to_list(), "max_len": self.max_len,
               "tokenizer": self.tokenizer, "prepared": self.prepared, "data": self.data, "run": self.run,
               "train": self.train, "best": self.best, "calibration": self.calibration, "training": self.training}
        out.update({k: getattr(self, k) for k in ("lora", "onnx") if getattr(self, k) is not None})
        return out

    @classmethod
    def new(cls, **fields: Any) -> "ModelMeta":
        """A record stamped with this rtsent's version and the current time."""
        from rtsent import __version__

        return cls(rtsent_version=__version__, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelMeta":
        """Read any version of the record (older folders lack the version and the later sections)."""
        from rtsent.config import prompt_from_dict

        known = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in data.items() if k in known}
        fields["prompt"] = prompt_from_dict(data["prompt"])
        from rtsent.core.prompts import LabelWords

        fields["label_words"] = LabelWords.from_list(data["label_words"] if "label_words" in data else data["label_ids"])
        fields["max_len"] = int(data.get("max_len") or DEFAULT_MAX_LEN)
        fields["version"] = int(data.get("version", 1))
        return cls(**fields)

    @classmethod
    def read(cls, folder: str | Path) -> "ModelMeta":
        """The record of a model folder; ArtifactError (with the fix) when it is missing or damaged."""
        paths = ModelPaths(Path(folder).expanduser())
        hint = f"re-export the model with `rtsent train --resume --run-name <its run>` (or delete {paths.meta})"
        data = read_json(paths.meta, hint)
        try:
            from rtsent.config import prompt_from_dict

            prompt_from_dict(data["prompt"])
        except (KeyError, TypeError, UsageError) as exc:
            raise ArtifactError(f"{paths.meta} has no valid prompt ({exc}); {hint}") from None
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError, UsageError) as exc:
            raise ArtifactError(f"{paths.meta} is not a valid model record ({exc}); {hint}") from None

    def write(self, folder: str | Path) -> Path:
        """Write rtsent.json into folder, atomically; returns its path."""
        path = ModelPaths(Path(folder)).meta
        write_json(path, self.to_dict())
        return path


def resolve_model(ws: Any, ref: str | None, base_ok: bool = False) -> Path | str:
    """The model a command means: ref as an exported model folder, or the exported model of the run named
    ref, or (no ref) the latest run's; with base_ok, any other model (a hub name, a plain folder, a GGUF
    file) passes through as given, for zero-shot scoring.

    Raises ArtifactError when there is no such model (or no run has exported one yet).
    """
    if ref is None:
        return ws.latest_model()
    path = Path(ref).expanduser()
    if ModelPaths(path).is_model():
        return path
    if "/" not in ref and ref not in (".", ".."):
        run_model = ws.run(ref).model
        if ModelPaths(run_model).is_model():
            return run_model
    if base_ok:
        return ref
    where = f"the folder {path} has no {META_FILE}" if path.is_dir() else f"there is no folder {path}"
    raise ArtifactError(f"{ref} is not a model exported by `rtsent train` ({where}, and no run of that name in "
                        f"{ws.runs_dir}); pass a run's model folder (runs/<name>/model) or a run name")
