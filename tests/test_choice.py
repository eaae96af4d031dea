"""engines.choice: the engine and precision each job gets on each kind of machine, and what was asked for."""

from __future__ import annotations

import pytest
import torch

from rtsent.engines.choice import choose
from rtsent.machine import Machine

AMX = Machine(frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni"}))
ZEN5 = Machine(frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}))
ZEN3 = Machine(frozenset({"avx2", "fma"}))
GPU = Machine(frozenset({"avx2"}), gpu=True)
GPU_BF16 = Machine(frozenset({"avx2"}), gpu=True, gpu_bf16=True)  # Ampere and newer; GPU: a V100/T4
BOTH = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
FP32 = {"fp32": "model.onnx"}


@pytest.mark.parametrize("machine, job, graphs, validated, expected", [
    # a validated int8 graph: every CPU job on every CPU
    (AMX, "cold", BOTH, True, ("onnx", "int8")),
    (ZEN3, "bulk", BOTH, True, ("onnx", "int8")),
    (ZEN5, "bulk", BOTH, True, ("onnx", "int8")),
    # an unvalidated one is never picked by auto
    (AMX, "cold", BOTH, False, ("onnx", "fp32")),
    (ZEN3, "bulk", BOTH, False, ("onnx", "fp32")),
    # cold start without int8: the fp32 graph (no torch import) whatever the CPU
    (AMX, "cold", FP32, False, ("onnx", "fp32")),
    (ZEN3, "cold", FP32, False, ("onnx", "fp32")),
    # bulk: torch bf16 where the CPU has native bf16, else the fp32 graph
    (AMX, "bulk", FP32, False, ("torch", "bf16")),
    (ZEN5, "bulk", FP32, False, ("torch", "bf16")),
    (ZEN3, "bulk", FP32, False, ("onnx", "fp32")),
    # no graph: torch at the CPU's precision
    (ZEN5, "cold", {}, False, ("torch", "bf16")),
    (ZEN3, "bulk", {}, False, ("torch", "fp32")),
    # a GPU: torch for bulk, bf16 where the GPU has it natively, else fp16 (decided here, once, never "auto");
    # the int8 graph still for one cold review
    (GPU, "bulk", BOTH, True, ("torch", "fp16")),
    (GPU_BF16, "bulk", BOTH, True, ("torch", "bf16")),
    (GPU, "cold", BOTH, True, ("onnx", "int8")),
])
def test_auto_picks_by_job_and_machine(machine, job, graphs, validated, expected):
    choice = choose(job, graphs, validated, machine=machine)
    assert (choice.engine, choice.precision) == expected
    assert choice.line().startswith(f"scoring with the {expected[0]} engine, {expected[1]}: ")
    assert len(choice.line().splitlines()) == 1


@pytest.mark.parametrize("engine, precision, graphs, validated, expected", [
    ("torch", "fp32", BOTH, True, ("torch", "fp32")),
    ("onnx", "fp32", BOTH, True, ("onnx", "fp32")),
    ("torch", "auto", BOTH, True, ("torch", "bf16")),  # the engine's best precision on this CPU
    ("onnx", "auto", BOTH, True, ("onnx", "int8")),
    ("onnx", "auto", BOTH, False, ("onnx", "fp32")),
    ("auto", "int8", BOTH, False, ("onnx", "int8")),  # asked for: used even unvalidated
    ("auto", "fp32", BOTH, True, ("onnx", "fp32")),  # fp32 on a CPU: the graph outruns torch fp32
    ("auto", "bf16", BOTH, True, ("torch", "bf16")),
    ("auto", "fp16", FP32, False, ("torch", "fp16")),
    ("onnx", "bf16", FP32, False, ("onnx", "bf16")),  # exactly as asked: open_classifier refuses it in one line
])
def test_what_was_asked_for_is_what_runs(engine, precision, graphs, validated, expected):
    for job in ("cold", "bulk"):
        choice = choose(job, graphs, validated, engine, precision, machine=AMX)
        assert (choice.engine, choice.precision) == expected, job


