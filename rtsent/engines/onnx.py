"""The ONNX Runtime engine: the exported graph plus tokenizer.json, with neither torch nor transformers.

Prompts are encoded by the same PromptEncoder as the torch engine, over `tokenizers` directly
(transformers' fast tokenizers are this same Rust tokenizer underneath; importing AutoTokenizer alone
costs over a second).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rtsent.artifacts.model import ModelMeta, ModelPaths
from rtsent.config import PromptConfig
from rtsent.core.prompts import pad_rows
from rtsent.engines.base import Classifier
from rtsent.errors import ArtifactError, first_line


class JsonTokenizer:
    """A tokenizer.json behind the two calls PromptEncoder makes of a transformers tokenizer.

    `tok(texts, add_special_tokens=...)["input_ids"]` for a str or a list of str, and
    `tok.convert_ids_to_tokens(ids)`. add_special_tokens applies the file's post-processor (a BOS for
    Llama-style tokenizers, nothing for GPT-2), as transformers does; padding and truncation stay off.
    """

    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        try:
            self.backend = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for a missing or malformed file
            raise ArtifactError(f"cannot read {path} ({first_line(exc)}); run `rtsent export` on the model again") from None
        self.backend.no_padding()
        self.backend.no_truncation()

    def __call__(self, texts: str | Sequence[str], add_special_tokens: bool = True) -> dict[str, Any]:
        if isinstance(texts, str):
            return {"input_ids": self.backend.encode(texts, add_special_tokens=add_special_tokens).ids}
        encoded = self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return {"input_ids": [e.ids for e in encoded]}

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> Any:
        if isinstance(ids, int):
            return self.backend.id_to_token(ids)
        return [self.backend.id_to_token(i) for i in ids]

    def get_vocab(self) -> dict[str, int]:
        return self.backend.get_vocab(with_added_tokens=True)

    @property
    def backend_tokenizer(self) -> Any:
        """The tokenizers pipeline, as transformers names it (what tokenizer_fingerprint hashes)."""
        return self.backend

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)


class OnnxClassifier(Classifier):
    """An exported graph (input_ids, attention_mask -> label-word scores) in an InferenceSession."""

    engine = "onnx"

    def __init__(self, name: str, meta: ModelMeta, prompt: PromptConfig, max_len: int, graph: Path, precision: str):
        import onnxruntime as ort

        info = meta.onnx or {}
        paths = ModelPaths(Path(name).expanduser())
        folder = paths.dir
        tokenizer = paths.dir / info["tokenizer"] if info.get("tokenizer") else paths.tokenizer_json
        super().__init__(name, meta, prompt, max_len, JsonTokenizer(tokenizer), precision)
        words = self.encoder.label_words
        if info.get("label_words", None) != words.fingerprint() and info.get("label_ids", None) != words.head_ids:
            raise ArtifactError(f"the ONNX graph in {folder} scores other label tokens than rtsent.json's prompt; "
                                f"run `rtsent export {name}` again")
        self.pad_id = int(info["pad_id"])
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own error types live in its C extension
            raise ArtifactError(f"cannot load {graph} ({first_line(exc)}); "
                                f"run `rtsent export {name}` again") from None

    def _score_batch(self, rows: list[Sequence[int]]) -> np.ndarray:
        ids, mask = pad_rows(rows, self.pad_id)
        (scores,) = self.session.run(None, {"input_ids": ids, "attention_mask": mask})
        return scores.astype(np.float32, copy=False)
