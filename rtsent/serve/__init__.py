"""Stage 5, serve: the classifier behind HTTP, with a batching queue, limits, health and metrics.

    serve/app.py      the FastAPI app: /predict (Hugging Face's dialect), /classify (vLLM's), /health, /info, /metrics
    serve/batcher.py  the batching queue in front of the model
    serve/metrics.py  Prometheus metrics through prometheus_client
    serve/__init__.py binding the port and running uvicorn until a signal (this module)

One asyncio queue sits in front of the model. A single batcher task drains it into batches of up to
`max_batch_size` texts (waiting at most `max_wait_ms` for company), scores each batch in a worker thread
so the event loop keeps answering, and hands every caller its own rows. The queue is bounded (429 when
full), each request has a deadline (504), bodies and text counts are capped (413), bad JSON or types are
a 422 naming the field, and a failing batch answers 500 to its callers only.

Why FastAPI + uvicorn and not LitServe: the whole server is one queue and one loop over
`rtsent.engines.open_classifier`, which takes ~150 lines on FastAPI. FastAPI brings what clients expect
(pydantic validation with the failing field named, OpenAPI at /docs) and uvicorn the graceful shutdown
(stop accepting, finish in-flight requests); both are conventional, widely deployed and small. LitServe
would give batching too, but it runs the model in separate worker processes behind its own request
loop: another layer between us and the scoring interface, harder to bound and to shut down exactly as
asked, for a model that fits one process. This module is imported only by `rtsent serve`.
"""

from __future__ import annotations

import errno
import socket
from typing import Callable

from rtsent import compat
from rtsent.artifacts.model import resolve_model
from rtsent.artifacts.workspace import Workspace
from rtsent.config import ServeConfig
from rtsent.errors import RtsentError, UsageError


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (not yet listening), or an RtsentError saying why not."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror:
        raise UsageError(f"--host {host!r} is not an address or a name this machine can resolve") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart over TIME_WAIT
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise RtsentError(f"port {port} on {host} is already in use (another server?); stop it or pass another --port") from None
        if exc.errno == errno.EACCES:
            raise RtsentError(f"not allowed to listen on {host}:{port} (ports below 1024 need privileges); pass --port 1024 or above") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise UsageError(f"--host {host} is not an address of this machine; use 127.0.0.1 or 0.0.0.0") from None
        raise RtsentError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def run(cfg: ServeConfig, ws: Workspace, log: Callable[[str], None]) -> None:
    """Serve until SIGINT/SIGTERM, then finish in-flight requests and return.

    Raises UsageError/ArtifactError for a missing model, RtsentError when the port cannot be bound
    (checked before the model loads), and whatever loading the model raised.
    """
    import uvicorn

    from rtsent.serve.app import State, create_app

    model = str(resolve_model(ws, cfg.model))
    sock = bind(cfg.host, cfg.port)
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    state = State(cfg, model, log, f"http://{host}:{sock.getsockname()[1]}")
    config = uvicorn.Config(create_app(state), log_level="warning", access_log=False,
                            timeout_graceful_shutdown=int(cfg.timeout_s) + 5)
    server = compat.uvicorn_server()(config)
    state.stop_server = lambda: setattr(server, "should_exit", True)
    log(f"loading {model} ...")
    server.run(sockets=[sock])
    if state.load_error is not None:
        raise state.load_error
    log("stopped")
