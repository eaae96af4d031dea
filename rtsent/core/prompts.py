"""Template + label words -> token ids; truncation that never cuts the template's tail; the label words'
token layout (LabelWords), which every engine, the training loss and the exports score through."""

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
TOKENIZE_CHUNK = 2048
"""Texts tokenized per call by PromptEncoder.encode_all (prepare, evaluate --data)."""


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
        self.label_words = self._label_words()
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

    @property
    def label_ids(self) -> list[int]:
        """The token id of each class's word where every class is one single-token word (see LabelWords.head_ids)."""
        ids = self.label_words.head_ids
        if ids is None:
            raise UsageError("these label words are not one single token per class")
        return ids

    def word_ids(self, word: str) -> list[int]:
        """A label word's tokens as they follow a review and the template's suffix."""
        context = self.prompt.prefix + PROBE + self.prompt.suffix
        pieces = self._following(self.context_ids, self._ids(context + word))
        if pieces is None:  # the word merges into the template's last token (e.g. "Sentiment: " + "neg"):
            pieces = self._ids(word)  # the seed recipe's choice, the word's own tokens after the prompt's
        return pieces

    def _label_words(self) -> "LabelWords":
        classes, seen = [], {}
        room = self.max_len - (self.prefix_len + len(self.suffix_ids) + 1)
        for cls, words in enumerate(self.prompt.class_words):
            encoded = []
            for word in words:
                ids = tuple(self.word_ids(word))
                if not ids:
                    raise UsageError(f"label word {word!r} has no tokens after the prompt; pick a word with letters")
                if len(ids) > max(room, 1):
                    raise UsageError(
                        f"label word {word!r} is {len(ids)} tokens, more than --max-len {self.max_len} leaves after "
                        f"the template; raise --max-len or pick a shorter word")
                if ids in seen:
                    raise UsageError(
                        f"label words {seen[ids][1]!r} and {word!r} are the same tokens "
                        f"{self.tokenizer.convert_ids_to_tokens(list(ids))} after the prompt; make them distinct")
                seen[ids] = (cls, word)
                encoded.append(ids)
            classes.append(tuple(encoded))
        return LabelWords(tuple(classes))

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

    def encode_all(self, texts: Sequence[str]) -> tuple[list[list[int]], int]:
        """Token ids of every prompt, encoded TOKENIZE_CHUNK texts at a time, and how many reviews were cut."""
        ids, truncated = [], 0
        for start in range(0, len(texts), TOKENIZE_CHUNK):
            batch = self.encode(texts[start : start + TOKENIZE_CHUNK])
            ids.extend(batch.input_ids)
            truncated += sum(batch.truncated)
        return ids, truncated


@dataclass(frozen=True)
class WordLayout:
    """How LabelWords are scored from one forward of the prompt (numpy, for torch and ONNX alike).

    The words form a trie. The prompt's last position predicts every word's first token (`first_ids`,
    distinct); each internal node of the trie (a proper prefix of some word, `node_tokens` its last token)
    is appended after the prompt once, attends to the prompt and to its own ancestors only, sits at the
    position after its parent, and predicts the next token of every word that runs through it. So K
    classes cost one forward of the prompt plus one token per distinct word prefix, never K forwards.
    """

    first_ids: np.ndarray
    """[F] distinct first tokens; word w's first token is first_ids[word_first[w]]."""
    word_first: np.ndarray
    """[W] index into first_ids."""
    node_tokens: np.ndarray
    """[N] input token of each trie node."""
    node_depth: np.ndarray
    """[N] 1 for a word's first token, 2 for its second, ...: the node sits depth - 1 after the prompt's end."""
    node_ancestors: np.ndarray
    """[N, N] bool: node k sees node j (j is k or an ancestor of k)."""
    step_node: np.ndarray
    """[W, S] the node that predicts word w's token s + 2 (0 where the word is shorter; see step_mask)."""
    step_token: np.ndarray
    """[W, S] that token."""
    step_mask: np.ndarray
    """[W, S] 1 where word w has a token s + 2."""
    class_word: np.ndarray
    """[C, M] the words of each class (0-padded; see class_mask)."""
    class_mask: np.ndarray
    """[C, M] 1 for a real word."""


