"""torchrun with 2 CPU processes (gloo): one run folder, evaluations per epoch of the global batch, a
signal that reaches one rank stops both at the same step, and the run resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rtsent import prepare
from rtsent.config import PrepareConfig
from rtsent.artifacts.workspace import Workspace
from rtsent.artifacts.model import META_FILE


def _torchrun(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "rtsent", "train", *args]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)


@pytest.fixture
def prepared_ws(tmp_path, tiny_model_dir, data_dir):
    ws = Workspace.resolve(tmp_path / "ws")
    prepare.run(PrepareConfig(data=str(data_dir), model=str(tiny_model_dir), max_len=32), ws)
    return ws


def _train_args(ws: Workspace, model, *extra: str) -> list[str]:
    # 256 training rows, 16 per process, 2 processes: 8 steps per epoch.
    return ["--model", str(model), "--epochs", "2", "--batch-size", "16", "--precision", "fp32", "--lr", "1e-3",
            "--workdir", str(ws.root), *extra]


def _evals(ws: Workspace, run: str) -> list[int]:
    lines = ws.run(run).metrics.read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if "eval_accuracy" in json.loads(line)]


def test_two_ranks_make_one_run_and_evaluate_once_per_epoch(prepared_ws, tiny_model_dir):
    done = _torchrun(_train_args(prepared_ws, tiny_model_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = [p.name for p in prepared_ws.runs_dir.iterdir()]
    assert _evals(prepared_ws, run) == [8, 16]
    assert (prepared_ws.run(run).model / META_FILE).is_file()
    assert done.stderr.count(f"training {run} on prepared dataset") == 1  # rank 0 alone reports
    assert "x 2 processes" in done.stderr


def test_a_signal_to_one_rank_stops_both_at_the_same_step_and_the_run_resumes(prepared_ws, tiny_model_dir):
    args = _train_args(prepared_ws, tiny_model_dir, "--run-name", "s", "--eval-every", "4")
    stopped = _torchrun(args, {"RTSENT_INTERRUPT_AT_STEP": "3", "RTSENT_INTERRUPT_RANK": "1",
                               "RTSENT_INTERRUPT_SIGNAL": "TERM"})
    assert stopped.returncode != 0  # both ranks exit 130 (interrupted): torchrun reports a failure
    assert "training stopped at step 3" in stopped.stderr, stopped.stderr[-3000:]
    checkpoints = sorted(p.name for p in prepared_ws.run("s").checkpoints.iterdir())
    assert checkpoints == ["checkpoint-3"]
    assert json.loads((prepared_ws.run("s").checkpoints / "checkpoint-3" / "trainer_state.json").read_text())[
        "global_step"] == 3

    resumed = _torchrun(_train_args(prepared_ws, tiny_model_dir, "--run-name", "s", "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _evals(prepared_ws, "s")[-1] == 16
    assert (prepared_ws.run("s").model / META_FILE).is_file()


def test_two_ranks_train_words_of_several_tokens(tmp_path, tiny_model_dir, data_dir):
    """The trie tokens and their 4D mask go through DDP's wrapper like the prompt alone does."""
    from rtsent.config import PromptConfig

    ws = Workspace.resolve(tmp_path / "ws")
    words = PromptConfig(label_words=(" very negative| awful", " very positive"), label_names=("negative", "positive"))
    prepare.run(PrepareConfig(data=str(data_dir), model=str(tiny_model_dir), max_len=32, prompt=words), ws)
    done = _torchrun(_train_args(ws, tiny_model_dir, "--epochs", "1", "--no-onnx", "--run-name", "words"))
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads((ws.run("words").model / META_FILE).read_text())
    lengths = [len(w) for c in meta["label_words"] for w in c]
    assert len(lengths) == 3 and max(lengths) > 1
    assert _evals(ws, "words") == [8]
