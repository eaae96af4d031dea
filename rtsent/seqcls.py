"""`rtsent export --seq-cls`: the classifier as a standard `*ForSequenceClassification` folder of its base
architecture, so that transformers' text-classification pipeline, vLLM's classify runner and
text-embeddings-inference serve it with no rtsent code.

What makes it the same classifier, exactly:

* `score.weight` = the label words' rows of the output embedding, times the family's constant final-logit
  factor, divided by the fitted temperature: its logits are rtsent's calibrated label-word logits, and
  their softmax is what `rtsent predict` reports. A non-linear final transform (Gemma's soft-capping) or a
  biased output layer cannot be folded into a linear head: the export refuses them.
* the tokenizer applies the prompt template itself: a post-processor puts the BOS (where rtsent does) before
  the review and the template's suffix tokens after it; a template prefix becomes a `Prepend` normalizer.
  The result is checked against rtsent's own prompt encoder on the model's validation texts; where a prefix
  cannot be expressed exactly, the folder is written without it and the export says that clients must send
  each review with the prefix in front.
* model.onnx (output `logits`, inputs input_ids and attention_mask): the layout text-embeddings-inference's
  ONNX Runtime backend loads, exported from this same folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

from rtsent.artifacts.model import ModelMeta, ModelPaths
from rtsent.errors import UsageError, first_line

SEQCLS_FILE = "rtsent-seqcls.json"
PROBES = ("A gripping, beautifully acted film.", "dull", "it's not bad at all -- really!", "Ünïcödé 🎬 film\n\tis ok")


def export_seqcls(folder: Path, out: Path, texts: Sequence[str], log: Callable[[str], None]) -> dict[str, Any]:
    """Write the sequence-classification folder of the model in `folder` into `out` (a staging folder);
    `texts` are reviews to check the tokenizer on. Returns what the export recorded (rtsent-seqcls.json).

    Raises UsageError when the family has no *ForSequenceClassification class or its head cannot be folded.
    """
    import torch

    from rtsent.core.modeling import load_model, load_tokenizer
    from rtsent.quiet import quiet_transformers
    from rtsent.core.prompts import PromptEncoder

    meta = ModelMeta.read(folder)
    tok = load_tokenizer(str(folder))
    encoder = PromptEncoder(meta.prompt, tok, meta.max_len)
    check_linear(meta)
    with quiet_transformers():
        lm = load_model(str(folder), dtype=torch.float32, compute="fp32", attn="eager").eval()
    model = _sequence_classifier(lm, meta, encoder, tok)
    fast, prefix_applied = _prompt_tokenizer(tok, meta, encoder, [*texts, *PROBES], log)
    with quiet_transformers():
        model.save_pretrained(str(out), safe_serialization=True)
    fast.save_pretrained(str(out))
    _patch_config(ModelPaths(out).config, model.config, meta.max_len)
    record = {"prompt": meta.prompt.template, "label_names": list(meta.prompt.label_names),
              "label_ids": encoder.label_words.head_ids, "temperature": meta.temperature, "max_len": meta.max_len,
              "prefix_applied_by_tokenizer": prefix_applied,
              "client_sends": "{text}" if prefix_applied or not meta.prompt.prefix else meta.prompt.prefix + "{text}",
              "source": str(folder)}
    del model, lm
    record["onnx"] = _onnx(out, log)
    (out / SEQCLS_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def _sequence_classifier(lm: Any, meta: ModelMeta, encoder: Any, tok: Any) -> Any:
    """The base model's *ForSequenceClassification with the label rows (x factor / T) as its head."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from rtsent.core import label_scores
    from rtsent.core.families import logit_factor, softcap

    config = lm.config
    if softcap(lm):
        raise UsageError(f"this {config.model_type} model soft-caps its logits (tanh), which a linear "
                         f"classification head cannot reproduce; serve it with `rtsent serve` instead")
    head = lm.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise UsageError(f"this {config.model_type} model's output layer has a bias, which the standard "
                         f"classification head has not; serve it with `rtsent serve` instead")
    names = list(meta.prompt.label_names)
    seq_config = type(config).from_dict({
        **config.to_dict(), "num_labels": len(names), "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)}, "pad_token_id": tok.pad_token_id,
        "problem_type": "single_label_classification"})
    try:
        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(seq_config, dtype=torch.float32,
                                                                  attn_implementation="eager")
    except ValueError:
        raise UsageError(f"transformers has no sequence-classification class for {config.model_type} models; "
                         f"serve this model with `rtsent serve`") from None
    model.base_model.load_state_dict(lm.base_model.state_dict(), assign=True)
    rows = label_scores.linear_head(lm, encoder.label_words).to(torch.float32)
    weight = rows * (logit_factor(lm) / meta.temperature)
    model.score = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    model.score.weight = torch.nn.Parameter(weight.clone().contiguous())
    return model.eval()


def check_linear(meta: ModelMeta) -> None:
    """UsageError unless the classifier is a linear head over the last hidden state: one single-token word a class."""
    if meta.label_words.head_ids is None:
        words = ", ".join(repr(entry) for entry in meta.prompt.label_words)
        raise UsageError("a sequence-classification head is linear: it needs one single-token label word per class, "
                         f"and these are {words}; serve this model with `rtsent serve`, "
                         f"or train with one single-token word per class to export it")


