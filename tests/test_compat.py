"""rtsent.compat: every private hook of a library that rtsent relies on, checked against the installed versions.

When an upgrade renames or reshapes one, the test that fails names it here, instead of training or serving
silently taking another path.
"""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch

from rtsent import compat


@pytest.mark.parametrize("module, attribute, parameters", compat.PRIVATE_HOOKS,
                         ids=[f"{m}.{a}" for m, a, _ in compat.PRIVATE_HOOKS])
def test_each_private_hook_still_exists_with_the_arguments_rtsent_passes(module, attribute, parameters):
    target = importlib.import_module(module)
    for part in attribute.split("."):
        assert hasattr(target, part), f"{module}.{attribute} is gone: update rtsent/compat.py"
        target = getattr(target, part)
    if parameters is not None:
        assert callable(target)
        names = tuple(inspect.signature(inspect.unwrap(target)).parameters)
        assert names[: len(parameters)] == parameters, f"{module}.{attribute}{names}: update rtsent/compat.py"


def test_fused_adamw_divides_its_gradients_by_grad_scale():
    def step(scale):
        p = torch.nn.Parameter(torch.ones(3))
        p.grad = torch.tensor([4.0, -2.0, 1.0])
        opt = torch.optim.SGD([p], lr=0.5) if scale is None else torch.optim.Adam([p], lr=0.5, fused=True)
        if scale is not None:
            compat.set_grad_scale(opt, torch.tensor(scale))
        opt.step()
        return opt.state[p]["exp_avg"] if scale is not None else None

    # Adam's first moment after one step is (1 - beta1) * gradient: with grad_scale 2 it saw gradient / 2.
    assert torch.allclose(step(2.0), 0.1 * torch.tensor([2.0, -1.0, 0.5]))


def test_cpu_bf16_probe_names_cpuinfo_flags():
    assert compat.cpu_bf16_flags() <= {"avx512_bf16", "amx_bf16"}


def test_dataset_fingerprint_follows_the_content():
    from datasets import Dataset

    a, b = Dataset.from_dict({"x": [1, 2]}), Dataset.from_dict({"x": [1, 3]})
    assert compat.dataset_fingerprint(a) == compat.dataset_fingerprint(Dataset.from_dict({"x": [1, 2]}))
    assert compat.dataset_fingerprint(a) != compat.dataset_fingerprint(b)


def test_the_trainer_calls_rtsents_hooks(tmp_path):
    """The hooks of compat.trainer_base are reached from the Trainer's own private steps."""
    from transformers import TrainingArguments

    called = []

    class Probe(compat.trainer_base()):
        def train_sampler(self, dataset):
            called.append("sampler")
            return super().train_sampler(dataset)

        def clip_gradients(self, model, default):
            called.append("clip")
            return default(model)

        def after_rng_saved(self, output_dir):
            called.append("rng")

    model = torch.nn.Sequential(torch.nn.Linear(2, 1))

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x, labels):
            return {"loss": ((self.net(x).squeeze(-1) - labels) ** 2).mean()}

    data = [{"x": torch.tensor([float(i), 1.0]), "labels": torch.tensor(float(i))} for i in range(8)]
    args = TrainingArguments(str(tmp_path), per_device_train_batch_size=4, max_steps=2, save_strategy="steps",
                             save_steps=2, report_to="none", use_cpu=True, disable_tqdm=True, max_grad_norm=1.0)
    Probe(Wrapped(), args, train_dataset=data).train()
    assert {"sampler", "clip", "rng"} <= set(called)


def test_the_onnx_fuser_skips_only_gpt2s_own_post_processing():
    # test_engines checks the fuser on a real export (SkipLayerNormalization fused); here, which
    # post-processing runs: the generic one of GPT-2's base class, not GPT-2's (it needs a Gemm bias).
    from onnx import TensorProto, helper
    from onnxruntime.transformers.optimizer import MODEL_TYPES

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    fuser = compat.onnx_fuser("gpt2", helper.make_model(graph), 1, 4)
    gpt2 = MODEL_TYPES["gpt2"][0]
    assert isinstance(fuser, gpt2) and type(fuser).postprocess is not gpt2.postprocess


def test_hub_offline_switch():
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    try:
        compat.set_hub_offline()
        assert compat.hub_offline() and constants.HF_HUB_OFFLINE is True
    finally:
        constants.HF_HUB_OFFLINE = before


def test_uvicorn_server_keeps_the_stop_signal():
    import signal

    import uvicorn

    server = compat.uvicorn_server()(uvicorn.Config(lambda scope, receive, send: None))
    before = signal.getsignal(signal.SIGTERM)
    with server.capture_signals():
        assert signal.getsignal(signal.SIGTERM) == server.handle_exit
    assert signal.getsignal(signal.SIGTERM) == before  # restored, not re-raised


@pytest.mark.parametrize("enabled", [True, False])
def test_the_checkpointing_option_reaches_the_trainer_under_its_name_in_this_release(enabled):
    """--gradient-checkpointing turns the Trainer's switch on (`activation_checkpointing`, a name transformers
    has from 5.23; 5.17 refused it and every `train` failed, seen on the GPU machine's image)."""
    from rtsent.artifacts.workspace import Workspace
    from rtsent.config import TrainConfig
    from rtsent.train import _training_arguments

    args, _ = _training_arguments(TrainConfig(gradient_checkpointing=enabled).for_data(False),
                                  Workspace.resolve("unused").run("x"), torch.device("cpu"), "fp32", 64)
    assert bool(args.activation_checkpointing) is enabled


def test_an_offline_load_never_asks_the_hub_for_kernels(tiny_model_dir, monkeypatch):
    """transformers kernelizes a model as it loads and (5.25) as it enters training mode; on a GPU that
    fetches kernels from the hub, which fails offline. Offline, rtsent's load turns them off, so neither
    the load nor train() reaches kernelize."""
    from huggingface_hub import constants

    modeling_utils = importlib.import_module("transformers.modeling_utils")
    if not hasattr(modeling_utils, "kernelize"):
        pytest.skip("this transformers has no hub kernels")

    def kernelize(*args, **kwargs):
        raise AssertionError("kernelize was called")

    monkeypatch.setattr(modeling_utils, "kernelize", kernelize)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    from rtsent.core.modeling import load_model

    model = load_model(str(tiny_model_dir))
    model.train()
    model.eval()
    assert not model.use_kernels


def test_gguf_metadata_is_parsed_once_per_file_inside_the_block_and_fresh_after_it(tmp_path):
    gguf = pytest.importorskip("gguf")
    import numpy as np

    from rtsent.sources.gguf import _tensor_types

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_tensor("token_embd.weight", np.ones((4, 8), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(8, dtype=np.float16))
    writer.add_tensor("blk.0.attn_q.weight", np.ones((8, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    original_reader, original_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with compat.gguf_parsed_once() as reader:
        first = gguf.GGUFReader(path)
        assert gguf.GGUFReader(str(path)) is first and reader(path) is first
        assert _tensor_types(first) == {"F32": 2, "F16": 1}
        arch = gguf.MODEL_ARCH.LLAMA
        assert gguf.get_tensor_name_map(arch, 2) is gguf.get_tensor_name_map(arch, 2)
        assert gguf.get_tensor_name_map(arch, 2).get_name("model.layers.1.self_attn.q_proj") == "blk.1.attn_q"
    assert gguf.GGUFReader is original_reader and gguf.get_tensor_name_map is original_map
    assert gguf.GGUFReader(path) is not gguf.GGUFReader(path)
