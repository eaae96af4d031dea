"""The model card (README.md with Hugging Face YAML metadata) of an exported model folder.

Written from the folder's own records only: rtsent.json (prompt, training config, best validation
accuracy, provenance) and the eval-<split>.json reports `rtsent evaluate` writes next to it. Rewritten
whole (atomically) whenever one of them changes, so it never disagrees with them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rtsent.artifacts.cache import atomic_file
from rtsent.artifacts.model import EVAL_ORDER, ModelMeta, ModelPaths, read_eval_reports
from rtsent.config import to_dict


def refresh(folder: Path) -> None:
    """Rewrite the card of an exported model folder; nothing happens for a folder without rtsent.json."""
    if ModelPaths(Path(folder)).is_model():
        write(Path(folder))


def write(folder: Path) -> Path:
    """(Re)write the folder's README.md from its rtsent.json and its eval-<split>.json reports; returns its path."""
    paths = ModelPaths(Path(folder))
    meta = ModelMeta.read(paths.dir)
    found = read_eval_reports(paths)
    reports = {split: found[split] for split in EVAL_ORDER if split in found}
    text = f"---\n{_metadata(meta, reports).to_yaml()}\n---\n\n{_body(meta, reports)}"
    _write_text(paths.card, text)
    return paths.card


def _hub_name(name: str | None) -> str | None:
    """A hub repository name, or None for a local path (the hub's metadata only takes hub names); a packaged
    model's name (`smollm2`) stands for the hub repository of the model its file holds."""
    from rtsent.sources.gguf import PACKAGED

    if name in PACKAGED and not Path(name).exists():
        return PACKAGED[name].hub
    if not name or name.startswith((".", "/", "~")) or Path(name).expanduser().exists() or name.count("/") > 1:
        return None
    return name


def _metadata(meta: ModelMeta, reports: dict[str, dict[str, Any]]) -> Any:
    from huggingface_hub import EvalResult, ModelCardData

    train = meta.train
    base = meta.adapter_base or train.get("model")
    data = meta.data
    dataset = _hub_name(data)
    results = []
    for split, metrics in _metrics(meta, reports).items():
        for kind, value, label, args in metrics:
            results.append(EvalResult(
                task_type="text-classification", task_name="Sentiment classification",
                dataset_type=dataset or "local", dataset_name=dataset or Path(data or "data").name, dataset_split=split,
                metric_type=kind, metric_value=round(float(value), 4), metric_name=label, metric_args=args))
    prompt = to_dict(meta.prompt)
    return ModelCardData(
        base_model=_hub_name(base) if not train.get("from_scratch") else None,
        datasets=[dataset] if dataset else None,
        library_name="peft" if (meta.lora or {}).get("export") == "adapter" else "transformers",
        pipeline_tag="text-generation",
        tags=["rtsent", "sentiment-analysis", "text-classification"],
        model_name=meta.run or "rtsent-model",
        eval_results=results or None,
        rtsent={
            "template": prompt["template"],
            "label_words": prompt["label_words"],
            "label_names": prompt["label_names"],
            "max_len": meta.max_len,
            "train": train,
        },
    )


def _metrics(meta: ModelMeta, reports: dict[str, dict[str, Any]]) -> dict[str, list[tuple]]:
    """Per split: (metric type, value, display name, args) for each metric that exists."""
    out: dict[str, list[tuple]] = {}
    for split, report in reports.items():
        if isinstance(report.get("accuracy"), (int, float)):
            out[split] = [("accuracy", report["accuracy"], f"{split.title()} accuracy", None)]
            if isinstance(report.get("macro_f1"), (int, float)):
                out[split].append(("f1", report["macro_f1"], f"{split.title()} macro F1", {"average": "macro"}))
    best = (meta.best or {}).get("validation_accuracy")
    if "validation" not in out and isinstance(best, (int, float)):
        out["validation"] = [("accuracy", best, "Validation accuracy (best checkpoint)", None)]
    return out


def _body(meta: ModelMeta, reports: dict[str, dict[str, Any]]) -> str:
    train = meta.train
    template = meta.prompt.template
    words, names = list(meta.prompt.label_words), list(meta.prompt.label_names)
    lora = meta.lora or {}
    base = meta.adapter_base or train.get("model")
    lines = [
        f"# {meta.run or 'rtsent model'}",
        "",
        f"A causal language model fine-tuned by rtsent as a sentiment classifier: each text "
        f"becomes the prompt `{json.dumps(template)}` and the model predicts one label word as the next token "
        f"({', '.join(f'{json.dumps(w)} = {n}' for w, n in zip(words, names))}).",
        "",
        f"- base model: `{base}`" + (" (trained from scratch on its config)" if train.get("from_scratch") else ""),
        f"- data: `{meta.data}` (prepared dataset {meta.prepared}, max-len {meta.max_len})",
    ]
    if lora:
        lines.append(f"- LoRA: r={train.get('lora_r')}, alpha={train.get('lora_alpha')}, "
                     f"{lora.get('trainable_params')} trainable parameters, exported as {lora.get('export')}")
    lines += ["", "## Results", "", "| split | metric | value |", "| --- | --- | ---: |"]
    for split, metrics in _metrics(meta, reports).items():
        for _, value, label, _ in metrics:
            lines.append(f"| {split} | {label} | {value:.4f} |")
    lines += ["", "## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              "MODEL = \"this folder or its hub repository\"",
              "tok = AutoTokenizer.from_pretrained(MODEL)", "model = AutoModelForCausalLM.from_pretrained(MODEL)",
              f"prompt = {json.dumps(template)}.format(text=\"A gripping, beautifully acted film.\")",
              "ids = tok(prompt, return_tensors=\"pt\")",
              "next_token = model(**ids).logits[0, -1]",
              f"label_ids = {list(meta.label_ids)}  # {json.dumps(words)}",
              f"print({json.dumps(names)}[int(next_token[label_ids].argmax())])", "```", "",
              "## Training configuration", "", "```json", json.dumps(train, indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)


def _write_text(path: Path, text: str) -> None:
    with atomic_file(path) as fh:
        fh.write(text)
