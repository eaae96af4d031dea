"""Which int8 graph keeps a model's decisions? Quantization variants of one exported fp32 graph, each checked
as `rtsent export --int8` checks (agreement with the fp32 graph's decisions and accuracy on the validation
split the model was selected on), with its scoring rate.

    python benchmarks/archive/int8_variants.py RUN/model --workdir WS [--variants tensor,channel,keep:down_proj,...]

Variants (the label projection, the graph's output, stays fp32 in all, as in rtsent's export):
  tensor            every other matrix product int8, one scale per tensor (rtsent before #19's Llama rule)
  channel           the same with per-channel weight scales
  keep:A+B          products whose node name contains /A/ or /B/ stay fp32 (keep:down_proj is rtsent's
                    rule for gated-MLP families; keep:layers.0 keeps all of the first block's)
  nbits8            8-bit block-wise weights (onnxruntime's MatMulNBits, block 32, accuracy level 4)

RUN/model must hold model.onnx (what `rtsent train` or `rtsent export` writes). Writes the variants' graphs
under benchmarks/out/int8-variants/ and prints one JSON line per variant.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/, for common
from common import OUT  # noqa: E402


def quantize(variant: str, source: Path, dest: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from rtsent.artifacts.onnx_graph import _kept_fp32

    kept = _kept_fp32(source, None)  # the label projection only
    products = [n.name for n in onnx.load(str(source), load_external_data=False).graph.node if n.op_type == "MatMul"]
    if variant == "nbits8":
        from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

        config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4, bits=8)
        quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), nodes_to_exclude=kept, algo_config=config)
        quantizer.process()
        quantizer.model.save_model_to_file(str(dest), use_external_data_format=False)
        return
    if variant.startswith("keep:"):
        names = variant[len("keep:"):].split("+")
        kept += [n for n in products if any(f"/{name}/" in n for name in names)]
    quantize_dynamic(str(source), str(dest), weight_type=QuantType.QInt8, nodes_to_exclude=kept,
                     per_channel=variant == "channel")


def decisions(folder: Path, graph: Path, rows: list, meta) -> tuple[object, float]:
    from rtsent.engines.onnx import OnnxClassifier

    clf = OnnxClassifier(str(folder), meta, meta.prompt, meta.max_len, graph, "fp32")
    clf.scores(rows[:32], 32)
    started = time.perf_counter()
    chosen = clf.scores(rows, 32).argmax(1)
    return chosen, len(rows) / (time.perf_counter() - started)


def main() -> None:
    import numpy as np

    from rtsent.artifacts.model import ModelMeta
    from rtsent.artifacts.workspace import Workspace
    from rtsent.export import validation_rows

    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--workdir", required=True, help="the workspace holding the model's prepared data")
    ap.add_argument("--variants", default="tensor,channel,keep:down_proj,nbits8")
    args = ap.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    source = Path(args.model)
    meta = ModelMeta.read(source)
    rows, labels = validation_rows(meta, Workspace.resolve(args.workdir))
    labels = np.asarray(labels)
    work = OUT / "int8-variants" / source.parent.name
    work.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "rtsent.json", "config.json"):
        shutil.copy(source / name, work / name)
    reference, rate = decisions(work, source / "model.onnx", rows, meta)
    print(json.dumps({"variant": "fp32", "accuracy": round(float((reference == labels).mean()), 4),
                      "examples_per_s": round(rate, 1)}), flush=True)
    for variant in args.variants.split(","):
        dest = work / (variant.replace(":", "-").replace("/", "_") + ".onnx")
        started = time.perf_counter()
        quantize(variant, source / "model.onnx", dest)
        quantize_s = time.perf_counter() - started
        chosen, rate = decisions(work, dest, rows, meta)
        print(json.dumps({"variant": variant, "agreement": round(float((chosen == reference).mean()), 4),
                          "accuracy": round(float((chosen == labels).mean()), 4), "examples_per_s": round(rate, 1),
                          "quantize_s": round(quantize_s, 1)}), flush=True)


if __name__ == "__main__":
    main()
