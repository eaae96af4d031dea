"""Every place rtsent reaches into a library's private API, each with its reason, in one room.

Where a library offers no public way to do what rtsent needs, the hook lives here and nowhere else.
tests/test_compat.py checks each one against the installed versions (the method still exists with the
arguments rtsent passes, the attribute is still read), so an upgrade that moves one fails there, by
name, instead of silently changing training or serving. Heavy libraries are imported inside the
functions: `rtsent --help` and the torch-free onnx engine never pay for them.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from typing import Any, Callable

# (module, qualified attribute, parameter names rtsent relies on, or None for a plain attribute/field).
PRIVATE_HOOKS: tuple[tuple[str, str, tuple[str, ...] | None], ...] = (
    ("transformers", "Trainer._get_train_sampler", ("self", "train_dataset")),
    ("transformers", "Trainer._clip_grad_norm", ("self", "model")),
    ("transformers", "Trainer._has_mixed_mesh_grads", ("self", "model")),
    ("transformers", "Trainer._load_best_model", ("self",)),
    ("transformers", "Trainer._save_rng_state", ("self", "output_dir")),
    ("transformers", "Trainer._prepare_inputs", ("self", "inputs")),
    ("transformers", "Trainer.get_batch_samples", ("self", "epoch_iterator", "num_batches", "device")),
    ("torch.cpu", "_is_avx512_bf16_supported", ()),
    ("torch.cpu", "_is_amx_tile_supported", ()),
    ("onnxruntime.transformers.optimizer", "MODEL_TYPES", None),
    ("onnxruntime.transformers.onnx_model_bert", "BertOnnxModel.postprocess", ("self",)),
    ("huggingface_hub.constants", "HF_HUB_OFFLINE", None),
    ("uvicorn", "Server.capture_signals", ("self",)),
    ("uvicorn", "Server.handle_exit", ("self", "sig", "frame")),
    ("gguf", "GGUFReader.__init__", ("self", "path", "mode")),
    ("gguf", "get_tensor_name_map", ("arch", "n_blocks")),
)


# ---------------------------------------------------------------- transformers.Trainer


@functools.cache
def trainer_base() -> type:
    """transformers.Trainer with its private steps that rtsent changes turned into named hooks.

    The Trainer has no public way to choose the training sampler (rtsent's is seeded per epoch so that a
    mid-epoch resume replays the same batches), to clip gradients another way (inside fused AdamW), to
    skip reloading a best checkpoint that is already in memory, or to act between a checkpoint's RNG
    state and its trainer_state.json (the crash point of the reliability tests).
    """
    from transformers import Trainer

    class TrainerHooks(Trainer):
        def train_sampler(self, dataset: Any) -> Any:
            """The sampler of the training set (default: the Trainer's own)."""
            return super()._get_train_sampler(dataset)

        def clip_gradients(self, model: Any, default: Callable[[Any], Any]) -> Any:
            """Clip the gradients, returning their norm; `default` is the Trainer's clipping."""
            return default(model)

        def distributed_gradients(self, model: Any) -> bool:
            """True when gradients are sharded or meshed (FSDP, DeepSpeed, tensor parallel)."""
            return bool(self.is_fsdp_enabled or self.is_deepspeed_enabled or self._has_mixed_mesh_grads(model))

        def reload_best_model(self) -> bool:
            """Whether load_best_model_at_end has anything to load (default: always)."""
            return True

        def after_rng_saved(self, output_dir: str) -> None:
            """Called when a checkpoint has weights, optimizer and RNG state but not yet trainer_state.json."""

        def prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
            """Inputs moved to the device as the Trainer moves them."""
            return self._prepare_inputs(inputs)

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            return self.train_sampler(train_dataset if train_dataset is not None else self.train_dataset)

        def _clip_grad_norm(self, model: Any) -> Any:
            return self.clip_gradients(model, super()._clip_grad_norm)

        def _load_best_model(self) -> None:
            if self.reload_best_model():
                super()._load_best_model()

        def _save_rng_state(self, output_dir: str) -> None:
            super()._save_rng_state(output_dir)
            self.after_rng_saved(output_dir)

    return TrainerHooks


# ---------------------------------------------------------------- torch


def set_grad_scale(optimizer: Any, scale: Any) -> None:
    """Make the next fused Adam/AdamW step divide every gradient by `scale` (a 0-d tensor) as it reads it.

    torch's fused kernels read `optimizer.grad_scale`, the attribute its AMP GradScaler sets; rtsent uses
    it to fold gradient clipping into the optimizer's one pass (training/speed.py). None switches it off.
    """
    optimizer.grad_scale = scale


def cpu_bf16_flags() -> set[str]:
    """The /proc/cpuinfo names of the CPU's native bf16 features (avx512_bf16, amx_bf16), as torch finds them
    through private helpers of torch.cpu: for systems without /proc/cpuinfo (engines/choice.py)."""
    import torch

    cpu = getattr(torch, "cpu", None)
    checks = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
    return {flag for flag, check in checks.items() if getattr(cpu, check, lambda: False)()}


# ---------------------------------------------------------------- onnxruntime


def onnx_fuser(kind: str, model: Any, heads: int, hidden: int) -> Any:
    """onnxruntime.transformers' fuser for a model type ("gpt2"), without the type's post-processing.

    Its optimizer module maps model types to fuser classes only in MODEL_TYPES; GPT-2's post-processing
    assumes every Gemm has a bias, and rtsent's label projection has none, so the generic one runs.
    """
    from onnxruntime.transformers.optimizer import MODEL_TYPES

    base = MODEL_TYPES[kind][0]

    class Fuser(base):  # type: ignore[misc, valid-type]
        def postprocess(self) -> None:
            super(base, self).postprocess()

    return Fuser(model, heads, hidden)


# ---------------------------------------------------------------- gguf (through transformers' GGUF loader)


@contextlib.contextmanager
def gguf_parsed_once() -> Any:
    """Within the block, each GGUF file's metadata is parsed once and each tensor-name map built once.

    transformers' GGUF loader builds a `gguf.GGUFReader` for the tokenizer, another for the config and a
    third for the weights, each parsing the whole metadata (SmolLM2's 49,152-token vocabulary and its
    merges: 7.5 s each on an AVX2 EPYC), and calls `gguf.get_tensor_name_map(arch, layers)` for every
    submodule of the model (397 times for a 30-layer Llama, 23 ms each). Both are pure functions of their
    arguments, and transformers imports them from `gguf` at call time, so the block swaps in memoized ones
    and puts the originals back after it. Yields the memoized reader (rtsent reads tensor types through it).
    """
    import os

    import gguf

    reader_type, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple[str, str], Any] = {}

    def reader(path: Any, mode: str = "r") -> Any:
        key = (os.path.realpath(os.fspath(path)), mode)
        if key not in readers:
            readers[key] = reader_type(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.cache(name_map)
    try:
        yield reader
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader_type, name_map


@contextlib.contextmanager
def gguf_quiet_progress() -> Any:
    """Within the block, transformers' GGUF loader shows no tqdm bar ("Converting and de-quantizing GGUF
    tensors...") on stderr: it imports tqdm itself, past transformers' progress-bar switch. rtsent prints
    one line for the conversion instead."""
    from transformers import modeling_gguf_pytorch_utils as loader

    bar = getattr(loader, "tqdm", None)
    if bar is None:
        yield
        return
    loader.tqdm = lambda iterable=None, *args, **kwargs: iterable
    try:
        yield
    finally:
        loader.tqdm = bar


# ---------------------------------------------------------------- huggingface_hub


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def set_hub_offline() -> None:
    """Offline for the rest of the process: the environment for libraries not imported yet, and
    huggingface_hub's constant, which an already-imported huggingface_hub reads at call time."""
    import os

    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True


def hub_kernel_options() -> dict[str, bool]:
    """from_pretrained's options about the hub's compute kernels: off while the hub is offline.

    transformers swaps layers for kernels fetched from the hub (`kernelize`) when a model loads and, from
    5.25, again when it changes between train and eval mode, for the device it is on then: a model moved to
    a GPU and put in training mode fetches `kernels-community/activation`, which raises offline. Online
    the hub's kernels are transformers' own default and stay.
    """
    return {"use_kernels": False} if hub_offline() else {}


# ---------------------------------------------------------------- datasets


def dataset_fingerprint(dataset: Any) -> str:
    """datasets' own content fingerprint of a Dataset (the hash its cache files are named by)."""
    return dataset._fingerprint


# ---------------------------------------------------------------- uvicorn


@functools.cache
def uvicorn_server() -> type:
    """uvicorn's Server, except that it does not re-raise the stop signal after its graceful shutdown,
    so that SIGTERM/SIGINT end `rtsent serve` with exit code 0 once in-flight requests are answered.
    uvicorn installs and re-raises signals in its private-by-convention capture_signals()."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server
