"""Nothing lost: exact resume after Ctrl-C/SIGTERM, atomic artifacts under kill -9, locks, a full disk, safety.

Crash tests run rtsent in a subprocess with RTSENT_CRASH_AT=<point> (rtsent/faults.py), which SIGKILLs
the process right there: the same as `kill -9` at the worst moment.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rtsent.artifacts import cache, files
from rtsent import prepare, train
from rtsent.cli import app
from rtsent.config import PrepareConfig, TrainConfig
from rtsent.errors import ArtifactError, BusyError, Interrupted
from rtsent.artifacts.prepared import MANIFEST, load_prepared
from rtsent.artifacts.workspace import Workspace
from rtsent.artifacts.model import META_FILE

runner = CliRunner()


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    from conftest import write_splits

    return write_splits(tmp_path_factory.mktemp("small"), sizes=(96, 32, 16))


def _prepared(ws: Workspace, model: Path, data: Path) -> Path:
    return prepare.run(PrepareConfig(data=str(data), model=str(model), max_len=32), ws).path


def _cfg(model: Path, **kw) -> TrainConfig:
    base = dict(model=str(model), lr=1e-2, batch_size=16, max_steps=16, eval_every=4, precision="fp32",
                warmup=0.0, save_limit=2)
    return TrainConfig(**{**base, **kw})


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _same_weights(a: Path, b: Path) -> None:
    import torch

    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=1e-6, msg=key)


def _metrics(path: Path) -> dict:
    """(step, key) -> value of every training loss and evaluation result logged."""
    out = {}
    for line in path.read_text().splitlines():
        event = json.loads(line)
        for key in ("loss", "grad_norm", "learning_rate", "eval_loss", "eval_accuracy"):
            if key in event:
                out[(event["step"], key)] = event[key]
    return out


def _rtsent(args: list[str], env: dict[str, str] | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rtsent", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def _error_lines(output: str) -> list[str]:
    assert "Traceback" not in output, output
    return [line for line in output.splitlines() if line.startswith(("error:", "internal error:"))]


def _tmp_entries(ws: Workspace) -> list[str]:
    return sorted(p.name for p in ws.tmp_dir.iterdir()) if ws.tmp_dir.is_dir() else []


# --- interruption and exact resume ------------------------------------------------------------------


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir, small_data):
    ws = Workspace.resolve(tmp_path_factory.mktemp("resume-ws"))
    _prepared(ws, tiny_model_dir, small_data)
    return ws, train.run(_cfg(tiny_model_dir, run_name="a"), ws)


# 96 examples / 16 = 6 steps per epoch: step 3 comes before any checkpoint, step 10 is mid-way through epoch 2.
@pytest.mark.parametrize("stop_at", [3, 10])
def test_interrupted_then_resumed_run_equals_uninterrupted_run(uninterrupted, tiny_model_dir, monkeypatch, stop_at):
    ws, a = uninterrupted
    name = f"b{stop_at}"
    monkeypatch.setenv("RTSENT_INTERRUPT_AT_STEP", str(stop_at))
    with pytest.raises(Interrupted, match=f"stopped at step {stop_at}.*--resume --run-name {name}"):
        train.run(_cfg(tiny_model_dir, run_name=name), ws)
    monkeypatch.delenv("RTSENT_INTERRUPT_AT_STEP")
    stopped = ws.run(name).checkpoints / f"checkpoint-{stop_at}"
    assert json.loads((stopped / "trainer_state.json").read_text())["global_step"] == stop_at
    assert not ws.run(name).model.exists()

    b = train.run(TrainConfig(resume=True, run_name=name), ws)

    assert (b.steps, b.best_step, b.best_accuracy) == (a.steps, a.best_step, a.best_accuracy)
    _same_weights(a.model_dir, b.model_dir)  # the exported best model
    _same_weights(a.run.checkpoints / "checkpoint-16", b.run.checkpoints / "checkpoint-16")  # the final weights
    ma, mb = _metrics(a.run.metrics), _metrics(b.run.metrics)
    assert ma.keys() == mb.keys()
    for key in ma:  # data order included: every step's loss and every evaluation match
        assert mb[key] == pytest.approx(ma[key], rel=1e-6, abs=1e-7), key


def test_sigterm_stops_with_a_checkpoint_and_one_line_resume_hint(tmp_path, tiny_model_dir, small_data):
    ws = Workspace.resolve(tmp_path / "ws")
    prepared = _prepared(ws, tiny_model_dir, small_data)
    args = ["train", "--model", str(tiny_model_dir), "--prepared", str(prepared), "--max-steps", "8",
            "--eval-every", "4", "--batch-size", "16", "--precision", "fp32", "--run-name", "r",
            "--workdir", str(ws.root)]
    stopped = _rtsent(args, {"RTSENT_INTERRUPT_AT_STEP": "3", "RTSENT_INTERRUPT_SIGNAL": "TERM"})
    assert stopped.returncode == 130, stopped.stderr
    (line,) = _error_lines(stopped.stderr)
    assert "training stopped at step 3" in line and "`rtsent train --resume --run-name r`" in line
    assert (ws.run("r").checkpoints / "checkpoint-3" / "trainer_state.json").is_file()

    resumed = runner.invoke(app, ["train", "--resume", "--run-name", "r", "--workdir", str(ws.root)])
    assert resumed.exit_code == 0, resumed.output
    assert "8 steps" in resumed.output and (ws.run("r").model / META_FILE).is_file()


# --- kill -9 at the worst moments -------------------------------------------------------------------


def test_kill_during_prepare_leaves_nothing_that_looks_complete(tmp_path, tiny_model_dir, small_data):
    ws = Workspace.resolve(tmp_path / "ws")
    args = ["prepare", "--data", str(small_data), "--model", str(tiny_model_dir), "--max-len", "32",
            "--workdir", str(ws.root)]
    killed = _rtsent(args, {"RTSENT_CRASH_AT": "prepare:before-manifest"})
    assert killed.returncode == -signal.SIGKILL
    assert not list(ws.prepared_dir.iterdir())  # the tokenized data was only ever in .tmp
    assert len(_tmp_entries(ws)) == 1

    later = runner.invoke(app, ["train", "--model", str(tiny_model_dir), "--workdir", str(ws.root)])
    assert later.exit_code == 1 and "run `rtsent prepare` first" in later.output

    redo = runner.invoke(app, args)
    assert redo.exit_code == 0, redo.output
    assert _tmp_entries(ws) == []  # the dead process's staging folder was cleaned up
    (folder,) = ws.prepared_dir.iterdir()
    load_prepared(folder)


def test_kill_between_publish_renames_is_repaired_by_the_next_command(tmp_path, tiny_model_dir, small_data):
    ws = Workspace.resolve(tmp_path / "ws")
    args = ["prepare", "--data", str(small_data), "--model", str(tiny_model_dir), "--max-len", "32",
            "--workdir", str(ws.root)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    (folder,) = ws.prepared_dir.iterdir()
    killed = _rtsent([*args, "--force"], {"RTSENT_CRASH_AT": "publish:between-renames"})
    assert killed.returncode == -signal.SIGKILL
    assert not folder.exists()  # old version moved aside, new one not yet in place: the worst moment

    later = runner.invoke(app, ["evaluate", "--model", str(tiny_model_dir), "--zero-shot", "--workdir", str(ws.root)])
    assert later.exit_code == 0, later.output  # the rebuilt dataset was moved into place first
    manifest = load_prepared(folder).meta.to_dict()
    assert manifest["fingerprint"] == folder.name and not (folder / ".rtsent-dest").exists()
    assert _tmp_entries(ws) == []


def test_kill_mid_checkpoint_then_resume_skips_the_half_checkpoint(tmp_path, tiny_model_dir, small_data):
    ws = Workspace.resolve(tmp_path / "ws")
    prepared = _prepared(ws, tiny_model_dir, small_data)
    args = ["train", "--model", str(tiny_model_dir), "--prepared", str(prepared), "--max-steps", "8",
            "--eval-every", "2", "--batch-size", "16", "--precision", "fp32", "--run-name", "r",
            "--save-limit", "5", "--workdir", str(ws.root)]
    killed = _rtsent(args, {"RTSENT_CRASH_AT": "checkpoint:before-state@4"})
    assert killed.returncode == -signal.SIGKILL
    half = ws.run("r").checkpoints / "checkpoint-4"
    assert (half / "model.safetensors").is_file() and not (half / "trainer_state.json").exists()

    logs: list[str] = []
    result = train.run(TrainConfig(resume=True, run_name="r"), ws, log=logs.append)
    assert result.steps == 8 and (result.model_dir / META_FILE).is_file()
    for checkpoint in ws.run("r").checkpoints.iterdir():
        assert (checkpoint / "trainer_state.json").is_file(), checkpoint
    state = json.loads((ws.run("r").checkpoints / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4  # rebuilt whole by the resumed run, which started from checkpoint-2


def test_kill_during_export_leaves_no_model_and_resume_exports_it(tmp_path, tiny_model_dir, small_data):
    ws = Workspace.resolve(tmp_path / "ws")
    prepared = _prepared(ws, tiny_model_dir, small_data)
    args = ["train", "--model", str(tiny_model_dir), "--prepared", str(prepared), "--max-steps", "4",
            "--eval-every", "2", "--batch-size", "16", "--precision", "fp32", "--run-name", "r",
            "--workdir", str(ws.root)]
    killed = _rtsent(args, {"RTSENT_CRASH_AT": "export:before-meta"})
    assert killed.returncode == -signal.SIGKILL
    assert not ws.run("r").model.exists()
    assert any(name.split("-")[1] == "export" for name in _tmp_entries(ws))

    later = runner.invoke(app, ["predict", "a fine film", "--workdir", str(ws.root)])
    assert later.exit_code == 1 and "no trained model" in later.output

    resumed = runner.invoke(app, ["train", "--resume", "--run-name", "r", "--workdir", str(ws.root)])
    assert resumed.exit_code == 0, resumed.output
    assert (ws.run("r").model / META_FILE).is_file() and _tmp_entries(ws) == []


def test_stale_staging_folders_of_dead_processes_are_removed(ws):
    ws.ensure()
    dead = ws.tmp_dir / "999999999-prepare-x"
    alive = ws.tmp_dir / f"{os.getppid()}-prepare-y"  # our parent runs: a build in progress
    for folder in (dead, alive):
        (folder / "part").mkdir(parents=True)
    cache.clean_stale(ws)
    assert not dead.exists() and alive.exists()


# --- manifests checked on load ----------------------------------------------------------------------


@pytest.fixture
def prepared_copy(tmp_path, tiny_model_dir, small_data) -> tuple[Workspace, Path]:
    ws = Workspace.resolve(tmp_path / "ws")
    return ws, _prepared(ws, tiny_model_dir, small_data)


@pytest.mark.parametrize("damage, expected", [
    ("delete", "no {manifest}); run `rtsent prepare`"),
    ("truncate", "is unreadable or incomplete"),
    ("rows", "does not match its manifest (train); rebuild it with `rtsent prepare --force`"),
    ("keys", "lacks tokenizer; rebuild it with `rtsent prepare --force`"),
])
def test_missing_or_inconsistent_manifest_is_a_clear_error(prepared_copy, tiny_model_dir, damage, expected):
    ws, folder = prepared_copy
    path = folder / MANIFEST
    manifest = json.loads(path.read_text())
    if damage == "delete":
        path.unlink()
    elif damage == "truncate":
        path.write_text(path.read_text()[:40])
    elif damage == "rows":
        manifest["splits"]["train"]["rows"] += 1
        path.write_text(json.dumps(manifest))
    else:
        del manifest["tokenizer"]
        path.write_text(json.dumps(manifest))
    result = runner.invoke(app, ["train", "--model", str(tiny_model_dir), "--prepared", str(folder),
                                 "--workdir", str(ws.root)])
    assert result.exit_code == 1
    (line,) = _error_lines(result.output)
    assert str(folder) in line and expected.format(manifest=MANIFEST) in line


# --- concurrency ------------------------------------------------------------------------------------


def _hold_lock(path: Path) -> subprocess.Popen:
    """Another process holding a workspace lock until killed."""
    code = ("import sys, time; from filelock import FileLock; lock = FileLock(sys.argv[1]); lock.acquire(); "
            "print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_second_train_of_the_same_run_stops_with_a_busy_message(prepared_copy, tiny_model_dir):
    ws, folder = prepared_copy
    holder = _hold_lock(ws.lock_path("run-r"))
    try:
        result = runner.invoke(app, ["train", "--model", str(tiny_model_dir), "--run-name", "r",
                                     "--workdir", str(ws.root)])
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == 1
    (line,) = _error_lines(result.output)
    assert "run r is in use by another rtsent process" in line and "wait for it to finish" in line
    assert not ws.run("r").config.exists()


def test_train_waits_for_a_prepare_that_is_replacing_its_data(prepared_copy, tiny_model_dir, monkeypatch):
    ws, folder = prepared_copy
    monkeypatch.setattr("rtsent.artifacts.prepared.LOCK_WAIT_S", 0.2)
    holder = _hold_lock(ws.lock_path(f"prepare-{folder.name}"))
    try:
        with pytest.raises(BusyError, match=f"prepared dataset {folder} is in use"):
            train.run(_cfg(tiny_model_dir, run_name="r", max_steps=2), ws)
    finally:
        holder.kill()
        holder.wait()


def test_prepare_force_while_a_reader_has_the_data_open(prepared_copy, tiny_model_dir, small_data):
    ws, folder = prepared_copy
    dd = load_prepared(folder, ws).dataset
    before = dd["train"]["input_ids"][:]
    listing = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    forced = prepare.run(PrepareConfig(data=str(small_data), model=str(tiny_model_dir), max_len=32, force=True), ws)
    assert forced.path == folder and not forced.cache_hit
    assert dd["train"]["input_ids"][:] == before  # the open dataset is still whole after the swap
    train.run(_cfg(tiny_model_dir, run_name="r", max_steps=2, eval_every=2), ws)
    # Training wrote nothing into the shared prepared folder (no datasets cache files).
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == listing


def test_two_prepares_at_once_build_one_dataset(tmp_path, tiny_model_dir, small_data):
    ws = Workspace.resolve(tmp_path / "ws")
    args = [sys.executable, "-m", "rtsent", "prepare", "--data", str(small_data), "--model", str(tiny_model_dir),
            "--max-len", "32", "--workdir", str(ws.root)]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sum("cached" in out + err for out, err in outputs) == 1  # the second waited, then reused
    (folder,) = ws.prepared_dir.iterdir()
    load_prepared(folder)
    assert _tmp_entries(ws) == []


# --- a full disk ------------------------------------------------------------------------------------


def _disk_full(path="?"):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_write_json_keeps_the_old_file_when_the_disk_fills(tmp_path, monkeypatch):
    target = tmp_path / "run.json"
    files.write_json(target, {"version": 1})

    def fsync(fd):
        raise _disk_full(target)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError):
        files.write_json(target, {"version": 2, "padding": "x" * 10000})
    assert json.loads(target.read_text()) == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_disk_full_during_prepare_is_one_line_and_leaves_nothing(tmp_path, tiny_model_dir, small_data, monkeypatch):
    import datasets

    def save_to_disk(self, path, **kwargs):
        (Path(path) / "train").mkdir(parents=True)
        (Path(path) / "train" / "data-00000-of-00001.arrow").write_bytes(b"half")
        raise _disk_full(Path(path) / "train" / "data-00000-of-00001.arrow")

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", save_to_disk)
    ws = Workspace.resolve(tmp_path / "ws")
    result = runner.invoke(app, ["prepare", "--data", str(small_data), "--model", str(tiny_model_dir),
                                 "--workdir", str(ws.root)])
    assert result.exit_code == 1
    (line,) = _error_lines(result.output)
    assert line.startswith("error: the disk is full") and "free space and run the command again" in line
    assert list(ws.prepared_dir.iterdir()) == [] and _tmp_entries(ws) == []


@pytest.mark.parametrize("error", [
    _disk_full(),
    RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left on device\" })"),
])
def test_disk_full_while_saving_the_model_is_one_line_and_leaves_no_model(prepared_copy, tiny_model_dir, monkeypatch,
                                                                         error):
    from transformers import PreTrainedModel

    def save_pretrained(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_pretrained)
    ws, folder = prepared_copy
    result = runner.invoke(app, ["train", "--model", str(tiny_model_dir), "--max-steps", "2", "--eval-every", "2",
                                 "--batch-size", "16", "--precision", "fp32", "--run-name", "r",
                                 "--workdir", str(ws.root)])
    assert result.exit_code == 1
    (line,) = _error_lines(result.output)
    assert line.startswith("error: the disk is full")
    assert not ws.run("r").model.exists() and _tmp_entries(ws) == []
    with pytest.raises(ArtifactError):
        ws.latest_model()


# --- safety -----------------------------------------------------------------------------------------


def test_pickle_weights_are_refused_and_never_unpickled(tmp_path, tiny_model_dir):
    import pickle
    import shutil

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    result = runner.invoke(app, ["predict", "a film", "--model", str(folder), "--template", "{text}\nSentiment:",
                                 "--label-words", " negative, positive"])
    assert result.exit_code == 1, result.output
    (line,) = _error_lines(result.output)
    assert f"cannot load the model from {folder}" in line
    assert not marker.exists()


def test_sources_never_unpickle_or_trust_remote_code():
    import rtsent

    for path in Path(rtsent.__file__).parent.glob("*.py"):
        text = path.read_text()
        for needle in ("trust_remote_code=True", "torch.load(", "pickle.load", "weights_only=False"):
            assert needle not in text, f"{path.name} uses {needle}"


def test_pipeline_writes_only_inside_the_workspace(tmp_path, tiny_model_dir, small_data, monkeypatch):
    def snapshot(folder: Path) -> dict[str, int]:
        return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")}

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    inputs = {**snapshot(tiny_model_dir), **snapshot(small_data)}
    ws = tmp_path / "ws"
    common = ["--workdir", str(ws)]
    steps = [
        ["prepare", "--data", str(small_data), "--model", str(tiny_model_dir), "--max-len", "32"],
        ["train", "--model", str(tiny_model_dir), "--max-steps", "2", "--eval-every", "2", "--batch-size", "16",
         "--precision", "fp32", "--run-name", "r"],
        ["evaluate"],
        ["predict", "a brilliant film"],
    ]
    for args in steps:
        result = runner.invoke(app, args + common)
        assert result.exit_code == 0, result.output
    assert list(cwd.iterdir()) == []
    assert {**snapshot(tiny_model_dir), **snapshot(small_data)} == inputs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "ws"]


def test_a_failed_write_on_a_nearly_full_disk_is_reported_as_disk_full(tmp_path, tiny_model_dir, small_data, monkeypatch):
    # torch's checkpoint writer says only "file write failed"; the free space tells what happened
    import shutil

    import datasets

    def save_to_disk(self, path, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 0 vs 64: file write failed")

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", save_to_disk)
    args = ["prepare", "--data", str(small_data), "--model", str(tiny_model_dir), "--workdir", str(tmp_path / "ws")]
    plenty = runner.invoke(app, args)
    assert plenty.exit_code == 1 and "internal error" in plenty.output  # with free space it is not blamed on the disk
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1 << 20))
    full = runner.invoke(app, args)
    assert full.exit_code == 1 and full.output.strip().startswith("error: the disk is full"), full.output