@pytest.mark.parametrize("engine", ["auto", "torch"])
def test_bf16_asked_for_on_a_cpu_that_emulates_it_runs_with_a_caution(engine):
    slow = choose("bulk", FP32, False, engine, "bf16", machine=ZEN3)
    assert (slow.engine, slow.precision) == ("torch", "bf16")  # still exactly what was asked for
    assert "emulated on a CPU with AVX2" in slow.line() and "auto would take fp32" in slow.line()
    for native in (AMX, ZEN5, GPU):
        assert "emulated" not in choose("bulk", FP32, False, engine, "bf16", machine=native).line()
    assert "emulated" not in choose("bulk", FP32, False, engine, "fp32", machine=ZEN3).line()


def test_a_gpu_machines_cold_start_says_the_graph_runs_on_its_cpu():
    for graphs, validated, precision in ((BOTH, True, "int8"), (FP32, False, "fp32")):
        choice = choose("cold", graphs, validated, machine=GPU)
        assert (choice.engine, choice.precision) == ("onnx", precision)
        assert "without torch and CUDA" in choice.reason and "fastest on a CUDA GPU" not in choice.reason


def test_machine_names_what_it_offers():
    assert AMX.native_bf16 and AMX.amx and AMX.vnni and AMX.describe() == "a CPU with AMX"
    assert ZEN5.native_bf16 and not ZEN5.amx and ZEN5.describe() == "a CPU with AVX-512 BF16"
    assert not ZEN3.native_bf16 and not ZEN3.vnni and ZEN3.describe() == "a CPU with AVX2, no native bf16"
    assert GPU.describe() == "a CUDA GPU"
    assert not Machine().native_bf16 and Machine().describe() == "a CPU without native bf16"


def test_this_machines_flags_match_torchs_own_check():
    """/proc/cpuinfo's bf16 features agree with torch's own CPUID check of this CPU (the fallback elsewhere),
    and training's --precision auto reads the machine the same way as scoring."""
    from rtsent import compat
    from rtsent.machine import cpu_has_fast_bf16

    assert Machine.here().flags & {"avx512_bf16", "amx_bf16"} == compat.cpu_bf16_flags()
    assert cpu_has_fast_bf16() is Machine.here().native_bf16


def test_without_proc_cpuinfo_the_flags_come_from_torch(monkeypatch):
    import builtins

    from rtsent import compat
    from rtsent import machine

    real_open = builtins.open

    def no_cpuinfo(path, *a, **k):
        if str(path) == "/proc/cpuinfo":
            raise FileNotFoundError(path)
        return real_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", no_cpuinfo)
    assert machine._cpu_flags() == compat.cpu_bf16_flags()


@pytest.mark.parametrize("engine, precision, machine, refusal", [
    ("onnx", "bf16", AMX, "the onnx engine runs fp32 or int8 graphs, not bf16"),
    ("onnx", "fp16", GPU, "the onnx engine runs fp32 or int8 graphs, not fp16"),
    ("torch", "int8", AMX, "--precision int8 needs the onnx engine"),
    ("torch", "fp16", AMX, "--precision fp16 needs a GPU"),
    ("auto", "fp16", ZEN3, "--precision fp16 needs a GPU"),
])
def test_check_refuses_what_the_engine_or_the_machine_cannot_run(engine, precision, machine, refusal):
    from rtsent.engines.choice import check
    from rtsent.errors import UsageError

    with pytest.raises(UsageError, match=refusal):
        check(choose("bulk", FP32, False, engine, precision, machine=machine), machine)


def test_check_passes_every_choice_auto_makes():
    from rtsent.engines.choice import check

    for machine in (AMX, ZEN5, ZEN3, GPU, GPU_BF16):
        for job in ("cold", "bulk"):
            for graphs, validated in ((BOTH, True), (BOTH, False), (FP32, False), ({}, False)):
                choice = choose(job, graphs, validated, machine=machine)
                assert check(choice, machine) is choice and choice.precision != "auto"
    assert check(choose("bulk", FP32, False, "torch", "fp16", machine=GPU), GPU).precision == "fp16"


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp16")])
def test_auto_precision_on_gpus_picks_native_bf16_or_fp16(monkeypatch, native, expected):
    """Issue #7, workflows off the happy path (was test_workflows.py, item 9):
    precision auto on GPUs: native bf16 only."""
    from rtsent.machine import resolve_precision

    # A V100/T4 reports bf16 support through emulation only; an A100 natively.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    assert resolve_precision("auto", torch.device("cuda")) == expected
