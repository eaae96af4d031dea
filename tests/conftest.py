"""Hermetic fixtures: a tiny byte-level BPE tokenizer, a 2-layer GPT-2, and a small synthetic dataset.

Nothing here touches the network or ../shared; every cache points into a temp folder.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest

_CACHE = tempfile.mkdtemp(prefix="rtsent-test-hf-")
atexit.register(shutil.rmtree, _CACHE, True)  # each process's own (GGUF conversions reach 0.5 GB): not left in /tmp
os.environ.update({
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HOME": _CACHE,
    "HF_DATASETS_CACHE": os.path.join(_CACHE, "datasets"),
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "RTSENT_CACHE": os.path.join(_CACHE, "rtsent"),  # GGUF conversions
})
# torch's structured-trace logger emits DEBUG records for every node the ONNX exporter traces; pytest's
# log capture would keep them all (tens of thousands for the 30-layer real model).
import logging  # noqa: E402

logging.getLogger("torch.__trace").setLevel(logging.WARNING)
os.environ.pop("RTSENT_HOME", None)
os.environ.pop("RTSENT_DEBUG", None)


def _share_the_cores_between_workers() -> None:
    """Under pytest-xdist (pyproject's addopts), each worker's torch gets its share of the cores, before any
    test imports torch; the rtsent processes tests start inherit it. torch's default (every core in every
    worker) ran the suite 456 s on 2 cores against 378 s with one thread each (AVX2 EPYC, 2026-12-04)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // workers)))


_share_the_cores_between_workers()

# The files that take longest, longest first (serial durations on a 2-core AVX2 EPYC, 2026-12-04). With
# `--dist loadfile --no-loadscope-reorder` each file runs whole on one worker, in collection order, so these
# start first instead of last, while the short files fill the other workers.
LONGEST_FIRST = ("test_pretrained.py", "test_reliability.py", "test_torchrun.py", "test_real_data.py",
                 "test_serve.py", "test_seqcls.py", "test_engines.py", "test_lora.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its order

POSITIVE = ["great", "wonderful", "moving", "funny", "brilliant", "charming", "superb", "delightful"]
NEGATIVE = ["awful", "boring", "dull", "terrible", "tedious", "bland", "clumsy", "lifeless"]
NEUTRAL = ["the", "movie", "film", "is", "a", "story", "with", "and", "of", "plot", "actors", "it", "this"]


def synthetic_review(rng: random.Random, label: int) -> str:
    """A review whose sentiment words decide its label; learnable by a tiny model in a few steps."""
    words = rng.choices(NEUTRAL, k=rng.randint(3, 8)) + rng.choices(POSITIVE if label else NEGATIVE, k=2)
    rng.shuffle(words)
    return " ".join(words)


def synthetic_split(n: int, seed: int) -> dict[str, list]:
    rng = random.Random(seed)
    labels = [i % 2 for i in range(n)]
    return {"text": [synthetic_review(rng, y) for y in labels], "label": labels}


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A GPT-2-style byte-level BPE tokenizer (eos <|endoftext|>, no pad) where ' negative'/' positive' are one token."""
    from tokenizers import ByteLevelBPETokenizer

    rng = random.Random(0)
    corpus = [synthetic_review(rng, i % 2) + "\nSentiment: negative positive neg pos\nneg\npos" for i in range(2000)]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=2, special_tokens=["<|endoftext|>"])
    folder = tmp_path_factory.mktemp("tokenizer")
    bpe.save_model(str(folder))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False, "model_max_length": 1024,
        "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
    }))
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A 2-layer, width-32 GPT-2 with random weights, saved like a hub model (safetensors + tokenizer)."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_layer=2, n_embd=32, n_head=2, n_positions=128,
                        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2LMHeadModel(config).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def write_splits(folder: Path, fmt: str = "parquet", sizes=(256, 64, 64)) -> Path:
    """Write train/validation/test files of the synthetic dataset in a given format."""
    import pyarrow as pa

    folder.mkdir(parents=True, exist_ok=True)
    for (split, n), seed in zip(zip(("train", "validation", "test"), sizes), (1, 2, 3)):
        table = pa.table(synthetic_split(n, seed))
        if fmt == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, folder / f"{split}.parquet")
        elif fmt == "csv":
            import pyarrow.csv as pcsv

            pcsv.write_csv(table, folder / f"{split}.csv")
        else:
            with open(folder / f"{split}.jsonl", "w") as fh:
                for row in table.to_pylist():
                    fh.write(json.dumps(row) + "\n")
    return folder


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return write_splits(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture
def workdir(tmp_path) -> Path:
    return tmp_path / "ws"


@pytest.fixture
def ws(workdir):
    from rtsent.artifacts.workspace import Workspace

    return Workspace.resolve(workdir)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_model_dir, data_dir):
    """One short training run on the synthetic data, shared by evaluate/predict tests (read-only use)."""
    from rtsent import prepare, train
    from rtsent.config import PrepareConfig, TrainConfig
    from rtsent.artifacts.workspace import Workspace

    space = Workspace.resolve(tmp_path_factory.mktemp("trained-ws"))
    prepare.run(PrepareConfig(data=str(data_dir), model=str(tiny_model_dir), max_len=32), space)
    result = train.run(TrainConfig(model=str(tiny_model_dir), lr=1e-2, batch_size=16, epochs=6, eval_every=16,
                                   run_name="tiny", precision="fp32", warmup=0.0), space)
    return space, result


@functools.lru_cache(maxsize=4)
def _reference_model(model_dir: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoTokenizer.from_pretrained(model_dir),
            AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval())


def reference_scores(model_dir, prompts_or_ids, words=(" negative", " positive")):
    """Label-word logits from the model's own full forward, one prompt at a time, unpadded: no rtsent code.

    Takes prompt strings (tokenized whole, as transformers does) or ready token-id lists.
    """
    import numpy as np
    import torch

    tok, model = _reference_model(str(model_dir))
    label_ids = [tok(w, add_special_tokens=False)["input_ids"][0] for w in words]
    out = []
    with torch.no_grad():
        for item in prompts_or_ids:
            ids = tok(item, add_special_tokens=False)["input_ids"] if isinstance(item, str) else list(item)
            out.append(model(torch.tensor([ids])).logits[0, -1, label_ids].numpy())
    return np.array(out, dtype=np.float64)


def reference_probabilities(model_dir, prompts_or_ids, words=(" negative", " positive")):
    import numpy as np

    scores = reference_scores(model_dir, prompts_or_ids, words)
    exp = np.exp(scores - scores.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)
