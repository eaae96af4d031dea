"""What differs between causal-LM families, in one table: LoRA targets, the ONNX graph's fuser and int8
exceptions, context length, derived config fields, fast-kernel swaps and final-logit transforms. Nothing
else in rtsent tests for a model type.

Config attributes are read by their generic names wherever transformers defines them for every family
(hidden_size, num_attention_heads: GPT-2 maps them onto n_embd/n_head), and dropout rates are found
by name in the config itself, so a family missing from the table still works with generic defaults.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any

from rtsent.errors import UsageError, first_line


@dataclass(frozen=True)
class Family:
    """One model family: which layers LoRA adapts by default, how they store their weights, and how its ONNX
    graph is fused and quantized."""

    lora_targets: tuple[str, ...]
    """Module names (suffixes) that LoRA adapts when --lora-targets is not given: the attention's
    query/value projections, the choice of the LoRA paper, as peft's own defaults."""
    fan_in_fan_out: bool = False
    """True where the layers store weights as [in, out] (GPT-2's Conv1D), as peft must be told."""
    int8_fp32_layers: tuple[str, ...] = ()
    """Linear layers (module names) the int8 graph keeps in fp32. A gated MLP's down projection reads the
    product of two projections, where these models' outlier activations live (the LLM.int8() paper's
    finding); one int8 scale per tensor for those rows erases the rest. SmolLM2-135M: 86.5 % of its
    decisions as fp32 with every layer int8, 97.8 % with the down projections kept (docs/benchmarks.md)."""
    onnx_fuser: str | None = None
    """onnxruntime.transformers' fuser (its model type) that fuses GELU/LayerNorm/attention in the exported fp32
    graph, None where there is none. benchmarks/engines.py measured, side by side, the fused fp32 graph 1.25-1.6x
    faster than the plain one and the fused int8 graph 0.75-0.8x as fast as the plain int8 one
    (docs/benchmarks.md), so fp32 is fused and int8 is quantized unfused."""


GATED_MLP_INT8 = ("down_proj",)
FAMILIES: dict[str, Family] = {
    "gpt2": Family(lora_targets=("c_attn",), fan_in_fan_out=True, onnx_fuser="gpt2"),
    "opt": Family(lora_targets=("q_proj", "v_proj")),
    "gpt_neox": Family(lora_targets=("query_key_value",)),
    "llama": Family(lora_targets=("q_proj", "v_proj"), int8_fp32_layers=GATED_MLP_INT8),
    "mistral": Family(lora_targets=("q_proj", "v_proj"), int8_fp32_layers=GATED_MLP_INT8),
    "qwen2": Family(lora_targets=("q_proj", "v_proj"), int8_fp32_layers=GATED_MLP_INT8),
}

# The model's context: the first of these config attributes that is set.
CONTEXT_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length", "seq_length")

# Activation kernels rtsent swaps at run time (modules only; config.json keeps the original name).
# GPT-2's "gelu_new" is tanh-GELU written as a chain of elementwise ops. In fp32 it becomes the same
# function as one fused kernel; in bf16/fp16 it becomes exact (erf) GELU, 4x cheaper on CPU, whose
# largest difference from tanh-GELU (5e-4) is below bf16's own rounding of the activations.
KERNEL_SWAPS = {"gelu_new": {"fp32": "gelu_pytorch_tanh", "bf16": "gelu", "fp16": "gelu"}}


def family(config: Any) -> Family | None:
    """The table's entry for a config's model_type, or None for a family rtsent has no table row for."""
    return FAMILIES.get(getattr(config, "model_type", ""))


def dropout_keys(config: Any) -> list[str]:
    """Every config attribute that is a dropout rate (named *dropout* or *pdrop*, holding a number)."""
    keys = []
    for key, value in config.to_dict().items():
        if ("dropout" in key or "pdrop" in key) and isinstance(value, (int, float)) and not isinstance(value, bool):
            keys.append(key)
    return sorted(keys)


