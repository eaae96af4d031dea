"""The model folder's contract (rtsent.json through ModelMeta, file names through ModelPaths), the one
resolver every command uses to find a model, and the prepared dataset's record (PreparedMeta)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from rtsent.artifacts.model import META_VERSION, ModelMeta, ModelPaths, resolve_model
from rtsent.errors import ArtifactError

# rtsent.json as the first exporting version wrote it (git history of train.py, 2026-11-26): no version,
# no calibration, timing, LoRA or ONNX sections.
FIRST_FORMAT_KEYS = ("rtsent_version", "created", "prompt", "label_ids", "max_len", "tokenizer", "prepared", "data",
                     "run", "train", "best")


def _first_format(meta: dict) -> dict:
    # Up to version 2 the record kept one token id per class as "label_ids" (version 3: "label_words").
    old = {**meta, "label_ids": [words[0][0] for words in meta["label_words"]]}
    return {k: old[k] for k in FIRST_FORMAT_KEYS}


def test_a_folder_in_the_first_format_loads_and_scores(trained, tmp_path):
    from rtsent.engines import open_classifier

    folder = tmp_path / "old-model"
    shutil.copytree(trained[1].model_dir, folder)
    current = json.loads((folder / "rtsent.json").read_text())
    (folder / "rtsent.json").write_text(json.dumps(_first_format(current)))
    for name in ("model.onnx", "model.int8.onnx"):
        (folder / name).unlink(missing_ok=True)
    meta = ModelMeta.read(folder)
    assert meta.version == 1 and meta.temperature == 1.0 and meta.graphs() == {} and meta.label_words.head_ids == _first_format(current)["label_ids"]
    old, new = open_classifier(str(folder)), open_classifier(str(trained[1].model_dir), engine="torch")
    assert old.engine == "torch"  # no graph listed: the torch engine
    rows = new.encoder.encode(["great wonderful film", "dull boring plot"]).input_ids
    np.testing.assert_allclose(old.scores(rows), new.scores(rows), atol=1e-5)
    # Writing it again (as `rtsent export` does) upgrades the record and keeps what it said.
    meta.write(folder)
    again = json.loads((folder / "rtsent.json").read_text())
    kept = [k for k in FIRST_FORMAT_KEYS if k not in ("prompt", "label_ids")]
    assert again["version"] == META_VERSION and {k: again[k] for k in kept} == {k: current[k] for k in kept}
    assert again["label_words"] == [[[i]] for i in _first_format(current)["label_ids"]] and "label_ids" not in again


def test_every_command_finds_a_model_the_same_way(trained, tmp_path):
    space, result = trained
    assert resolve_model(space, None) == result.model_dir  # the latest run's
    assert resolve_model(space, "tiny") == result.model_dir  # a run's name
    assert resolve_model(space, str(result.model_dir)) == result.model_dir  # its folder
    assert resolve_model(space, "gpt2", base_ok=True) == "gpt2"  # a base model, for zero-shot
    with pytest.raises(ArtifactError, match="no run of that name"):
        resolve_model(space, "nope")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(ArtifactError, match="has no rtsent.json"):
        resolve_model(space, str(plain))


def test_model_paths_name_every_file(tmp_path):
    paths = ModelPaths(tmp_path)
    names = {p.name for p in (paths.meta, paths.config, paths.weights, paths.adapter_config, paths.tokenizer_json,
                              paths.card, paths.onnx("fp32"), paths.onnx("int8"), paths.eval_report("test"))}
    assert names == {"rtsent.json", "config.json", "model.safetensors", "adapter_config.json", "tokenizer.json",
                     "README.md", "model.onnx", "model.int8.onnx", "eval-test.json"}
    for name in ("eval-data-mine.json", "eval-test.json", "eval-validation.json"):
        (tmp_path / name).write_text("{}")
    assert [p.name for p in paths.eval_reports()] == ["eval-validation.json", "eval-test.json", "eval-data-mine.json"]


# --- artifacts that must not disappear or lie (issue #27) ------------------------------------------------

@pytest.fixture
def own_ws(trained, tmp_path):
    """A private copy of the trained workspace: these tests change the run's model folder."""
    from rtsent.artifacts.workspace import Workspace

    root = tmp_path / "ws"
    shutil.copytree(trained[0].root, root)
    return Workspace.resolve(root)


def test_a_plain_export_keeps_the_checked_int8_graph(own_ws):
    from rtsent import export
    from rtsent.config import ExportConfig

    folder = own_ws.run("tiny").model
    export.run(ExportConfig(model=str(folder), int8=True), own_ws)
    checked = ModelMeta.read(folder).onnx
    int8 = (folder / "model.int8.onnx").read_bytes()
    shutil.rmtree(own_ws.prepared_dir)  # a plain export needs no validation split
    export.run(ExportConfig(model=str(folder)), own_ws)
    again = ModelMeta.read(folder).onnx
    assert (folder / "model.int8.onnx").read_bytes() == int8
    assert again["graphs"] == checked["graphs"] and again["int8_check"] == checked["int8_check"]


def test_a_crash_between_the_graph_renames_leaves_a_record_that_vouches_for_no_graph(own_ws):
    import os
    import subprocess
    import sys

    from rtsent import export
    from rtsent.config import ExportConfig
    from rtsent.engines import open_classifier

    folder = own_ws.run("tiny").model
    export.run(ExportConfig(model=str(folder), int8=True), own_ws)
    meta = ModelMeta.read(folder)
    onnx = {**meta.onnx, "int8_check": {**meta.onnx["int8_check"], "accepted": True}}
    meta.replace(onnx=onnx).write(folder)  # an int8 graph that passed its check
    assert ModelMeta.read(folder).int8_validated
    crashed = subprocess.run([sys.executable, "-m", "rtsent", "export", str(folder), "--int8", "--workdir",
                              str(own_ws.root)], env={**os.environ, "RTSENT_CRASH_AT": "export:between-renames"},
                             capture_output=True, text=True, timeout=300)
    assert crashed.returncode == -9, crashed.stderr
    after = ModelMeta.read(folder)
    assert not after.int8_validated and after.graphs() == {}  # not the old record over new graphs
    clf = open_classifier(str(folder))
    assert clf.engine == "torch"
    export.run(ExportConfig(model=str(folder), int8=True), own_ws)  # the next export repairs it
    assert set(ModelMeta.read(folder).graphs()) == {"fp32", "int8"}


