"""Build a GPT-2-small-shaped model folder with random weights (no pretrained weights are available offline).

    python benchmarks/make_gpt2_small.py [--out benchmarks/out/gpt2-small] [--tokenizer /work/shared/models/gpt2-tokenizer]
        [--overrides n_layer=2,n_embd=64]

The folder holds config.json, model.safetensors and the tokenizer: exactly what `--model` expects. Speed and
memory depend on the architecture only, so random weights are fine for the speed/memory benchmarks
(accuracy of an untrained GPT-2 is meaningless; the accuracy check trains a small model from scratch).
The builder is common.gpt2_small, which every benchmark uses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import GPT2_SMALL, TOKENIZER, gpt2_small  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(GPT2_SMALL))
    ap.add_argument("--tokenizer", default=TOKENIZER)
    ap.add_argument("--overrides", default="", help="GPT2Config changes, e.g. n_layer=2,n_embd=64")
    args = ap.parse_args()
    path = gpt2_small(Path(args.out), args.tokenizer, args.overrides)
    n = sum(f.stat().st_size for f in path.iterdir())
    print(f"{path} ({n / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
