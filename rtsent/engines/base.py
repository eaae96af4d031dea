"""What every engine shares, without torch: the model's rtsent.json, the prompt, batching and softmax."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from rtsent.errors import ArtifactError, UsageError

DEFAULT_MAX_LEN = 128


def read_model_meta(model: str, prompt: Any = None) -> tuple[dict[str, Any], Any]:
    """The model folder's rtsent.json (or {} for a base model given a prompt) and the prompt to score with.

    Raises ArtifactError for a folder without rtsent.json when no prompt is given, UsageError when a
    given prompt contradicts the one the model was trained with.
    """
    from rtsent.config import prompt_from_dict
    from rtsent.artifacts.workspace import MODEL_META, read_json

    meta_path = Path(model).expanduser() / MODEL_META
    if not meta_path.is_file():
        if prompt is None:
            raise ArtifactError(
                f"{model} has no {MODEL_META}, so it was not exported by `rtsent train`; pass a run's model folder, "
                f"or score it as a base model zero-shot with --zero-shot (evaluate) or --template/--label-words"
            )
        return {}, prompt
    hint = f"re-export the model with `rtsent train --resume --run-name <its run>` (or delete {meta_path})"
    meta = read_json(meta_path, hint)
    try:
        trained = prompt_from_dict(meta["prompt"])
    except (KeyError, TypeError, UsageError) as exc:
        raise ArtifactError(f"{meta_path} has no valid prompt ({exc}); {hint}") from None
    if prompt is not None and (prompt.template, prompt.label_words) != (trained.template, trained.label_words):
        raise UsageError(
            f"{model} was trained with template {trained.template!r} and label words "
            f"{list(trained.label_words)!r}; drop --template/--label-words to use them"
        )
    return meta, trained


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def length_sorted_batches(rows: Sequence[Sequence[int]], batch_size: int) -> Iterator[list[int]]:
    """Indices of rows in batches of similar length, so that a batch pads little."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded int64 ids and attention mask [batch, longest] (the label position is each row's last 1)."""
    longest = max(len(r) for r in rows)
    ids = np.full((len(rows), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), longest), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


class Classifier:
    """A model ready to score reviews; engines supply the tokenizer and `_score_batch`.

    Attributes: name, meta (rtsent.json), prompt, engine, precision, tokenizer, encoder (PromptEncoder).
    """

    engine = ""

    def __init__(self, name: str, meta: dict[str, Any], prompt: Any, max_len: int, tokenizer: Any, precision: str):
        from rtsent.core.prompts import PromptEncoder

        self.name = name
        self.meta = meta
        self.prompt = prompt
        self.tokenizer = tokenizer
        self.precision = precision
        self.encoder = PromptEncoder(prompt, tokenizer, max_len)

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.prompt.label_names

    @property
    def temperature(self) -> float:
        """Temperature fitted on validation (rtsent.json "calibration"), 1.0 when the model has none."""
        return float((self.meta.get("calibration") or {}).get("temperature", 1.0))

    def _score_batch(self, rows: list[Sequence[int]]) -> np.ndarray:
        raise NotImplementedError

    def scores(self, rows: Sequence[Sequence[int]], batch_size: int = 64) -> np.ndarray:
        """Raw label-word scores [n, classes] as float32, in input order."""
        out = np.empty((len(rows), len(self.encoder.label_ids)), dtype=np.float32)
        for idx in length_sorted_batches(rows, batch_size):
            out[idx] = self._score_batch([rows[i] for i in idx])
        return out

    def probabilities(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Softmax over the label words' scores divided by the model's temperature, one row per text."""
        return softmax(self.scores(self.encoder.encode(texts).input_ids, batch_size) / self.temperature)


# What `rtsent export` writes into a model folder; rtsent.json's "onnx" entry lists what is there.
ONNX_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
TOKENIZER_FILE = "tokenizer.json"
ONNX_PRECISIONS = ("auto", "fp32", "int8")


def onnx_graph(model: str, meta: dict[str, Any], precision: str = "auto") -> tuple[str, Path] | None:
    """The exported graph a precision selects (auto: int8 when exported, else fp32) and its precision,
    None when the folder has no such graph."""
    graphs = (meta.get("onnx") or {}).get("graphs") or {}
    key = precision if precision != "auto" else ("int8" if "int8" in graphs else "fp32")
    name = graphs.get(key)
    path = Path(model).expanduser() / name if isinstance(name, str) else None
    return (key, path) if path is not None and path.is_file() else None
