"""Bad GGUF input: one line, the right exit code, nothing converted half-way."""

from __future__ import annotations

import importlib.util

import pytest
from typer.testing import CliRunner

from rtsent.cli import app

runner = CliRunner()


def _prepare(tmp_path, model):
    return runner.invoke(app, ["prepare", "--workdir", str(tmp_path / "ws"), "--model", str(model)])


def test_a_missing_gguf_file_is_a_usage_error(tmp_path):
    result = _prepare(tmp_path, tmp_path / "nope.gguf")
    assert result.exit_code == 2 and "no such GGUF file" in result.output and "Traceback" not in result.output


def test_without_the_gguf_package_the_error_names_the_extra(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    (tmp_path / "m.gguf").write_bytes(b"GGUF" + bytes(64))
    result = _prepare(tmp_path, tmp_path / "m.gguf")
    assert result.exit_code == 2 and "pip install 'rtsent[gguf]'" in result.output


def test_an_unreadable_gguf_file_is_one_line_and_leaves_no_converted_folder(tmp_path):
    pytest.importorskip("gguf")
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + bytes(64))
    result = _prepare(tmp_path, tmp_path / "broken.gguf")
    assert result.exit_code == 1 and "cannot read" in result.output and "Traceback" not in result.output
    from rtsent.sources.gguf import cache_root

    assert not list((cache_root() / "gguf").glob("broken-*/gguf.json"))


def test_a_folder_with_two_gguf_files_asks_which(tmp_path):
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")
    result = _prepare(tmp_path, tmp_path)
    assert result.exit_code == 2 and "several GGUF files" in result.output and "a.gguf, b.gguf" in result.output