def _prompt_tokenizer(tok: Any, meta: ModelMeta, encoder: Any, texts: Sequence[str],
                      log: Callable[[str], None]) -> tuple[Any, bool]:
    """A fast tokenizer whose encode(text) gives rtsent's prompt ids for the review `text`, checked on `texts`.

    Returns it and whether it applies the template's prefix itself (False: clients send prefix + review).
    """
    prefix = meta.prompt.prefix
    fast = _with_template(tok, encoder, prefix)
    if not prefix:
        _check(fast, encoder, texts, "")
        return fast, False
    try:
        _check(fast, encoder, texts, "")
        return fast, True
    except UsageError as exc:
        log(f"the tokenizer cannot apply the template's prefix {prefix!r} exactly ({exc}); the folder expects "
            f"each review sent as {prefix!r} + review")
    fast = _with_template(tok, encoder, "")
    _check(fast, encoder, texts, prefix)
    return fast, False


def _with_template(tok: Any, encoder: Any, prefix: str) -> Any:
    """tok's Rust tokenizer with a post-processor BOS + review + suffix and, for a prefix, a Prepend normalizer."""
    from tokenizers import Tokenizer, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    pieces = []
    for i, ids in enumerate(([encoder.bos_ids] if encoder.bos_ids else []) + [encoder.suffix_ids]):
        if ids:
            name = f"<rtsent-{'bos' if i == 0 and encoder.bos_ids else 'suffix'}>"
            pieces.append({"id": name, "ids": list(ids), "tokens": tok.convert_ids_to_tokens(list(ids))})
    bos = [p["id"] for p in pieces if p["id"] == "<rtsent-bos>"]
    suffix = [p["id"] for p in pieces if p["id"] == "<rtsent-suffix>"]
    backend.post_processor = processors.TemplateProcessing(single=[*bos, "$A:0", *suffix], special_tokens=pieces)
    if prefix:
        existing = backend.normalizer
        backend.normalizer = normalizers.Sequence([normalizers.Prepend(prefix), *([existing] if existing else [])])
    # PreTrainedTokenizerFast keeps tokenizer.json as it is when loaded (a model's own tokenizer class may rebuild
    # its post-processor from add_bos_token, or drop a normalizer).
    specials = {k: v for k, v in tok.special_tokens_map.items() if k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=encoder.max_len, padding_side="right",
                                   truncation_side="right", **specials)
    fast.pad_token = tok.pad_token
    return fast


def _check(fast: Any, encoder: Any, texts: Sequence[str], client_prefix: str) -> None:
    """UsageError naming the first text whose ids differ from rtsent's prompt encoder's (uncut prompts only)."""
    wanted = encoder.encode(list(texts))
    for text, ids, cut in zip(texts, wanted.input_ids, wanted.truncated):
        if cut:
            continue
        got = fast(client_prefix + text)["input_ids"]
        if got != ids:
            raise UsageError(f"for the review {text[:60]!r} the folder's tokenizer gives other ids than rtsent's prompt "
                             f"({got[:8]}... against {ids[:8]}...); the template cannot be applied by this tokenizer")


def _patch_config(path: Path, config: Any, max_len: int | None) -> None:
    """Keys other readers look for that transformers leaves out of config.json: num_labels (derived from
    id2label), text-embeddings-inference's max_position_embeddings, which GPT-2 configs call n_positions,
    and max_seq_len = rtsent's max_len. vLLM takes the smallest of the length keys it knows (max_seq_len is
    one; the tokenizer's model_max_length is not, for these models) as its max model length, so it refuses a
    longer review instead of scoring it whole, and `"truncate_prompt_tokens": -1` cuts it where rtsent does
    (vllm/transformers_utils/model_arch_config_convertor.py, derive_max_model_len_and_key, vllm 0.32)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    data["num_labels"] = len(data["id2label"])
    if "max_position_embeddings" not in data and isinstance(getattr(config, "n_positions", None), int):
        data["max_position_embeddings"] = config.n_positions
    if isinstance(max_len, int):
        data["max_seq_len"] = max_len
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _onnx(out: Path, log: Callable[[str], None]) -> dict[str, Any] | None:
    """model.onnx of the folder as written (what clients load): input_ids, attention_mask -> logits [batch,
    classes]. Loaded from disk, not taken from memory, where the head was built on the meta device and
    buffers that are not saved (Llama's rotary frequencies) never got values."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from rtsent.artifacts.onnx_graph import single_file, write_graph
    from rtsent.core.modeling import pad_batch
    from rtsent.quiet import quiet_transformers

    class Logits(torch.nn.Module):
        def __init__(self, inner: Any):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits

    with quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(str(out), dtype=torch.float32,
                                                                   attn_implementation="eager").eval()
    pad = model.config.pad_token_id
    sample = pad_batch([[5, 6, 7], [8, 9]], pad_id=pad)
    plain = out / ".plain.onnx"
    try:
        write_graph(Logits(model).eval(), (sample["input_ids"], sample["attention_mask"]), plain, output="logits")
        single_file(plain, out / "model.onnx")
    except Exception as exc:  # the folder is complete without it; only text-embeddings-inference needs it
        log(f"no model.onnx in the sequence-classification folder ({first_line(exc, 120, typed=True)})")
        return None
    finally:
        for leftover in out.glob(".plain.onnx*"):
            leftover.unlink()
    return {"file": "model.onnx", "inputs": ["input_ids", "attention_mask"], "output": "logits"}
