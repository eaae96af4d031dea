"""Which engine and precision score a job fastest on the machine at hand, and why, in one line.

Two jobs: `cold` (a new process scoring a few reviews: `rtsent predict "text"`), where loading is the
cost, and `bulk` (evaluate, predict --file, serve), where the steady rate is. The choice follows what the
machine offers, read from the CPU's flags without importing torch on Linux (a cold predict must not pay
for it); training's `--precision auto` asks the same `Machine`:

    GPU                                  bulk: torch (bf16, fp16 on GPUs without native bf16); cold as
                                         below (a cold torch start with CUDA took 13-15 s, the graph 1.0-1.3 s)
    int8 graph validated at export       onnx int8 (cold and bulk: the fastest in every measurement)
    cold                                 onnx fp32 graph (no torch import: 3.5x faster than torch)
    bulk, native bf16 (AMX, AVX-512 BF16) torch bf16 (faster than the fp32 graph)
    bulk, otherwise                      onnx fp32 graph (fused; faster than torch fp32 on AMX, as fast on AVX2)

docs/benchmarks.md ("Fast by default") has the measurements. An explicit --engine or --precision is
always honoured exactly; auto fills in only what was left open.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Mapping

JOBS = ("cold", "bulk")


@dataclass(frozen=True)
class Machine:
    """What the scoring choice depends on: the CPU's ISA flags and whether a CUDA GPU is present."""

    flags: frozenset[str] = frozenset()
    gpu: bool = False

    @classmethod
    @lru_cache(maxsize=1)
    def here(cls) -> "Machine":
        return cls(frozenset(_cpu_flags()), _has_cuda_gpu())

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


@dataclass(frozen=True)
class Choice:
    engine: str
    """torch or onnx."""
    precision: str
    """fp32, bf16, fp16, int8; auto only for torch on a GPU (bf16 or fp16, decided by the engine)."""
    reason: str

    def line(self) -> str:
        return f"scoring with the {self.engine} engine, {self.precision}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose(job: str, graphs: Mapping[str, Any], int8_validated: bool, engine: str = "auto",
           precision: str = "auto", machine: Machine | None = None) -> Choice:
    """The engine and precision for `job` given the graphs a folder holds ({"fp32": ..., "int8": ...}),
    whether its int8 graph passed the export's check, and what the user asked for."""
    m = machine or Machine.here()
    if engine != "auto" and precision != "auto":
        return Choice(engine, precision, "as asked" + (m.bf16_caution(precision) if engine == "torch" else ""))
    if engine == "torch" or precision in ("bf16", "fp16"):
        why = "as asked" + m.bf16_caution(precision) if precision != "auto" else _torch_why(m)
        return Choice("torch", _torch_precision(precision, m), why)
    if precision == "int8":
        return Choice("onnx", "int8", "as asked")
    if engine == "onnx":  # precision auto or fp32: the validated int8 graph when auto allows it
        if precision == "auto" and "int8" in graphs and int8_validated:
            return Choice("onnx", "int8", "as asked (--engine onnx); the int8 graph passed its validation check")
        return Choice("onnx", "fp32", "as asked" + _int8_unvalidated(graphs, int8_validated, precision))
    return _auto(job, graphs, int8_validated, precision, m)


def _auto(job: str, graphs: Mapping[str, Any], int8_validated: bool, precision: str, m: Machine) -> Choice:
    """Engine auto, precision auto or fp32."""
    if m.gpu and job == "bulk":
        return Choice("torch", _torch_precision(precision, m), f"{m.describe()}: the torch engine runs on it")
    if precision == "auto" and "int8" in graphs and int8_validated:
        where = ("a single start on a machine with a CUDA GPU: the int8 graph, validated at export, runs on the "
                 "CPU, loading without torch and CUDA" if m.gpu else
                 f"the int8 graph, validated at export, is the fastest on {m.describe()}")
        return Choice("onnx", "int8", f"{where} (pass --precision fp32 for the fp32 graph)")
    unvalidated = _int8_unvalidated(graphs, int8_validated, precision)
    if "fp32" not in graphs:
        return Choice("torch", _torch_precision(precision, m),
                      "the folder has no ONNX graph (`rtsent export` writes one)" + unvalidated)
    if job == "cold":
        cuda = " and CUDA" if m.gpu else ""
        return Choice("onnx", "fp32", f"a single start: the fp32 graph loads without torch{cuda}" + unvalidated)
    if m.native_bf16 and precision == "auto":  # (a GPU's bulk job was answered above)
        return Choice("torch", "bf16", f"bulk scoring on {m.describe()}: torch bf16 outruns the fp32 graph" + unvalidated)
    return Choice("onnx", "fp32", f"bulk scoring on {m.describe()}: the fused fp32 graph outruns torch fp32" + unvalidated)


def _torch_precision(precision: str, m: Machine) -> str:
    if precision != "auto":
        return precision
    if m.gpu:
        return "auto"  # bf16 or fp16 by the GPU's generation: the torch engine asks CUDA
    return "bf16" if m.native_bf16 else "fp32"


def _torch_why(m: Machine) -> str:
    if m.gpu:
        return f"as asked, on {m.describe()}"
    return f"as asked; {'bf16' if m.native_bf16 else 'fp32'} on {m.describe()}"


def _int8_unvalidated(graphs: Mapping[str, Any], int8_validated: bool, precision: str) -> str:
    if "int8" in graphs and not int8_validated and precision == "auto":
        return "; the int8 graph was not validated at export, so only --precision int8 uses it"
    return ""


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
