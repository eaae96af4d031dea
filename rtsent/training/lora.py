"""LoRA through peft: wrap a model for training, export merged weights or the adapter (an adapter folder
is loaded back by core.modeling.load_model).

Train hooks: `wrap` after the model is loaded, `for_export` before it is saved. The Trainer saves and
resumes a peft model's adapter by itself, so checkpoints hold only the adapter's weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rtsent.errors import UsageError

def targets(model: Any, given: str | None) -> tuple[list[str], bool]:
    """Module names LoRA adapts (--lora-targets, else the family's default) and peft's fan_in_fan_out."""
    from rtsent.core.families import family

    entry = family(model.config)
    if given:
        names = [t.strip() for t in given.split(",") if t.strip()]
    elif entry is not None:
        names = list(entry.lora_targets)
    else:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

        names = list(DEFAULTS.get(model.config.model_type, []))
        if not names:
            raise UsageError(f"no default LoRA targets for a {model.config.model_type} model; pass --lora-targets "
                             f"from its layers: {', '.join(adaptable(model)[:12])}")
    missing = [n for n in names if n not in adaptable(model)]
    if missing:
        raise UsageError(f"--lora-targets {','.join(missing)}: no such layer in {model.config.model_type}; "
                         f"choose from {', '.join(adaptable(model)[:12])}")
    return names, bool(entry and entry.fan_in_fan_out)


def adaptable(model: Any) -> list[str]:
    """Names (last component) of the layers LoRA can adapt: linear layers and GPT-2's Conv1D."""
    import torch
    from transformers.pytorch_utils import Conv1D

    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not model.get_output_embeddings()}
    return sorted(names)


def wrap(model: Any, cfg: Any) -> Any:
    """The model with LoRA adapters on its target layers; only the adapters are trainable."""
    from peft import LoraConfig, get_peft_model

    names, fan_in_fan_out = targets(model, cfg.lora_targets)
    if cfg.gradient_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a grad input
    layers = None
    if cfg.train_layers:  # adapters in the last blocks only: the backward pass stops below them
        from rtsent.training.options import last_blocks

        layers = list(last_blocks(model, cfg.train_layers))
    config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=names,
                        fan_in_fan_out=fan_in_fan_out, task_type="CAUSAL_LM", bias="none", layers_to_transform=layers)
    return get_peft_model(model, config)


def parameter_counts(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters, each shared tensor once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def is_lora(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def for_export(model: Any, export: str, base_model: str) -> Any:
    """What to save_pretrained: the base model with the adapter merged into its weights (a plain folder
    that loads without peft), or the peft model itself (adapter weights + adapter_config.json)."""
    if not is_lora(model):
        return model
    if export == "merged":
        return model.merge_and_unload()
    model.peft_config[model.active_adapter].base_model_name_or_path = base_model
    return model


def base_reference(name: str) -> str:
    """How rtsent.json names the base model of an adapter: an absolute folder, or a hub name."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name
