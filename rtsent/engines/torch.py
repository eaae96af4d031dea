"""The torch engine: the model as transformers loads it, in fp32, bf16 or fp16, on CPU or GPU."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from rtsent.engines.base import Classifier, length_sorted_batches
from rtsent.errors import UsageError
from rtsent.core.modeling import (DTYPES, default_device, label_logits, last_token_hidden, load_model, load_tokenizer,
                             pad_batch, quiet_transformers, resolve_precision)


class Scorer:
    """Batched inference: prompt id lists -> label-word scores [n, classes] as float32 numpy."""

    def __init__(self, model: Any, label_ids: Sequence[int], pad_id: int, precision: str = "auto",
                 device: torch.device | None = None):
        self.device = device or default_device()
        self.precision = resolve_precision(precision, self.device)
        # Inference needs no fp32 master weights: cast once instead of autocasting every matmul.
        self.model = model.to(self.device, dtype=DTYPES[self.precision]).eval()
        self.label_ids = torch.as_tensor(list(label_ids), device=self.device)
        self.pad_id = pad_id

    def score_batch(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        with torch.inference_mode():
            batch = {k: v.to(self.device) for k, v in pad_batch(rows, self.pad_id).items()}
            hidden = last_token_hidden(self.model, **batch)
            return label_logits(self.model, hidden.float(), self.label_ids).float().cpu().numpy()

    def scores(self, rows: Sequence[Sequence[int]], batch_size: int = 64) -> np.ndarray:
        """Scores in input order; batches are formed from length-sorted rows to minimise padding."""
        out = np.empty((len(rows), len(self.label_ids)), dtype=np.float32)
        for idx in length_sorted_batches(rows, batch_size):
            out[idx] = self.score_batch([rows[i] for i in idx])
        return out


class TorchClassifier(Classifier):
    """Tokenizer via transformers, model via load_model, scores via Scorer."""

    engine = "torch"

    def __init__(self, name: str, meta: dict[str, Any], prompt: Any, max_len: int, precision: str = "auto"):
        if precision == "int8":
            raise UsageError("--precision int8 needs the onnx engine (`rtsent export --int8`, then --engine onnx)")
        device = default_device()
        precision = resolve_precision(precision, device)
        super().__init__(name, meta, prompt, max_len, load_tokenizer(name), precision)
        with quiet_transformers():
            model = load_model(name, dtype=DTYPES[precision], compute=precision)
        self.scorer = Scorer(model, self.encoder.label_ids, self.tokenizer.pad_token_id, precision, device)

    def _score_batch(self, rows: list[Sequence[int]]) -> np.ndarray:
        return self.scorer.score_batch(rows)
