"""Build a GPT-2-small-shaped model folder with random weights (no pretrained weights are available offline).

    python benchmarks/make_gpt2_small.py [--out benchmarks/out/gpt2-small] [--tokenizer /work/shared/models/gpt2-tokenizer]
        [--overrides n_layer=2,n_embd=64]

The folder holds config.json, model.safetensors and the tokenizer: exactly what `--model` expects. Speed and
memory depend on the architecture only, so random weights are fine for the speed/memory benchmarks
(accuracy of an untrained GPT-2 is meaningless; the accuracy check trains a small model from scratch).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
DEFAULT_TOKENIZER = "/work/shared/models/gpt2-tokenizer"


def build(out: Path, tokenizer: str = DEFAULT_TOKENIZER, overrides: str = "", seed: int = 0) -> Path:
    """Write the folder (skipped when it already has weights for the same config); returns it."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    config = GPT2Config()
    if overrides:
        config.update_from_string(overrides)
    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
        saved = GPT2Config.from_pretrained(out)
        if all(getattr(saved, k) == getattr(config, k) for k in ("n_layer", "n_embd", "n_head", "vocab_size", "n_positions")):
            return out
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    AutoTokenizer.from_pretrained(tokenizer).save_pretrained(str(out))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE / "out" / "gpt2-small"))
    ap.add_argument("--tokenizer", default=DEFAULT_TOKENIZER)
    ap.add_argument("--overrides", default="", help="GPT2Config changes, e.g. n_layer=2,n_embd=64")
    args = ap.parse_args()
    path = build(Path(args.out), args.tokenizer, args.overrides)
    n = sum(f.stat().st_size for f in path.iterdir())
    print(f"{path} ({n / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
