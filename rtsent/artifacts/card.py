"""The model card (README.md with Hugging Face YAML metadata) of an exported model folder.

Written from the folder's own records only: rtsent.json (prompt, training config, best validation
accuracy, provenance) and the eval-<split>.json reports `rtsent evaluate` writes next to it. Rewritten
whole (atomically) whenever one of them changes, so it never disagrees with them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rtsent.artifacts.files import atomic_file
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
    text = f"---\n{_metadata(meta, reports).to_yaml()}\n---\n\n{_body(paths, meta, reports)}"
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


def _body(paths: ModelPaths, meta: ModelMeta, reports: dict[str, dict[str, Any]]) -> str:
    train = meta.train
    template = meta.prompt.template
    words, names = list(meta.prompt.label_words), list(meta.prompt.label_names)
    lora = meta.lora or {}
    base = meta.adapter_base or train.get("model")
    lines = [
        f"# {meta.run or 'rtsent model'}",
        "",
        f"A causal language model fine-tuned by rtsent as a text classifier: each text "
        f"becomes the prompt `{json.dumps(template)}` and the class is the label word the model finds most likely "
        f"after it "
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
    lines += ["", "## Use", "", *_use_snippet(paths, meta), "",
              "## Training configuration", "", "```json", json.dumps(train, indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)


def _use_snippet(paths: ModelPaths, meta: ModelMeta) -> list[str]:
    """Python that scores a review with transformers alone, exactly as `rtsent predict` does: the prompt's
    token ids as rtsent builds them (the tokenizer's BOS, the template's start and the review tokenized
    together, then the template's end as the tokens that follow a review), the class scores (_class_scores)
    divided by the fitted temperature. tests/test_families.py and tests/test_label_words.py run it against
    predict."""
    template, names = meta.prompt.template, list(meta.prompt.label_names)
    parts = _prompt_parts(paths, meta)
    if parts is None:  # no tokenizer.json to read the ids from: the whole prompt, as the tokenizer encodes it
        build = [f"prompt = {json.dumps(template)}.format(text=review)",
                 "ids = tok(prompt)[\"input_ids\"]"]
    else:
        bos, suffix = parts
        build = ["# the prompt as rtsent builds it: the tokenizer's BOS, the template's start with the review, and",
                 f"# the template's end {json.dumps(meta.prompt.suffix)} as the tokens that follow a review",
                 f"ids = {bos} + tok({json.dumps(meta.prompt.prefix)} + review, add_special_tokens=False)"
                 f"[\"input_ids\"] + {suffix}"]
    return ["```python", "import torch", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            "MODEL = \"this folder or its hub repository\"",
            "tok = AutoTokenizer.from_pretrained(MODEL)", "model = AutoModelForCausalLM.from_pretrained(MODEL)",
            "review = \"A gripping, beautifully acted film.\"  # up to the model's max_len "
            f"({meta.max_len} tokens); rtsent cuts longer ones",
            *build, *_class_scores(meta),
            f"probabilities = (scores / {meta.temperature!r}).softmax(-1)  # the fitted temperature",
            f"print(dict(zip({json.dumps(names)}, probabilities.tolist())))", "```"]


def _class_scores(meta: ModelMeta) -> list[str]:
    """`scores` of the snippet: the label words' logits where each class is one single-token word, else each
    word's log-probability token by token, a class's several words combined by logsumexp (LabelWords)."""
    words = list(meta.prompt.label_words)
    head = meta.label_words.head_ids
    if head is not None:
        return ["with torch.no_grad():", "    next_token = model(torch.tensor([ids])).logits[0, -1]",
                f"scores = next_token[{head}]  # {json.dumps(words)}"]
    return [f"words = {json.dumps(meta.label_words.to_list())}  # each class's words as token ids after the prompt: "
            f"{json.dumps(words)}", "",
            "def log_prob(word):  # log P(word | prompt), token by token",
            "    with torch.no_grad():",
            "        logits = model(torch.tensor([ids + word])).logits[0].log_softmax(-1)",
            "    return sum(logits[len(ids) - 1 + i, t] for i, t in enumerate(word))", "",
            "scores = torch.stack([torch.logsumexp(torch.stack([log_prob(w) for w in ws]), 0) for ws in words])"]


def _prompt_parts(paths: ModelPaths, meta: ModelMeta) -> tuple[list[int], list[int]] | None:
    """The BOS ids and the template-end ids rtsent puts around every review, read from the folder's
    tokenizer.json (without transformers), or None where the folder has none."""
    if not paths.tokenizer_json.is_file():
        return None
    from rtsent.core.prompts import PromptEncoder
    from rtsent.engines.onnx import JsonTokenizer
    from rtsent.errors import RtsentError

    try:
        encoder = PromptEncoder(meta.prompt, JsonTokenizer(paths.tokenizer_json), meta.max_len)
    except RtsentError:
        return None
    return list(encoder.bos_ids), list(encoder.suffix_ids)


def _write_text(path: Path, text: str) -> None:
    with atomic_file(path) as fh:
        fh.write(text)
