"""Peak training memory of SmolLM2-135M at the longest batches, by --micro-batches (and other options).

    python benchmarks/memory.py                               # micro-batches 1, 2, 4; ~6-10 minutes
    python benchmarks/memory.py --variants "1:,2:,4:,1:--gradient-checkpointing"

The peak of a training run comes at its longest batch: here every training review is one of the longest
of the real train split, so every step is a full-length batch (32 x 128 tokens). Each variant is its own
`rtsent train` process (3 steps, no ONNX export, so the figure is training's) and its peak RSS is that
process's alone (os.wait4). Writes benchmarks/out/memory.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, check, cpu_description, run_child, write_report  # noqa: E402
from pretrained import gguf_file, rtsent  # noqa: E402


def longest_reviews(folder: Path, n_train: int = 96, n_val: int = 32) -> Path:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(DATA / "train.parquet")
    order = pc.array_sort_indices(pc.utf8_length(table.column("text")), order="descending")
    longest = table.take(order[: n_train + n_val])
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(longest.slice(0, n_train), folder / "train.parquet")
    pq.write_table(longest.slice(n_train, n_val), folder / "validation.parquet")
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="1:,2:,4:", help="micro-batches:extra train options, comma-separated")
    ap.add_argument("--steps", type=int, default=3)
    a = ap.parse_args()
    ws = Path(tempfile.mkdtemp(prefix="rtsent-memory-"))
    data = longest_reviews(ws / "data")
    model = gguf_file()
    check(run_child(rtsent("prepare", "--workdir", str(ws), "--data", str(data), "--model", model, "--max-len", "128")),
          "prepare")
    rows = []
    for variant in a.variants.split(","):
        micro, _, extra = variant.partition(":")
        child = check(run_child(rtsent("train", "--workdir", str(ws), "--model", model, "--max-steps", str(a.steps),
                                       "--micro-batches", micro, "--no-onnx", "--no-plots", "--eval-batch-size", "32",
                                       "--run-name", f"m{micro}-{len(rows)}", *shlex.split(extra))), f"train {variant}")
        rows.append({"micro_batches": int(micro), "extra": extra, "peak_rss_mb": round(child["peak_rss_mb"]),
                     "wall_s": round(child["wall_s"], 1)})
        print(json.dumps(rows[-1]), flush=True)
    write_report("memory", {"machine": cpu_description(), "when": time.strftime("%Y-%m-%d %H:%M"), "steps": a.steps,
                            "rows": rows})


if __name__ == "__main__":
    main()