@dataclass(frozen=True)
class LabelWords:
    """The label words as the model reads them: for each class, each of its words' token ids after the prompt.

    The one owner of the words' tokens. The class score is log P(class | prompt) up to a constant shared by
    all classes: each word's score is the sum of its tokens' log-probabilities after the prompt (the
    first token's normalizer, common to every word, left out, so a single-token word's score is its
    logit, as before), and a class with several words scores the log of their summed probabilities
    (logsumexp). The probabilities users see are the softmax over the class scores. The torch side of the
    same (class scores from a model, the training loss, a linear head) is core/label_scores.py.
    """

    classes: tuple[tuple[tuple[int, ...], ...], ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def words(self) -> list[tuple[int, ...]]:
        """Every word, class by class."""
        return [word for words in self.classes for word in words]

    @property
    def head_ids(self) -> list[int] | None:
        """The token id of each class where every class is one single-token word (the rows of the output
        embedding that make an exactly linear classification head), else None."""
        if all(len(words) == 1 and len(words[0]) == 1 for words in self.classes):
            return [words[0][0] for words in self.classes]
        return None

    @property
    def one_token_words(self) -> bool:
        """Every word is one token: the prompt's last position alone scores them all."""
        return all(len(word) == 1 for word in self.words)

    def to_list(self) -> list[list[list[int]]]:
        return [[list(word) for word in words] for words in self.classes]

    @classmethod
    def from_list(cls, data: Sequence[Any]) -> "LabelWords":
        """From to_list(), or from the one-token-per-class `label_ids` list older records kept."""
        if all(isinstance(i, int) for i in data):
            return cls(tuple(((int(i),),) for i in data))
        return cls(tuple(tuple(tuple(int(t) for t in word) for word in words) for words in data))

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_list()).encode()).hexdigest()[:16]

    def layout(self) -> WordLayout:
        words = self.words
        first = sorted({w[0] for w in words})
        nodes: dict[tuple[int, ...], int] = {}
        for word in words:
            for depth in range(1, len(word)):
                nodes.setdefault(word[:depth], len(nodes))
        ancestors = np.zeros((len(nodes), len(nodes)), dtype=bool)
        for prefix, k in nodes.items():
            for depth in range(1, len(prefix) + 1):
                ancestors[k, nodes[prefix[:depth]]] = True
        steps = max([len(w) - 1 for w in words] + [1])
        step_node = np.zeros((len(words), steps), dtype=np.int64)
        step_token = np.zeros((len(words), steps), dtype=np.int64)
        step_mask = np.zeros((len(words), steps), dtype=np.float32)
        for w, word in enumerate(words):
            for s in range(len(word) - 1):
                step_node[w, s], step_token[w, s], step_mask[w, s] = nodes[word[: s + 1]], word[s + 1], 1.0
        most = max(len(ws) for ws in self.classes)
        class_word = np.zeros((self.num_classes, most), dtype=np.int64)
        class_mask = np.zeros((self.num_classes, most), dtype=bool)
        w = 0
        for c, ws in enumerate(self.classes):
            for m in range(len(ws)):
                class_word[c, m], class_mask[c, m] = w, True
                w += 1
        return WordLayout(
            first_ids=np.asarray(first, dtype=np.int64),
            word_first=np.asarray([first.index(w[0]) for w in words], dtype=np.int64),
            node_tokens=np.asarray([p[-1] for p in nodes], dtype=np.int64),
            node_depth=np.asarray([len(p) for p in nodes], dtype=np.int64),
            node_ancestors=ancestors, step_node=step_node, step_token=step_token, step_mask=step_mask,
            class_word=class_word, class_mask=class_mask)

    def describe(self, tokenizer: Any) -> list[list[list[str]]]:
        """The tokens of every word, as strings, class by class."""
        return [[tokenizer.convert_ids_to_tokens(list(word)) for word in words] for words in self.classes]


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
