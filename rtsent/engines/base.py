"""What every engine shares, without torch: the model's record, the prompt, batching, and the one path
from label-word scores to calibrated probabilities."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from rtsent.artifacts.model import META_FILE, ModelMeta, ModelPaths
from rtsent.config import PromptConfig
from rtsent.core.calibration import softmax
from rtsent.engines.choice import Choice
from rtsent.errors import ArtifactError, UsageError

def read_model_meta(model: str, prompt: PromptConfig | None = None) -> tuple[ModelMeta | None, PromptConfig]:
    """The model folder's record (None for a base model given a prompt) and the prompt to score with.

    Raises ArtifactError for a folder without rtsent.json when no prompt is given, UsageError when a
    given prompt contradicts the one the model was trained with.
    """
    if not ModelPaths(Path(model).expanduser()).is_model():
        if prompt is None:
            raise ArtifactError(
                f"{model} has no {META_FILE}, so it was not exported by `rtsent train`; pass a run's model folder, "
                f"or score it as a base model zero-shot with --zero-shot (evaluate) or --template/--label-words"
            )
        return None, prompt.or_default()
    meta = ModelMeta.read(model)
    trained = meta.prompt
    if prompt is not None and not (prompt.resolved and prompt.same_scoring(trained)) and (
            prompt.resolved or prompt.template != trained.template):
        raise UsageError(
            f"{model} was trained with template {trained.template!r} and label words "
            f"{list(trained.label_words)!r}; drop --template/--label-words to use them"
        )
    return meta, trained


def length_sorted_batches(rows: Sequence[Sequence[int]], batch_size: int) -> Iterator[list[int]]:
    """Indices of rows in batches of similar length, so that a batch pads little."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


class Classifier(ABC):
    """A model ready to score reviews. Engines supply the tokenizer and `_score_batch`; everything from
    raw scores to calibrated probabilities happens here, once, for evaluate, predict and serve alike."""

    engine: str = ""
    choice: "Choice | None" = None
    """What open_classifier picked for this job and why (engines/choice.py)."""

    def __init__(self, name: str, meta: ModelMeta | None, prompt: PromptConfig, max_len: int, tokenizer: Any,
                 precision: str):
        from rtsent.core.prompts import PromptEncoder

        self.name = name
        """The model as the user named it (folder, hub name or GGUF file)."""
        self.meta = meta
        """Its rtsent.json, None for a base model scored zero-shot."""
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
        return self.meta.temperature if self.meta is not None else 1.0

    @abstractmethod
    def _score_batch(self, rows: list[Sequence[int]]) -> np.ndarray:
        """Label-word scores [len(rows), classes] of prompt id lists (right-padded by the engine)."""

    def scores(self, rows: Sequence[Sequence[int]], batch_size: int = 64) -> np.ndarray:
        """Raw label-word scores [n, classes] as float32, in input order."""
        out = np.empty((len(rows), self.encoder.label_words.num_classes), dtype=np.float32)
        for idx in length_sorted_batches(rows, batch_size):
            out[idx] = self._score_batch([rows[i] for i in idx])
        return out

    def calibrate(self, scores: np.ndarray) -> np.ndarray:
        """The probabilities users see: softmax over the label words' scores divided by the temperature."""
        return softmax(np.asarray(scores, dtype=np.float64) / self.temperature)

    def probabilities(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Calibrated probabilities [len(texts), classes], one row per text."""
        return self.calibrate(self.scores(self.encoder.encode(texts).input_ids, batch_size))


def onnx_graphs(model: str, meta: ModelMeta | None) -> dict[str, Path]:
    """The exported graphs the folder holds, by precision ("fp32", "int8"): files rtsent.json lists that exist."""
    folder = Path(model).expanduser()
    graphs = meta.graphs() if meta is not None else {}
    return {k: folder / name for k, name in graphs.items() if isinstance(name, str) and (folder / name).is_file()}
