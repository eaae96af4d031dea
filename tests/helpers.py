"""Helpers shared by several test files (the fixtures are in conftest.py): a short prepare and train, the
brute-force temperature grid and the validation scores it is checked on, a PNG check, hypothesis settings."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from rtsent import prepare, train
from rtsent.config import PrepareConfig, TrainConfig


def default_prompt(text: str) -> str:
    """A review as the default template makes it a prompt, written out here, not read from rtsent."""
    return f"Review: {text}\nSentiment:"


def prep(ws, model, data, **kw):
    return prepare.run(PrepareConfig(data=str(data), model=str(model), **kw), ws)


def short_train(ws, model, **kw):
    kw = {"lr": 1e-3, "batch_size": 16, "max_steps": 2, "eval_every": 2, "precision": "fp32", "warmup": 0.0, **kw}
    logs: list[str] = []
    return train.run(TrainConfig(model=str(model), **kw), ws, log=logs.append), logs


def grid_nll(z, y, grid) -> list[float]:
    """Cross-entropy of z / T for every T of a grid, by torch's own cross_entropy (a second code path)."""
    import torch
    import torch.nn.functional as F

    t = torch.tensor(grid, dtype=torch.float64)[:, None, None]
    scaled = (z[None] / t).reshape(-1, z.shape[1])
    losses = F.cross_entropy(scaled, y.repeat(len(grid)), reduction="none").reshape(len(grid), -1).mean(1)
    return losses.tolist()


def validation_scores(space, model_dir):
    import torch

    from rtsent.artifacts.prepared import find_prepared, load_prepared
    from rtsent.engines import open_classifier

    dd = load_prepared(find_prepared(space, None)).dataset
    clf = open_classifier(str(model_dir), precision="fp32")
    scores = torch.tensor(clf.scores(dd["validation"]["input_ids"]), dtype=torch.float64)
    return clf, scores, torch.tensor(dd["validation"]["labels"])


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, min_side: int = 100) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    height, width = matplotlib.image.imread(str(path)).shape[:2]
    assert height >= min_side and width >= min_side, (path, height, width)


SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any unicode (hypothesis leaves out lone surrogates, which no decoded text can hold), newlines included.
texts = st.text(max_size=300)
