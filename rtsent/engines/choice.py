"""Which engine and precision score a job fastest on the machine at hand, and why, in one line.

Two jobs: `cold` (a new process scoring a few reviews: `rtsent predict "text"`), where loading is the
cost, and `bulk` (evaluate, predict --file, serve), where the steady rate is. The choice follows what the
machine offers as `rtsent.machine.Machine` reads it (the CPU's flags without importing torch on Linux: a
cold predict must not pay for it); training's `--precision auto` follows the same rule (Machine.torch_precision):

    GPU                                  bulk: torch (bf16, fp16 on GPUs without native bf16); cold as
                                         below (a cold torch start with CUDA took 13-15 s, the graph 1.0-1.3 s)
    int8 graph validated at export       onnx int8 (cold and bulk: the fastest in every measurement)
    cold                                 onnx fp32 graph (no torch import: 3.5x faster than torch)
    bulk, native bf16 (AMX, AVX-512 BF16) torch bf16 (faster than the fp32 graph)
    bulk, otherwise                      onnx fp32 graph (fused; faster than torch fp32 on AMX, as fast on AVX2)

docs/benchmarks.md ("Fast by default") has the measurements. An explicit --engine or --precision is
always honoured exactly; auto fills in only what was left open. The Choice is concrete (never "auto")
and check() is the one place that refuses an engine and precision that cannot run here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from rtsent.errors import UsageError
from rtsent.machine import Machine

JOBS = ("cold", "bulk")


@dataclass(frozen=True)
class Choice:
    engine: str
    """torch or onnx."""
    precision: str
    """fp32, bf16, fp16 (torch) or int8 (onnx): never auto, the engine runs exactly this."""
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
        resolved = _torch_precision(precision, m)
        why = "as asked" + m.bf16_caution(precision) if precision != "auto" else _torch_why(m, resolved)
        return Choice("torch", resolved, why)
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
    """An explicit precision as asked (check() refuses what cannot run), auto as the machine resolves it."""
    return precision if precision != "auto" else m.torch_precision()


def _torch_why(m: Machine, precision: str) -> str:
    if m.gpu:
        return f"as asked, on {m.describe()}"
    return f"as asked; {precision} on {m.describe()}"


def _int8_unvalidated(graphs: Mapping[str, Any], int8_validated: bool, precision: str) -> str:
    if "int8" in graphs and not int8_validated and precision == "auto":
        return "; the int8 graph was not validated at export, so only --precision int8 uses it"
    return ""


ENGINE_PRECISIONS = {"torch": ("fp32", "bf16", "fp16"), "onnx": ("fp32", "int8")}


def check(choice: Choice, machine: Machine | None = None) -> Choice:
    """The choice when its engine can run its precision on this machine, else UsageError in one line: the one
    place a precision is checked against an engine (onnx graphs are fp32 or int8, torch has no int8) and the
    machine (fp16 needs a GPU)."""
    if choice.precision not in ENGINE_PRECISIONS[choice.engine]:
        if choice.engine == "onnx":
            raise UsageError(f"the onnx engine runs fp32 or int8 graphs, not {choice.precision}; "
                             f"use --engine torch for {choice.precision}")
        raise UsageError("--precision int8 needs the onnx engine (`rtsent export --int8`, then --engine onnx)")
    if choice.engine == "torch":
        (machine or Machine.here()).torch_precision(choice.precision)
    return choice