def set_dropout(config: Any, rate: float) -> dict[str, Any]:
    """Set every dropout rate of the config; returns the values it replaced (to restore before saving).

    Raises UsageError when a non-zero rate is asked for a config that has no dropout setting.
    """
    keys = dropout_keys(config)
    if not keys and rate:
        raise UsageError(f"--dropout {rate}: this {config.model_type} config has no dropout setting; "
                         f"leave --dropout at 0")
    replaced = {key: getattr(config, key) for key in keys}
    for key in keys:
        setattr(config, key, rate)
    return replaced


def context_length(config: Any) -> tuple[str, int] | None:
    """(attribute name, tokens) of the longest input the model takes, or None when the config has none."""
    for key in CONTEXT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return key, value
    return None


def check_max_len(config: Any, max_len: int, model: str, fix: str) -> None:
    """UsageError when prompts of max_len tokens would not fit the model's position table (longer
    inputs index past it: an IndexError on CPU, a device-side assert on CUDA). `fix` is the advice,
    with {tokens} standing for the model's context."""
    context = context_length(config)
    if context and max_len > context[1]:
        key, tokens = context
        raise UsageError(f"max-len {max_len} is longer than the context of {model} ({key}={tokens} tokens); "
                         + fix.format(tokens=tokens))


def swap_kernels(model: Any, compute: str) -> int:
    """Replace slow activation modules with faster ones computing the same function at `compute`
    precision (KERNEL_SWAPS); the config is untouched, so a saved model keeps its architecture.
    Returns the number of modules replaced."""
    from transformers.activations import ACT2CLS, ACT2FN

    swapped = 0
    for name, target in KERNEL_SWAPS.items():
        slow = ACT2CLS[name]
        slow = slow[0] if isinstance(slow, tuple) else slow
        for parent in model.modules():
            for child_name, child in list(parent.named_children()):
                if type(child) is slow:
                    setattr(parent, child_name, ACT2FN[target[compute]])
                    swapped += 1
    return swapped


# Families whose forward multiplies lm_head's output by config.logits_scaling (MuP); Granite and MiniCPM3,
# like any other family with that key, divide by it.
MULTIPLIES_LOGITS_SCALING = frozenset({"hyperclovax"})


def final_logits(model: Any, logits: Any) -> Any:
    """Apply what the family's forward does to lm_head's output (transformers 5): a constant factor
    (logit_factor), then Gemma 2/3's soft-capping (softcap). GPT-2, OPT, GPT-NeoX, Llama, Mistral and
    Qwen2 use the head's output as it is. tests/test_families.py checks each against the family's own forward."""
    import torch

    factor = logit_factor(model)
    if factor != 1.0:
        logits = logits * factor
    cap = softcap(model)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def logit_factor(model: Any) -> float:
    """The constant a family multiplies lm_head's output by: Cohere's `logit_scale`; Granite's
    1 / `logits_scaling` (MiniCPM3 divides the hidden state instead: the same, the head being linear) and
    HyperCLOVAX's `logits_scaling`; FalconH1's `lm_head_multiplier`; 1.0 for every other family."""
    config = model.config
    factor = 1.0
    scale = getattr(model, "logit_scale", None)
    if isinstance(scale, (int, float)):
        factor *= scale
    scaling = getattr(config, "logits_scaling", None)
    if isinstance(scaling, (int, float)):
        factor = factor * scaling if config.model_type in MULTIPLIES_LOGITS_SCALING else factor / scaling
    multiplier = getattr(config, "lm_head_multiplier", None)
    if isinstance(multiplier, (int, float)):
        factor *= multiplier
    return float(factor)


def softcap(model: Any) -> float | None:
    """Gemma 2/3's final_logit_softcapping (logits become tanh(x / cap) * cap), None where there is none."""
    cap = getattr(model.config, "final_logit_softcapping", None)
    return float(cap) if cap else None


