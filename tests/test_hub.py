"""Hub names: fail fast with a pointer to local paths when the hub cannot be reached."""

from __future__ import annotations

import socket

from typer.testing import CliRunner

from rtsent import hub
from rtsent.cli import app

runner = CliRunner()


def test_unreachable_hub_switches_to_offline_mode(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_checked", False)
    monkeypatch.setattr(socket, "create_connection", refuse)
    hub.prefer_cache_when_offline()
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_unknown_model_name_points_to_local_paths(tmp_path):
    result = runner.invoke(app, ["prepare", "--model", "no-such-model-xyz", "--workdir", str(tmp_path)])
    assert result.exit_code == 1
    assert "--model PATH" in result.output and "Traceback" not in result.output


def test_unknown_dataset_name_points_to_local_paths(tmp_path, tiny_model_dir):
    result = runner.invoke(app, ["prepare", "--data", "no_such_dataset_xyz", "--model", str(tiny_model_dir),
                                 "--workdir", str(tmp_path)])
    assert result.exit_code == 1
    assert "--data PATH" in result.output and "Traceback" not in result.output


def test_missing_local_model_folder_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["prepare", "--model", "./no/such/folder", "--workdir", str(tmp_path)])
    assert result.exit_code == 2 and "no such folder" in result.output

