"""Label words of several tokens on SST-5 with SmolLM2-135M: what they cost, and sum against mean over tokens.

    python benchmarks/label_words.py speed      # scoring and training examples/s, own names vs one-token words
    python benchmarks/label_words.py bias       # zero-shot validation: a word's score as the sum or the mean

speed: the same model scores SST-5 validation (torch engine, the precision auto picks) with the class names as
words (" very negative" ... " very positive", some of two tokens) and with single-token synonyms (" terrible,
bad, neutral, good, great"), side by side in one process, three passes each; then `rtsent train --max-steps N`
for each word set, its Trainer examples/s read from rtsent.json. The target: within 1.5x.

bias: per-token log-probabilities of each class's words after each validation prompt, zero-shot; the class
score as the sum over tokens (rtsent's) or the mean, accuracy and how often each class is predicted.
Writes benchmarks/out/label_words-<part>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, check, cpu_description, run_child  # noqa: E402
from pretrained import gguf_file, rtsent  # noqa: E402

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


def scoring_speed(passes: int) -> dict[str, object]:
    import torch

    from rtsent.core import label_scores
    from rtsent.core.modeling import DTYPES, load_model, load_tokenizer, pad_batch
    from rtsent.core.prompts import PromptEncoder
    from rtsent.engines.base import length_sorted_batches
    from rtsent.engines.choice import Machine

    model_name = gguf_file()
    precision = "bf16" if Machine.here().native_bf16 else "fp32"
    tok = load_tokenizer(model_name)
    model = load_model(model_name, dtype=DTYPES[precision], compute=precision).eval()
    texts, _ = sst5("validation")
    out: dict[str, object] = {"precision": precision, "reviews": len(texts)}
    for name, prompt in prompts().items():
        encoder = PromptEncoder(prompt, tok, 128)
        layout = label_scores.ScoringLayout(encoder.label_words)
        rows = encoder.encode(texts).input_ids
        times = []
        for _ in range(passes):
            started = time.perf_counter()
            with torch.inference_mode():
                for idx in length_sorted_batches(rows, 64):
                    label_scores.scores(model, layout, **pad_batch([rows[i] for i in idx], tok.pad_token_id))
            times.append(time.perf_counter() - started)
        out[name] = {"words": encoder.label_words.describe(tok), "nodes": layout.nodes,
                     "examples_per_s": round(len(texts) / min(times), 1), "seconds": [round(t, 2) for t in times]}
    return out


def training_speed(steps: int, ws: str) -> dict[str, object]:
    out = {}
    for name, words in (("own names", None), ("one-token synonyms", ",".join(SYNONYMS))):
        words_arg = ["--label-words", words, "--label-names", ",".join(NAMES)] if words else []
        check(run_child(rtsent("prepare", "--workdir", ws, "--data", str(SST5), "--model", gguf_file(), *words_arg)),
              "prepare")
        run = f"speed-{len(out)}"
        child = check(run_child(rtsent("train", "--workdir", ws, "--model", gguf_file(), "--max-steps", str(steps),
                                       "--run-name", run, "--no-plots", "--no-onnx")), "train")
        meta = json.loads((Path(ws) / "runs" / run / "model" / "rtsent.json").read_text())
        out[name] = {"train_examples_per_s": meta["training"]["train_examples_per_s"],
                     "wall_s": round(child["wall_s"], 1), "peak_rss_mb": round(child["peak_rss_mb"])}
    return out


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
    ap.add_argument("--steps", type=int, default=20, help="training steps timed per word set")
    ap.add_argument("--limit", type=int, default=100000, help="validation reviews for bias")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    if a.part == "speed":
        ws = a.workdir or tempfile.mkdtemp(prefix="rtsent-words-")
        result = {"scoring": scoring_speed(a.passes), "training": training_speed(a.steps, ws)}
    else:
        result = bias(a.limit)
    record = {"machine": cpu_description(), "when": time.strftime("%Y-%m-%d %H:%M"), **result}
    OUT.mkdir(exist_ok=True)
    (OUT / f"label_words-{a.part}.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
