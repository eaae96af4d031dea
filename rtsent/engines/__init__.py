"""Scoring engines behind one interface: evaluate, predict and serve score reviews through open_classifier().

A classifier has `name`, `meta` (its rtsent.json), `prompt`, `label_names`, `engine` ("torch" or "onnx"),
`encoder` (PromptEncoder), `scores(rows, batch_size)` -> raw label-word scores [n, classes] and
`probabilities(texts, batch_size)` -> calibrated softmax over the label words [n, classes].
"""

from __future__ import annotations

from typing import Any


def open_classifier(model: str, prompt: Any = None, max_len: int | None = None, precision: str = "auto",
                    engine: str = "auto") -> Any:
    """An exported rtsent model (its rtsent.json gives the prompt), or a base model with an explicit prompt."""
    from rtsent.modeling import open_classifier as open_torch

    return open_torch(model, prompt, max_len, precision)
