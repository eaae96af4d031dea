"""Label words of several tokens on SST-5 with SmolLM2-135M: what they cost, and sum against mean over tokens.

    python benchmarks/label_words.py speed      # scoring and training examples/s, own names vs one-token words
    python benchmarks/label_words.py bias       # zero-shot validation: a word's score as the sum or the mean

speed: the same model scores SST-5 validation (the torch engine's path, bf16 where the CPU has it natively)
with the class names as words (" very negative" ... " very positive", some of two tokens) and with single-token
synonyms (" terrible, bad, neutral, good, great"), side by side in one process, passes alternating; then
training steps (fp32 weights, bf16 autocast where native, the lm loss, backward) on the same batches,
alternating the word sets step by step. The target: within 1.5x.

bias: per-token log-probabilities of each class's words after each validation prompt, zero-shot; the class
score as the sum over tokens (rtsent's) or the mean, accuracy and how often each class is predicted.
Writes benchmarks/out/label_words-<part>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_description, write_report  # noqa: E402
from pretrained import gguf_file  # noqa: E402

SST5 = Path("/work/shared/data/sst5")
NAMES = ("very negative", "negative", "neutral", "positive", "very positive")
SYNONYMS = (" terrible", " bad", " neutral", " good", " great")


def sst5(split: str) -> tuple[list[str], list[int]]:
    import pyarrow.parquet as pq

    table = pq.read_table(SST5 / f"{split}.parquet").to_pydict()
    return table["text"], [NAMES.index(y) for y in table["label"]]


def prompts() -> dict[str, object]:
    from rtsent.config import PromptConfig

    return {"own names": PromptConfig().with_names(NAMES), "one-token synonyms": PromptConfig(label_words=SYNONYMS,
                                                                                             label_names=NAMES)}


def _model_and_prompts(precision: str) -> tuple[object, object, dict[str, object]]:
    from rtsent.core import label_scores
    from rtsent.core.modeling import DTYPES, load_model, load_tokenizer
    from rtsent.core.prompts import PromptEncoder

    tok = load_tokenizer(gguf_file())
    model = load_model(gguf_file(), dtype=DTYPES[precision], compute=precision)
    sets = {}
    for name, prompt in prompts().items():
        encoder = PromptEncoder(prompt, tok, 128)
        sets[name] = (encoder, label_scores.ScoringLayout(encoder.label_words))
    return tok, model, sets


def scoring_speed(passes: int) -> dict[str, object]:
    """Both word sets scored by the same model in alternating passes (so a busy machine slows both alike)."""
    import torch

    from rtsent.core import label_scores
    from rtsent.core.modeling import pad_batch
    from rtsent.engines.base import length_sorted_batches
    from rtsent.machine import Machine

    precision = "bf16" if Machine.here().native_bf16 else "fp32"
    tok, model, sets = _model_and_prompts(precision)
    model.eval()
    texts, _ = sst5("validation")
    rows = {name: encoder.encode(texts).input_ids for name, (encoder, _) in sets.items()}
    times: dict[str, list[float]] = {name: [] for name in sets}
    for _ in range(passes):
        for name, (_, layout) in sets.items():
            started = time.perf_counter()
            with torch.inference_mode():
                for idx in length_sorted_batches(rows[name], 64):
                    label_scores.scores(model, layout, **pad_batch([rows[name][i] for i in idx], tok.pad_token_id))
            times[name].append(time.perf_counter() - started)
    return {"precision": precision, "reviews": len(texts), **{
        name: {"words": encoder.label_words.describe(tok), "nodes": layout.nodes,
               "examples_per_s": round(len(texts) / min(times[name]), 1), "seconds": [round(t, 2) for t in times[name]]}
        for name, (encoder, layout) in sets.items()}}


def training_speed(steps: int, batch: int) -> dict[str, object]:
    """Training steps (forward, loss, backward, as rtsent trains: fp32 weights, bf16 autocast where native) of
    the same model on the same batches, alternating the two word sets step by step."""
    import torch

    from rtsent.core import label_scores
    from rtsent.core.modeling import pad_batch
    from rtsent.machine import Machine

    bf16 = Machine.here().native_bf16
    tok, model, sets = _model_and_prompts("fp32")
    model.train()
    texts, labels = sst5("train")
    times: dict[str, list[float]] = {name: [] for name in sets}
    for step in range(steps + 1):
        chunk = slice(step * batch, (step + 1) * batch)
        for name, (encoder, layout) in sets.items():
            inputs = {**pad_batch(encoder.encode(texts[chunk]).input_ids, tok.pad_token_id),
                      "labels": torch.tensor(labels[chunk])}
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss, _ = label_scores.loss_and_scores(model, layout, inputs, "lm")
            loss.backward()
            model.zero_grad(set_to_none=True)
            if step:  # the first step of each warms up
                times[name].append(time.perf_counter() - started)
    return {"bf16_autocast": bf16, "batch": batch, "steps": steps, **{
        name: {"examples_per_s": round(batch * len(t) / sum(t), 1), "seconds": [round(x, 2) for x in t]}
        for name, t in times.items()}}


def bias(limit: int) -> dict[str, object]:
    import numpy as np
    import torch

    from rtsent.core import label_scores
    from rtsent.core.modeling import load_model, load_tokenizer, pad_batch
    from rtsent.core.prompts import PromptEncoder

    model_name = gguf_file()
    tok = load_tokenizer(model_name)
    model = load_model(model_name).eval()
    texts, labels = sst5("validation")
    texts, labels = texts[:limit], np.asarray(labels[:limit])
    encoder = PromptEncoder(prompts()["own names"], tok, 128)
    layout = label_scores.ScoringLayout(encoder.label_words)
    lengths = np.array([len(words[0]) for words in encoder.label_words.classes])
    rows = encoder.encode(texts).input_ids
    sums = []
    with torch.inference_mode():
        for start in range(0, len(rows), 32):
            batch = pad_batch(rows[start : start + 32], tok.pad_token_id)
            first, nodes = label_scores.training_logits(model, layout, batch["input_ids"], batch["attention_mask"])
            normalized = torch.log_softmax(first, -1)[:, layout.first_ids]  # full log-probabilities, first token too
            sums.append(label_scores.word_scores(layout, normalized, nodes).double().numpy())
    total = np.concatenate(sums)  # [n, classes]: one word a class here
    out: dict[str, object] = {"reviews": len(texts), "tokens_per_class": dict(zip(NAMES, lengths.tolist()))}
    for name, scores in (("sum", total), ("mean", total / lengths)):
        pred = scores.argmax(-1)
        out[name] = {"accuracy": round(float((pred == labels).mean()), 4),
                     "predicted": {n: int((pred == i).sum()) for i, n in enumerate(NAMES)}}
    out["true"] = {n: int((labels == i).sum()) for i, n in enumerate(NAMES)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=("speed", "bias"))
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8, help="training steps timed per word set")
    ap.add_argument("--batch", type=int, default=16, help="training batch")
    ap.add_argument("--limit", type=int, default=100000, help="validation reviews for bias")
    a = ap.parse_args()
    if a.part == "speed":
        result = {"scoring": scoring_speed(a.passes), "training": training_speed(a.steps, a.batch)}
    else:
        result = bias(a.limit)
    record = {"machine": cpu_description(), "when": time.strftime("%Y-%m-%d %H:%M"), **result}
    write_report(f"label_words-{a.part}", record)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