# Config fields computed from others when a config is built (generic names): an override of their
# inputs must recompute them, or a 2-layer Qwen2 keeps 32 layer types and a narrower Llama keeps its old
# head_dim. A field that did not follow the formula before (set on purpose) is left as it is.
DERIVED = {
    "head_dim": (("hidden_size", "num_attention_heads"), lambda c: c["hidden_size"] // c["num_attention_heads"]),
    "num_key_value_heads": (("num_attention_heads",), lambda c: c["num_attention_heads"]),
    "layer_types": (("num_hidden_layers",), None),  # None: the config rebuilds the list from the layer count
}
# (width, heads) pairs every family's attention needs divisible, by generic name.
DIVISIBLE = (("hidden_size", "num_attention_heads"), ("num_attention_heads", "num_key_value_heads"))


def apply_overrides(config: Any, overrides: str) -> Any:
    """A new config with `key=value,...` applied, checked against the config's own attribute names.

    Raises UsageError for malformed text, an unknown key (naming the close ones), a value of the wrong
    type, or a shape the family cannot build (width not divisible by heads, heads by key/value heads).
    """
    if not overrides.strip():
        return config
    current = config.to_dict()
    aliases = dict(getattr(config, "attribute_map", {}) or {})
    given: dict[str, Any] = {}
    for item in overrides.split(","):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--config-overrides: {item!r} is not key=value; write e.g. n_layer=2,n_embd=64")
        actual = aliases.get(key, key)
        if actual not in current:
            known = sorted(set(current) | set(aliases))
            close = difflib.get_close_matches(key, known, n=4, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else f"keys include {', '.join(_shape_keys(config))}"
            raise UsageError(f"--config-overrides: the {config.model_type} config has no {key!r}; {hint}")
        given[actual] = _parse_value(key, raw.strip(), current[actual])
    data = {**current, **given}
    generic = _GenericView(aliases)
    for field, (inputs, compute) in DERIVED.items():
        name = generic.actual(field)
        if name in given or name not in data or not any(generic.actual(i) in given for i in inputs):
            continue
        if compute is None:
            data[name] = None
        elif _try(compute, generic.view(current)) == current[name]:
            data[name] = compute(generic.view(data))
    _check_shape(data, generic, config.model_type)
    try:
        return type(config).from_dict(data)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--config-overrides {overrides!r}: {first_line(exc)}") from None


class _GenericView:
    """Reads a config dict by transformers' generic names (hidden_size -> GPT-2's n_embd)."""

    def __init__(self, aliases: dict[str, str]):
        self.aliases = aliases

    def actual(self, generic: str) -> str:
        return self.aliases.get(generic, generic)

    def view(self, data: dict[str, Any]) -> dict[str, Any]:
        return {**data, **{g: data[a] for g, a in self.aliases.items() if a in data}}


def _try(compute: Any, data: dict[str, Any]) -> Any:
    try:
        return compute(data)
    except (KeyError, TypeError, ZeroDivisionError):
        return object()


def _parse_value(key: str, raw: str, old: Any) -> Any:
    try:
        if isinstance(old, bool):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return raw.lower() in ("true", "1", "yes")
        if isinstance(old, int):
            return int(raw)
        if isinstance(old, float):
            return float(raw)
        if isinstance(old, str):
            return raw
        return json.loads(raw)  # fields that hold None or a list
    except ValueError:
        kind = type(old).__name__ if old is not None else "JSON value"
        raise UsageError(f"--config-overrides: {key}={raw!r} is not a valid {kind}") from None


def _check_shape(data: dict[str, Any], generic: _GenericView, model_type: str) -> None:
    for big, small in DIVISIBLE:
        a, b = data.get(generic.actual(big)), data.get(generic.actual(small))
        if isinstance(a, int) and isinstance(b, int) and b > 0 and a % b:
            fits = [d for d in range(1, min(a, b) + 1) if a % d == 0]
            key = generic.actual(small)
            raise UsageError(f"--config-overrides: {generic.actual(big)}={a} is not divisible by {key}={b} "
                             f"({model_type}); add {key}=..., e.g. {key}={fits[-1]}")


def _shape_keys(config: Any) -> list[str]:
    aliases = getattr(config, "attribute_map", {}) or {}
    keys = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")
    return [aliases.get(k, k) for k in keys if aliases.get(k, k) in config.to_dict()]