def test_resume_of_a_finished_run_leaves_its_model_folder_alone(own_ws):
    from typer.testing import CliRunner

    from rtsent.cli import app

    folder = own_ws.run("tiny").model
    (folder / "eval-test.json").write_text(json.dumps({"split": "test", "accuracy": 0.5, "macro_f1": 0.5}))
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    out = CliRunner().invoke(app, ["train", "--resume", "--run-name", "tiny", "--workdir", str(own_ws.root)])
    assert out.exit_code == 0, out.output
    assert "finished" in out.output
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before


def test_resume_takes_micro_batches_and_gives_the_same_run(tmp_path, tiny_model_dir, data_dir, monkeypatch):
    from rtsent import prepare, train
    from rtsent.artifacts.workspace import Workspace
    from rtsent.config import PrepareConfig, TrainConfig
    from rtsent.errors import Interrupted
    from safetensors.numpy import load_file

    ws = Workspace.resolve(tmp_path / "ws")
    prepare.run(PrepareConfig(data=str(data_dir), model=str(tiny_model_dir), max_len=32), ws)
    cfg = dict(model=str(tiny_model_dir), lr=5e-3, batch_size=16, max_steps=4, eval_every=2, precision="fp32",
               warmup=0.0, onnx=False, plots=False)
    a = train.run(TrainConfig(**cfg, run_name="a"), ws)
    monkeypatch.setenv("RTSENT_INTERRUPT_AT_STEP", "2")
    with pytest.raises(Interrupted):
        train.run(TrainConfig(**cfg, run_name="b"), ws)
    monkeypatch.delenv("RTSENT_INTERRUPT_AT_STEP")
    used = []
    real = train._training_arguments
    monkeypatch.setattr(train, "_training_arguments", lambda c, *rest, **kw: used.append(c.micro_batches) or real(c, *rest, **kw))
    b = train.run(TrainConfig(resume=True, run_name="b", micro_batches=2), ws)
    assert used == [2]
    assert json.loads(ws.run("b").config.read_text())["config"]["micro_batches"] == 2
    wa, wb = load_file(str(a.model_dir / "model.safetensors")), load_file(str(b.model_dir / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        np.testing.assert_allclose(wa[key], wb[key], atol=1e-5, err_msg=key)


def test_json_artifacts_are_strict_json(tmp_path):
    from rtsent.artifacts.files import write_json, write_jsonl

    def refuse(name):
        raise ValueError(name)

    write_json(tmp_path / "r.json", {"ece": float("nan"), "per_class": [{"f1": float("inf")}], "n": 3})
    write_jsonl(tmp_path / "e.jsonl", [{"probability": float("-inf")}])
    assert json.loads((tmp_path / "r.json").read_text(), parse_constant=refuse) == {
        "ece": None, "per_class": [{"f1": None}], "n": 3}
    assert json.loads((tmp_path / "e.jsonl").read_text(), parse_constant=refuse) == {"probability": None}


def test_published_folders_have_readable_weights(trained, tmp_path):
    import os

    from rtsent.artifacts.cache import publish

    mask = os.umask(0)
    os.umask(mask)
    mode = 0o666 & ~mask
    model = trained[1].model_dir
    assert oct((model / "model.safetensors").stat().st_mode & 0o777) == oct(mode)  # safetensors writes 0600
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "w.safetensors").write_bytes(b"x")
    os.chmod(staged / "w.safetensors", 0o600)
    publish(staged, tmp_path / "dest")
    assert oct((tmp_path / "dest" / "w.safetensors").stat().st_mode & 0o777) == oct(mode)


def test_a_prepared_dataset_in_the_first_format_opens_and_trains_the_same(tiny_model_dir, data_dir, ws):
    """manifest.json before PreparedMeta: no "version", and (before label words of several tokens) one token
    id per class as "label_ids". It opens as version 1 with the same content, and is written back as the
    current version without "label_ids"."""
    from rtsent import prepare
    from rtsent.artifacts.prepared import MANIFEST_VERSION, PreparedMeta, PreparedPaths, load_prepared
    from rtsent.config import PrepareConfig

    result = prepare.run(PrepareConfig(data=str(data_dir), model=str(tiny_model_dir), max_len=32), ws)
    path = PreparedPaths(result.path).manifest
    current = json.loads(path.read_text())
    assert current["version"] == MANIFEST_VERSION
    old = {k: v for k, v in current.items() if k not in ("version", "label_words")}
    old["label_ids"] = [words[0][0] for words in current["label_words"]]
    path.write_text(json.dumps(old))
    loaded = load_prepared(result.path, ws)
    assert loaded.meta.version == 1 and loaded.meta.fingerprint == result.meta.fingerprint == result.path.name
    assert loaded.meta.label_words.head_ids == old["label_ids"] and loaded.meta.prompt == result.meta.prompt
    assert loaded.meta.splits == current["splits"] and loaded.meta.describe() == result.meta.describe()
    loaded.meta.write(result.path)
    again = json.loads(path.read_text())
    assert again == current and PreparedMeta.read(result.path).version == MANIFEST_VERSION
