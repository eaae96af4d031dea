"""The model folder's contract (rtsent.json through ModelMeta, file names through ModelPaths) and the one
resolver every command uses to find a model."""

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
