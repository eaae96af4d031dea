"""The ONNX graphs of a model folder: how they are exported, fused, quantized and checked, and their
record (rtsent.json "onnx"). `rtsent export`, `rtsent train` (after_training) and the seq-cls export
(rtsent/seqcls.py) all go through here.

The graph maps input_ids + attention_mask [batch, length] (right-padded) to the label words' scores
[batch, classes] at each row's last real token, in fp32, for any batch size and length; an int8 copy is
dynamically quantized from it and accepted for auto scoring only where it agrees with the fp32 graph on
the validation split (check_int8). The onnx engine (rtsent/engines/onnx.py) runs them without torch.
Torch, onnx and onnxruntime are imported inside the functions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rtsent.artifacts.cache import scratch
from rtsent.artifacts.model import ModelMeta, ModelPaths
from rtsent.errors import first_line
from rtsent.quiet import quiet_exporter, quiet_loggers, quiet_transformers

OPSET = 20

Rows = tuple[list[list[int]], list[int]]
"""Validation prompts (token ids) and their class ids: what the int8 graph is checked on."""

INT8_MIN_AGREEMENT = 0.995
INT8_MAX_ACCURACY_DROP = 0.005
CHECK_CHUNK = 128
"""Validation rows the int8 check scores at a time with each graph: it stops once the graphs have differed on more
rows than INT8_MIN_AGREEMENT allows over the whole split, since no later row can change the verdict (a SmolLM2-135M
model's int8 graph differs on 39 of RT's 1,066 reviews: the check stopped after 384 of them, in 0.47x the full
check's time, docs/benchmarks.md)."""


def export_folder(folder: Path, int8: bool = False, log: Callable[[str], None] = lambda _: None,
                  check: Rows | None = None, keep_failed_int8: bool = True) -> dict[str, Any]:
    """Export the graph(s) of a model folder made by `rtsent train`; returns its rtsent.json "onnx" entry.

    With int8, the quantized graph is checked against the fp32 one on `check` (its record "int8_check";
    auto scoring uses the int8 graph only where the check passed); a failed graph is dropped unless
    keep_failed_int8 (an explicit `rtsent export --int8` keeps it for --precision int8). Files are built in
    a temporary folder inside the model folder and renamed into place; rtsent.json, which tells the
    engines what exists, is updated last. Raises ArtifactError for a folder that is not an rtsent model.
    """
    paths = ModelPaths(folder)
    meta = ModelMeta.read(folder)
    with scratch(folder, ".export-") as tmp:
        record = _build(paths, meta, tmp, int8, log)
        if int8:
            record["int8_check"] = check_int8(tmp, meta.replace(onnx=record), check, log)
            if not record["int8_check"]["accepted"] and not keep_failed_int8:
                del record["graphs"]["int8"]
        else:
            _keep_int8(paths, meta, record, log)
        _swap_in(folder, meta, tmp, [record["tokenizer"], *(n for k, n in record["graphs"].items()
                                                            if (tmp / n).is_file())])
    meta.replace(onnx=record).write(folder)
    if "int8" not in record["graphs"]:  # a stale int8 graph would no longer be listed; remove it with the entry
        paths.onnx("int8").unlink(missing_ok=True)
    return record


def _keep_int8(paths: ModelPaths, meta: ModelMeta, record: dict[str, Any], log: Callable[[str], None]) -> None:
    """A plain export (no --int8) keeps the folder's int8 graph and its check: it was quantized from the
    same weights for the same label words, and rebuilding it needs --int8 and the prepared validation split."""
    old = meta.onnx or {}
    graph = (old.get("graphs") or {}).get("int8")
    if not graph or not paths.onnx("int8").is_file() or graph != paths.onnx_name("int8"):
        return
    if old.get("label_words") != record["label_words"] or old.get("pad_id") != record["pad_id"]:
        log("the int8 graph was made for other label words; dropped (rebuild it with `rtsent export --int8`)")
        return
    record["graphs"]["int8"] = graph
    if "int8_check" in old:
        record["int8_check"] = old["int8_check"]


def _swap_in(folder: Path, meta: ModelMeta, tmp: Path, names: list[str]) -> None:
    """Rename the new files over the old ones. rtsent.json is first rewritten without its onnx record, so
    a crash between the renames leaves a folder whose record vouches for no graph (the torch engine
    scores it) instead of an old "int8 validated" record describing a new, unchecked graph."""
    from rtsent.faults import crash_point

    if meta.onnx is not None and any((folder / name).exists() for name in names):
        meta.replace(onnx=None).write(folder)
    for i, name in enumerate(names):
        os.replace(tmp / name, folder / name)
        if i == 0:
            crash_point("export:between-renames")


def after_training(folder: Path, log: Callable[[str], None], int8: bool = True, check: Rows | None = None) -> None:
    """Export inside train's staging folder; a model family that does not export keeps the torch engine."""
    try:
        export_folder(folder, int8 and check is not None, log, check, keep_failed_int8=False)
    except Exception as exc:  # any exporter failure: the model itself is fine, only the fast engine is missing
        log(f"ONNX export failed ({first_line(exc, 120, typed=True)}); predict will use the torch engine")


def check_int8(folder: Path, meta: ModelMeta, check: Rows | None, log: Callable[[str], None]) -> dict[str, Any]:
    """The int8 graph's decisions against the fp32 graph's (both in folder, as meta's onnx record lists them) on
    the validation rows `check`, and the verdict: rtsent.json's "int8_check" record."""
    if check is None or not check[0]:
        log("the int8 graph could not be checked (no prepared validation split in this workspace): auto scoring "
            "will not use it; --precision int8 will")
        return {"accepted": False, "reason": "no validation split to check it on"}
    rows, labels = check
    decisions, total = _int8_decisions(folder, meta, rows), len(rows)
    checked = len(decisions["fp32"])
    y = np.asarray(labels[:checked])
    same = decisions["fp32"] == decisions["int8"]
    agreement = float(same.mean())
    accuracy = {k: float((v == y).mean()) for k, v in decisions.items()}
    # A stopped check fails on its own rows too: they hold every difference counted, so their share agreeing is lower.
    accepted = agreement >= INT8_MIN_AGREEMENT and abs(accuracy["int8"] - accuracy["fp32"]) <= INT8_MAX_ACCURACY_DROP
    record = {"accepted": accepted, "examples": checked, "agreement": round(agreement, 5),
              "accuracy_fp32": round(accuracy["fp32"], 5), "accuracy_int8": round(accuracy["int8"], 5),
              "min_agreement": INT8_MIN_AGREEMENT, "max_accuracy_drop": INT8_MAX_ACCURACY_DROP}
    verdict = ("passed: auto scoring uses it" if accepted else
               f"failed (needs >= {INT8_MIN_AGREEMENT:.1%} agreement and accuracy within "
               f"{INT8_MAX_ACCURACY_DROP * 100:g} point): auto scoring keeps the fp32 graph")
    if checked < total:
        record["stopped_early"] = {"of": total, "differed": int((~same).sum())}
        log(f"int8 graph: {record['stopped_early']['differed']} of the first {checked} of {total} validation reviews "
            f"decided otherwise than fp32, more than {INT8_MIN_AGREEMENT:.1%} agreement allows on all {total}; {verdict}")
    else:
        log(f"int8 graph on {total} validation reviews: {agreement:.2%} of decisions as fp32, accuracy "
            f"{accuracy['int8']:.4f} vs {accuracy['fp32']:.4f}; {verdict}")
    if not accepted:
        record["reason"] = verdict
    return record


def _int8_decisions(folder: Path, meta: ModelMeta, rows: list[list[int]]) -> dict[str, np.ndarray]:
    """Each graph's decisions on the rows, CHECK_CHUNK at a time, up to the chunk after which the graphs have
    differed on more rows than INT8_MIN_AGREEMENT allows over all of them (all rows when they have not)."""
    from rtsent.engines.onnx import OnnxClassifier

    graphs = {precision: OnnxClassifier(str(folder), meta, meta.prompt, meta.max_len,
                                        folder / meta.graphs()[precision], precision) for precision in ("fp32", "int8")}
    parts: dict[str, list[np.ndarray]] = {precision: [] for precision in graphs}
    differed, total = 0, len(rows)
    for start in range(0, total, CHECK_CHUNK):
        chunk = rows[start:start + CHECK_CHUNK]
        for precision, clf in graphs.items():
            parts[precision].append(clf.scores(chunk).argmax(1))
        differed += int((parts["fp32"][-1] != parts["int8"][-1]).sum())
        if (total - differed) / total < INT8_MIN_AGREEMENT:
            break
    return {precision: np.concatenate(p) for precision, p in parts.items()}


def _build(paths: ModelPaths, meta: ModelMeta, tmp: Path, int8: bool, log: Callable[[str], None]) -> dict[str, Any]:
    from rtsent.core.modeling import load_tokenizer
    from rtsent.core.prompts import PromptEncoder

    tok = load_tokenizer(str(paths.dir))
    words = PromptEncoder(meta.prompt, tok, meta.max_len).label_words
    tokenizer = paths.tokenizer_json.name
    write_tokenizer_json(tok, tmp / tokenizer)
    graphs = {"fp32": paths.onnx_name("fp32")}
    log(f"exporting {paths.dir} to ONNX (fp32)")
    plain = tmp / "plain.onnx"
    config, exporter = _export_fp32(str(paths.dir), words, plain, log)
    if int8:
        log("quantizing to int8 (dynamic)")
        graphs["int8"] = paths.onnx_name("int8")
        _quantize(plain, tmp / graphs["int8"], config)
    try:
        fused = _fuse(plain, tmp / graphs["fp32"], config)
    except Exception as exc:  # the fuser's pattern matching is best effort; the plain graph is correct
        log(f"kept the unfused fp32 graph ({first_line(exc, 120, typed=True)})")
        fused = []
    if not fused:
        single_file(plain, tmp / graphs["fp32"])
    import torch

    return {"graphs": graphs, "tokenizer": tokenizer, "opset": OPSET, "label_words": words.fingerprint(),
            "pad_id": int(tok.pad_token_id), "inputs": ["input_ids", "attention_mask"], "output": "scores",
            "fused_fp32": fused, "exporter": f"torch.onnx {exporter} (torch {torch.__version__.split('+')[0]})"}


def write_tokenizer_json(tok: Any, path: Path) -> None:
    """The Rust tokenizer exactly as transformers configured it (post-processor included): the onnx
    engine encodes with this file, so both engines produce the same ids."""
    tok.backend_tokenizer.save(str(path))


def _export_fp32(model: str, words: Any, path: Path, log: Callable[[str], None]) -> tuple[Any, str]:
    """Write the fp32 graph of the model scoring the LabelWords `words` to path, its weights in a side file;
    returns the model's config and the exporter used."""
    import torch

    from rtsent.core import label_scores
    from rtsent.core.modeling import load_model, pad_batch

    class LabelScores(torch.nn.Module):
        """input_ids, attention_mask -> class scores, as the torch engine computes them (core/label_scores.py)."""

        def __init__(self, lm: Any):
            super().__init__()
            self.lm = lm
            self.layout = label_scores.ScoringLayout(words)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return label_scores.scores(self.lm, self.layout, input_ids, attention_mask)

    with quiet_transformers():
        # Eager attention: plain matmuls and a softmax, which every ONNX runtime runs and fuses.
        # fp32 weights before any adapter is merged in: a base stored in bf16 would merge in bf16 otherwise.
        lm = load_model(model, dtype=torch.float32, compute="fp32", attn="eager").eval()
    # A padded row in the sample: the trace then records the attention mask's use for every batch.
    sample = pad_batch([[0, 1, 2], [3, 4]], pad_id=0)
    inputs = (sample["input_ids"], sample["attention_mask"])
    try:
        write_graph(LabelScores(lm).eval(), inputs, path)
        used = EXPORTER
    except Exception as exc:  # an op or a torch release the tracer does not handle: the slower exporter
        log(f"the {EXPORTER} ONNX exporter failed ({first_line(exc, 120, typed=True)}); using torch.export (slower)")
        write_graph(LabelScores(lm).eval(), inputs, path, exporter="dynamo")
        used = "dynamo"
    return lm.config, used


# Two exporters write the same graph (tests/test_export.py compares them). The TorchScript one traces the
# module once: 0.6 s for a 2-layer model where torch.export's takes 9-13 s (its decompositions and fake-tensor
# passes cost ~15 ms per node), measured side by side; torch deprecated it in 2.9 but keeps it, and the
# dynamo one stays as its fallback. Both write the weights to a side file: the fuser then works on the
# graph alone (see _fuse).
EXPORTER = "torchscript"
INPUTS = ["input_ids", "attention_mask"]


def _torchscript_export(module: Any, inputs: tuple[Any, ...], path: Path, output: str = "scores") -> None:
    import onnx
    import torch

    whole = path.with_suffix(".whole.onnx")
    torch.onnx.export(module, inputs, str(whole), dynamo=False, input_names=INPUTS, output_names=[output],
                      opset_version=OPSET, dynamic_axes={name: {0: "batch", 1: "length"} for name in INPUTS})
    graph = onnx.load(str(whole))
    onnx.save_model(graph, str(path), save_as_external_data=True, location=path.name + ".data")
    whole.unlink()


def _dynamo_export(module: Any, inputs: tuple[Any, ...], path: Path, output: str = "scores") -> None:
    import torch

    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    program = torch.onnx.export(module, inputs, dynamo=True, input_names=INPUTS, output_names=[output],
                                opset_version=OPSET, optimize=True, verbose=False,
                                dynamic_shapes={name: {0: batch, 1: length} for name in INPUTS})
    program.save(str(path), external_data=True)


EXPORTERS: dict[str, Callable[..., None]] = {
    "torchscript": _torchscript_export, "dynamo": _dynamo_export}


def write_graph(module: Any, inputs: tuple[Any, ...], path: Path, output: str = "scores",
                exporter: str | None = None) -> None:
    """The graph of `module` (input_ids, attention_mask [batch, length] -> `output`, both axes dynamic) at path,
    its weights in a side file (see single_file), written by EXPORTERS[exporter] (default EXPORTER) without the exporters' chatter."""
    import torch

    with quiet_exporter(), torch.no_grad():
        EXPORTERS[exporter or EXPORTER](module, inputs, path, output=output)


def single_file(source: Path, dest: Path) -> None:
    """The graph at source (weights in its side file) as one self-contained file, which the engine loads."""
    import onnx

    onnx.save_model(onnx.load(str(source)), str(dest))


def _fuse(source: Path, dest: Path, config: Any) -> list[str]:
    """Write source with GELU/LayerNorm (and attention, where its pattern matches) fused to dest;
    returns the fused op kinds, [] (and no file) when the family has no fuser or nothing fused."""
    from rtsent.core.families import family

    fam = family(config)
    kind = fam.onnx_fuser if fam is not None else None
    if kind is None:
        return []
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions

    from rtsent import compat

    # The fusions used here match the graph's structure and small constants; the weights stay on disk
    # while the fuser works (its passes copy the model several times: 3.1 GB for GPT-2 small with them,
    # measured) and are read back only to write the fused graph.
    with quiet_exporter():
        fuser = compat.onnx_fuser(kind, onnx.load(str(source), load_external_data=False), config.num_attention_heads,
                                  config.hidden_size)
        fuser.optimize(FusionOptions(kind))
        fuser.topological_sort()
    fused = sorted(k for k, v in fuser.get_fused_operator_statistics().items() if v)
    if fused:
        onnx.load_external_data_for_model(fuser.model, str(source.parent))
        onnx.save_model(fuser.model, str(dest))
    return fused


def _quantize(source: Path, dest: Path, config: Any = None) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet_loggers():  # quantize_dynamic advises pre-processing through the root logger
        quantize_dynamic(str(source), str(dest), weight_type=QuantType.QInt8, nodes_to_exclude=_kept_fp32(source, config))


def _kept_fp32(source: Path, config: Any) -> list[str]:
    """The matrix products the int8 graph keeps in fp32 (node names).

    The ones that project hidden states onto the vocabulary (the label words' rows, and for words of several
    tokens the whole vocabulary at their prefixes), the last products before the graph's output:
    the decision is the difference of two scores from similar rows, which an int8 hidden state erases (a
    trained tiny model's int8 graph predicted one class for every review). And the family's
    `int8_fp32_layers` (families.py), found by their module's name in the node's (`/<module>/`, as the
    TorchScript exporter names nodes; the fallback exporter's graph keeps only the first).
    """
    import onnx

    from rtsent.core.families import family

    graph = onnx.load(str(source), load_external_data=False).graph
    kept = _score_projections(graph)
    fam = family(config) if config is not None else None
    layers = fam.int8_fp32_layers if fam is not None else ()
    kept += [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and any(f"/{m}/" in n.name for m in layers)]
    return kept


def _score_projections(graph: Any) -> list[str]:
    """The matrix products nearest the output: walking back from it through the score arithmetic (gathers,
    log-softmax, logsumexp, a family's final scaling), each path stops at the first MatMul/Gemm it meets."""
    producer = {out: node for node in graph.node for out in node.output}
    found, seen, stack = [], set(), [graph.output[0].name]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in ("MatMul", "Gemm"):
            found.append(node.name)
        else:
            stack.extend(node.input)
    return found
