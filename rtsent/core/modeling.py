"""Load tokenizer and model; hidden state at the last prompt token; label-word scores; the loss there.

No [batch, length, vocab] tensor is ever formed: the output embedding is applied to one hidden
state per example, either in full (the seed recipe's LM loss) or only to the label words' rows.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from rtsent import compat
from rtsent.errors import ArtifactError, UsageError, first_line


def _load_error(kind: str, name: str, exc: Exception) -> Exception:
    path = Path(name).expanduser()
    if path.exists():
        return ArtifactError(f"cannot load the {kind} from {path}: {first_line(exc)}")
    if name.startswith((".", "/", "~")):
        return UsageError(f"no such folder: {name}; pass --model with an existing model folder")
    from rtsent.sources.hub import explain

    return explain(exc, name, "model")


def _source(name: str) -> str:
    """A local folder to load `name` from: the folder or hub name itself, or for a GGUF file (a `.gguf`
    path, `owner/repo/file.gguf`, a folder holding one and no config.json, or a name a pip package ships
    such as `smollm2`) its converted folder."""
    from rtsent.sources import gguf

    path = Path(name).expanduser()
    if not path.exists() and (packaged := gguf.packaged_file(name)) is not None:
        return gguf.local_folder(str(packaged))
    if gguf.is_gguf(name):
        return gguf.local_folder(name)
    if path.is_dir() and (found := gguf.find_in_folder(path)) is not None:
        return gguf.local_folder(str(found))
    if path.exists():
        return str(path)
    if not name.startswith((".", "/", "~")):
        from rtsent.sources.hub import probe

        probe(name, "model")
    return name


def origin_note(name: str) -> str | None:
    """One line on how a model's weights were made ready when they are not a plain folder (a GGUF file:
    which quantized types were dequantized to fp32), else None."""
    from rtsent.sources import gguf

    return gguf.describe(_source(name))


def load_tokenizer(name: str) -> Any:
    """The model's tokenizer, right-padded with eos as pad (GPT-2 has no pad token)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(_source(name))
    except (OSError, ValueError) as exc:
        raise _load_error("tokenizer", name, exc) from None
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise ArtifactError(f"the tokenizer of {name} has neither a pad nor an eos token to pad with")
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def load_config(name: str) -> Any | None:
    """The model's config, or None where there is none to read (a tokenizer-only folder)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(_source(name))
    except (OSError, ValueError):
        return None


def load_model(name: str, from_scratch: bool = False, overrides: str = "", dtype: torch.dtype | None = None,
               compute: str = "fp32", dropout: float | None = None, attn: str | None = None) -> Any:
    """A causal LM from a folder or hub name; with from_scratch, random weights from its config.

    `dtype` is the dtype of the weights in memory (training passes float32 for fp32 master weights
    whatever the stored dtype; None keeps the stored one); `compute` is the precision the model will
    run in (fast kernels are swapped in for it at run time, see families.swap_kernels); `dropout`, when
    given, replaces every dropout rate of the config; `attn` picks the attention implementation
    (default: the library's, SDPA). A folder holding a LoRA adapter (adapter_config.json) loads its
    base model and merges the adapter. Weights load only from safetensors, never with remote code.

    The config as loaded is kept in `model.rtsent_restore`, so that a saved model describes the same
    architecture as the one it came from, whatever was changed for training (see saved_config).
    """
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModelForCausalLM

    from rtsent.core import families

    from rtsent.artifacts.model import ModelPaths

    source = _source(name)
    if ModelPaths(Path(source)).adapter_config.is_file():
        return _load_adapter(Path(source), dtype=dtype, compute=compute, attn=attn)
    try:
        config = AutoConfig.from_pretrained(source)
        if from_scratch and overrides:
            config = families.apply_overrides(config, overrides)
        loaded = config.to_dict()
        if dropout is not None:
            families.set_dropout(config, dropout)
        extra = {"attn_implementation": attn} if attn else {}
        if from_scratch:
            model = AutoModelForCausalLM.from_config(config, dtype=dtype or torch.float32, **extra)
        else:
            model = AutoModelForCausalLM.from_pretrained(source, config=config, use_safetensors=True, dtype=dtype,
                                                         **extra, **compat.hub_kernel_options())
    except UsageError:
        raise
    except SafetensorError as exc:  # a truncated or damaged weights file
        raise ArtifactError(f"the weights in {source} are unreadable ({exc}); re-export or re-train the model") from None
    except (OSError, ValueError, RuntimeError) as exc:
        raise _load_error("model", name, exc) from None
    families.swap_kernels(model, compute)
    model.rtsent_restore = loaded
    return model


def _load_adapter(folder: Path, dtype: torch.dtype | None, compute: str, attn: str | None) -> Any:
    """The base model named in the folder's rtsent.json (else adapter_config.json) with the adapter
    merged in, ready to score exactly like a merged export. Raises ArtifactError when the base is gone."""
    import json

    from rtsent.artifacts.model import ModelMeta, ModelPaths

    paths = ModelPaths(folder)
    base = ModelMeta.read(folder).adapter_base if paths.is_model() else None
    if not base:
        base = json.loads(paths.adapter_config.read_text()).get("base_model_name_or_path")
    if not base:
        raise ArtifactError(f"{folder} holds a LoRA adapter but names no base model; re-export it with merged weights")
    try:
        model = load_model(base, dtype=dtype, compute=compute, attn=attn)
    except UsageError as exc:
        raise ArtifactError(f"the base model of the LoRA adapter in {folder} cannot be loaded ({exc}); "
                            f"restore {base} or re-train with --lora-export merged") from None
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(folder)).merge_and_unload()


# Config keys a training run may change on purpose and saves: pad_token_id (generation needs one).
KEPT_CONFIG_KEYS = ("pad_token_id", "dtype", "torch_dtype", "transformers_version")


@contextlib.contextmanager
def saved_config(model: Any) -> Iterator[None]:
    """Within the block the model's config holds the values it was loaded with (not the dropout rtsent
    trained with, nor the Trainer's use_cache=False), so save_pretrained writes the base architecture."""
    loaded = getattr(model, "rtsent_restore", None) or {}
    config = model.config
    changed = {key: getattr(config, key) for key, value in loaded.items()
               if key not in KEPT_CONFIG_KEYS and hasattr(config, key) and getattr(config, key) != value}
    for key in changed:
        setattr(config, key, loaded[key])
    try:
        yield
    finally:
        for key, value in changed.items():
            setattr(config, key, value)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def last_token_hidden(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Final hidden state at each row's last real token: [batch, hidden]. Rows are right-padded."""
    out = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    last = attention_mask.sum(dim=-1) - 1
    return out.last_hidden_state[torch.arange(input_ids.shape[0], device=input_ids.device), last]


def next_token_logits(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary logits at each row's last real token only: [batch, vocab].

    Goes through model.__call__ (so DDP/FSDP wrappers see the forward) and asks the model to project
    one position per row (`logits_to_keep` as a [batch, 1] index), never the whole sequence.
    """
    last = (attention_mask.sum(dim=-1) - 1).unsqueeze(-1)
    out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=last, use_cache=False)
    return out.logits[:, 0]


def label_logits(model: Any, hidden: torch.Tensor, label_ids: torch.Tensor) -> torch.Tensor:
    """Next-token logits of the label words only: [batch, classes], as the model's own forward computes
    them (including a family's final logit scaling or soft-capping)."""
    from rtsent.core.families import final_logits

    head = model.get_output_embeddings()
    scores = hidden @ head.weight[label_ids].to(hidden.dtype).T
    if getattr(head, "bias", None) is not None:
        scores = scores + head.bias[label_ids].to(hidden.dtype)
    return final_logits(model, scores)


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int, multiple: int = 1) -> dict[str, torch.Tensor]:
    """Right-pad id lists to the longest (rounded up to `multiple`) with an attention mask (prompts.pad_rows)."""
    from rtsent.core.prompts import pad_rows

    ids, mask = pad_rows(rows, pad_id, multiple)
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
