"""artifacts.cache: fingerprints, atomic publish through a staging folder, stale folders of dead
processes, JSON written with no temporary file left behind. (Crashes, full disks: test_reliability.py.)"""

from __future__ import annotations

import json
import os

import pytest

from rtsent.artifacts.cache import clean_stale, fingerprint, publish, staging
from rtsent.artifacts.files import write_json


def test_fingerprint_is_stable_and_sensitive():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_publish_replaces_atomically_and_staging_cleans_up(ws):
    ws.ensure()
    dest = ws.root / "artifact"
    for content in ("one", "two"):
        with staging(ws, "t") as tmp:
            (tmp / "f").write_text(content)
            publish(tmp, dest)
        assert (dest / "f").read_text() == content
    with pytest.raises(RuntimeError):
        with staging(ws, "t") as tmp:
            raise RuntimeError("build failed")
    assert not tmp.exists()
    assert list(ws.tmp_dir.iterdir()) == []


def test_clean_stale_removes_only_dead_processes_folders(ws):
    ws.ensure()
    dead = ws.tmp_dir / "999999999-prepare-x"
    mine = ws.tmp_dir / f"{os.getpid()}-prepare-y"
    dead.mkdir()
    mine.mkdir()
    clean_stale(ws)
    assert not dead.exists() and mine.exists()


def test_write_json_leaves_no_temp_files(tmp_path):
    write_json(tmp_path / "m.json", {"a": [1, "é"]})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": [1, "é"]}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
