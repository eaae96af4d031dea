"""Hub names: huggingface_hub's own client decides (HF_ENDPOINT, proxies, tokens), and every refusal gets its line.

The hub is a real HTTP server on 127.0.0.1 standing in through HF_ENDPOINT, as a mirror would; rtsent runs
in a subprocess because huggingface_hub reads HF_ENDPOINT when it is imported.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time

import pytest
from typer.testing import CliRunner

from rtsent.cli import app

runner = CliRunner()


class FakeHub(http.server.BaseHTTPRequestHandler):
    """org/gated: metadata visible, files refused as gated (401); org/private: unknown without a token."""

    def _answer(self) -> None:
        gated, metadata = "org/gated" in self.path, self.path.startswith("/api/")
        if gated and metadata:
            body = json.dumps({"id": "org/gated", "sha": "0" * 40, "gated": "auto", "siblings": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
        else:
            body = b""
            self.send_response(401)
            self.send_header("X-Error-Code", "GatedRepo" if gated else "RepoNotFound")
            self.send_header("X-Error-Message", "Access restricted" if gated else "Repository not found")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def hub_endpoint():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def _prepare_by_name(model: str, endpoint: str, tmp_path) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf"))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "rtsent", "prepare", "--model", model, "--workdir", str(tmp_path / "ws")],
                          capture_output=True, text=True, env=env, timeout=120)
    return done, time.perf_counter() - started


def test_gated_repo_says_to_log_in_through_the_configured_endpoint(hub_endpoint, tmp_path):
    done, _ = _prepare_by_name("org/gated", hub_endpoint, tmp_path)
    assert done.returncode == 1, done.stderr
    assert "is gated" in done.stderr and "HF_TOKEN" in done.stderr and "Traceback" not in done.stderr


def test_private_or_unknown_repo_says_so(hub_endpoint, tmp_path):
    done, _ = _prepare_by_name("org/private", hub_endpoint, tmp_path)
    assert done.returncode == 1, done.stderr
    assert "or it is private" in done.stderr and "--model PATH" in done.stderr


def test_unreachable_endpoint_fails_fast_and_names_it(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    done, seconds = _prepare_by_name("org/anything", closed, tmp_path)
    assert done.returncode == 1, done.stderr
    assert "unreachable" in done.stderr and closed in done.stderr and "--model PATH" in done.stderr
    assert seconds < 20  # without the probe huggingface_hub retries a refused connection for ~24 s


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
