"""Template + label words -> token ids; truncation that never cuts the template's tail."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Sequence

from rtsent.config import PromptConfig
from rtsent.errors import UsageError


CHARS_PER_TOKEN = 32


@dataclass(frozen=True)
class EncodedBatch:
    input_ids: list[list[int]]
    truncated: list[bool]


class PromptEncoder:
    """Turns reviews into prompt token ids that end exactly where the label word is predicted.

    The template's prefix is tokenized together with the review (so the boundary merges as GPT-2
    would merge it); the suffix is tokenized once on its own and always kept whole. When the two are
    too long for max_len, review tokens are dropped from the end of the review.
    """

    def __init__(self, prompt: PromptConfig, tokenizer: Any, max_len: int):
        self.prompt = prompt
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.suffix_ids = self._ids(prompt.suffix)
        self.prefix_len = len(self._ids(prompt.prefix))
        self.label_ids = self._label_ids()
        minimum = self.prefix_len + len(self.suffix_ids) + 1
        if max_len < minimum:
            raise UsageError(
                f"--max-len {max_len} leaves no room for the review: the template alone takes "
                f"{minimum - 1} tokens; use --max-len {minimum} or more"
            )

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _label_ids(self) -> list[int]:
        ids = []
        for word in self.prompt.label_words:
            pieces = self._ids(word)
            if len(pieces) != 1:
                shown = [self.tokenizer.convert_ids_to_tokens(i) for i in pieces]
                raise UsageError(
                    f"label word {word!r} is {len(pieces)} tokens {shown}, not one; pick a single-token "
                    f"word (GPT-2 words usually need a leading space, e.g. ' positive')"
                )
            ids.append(pieces[0])
        if len(set(ids)) != len(ids):
            raise UsageError(f"label words {list(self.prompt.label_words)!r} map to the same token; make them distinct")
        return ids

    def encode(self, texts: Sequence[str]) -> EncodedBatch:
        """Token ids of each prompt (at most max_len) and whether its review was cut."""
        prefix = self.prompt.prefix
        budget = self.max_len - len(self.suffix_ids)
        # No GPT-2 token spans 32 characters in ordinary text, so cutting there first cannot change the
        # kept tokens, while a pathological 1 MB "review" costs no more to tokenize than a long one.
        chars = CHARS_PER_TOKEN * budget
        bodies = self.tokenizer([prefix + t[:chars] for t in texts], add_special_tokens=False)["input_ids"]
        ids = [body[:budget] + self.suffix_ids for body in bodies]
        return EncodedBatch(ids, [len(body) > budget or len(t) > chars for body, t in zip(bodies, texts)])


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
