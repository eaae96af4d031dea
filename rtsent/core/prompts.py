"""Template + label words -> token ids; truncation that never cuts the template's tail."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from rtsent.config import PromptConfig
from rtsent.errors import UsageError


CHARS_PER_TOKEN = 32
# Bumped whenever the same tokenizer and prompt give other ids (2: BOS and in-context suffix/label words),
# so that prepared datasets tokenized the old way are rebuilt, not reused.
ENCODING_VERSION = 2


@dataclass(frozen=True)
class EncodedBatch:
    input_ids: list[list[int]]
    truncated: list[bool]


# A stand-in review: the template's tail and the label words are tokenized after it, in context, the
# way they follow a real review (SentencePiece marks a word start with "▁" only inside a text).
PROBE = "A review."


class PromptEncoder:
    """Turns reviews into prompt token ids that end exactly where the label word is predicted.

    Built the way each tokenizer wants: the tokenizer's own leading special tokens (a BOS) where
    `add_special_tokens=True` adds them; the template's prefix tokenized together with the review (so
    the boundary merges as the tokenizer would merge it); the suffix and each label word as the tokens
    that follow a review when they are tokenized together with it ("▁positive", " positive"). The
    suffix is always kept whole: when the prompt is too long for max_len, review tokens are dropped
    from the end of the review.

    Uses only `tokenizer(texts, add_special_tokens=...)["input_ids"]` and
    `tokenizer.convert_ids_to_tokens(ids)`, so any tokenizer offering those two works (also torch-free).
    """

    def __init__(self, prompt: PromptConfig, tokenizer: Any, max_len: int):
        self.prompt = prompt
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.bos_ids = self._leading_specials()
        self.context_ids = self._ids(prompt.prefix + PROBE + prompt.suffix)
        self.suffix_ids = self._following(self._ids(prompt.prefix + PROBE), self.context_ids)
        if self.suffix_ids is None:  # the suffix merges with the review's end: take it on its own
            self.suffix_ids = self._ids(prompt.suffix)
        self.prefix_len = len(self.bos_ids) + len(self._ids(prompt.prefix))
        self.label_ids = self._label_ids()
        minimum = self.prefix_len + len(self.suffix_ids) + 1
        if max_len < minimum:
            raise UsageError(
                f"--max-len {max_len} leaves no room for the review: the template alone takes "
                f"{minimum - 1} tokens; use --max-len {minimum} or more"
            )

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def _leading_specials(self) -> list[int]:
        """What the tokenizer puts before a text of its own accord (Llama's <s>, OPT's </s>); any
        special tokens it appends (an EOS) are left out: the prompt must end where the label follows."""
        plain = self._ids(PROBE)
        full = list(self.tokenizer(PROBE, add_special_tokens=True)["input_ids"])
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                return full[:start]
        return []

    @staticmethod
    def _following(head: list[int], whole: list[int]) -> list[int] | None:
        """The ids `whole` adds after `head`, or None when appending changed head's own tokens."""
        return whole[len(head):] if whole[: len(head)] == head else None

    def _label_ids(self) -> list[int]:
        ids = []
        for word in self.prompt.label_words:
            pieces = self._following(self.context_ids, self._ids(self.prompt.prefix + PROBE + self.prompt.suffix + word))
            if pieces is None:  # the word merges into the template's last token (e.g. "Sentiment: " + "neg"):
                pieces = self._ids(word)  # the seed recipe's choice, the word's own tokens after the prompt's
            if len(pieces) != 1:
                shown = self.tokenizer.convert_ids_to_tokens(pieces)
                raise UsageError(
                    f"label word {word!r} is {len(pieces)} tokens {shown} after the prompt, not one; pick a "
                    f"single-token word (after a template ending without a space words usually need a "
                    f"leading space, e.g. ' positive')"
                )
            ids.append(pieces[0])
        if len(set(ids)) != len(ids):
            raise UsageError(f"label words {list(self.prompt.label_words)!r} map to the same token; make them distinct")
        return ids

    def encode(self, texts: Sequence[str]) -> EncodedBatch:
        """Token ids of each prompt (at most max_len) and whether its review was cut."""
        prefix = self.prompt.prefix
        budget = self.max_len - len(self.suffix_ids) - len(self.bos_ids)
        # No token spans 32 characters in ordinary text, so cutting there first cannot change the kept
        # tokens, while a pathological 1 MB "review" costs no more to tokenize than a long one.
        chars = CHARS_PER_TOKEN * budget
        bodies = self.tokenizer([prefix + t[:chars] for t in texts], add_special_tokens=False)["input_ids"]
        ids = [self.bos_ids + list(body[:budget]) + self.suffix_ids for body in bodies]
        return EncodedBatch(ids, [len(body) > budget or len(t) > chars for body, t in zip(bodies, texts)])


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded int64 ids and attention mask [batch, longest rounded up to `multiple`]; each row's
    label position is its last 1 in the mask."""
    longest = -(-max(len(r) for r in rows) // multiple) * multiple
    ids = np.full((len(rows), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), longest), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


def tokenizer_fingerprint(tok: Any) -> str:
    """Identity of everything that decides a tokenizer's ids: vocabulary, merges, normalizer,
    pre-tokenizer, post-processor (BOS/EOS templates) and added tokens.

    Takes a transformers tokenizer or a `tokenizers.Tokenizer`; both hash the same serialized pipeline,
    minus run-time padding/truncation settings, so the torch and ONNX engines agree.
    """
    backend = getattr(tok, "backend_tokenizer", tok)
    if not hasattr(backend, "to_str"):  # a slow (Python) tokenizer: fall back to what it exposes
        blob = {"vocab": sorted(tok.get_vocab().items()), "class": type(tok).__name__,
                "special": sorted(map(str, tok.all_special_tokens))}
    else:
        blob = json.loads(backend.to_str())
        blob.pop("truncation", None)
        blob.pop("padding", None)
    return hashlib.sha256(json.dumps(blob, sort_keys=True, ensure_ascii=True).encode()).hexdigest()[:16]
