"""`rtsent export --seq-cls` on the whole Rotten Tomatoes validation split: transformers' own
text-classification pipeline against rtsent's torch engine in fp32, text by text.

    python benchmarks/seqcls.py MODEL_FOLDER [MODEL_FOLDER ...]

For each exported model folder (a run's `model/`): writes its sequence-classification folder next to a
temporary workspace, scores the 1,066 validation reviews with `pipeline("text-classification")` and with
`open_classifier(..., engine="torch", precision="fp32")` (what `rtsent predict --engine torch --precision
fp32` runs), and reports the largest probability difference and the label agreement. Writes
benchmarks/out/seqcls.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, cpu_description, emit, write_report  # noqa: E402


def check(model: str, texts: list[str]) -> dict:
    import numpy as np
    from transformers import pipeline

    from rtsent.artifacts.workspace import Workspace
    from rtsent.config import ExportConfig
    from rtsent.engines import open_classifier
    from rtsent.export import run as export

    out = Path(tempfile.mkdtemp(prefix="rtsent-seqcls-")) / "seq-cls"
    started = time.perf_counter()
    folder, record = export(ExportConfig(model=model, seq_cls=True, output=str(out)), Workspace.resolve(None), print)
    exported = time.perf_counter() - started
    clf = open_classifier(model, engine="torch", precision="fp32")
    expected = clf.probabilities(texts, 32)
    rows = pipeline("text-classification", model=str(folder), device="cpu")(texts, top_k=None, truncation=True,
                                                                          batch_size=32)
    names = list(clf.label_names)
    got = np.array([[{r["label"]: r["score"] for r in row}[n] for n in names] for row in rows])
    diff = np.abs(got - expected)
    return {"model": model, "texts": len(texts), "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "labels_agree": int((got.argmax(1) == expected.argmax(1)).sum()), "export_s": round(exported, 1),
            "temperature": clf.temperature, "client_sends": record["client_sends"], "onnx": record["onnx"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    a = ap.parse_args()
    import pyarrow.parquet as pq

    texts = pq.read_table(DATA / "validation.parquet").column("text").to_pylist()
    results = [check(m, texts) for m in a.models]
    write_report("seqcls", {"machine": cpu_description(), "results": results})
    emit({"results": results})


if __name__ == "__main__":
    main()
