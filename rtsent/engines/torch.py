"""The torch engine: the model as transformers loads it, in fp32, bf16 or fp16, on CPU or GPU."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from rtsent.artifacts.model import ModelMeta
from rtsent.config import PromptConfig
from rtsent.core import label_scores
from rtsent.core.modeling import DTYPES, default_device, load_model, load_tokenizer, pad_batch
from rtsent.engines.base import Classifier
from rtsent.quiet import quiet_transformers


class TorchClassifier(Classifier):
    """Tokenizer via transformers, the model via load_model, cast once to the scoring precision."""

    engine = "torch"

    def __init__(self, name: str, meta: ModelMeta | None, prompt: PromptConfig, max_len: int, precision: str):
        """`precision` is fp32, bf16 or fp16, as engines.choice chose and checked it."""
        self.device = default_device()
        super().__init__(name, meta, prompt, max_len, load_tokenizer(name), precision)
        with quiet_transformers():
            model = load_model(name, dtype=DTYPES[precision], compute=precision)
        # Inference needs no fp32 master weights: cast once instead of autocasting every matmul.
        self.model: Any = model.to(self.device, dtype=DTYPES[precision]).eval()
        self.layout = label_scores.ScoringLayout(self.encoder.label_words).to(self.device)

    def _score_batch(self, rows: list[Sequence[int]]) -> np.ndarray:
        with torch.inference_mode():
            batch = {k: v.to(self.device) for k, v in pad_batch(rows, self.tokenizer.pad_token_id).items()}
            return label_scores.scores(self.model, self.layout, **batch).float().cpu().numpy()
