"""What this machine offers rtsent, read once: the CPU's feature flags (native bf16, AMX, VNNI) and a CUDA GPU,
and from them what `--precision auto` means for torch here, for training and scoring alike.

The CPU flags come from /proc/cpuinfo and the GPU's presence from the NVIDIA driver, without importing torch
(a cold `rtsent predict` must not pay for it); only whether the GPU computes bf16 natively is asked of CUDA,
and only when torch is about to run on it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from rtsent.errors import UsageError

@dataclass(frozen=True)
class Machine:
    """What the engine choice and the training precision depend on: the CPU's ISA flags and the GPU."""

    flags: frozenset[str] = frozenset()
    gpu: bool = False
    gpu_bf16: bool | None = False
    """The GPU computes bf16 natively (Ampere and newer); None: not read yet (Machine.here() leaves it to CUDA,
    asked when torch is about to run on the GPU)."""

    @classmethod
    @lru_cache(maxsize=1)
    def here(cls) -> "Machine":
        gpu = _has_cuda_gpu()
        return cls(frozenset(_cpu_flags()), gpu, None if gpu else False)

    @property
    def amx(self) -> bool:
        return "amx_bf16" in self.flags

    @property
    def native_bf16(self) -> bool:
        """AMX or AVX-512 BF16: bf16 matmuls in hardware, several times faster than fp32."""
        return self.amx or "avx512_bf16" in self.flags

    @property
    def vnni(self) -> bool:
        return bool({"avx512_vnni", "avx_vnni"} & self.flags)

    def torch_precision(self, precision: str = "auto") -> str:
        """The precision torch runs in here: `auto` is bf16 where it is native (a GPU of the Ampere generation
        or newer, a CPU with AMX or AVX-512 BF16), else fp16 on a GPU (V100/T4 emulate bf16 slowly; fp16 with
        the Trainer's loss scaling is their fast choice) and fp32 on a CPU; an explicit one is kept.
        Raises UsageError for fp16 without a GPU."""
        if precision == "fp16" and not self.gpu:
            raise UsageError("--precision fp16 needs a GPU; use bf16 (or auto) on a CPU")
        if precision != "auto":
            return precision
        if self.gpu:
            return "bf16" if self.gpu_native_bf16() else "fp16"
        return "bf16" if self.native_bf16 else "fp32"

    def gpu_native_bf16(self) -> bool:
        """Whether the GPU computes bf16 natively (asks CUDA, importing torch, when not known yet)."""
        if self.gpu_bf16 is not None:
            return self.gpu_bf16
        import torch

        return bool(torch.cuda.is_bf16_supported(including_emulation=False))

    def bf16_caution(self, precision: str) -> str:
        """A clause for a line where bf16 was asked for on a CPU that only emulates it: on an AVX2 CPU (AMD
        Zen 3) a bf16 matrix product ran 79x slower than fp32 (docs/benchmarks.md)."""
        if precision == "bf16" and not self.gpu and not self.native_bf16:
            return f"; bf16 is emulated on {self.describe()}, many times slower than fp32 (auto would take fp32)"
        return ""

    def describe(self) -> str:
        if self.gpu:
            return "a CUDA GPU"
        if self.amx:
            return "a CPU with AMX"
        if self.native_bf16:
            return "a CPU with AVX-512 BF16"
        extra = " and VNNI" if self.vnni else ""
        if "avx512f" in self.flags:
            return f"a CPU with AVX-512{extra}, no native bf16"
        if "avx2" in self.flags:
            return f"a CPU with AVX2{extra}, no native bf16"
        return "a CPU without native bf16"


def resolve_precision(precision: str, device: Any) -> str:
    """Training's precision on `device` (a torch.device): fp32, bf16 or fp16 for `auto` and an explicit
    choice, by the rule scoring uses (Machine.torch_precision); UsageError for fp16 on a CPU."""
    gpu = device.type == "cuda"
    machine = Machine.here()
    if machine.gpu != gpu:  # the device training runs on decides (CUDA_VISIBLE_DEVICES, --no-cuda)
        machine = dataclasses.replace(machine, gpu=gpu, gpu_bf16=None if gpu else False)
    return machine.torch_precision(precision)


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 matmul (AVX-512 BF16 or AMX), where bf16 is several times faster."""
    return Machine.here().native_bf16


def _cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux, no torch import); elsewhere the bf16 flags from
    torch's own CPUID check (compat.cpu_bf16_flags), which costs the torch import there."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    from rtsent import compat

    return compat.cpu_bf16_flags()


def _has_cuda_gpu() -> bool:
    """A CUDA GPU this process may use, without importing torch (the NVIDIA driver's /proc entry)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    if os.path.exists("/proc/driver/nvidia/version"):
        return True
    import sys

    torch = sys.modules.get("torch")  # already paid for: ask it (ROCm, other platforms)
    return bool(torch is not None and torch.cuda.is_available())
