"""The torch side of LabelWords: class scores from one forward of the prompt, the training loss, the linear head.

Words of one token each are scored exactly as before: the hidden state at the prompt's last token times the
words' rows of the output embedding (no [batch, length, vocab] tensor). Longer words add the trie nodes of
core.prompts.WordLayout after the prompt in the same forward, with a 4D attention mask that lets each node
see the prompt and its own ancestors only, and full-vocabulary log-probabilities at those few nodes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from rtsent.core.prompts import LabelWords, WordLayout


class ScoringLayout(torch.nn.Module):
    """A WordLayout as tensors (buffers, so they follow the model's device and live in an exported graph)."""

    def __init__(self, words: LabelWords):
        super().__init__()
        layout: WordLayout = words.layout()
        self.single = words.head_ids is not None
        self.one_token = words.one_token_words
        self.several = bool(layout.class_mask.sum(axis=1).max() > 1)
        head = words.head_ids if words.head_ids is not None else [0] * words.num_classes
        self.register_buffer("head_ids", torch.tensor(head, dtype=torch.long), persistent=False)
        for name in ("first_ids", "word_first", "node_tokens", "node_depth", "node_ancestors", "step_node",
                     "step_token", "step_mask", "class_word", "class_mask"):
            self.register_buffer(name, torch.from_numpy(getattr(layout, name)), persistent=False)

    @property
    def nodes(self) -> int:
        return int(self.node_tokens.shape[0])


def packed_inputs(layout: ScoringLayout, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  mask_kind: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The prompt rows [B, L] with the trie nodes appended [B, L + N]: ids, positions and a 4D mask.

    Prompt positions see what the model's own causal padding mask lets them see; node k sees the prompt's
    real tokens and its ancestors, at position len + depth - 1 (right after its parent). mask_kind "bool"
    gives True where attention is allowed (SDPA), "additive" gives 0 / the dtype's minimum (eager).
    """
    batch, length = input_ids.shape
    n = layout.nodes
    device = input_ids.device
    lengths = attention_mask.sum(dim=-1)
    ids = torch.cat([input_ids, layout.node_tokens.unsqueeze(0).expand(batch, n)], dim=1)
    prompt_pos = torch.arange(length, device=device).unsqueeze(0).expand(batch, length)
    node_pos = lengths.unsqueeze(1) + layout.node_depth.unsqueeze(0) - 1
    positions = torch.cat([prompt_pos, node_pos], dim=1)
    keys = attention_mask.bool()
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    top = torch.cat([causal.unsqueeze(0) & keys.unsqueeze(1),
                     torch.zeros(batch, length, n, dtype=torch.bool, device=device)], dim=2)
    bottom = torch.cat([keys.unsqueeze(1).expand(batch, n, length),
                        layout.node_ancestors.unsqueeze(0).expand(batch, n, n)], dim=2)
    allowed = torch.cat([top, bottom], dim=1).unsqueeze(1)
    if mask_kind == "bool":
        mask = allowed
    else:
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions}


def _unwrapped(model: Any) -> Any:
    """The model inside a DDP/FSDP wrapper (training under torchrun calls the wrapper)."""
    return getattr(model, "module", model)


def _mask_kind(model: Any) -> str:
    """The 4D mask the model's attention reads: additive floats for eager, booleans for SDPA (and the rest)."""
    attn = getattr(getattr(_unwrapped(model), "config", None), "_attn_implementation", None) or "sdpa"
    return "additive" if attn == "eager" else "bool"


def _embedding_dtype(model: Any) -> torch.dtype:
    return _unwrapped(model).get_input_embeddings().weight.dtype


def word_scores(layout: ScoringLayout, first: torch.Tensor, node_logprobs: torch.Tensor | None) -> torch.Tensor:
    """[B, W] each word's score: its first token's score (first: [B, F]) plus its later tokens'
    log-probabilities at the nodes (node_logprobs: [B, N, V] or None when every word is one token)."""
    scores = first[:, layout.word_first]
    if node_logprobs is None:
        return scores
    later = node_logprobs[:, layout.step_node, layout.step_token]  # [B, W, S]
    return scores + (later * layout.step_mask.to(later.dtype)).sum(dim=-1)


def class_scores(layout: ScoringLayout, words: torch.Tensor) -> torch.Tensor:
    """[B, C] from word scores [B, W]: the word's score, or the logsumexp of a class's several words."""
    if not layout.several:
        return words[:, layout.class_word[:, 0]]
    gathered = words[:, layout.class_word].masked_fill(~layout.class_mask, float("-inf"))
    return torch.logsumexp(gathered, dim=-1)


def _node_logprobs(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary log-probabilities [B, N, V] at the nodes' hidden states [B, N, H], as the model's
    own head computes its logits (bias, final scaling or soft-capping included)."""
    from rtsent.core.families import final_logits

    logits = final_logits(model, model.get_output_embeddings()(hidden.to(_embedding_dtype(model))))
    return torch.log_softmax(logits.float(), dim=-1)


def scores(model: Any, layout: ScoringLayout, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Class scores [B, C] of right-padded prompts, for scoring (engines, exported graphs).

    One-token words: the hidden state at each row's last token times the words' rows (what the engines
    always did). Longer words: one forward of the prompts with the trie nodes appended.
    """
    from rtsent.core.modeling import label_logits, last_token_hidden

    if layout.single:  # one single-token word a class: the label rows' logits, the graph exactly as it always was
        return label_logits(model, last_token_hidden(model, input_ids, attention_mask).float(), layout.head_ids)
    if layout.one_token:
        hidden = last_token_hidden(model, input_ids, attention_mask)
        return class_scores(layout, word_scores(layout, label_logits(model, hidden.float(), layout.first_ids), None))
    packed = packed_inputs(layout, input_ids, attention_mask, _mask_kind(model), _embedding_dtype(model))
    out = model.base_model(**packed, use_cache=False).last_hidden_state
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    last = out[rows, attention_mask.sum(dim=-1) - 1]
    first = label_logits(model, last.float(), layout.first_ids)
    nodes = _node_logprobs(model, out[:, input_ids.shape[1]:])
    return class_scores(layout, word_scores(layout, first.float(), nodes))


def training_logits(model: Any, layout: ScoringLayout, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Full-vocabulary logits at the prompt's last token [B, V] and, for longer words, the nodes'
    log-probabilities [B, N, V]; through model.__call__ (so DDP/FSDP wrappers see the forward), asking the
    model to project only those positions (`logits_to_keep` as per-row indices)."""
    from rtsent.core.modeling import next_token_logits

    if layout.one_token:
        return next_token_logits(model, input_ids, attention_mask).float(), None
    packed = packed_inputs(layout, input_ids, attention_mask, _mask_kind(model), _embedding_dtype(model))
    batch, length = input_ids.shape
    last = (attention_mask.sum(dim=-1) - 1).unsqueeze(-1)
    nodes = torch.arange(length, length + layout.nodes, device=input_ids.device).unsqueeze(0).expand(batch, -1)
    out = model(**packed, logits_to_keep=torch.cat([last, nodes], dim=1), use_cache=False)
    logits = out.logits.float()
    return logits[:, 0], torch.log_softmax(logits[:, 1:], dim=-1)


def loss_and_scores(model: Any, layout: ScoringLayout, inputs: dict[str, torch.Tensor], kind: str,
                    class_weights: torch.Tensor | None = None,
                    smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The training loss of a batch (see loss_from_logits) and its class scores [B, C]."""
    first_full, nodes = training_logits(model, layout, inputs["input_ids"], inputs["attention_mask"])
    return loss_from_logits(layout, first_full, nodes, inputs["labels"], kind, class_weights, smoothing)


def loss_from_logits(layout: ScoringLayout, first_full: torch.Tensor, nodes: torch.Tensor | None,
                     labels: torch.Tensor, kind: str, class_weights: torch.Tensor | None = None,
                     smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss (a mean over the batch, class-weighted as F.cross_entropy's weight=) and the class scores.

    kind "label": cross-entropy over the class scores. kind "lm" (the seed recipe's objective): minus the
    log-probability of the true class's word(s) among all the vocabulary's continuations; for one
    single-token word per class, the cross-entropy of that token over the whole vocabulary.

    smoothing e (--label-smoothing): the target is 1 - e on the true class plus e / C on each of the C classes,
    so the loss is -(1 - e) log p(true) - e x the mean over classes of log p(class), with p over the classes
    ("label") or over the vocabulary ("lm": the smoothed mass goes to the other classes' words, not to every
    token of the vocabulary). A class weight scales its example's whole loss.
    """
    scores = class_scores(layout, word_scores(layout, first_full[:, layout.first_ids], nodes))
    if smoothing:
        per_example = _smoothed_loss(layout, scores, first_full, nodes, labels, kind, smoothing)
    elif kind == "label":
        return F.cross_entropy(scores, labels, weight=class_weights), scores
    elif layout.single:
        per_example = F.cross_entropy(first_full, layout.first_ids[layout.word_first][labels], reduction="none")
    else:
        per_example = -_vocabulary_class_logprobs(layout, first_full, nodes).gather(1, labels.unsqueeze(1)).squeeze(1)
    if class_weights is None:
        return per_example.mean(), scores
    weights = class_weights[labels]
    return (per_example * weights).sum() / weights.sum(), scores


def _vocabulary_class_logprobs(layout: ScoringLayout, first_full: torch.Tensor,
                               nodes: torch.Tensor | None) -> torch.Tensor:
    """Each class's log-probability among all the vocabulary's continuations after the prompt [B, C]."""
    normalized = torch.log_softmax(first_full, dim=-1)[:, layout.first_ids]
    return class_scores(layout, word_scores(layout, normalized, nodes))


def _smoothed_loss(layout: ScoringLayout, scores: torch.Tensor, first_full: torch.Tensor, nodes: torch.Tensor | None,
                   labels: torch.Tensor, kind: str, smoothing: float) -> torch.Tensor:
    """Per-example label-smoothed loss (see loss_from_logits) [B]."""
    if kind == "label":
        logprobs = torch.log_softmax(scores, dim=-1)
    else:
        logprobs = _vocabulary_class_logprobs(layout, first_full, nodes)
    true = logprobs.gather(1, labels.unsqueeze(1)).squeeze(1)
    return -(1 - smoothing) * true - smoothing * logprobs.mean(dim=1)


def linear_head(model: Any, words: LabelWords) -> torch.Tensor | None:
    """The [C, H] rows of the output embedding that make the classifier an exactly linear head over the
    last hidden state (one single-token word per class), else None."""
    ids = words.head_ids
    if ids is None:
        return None
    return model.get_output_embeddings().weight.detach()[list(ids)]
