"""The torch engine: the model as transformers loads it, in fp32, bf16 or fp16, on CPU or GPU."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from rtsent.artifacts.model import ModelMeta
from rtsent.config import PromptConfig
from rtsent.core import label_scores
from rtsent.core.modeling import (DTYPES, default_device, load_model, load_tokenizer, pad_batch, quiet_transformers,
                                  resolve_precision)
from rtsent.engines.base import Classifier
from rtsent.errors import UsageError


class TorchClassifier(Classifier):
    """Tokenizer via transformers, the model via load_model, cast once to the scoring precision."""

    engine = "torch"

    def __init__(self, name: str, meta: ModelMeta | None, prompt: PromptConfig, max_len: int, precision: str = "auto"):
        if precision == "int8":
            raise UsageError("--precision int8 needs the onnx engine (`rtsent export --int8`, then --engine onnx)")
        self.device = default_device()
        precision = resolve_precision(precision, self.device)
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
