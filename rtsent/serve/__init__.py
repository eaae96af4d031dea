"""Stage 5, serve: the classifier behind HTTP, with a batching queue, limits, health and metrics.

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

import asyncio
import contextlib
import errno
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Union

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from rtsent import __version__
from rtsent.config import ServeConfig
from rtsent.errors import RtsentError, UsageError
from rtsent.faults import scoring_point
from rtsent.artifacts.model import ModelPaths, read_eval_reports, resolve_model
from rtsent.artifacts.workspace import Workspace

RETRY_AFTER_S = 1
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


# ---------------------------------------------------------------- request and response shapes


class Parameters(BaseModel):
    top_k: Optional[int] = Field(None, ge=1, description="Return only the k most probable classes (null: all).")


class PredictRequest(BaseModel):
    """Hugging Face's text-classification request."""

    inputs: Union[str, List[str]] = Field(..., description="One review, or a list of reviews.")
    parameters: Optional[Parameters] = None

    model_config = {"json_schema_extra": {"examples": [{"inputs": ["a gripping, funny film", "dull and far too long"]}]}}


class LabelScore(BaseModel):
    label: str
    score: float


# ---------------------------------------------------------------- metrics (Prometheus text format)


class Histogram:
    def __init__(self, buckets: Sequence[float]):
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{_number(b)}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out += [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {_number(self.total)}",
                f"{name}_count {self.count}"]
        return out


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Metrics:
    """Counters and histograms of /predict, updated on the event loop only (so no locks)."""

    def __init__(self) -> None:
        self.by_status: dict[int, int] = {}
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch_size = Histogram(BATCH_BUCKETS)

    def request(self, status: int, seconds: float) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1
        self.latency.observe(seconds)

    def render(self, queued: int, loaded: bool) -> str:
        lines = ["# HELP rtsent_requests_total POST /predict requests answered, by HTTP status.",
                 "# TYPE rtsent_requests_total counter"]
        lines += [f'rtsent_requests_total{{status="{s}"}} {n}' for s, n in sorted(self.by_status.items())]
        lines += ["# HELP rtsent_request_duration_seconds Time from request to response of POST /predict.",
                  "# TYPE rtsent_request_duration_seconds histogram", *self.latency.lines("rtsent_request_duration_seconds"),
                  "# HELP rtsent_batch_size Texts scored together in one forward pass.",
                  "# TYPE rtsent_batch_size histogram", *self.batch_size.lines("rtsent_batch_size"),
                  "# HELP rtsent_queue_requests Requests waiting for the model.", "# TYPE rtsent_queue_requests gauge",
                  f"rtsent_queue_requests {queued}",
                  "# HELP rtsent_model_loaded 1 once the model is loaded and /predict answers.",
                  "# TYPE rtsent_model_loaded gauge", f"rtsent_model_loaded {int(loaded)}"]
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the batching queue


class QueueFull(Exception):
    """The bounded queue has no room: the caller answers 429."""


class ScoringFailed(Exception):
    """The model raised on a batch: its callers answer 500, the server carries on."""


@dataclass
class _Job:
    texts: list[str]
    future: asyncio.Future


class Batcher:
    """Gathers concurrent requests into batches and scores them off the event loop, one batch at a time.

    `score(texts) -> [n, classes]` runs in a single worker thread (one model, one forward at a time);
    while it runs, new requests pile up in the queue and form the next batch.
    """

    def __init__(self, score: Callable[[list[str]], np.ndarray], max_batch_size: int, max_wait_s: float,
                 max_queue: int, metrics: Metrics, log: Callable[[str], None]):
        self.score, self.max_batch_size, self.max_wait_s = score, max_batch_size, max_wait_s
        self.queue: asyncio.Queue[_Job] = asyncio.Queue(max_queue)
        self.metrics, self.log = metrics, log
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="rtsent-score")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def submit(self, texts: list[str]) -> np.ndarray:
        """Probabilities [len(texts), classes] for one request; raises QueueFull or ScoringFailed."""
        job = _Job(texts, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            raise QueueFull from None
        return await job.future  # cancelled by the caller's timeout: the batcher then skips the job

    async def _loop(self) -> None:
        carry: _Job | None = None
        while True:
            first = carry or await self.queue.get()
            carry = None
            if first.future.done():
                continue
            jobs, size = [first], len(first.texts)
            deadline = asyncio.get_running_loop().time() + self.max_wait_s
            while size < self.max_batch_size:
                job = await self._next(deadline)
                if job is None:
                    break
                if job.future.done():
                    continue
                if size + len(job.texts) > self.max_batch_size:
                    carry = job  # it starts the next batch: never split a request, never reorder
                    break
                jobs.append(job)
                size += len(job.texts)
            await self._score(jobs)

    async def _next(self, deadline: float) -> _Job | None:
        try:
            return self.queue.get_nowait()
        except asyncio.QueueEmpty:
            pass
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return None
        try:
            return await asyncio.wait_for(self.queue.get(), remaining)
        except asyncio.TimeoutError:
            return None

    async def _score(self, jobs: list[_Job]) -> None:
        texts = [t for job in jobs for t in job.texts]
        self.metrics.batch_size.observe(len(texts))
        try:
            probs = await asyncio.get_running_loop().run_in_executor(self.executor, self.score, texts)
        except Exception as exc:  # a model failure fails this batch's requests, never the batcher
            self.log(f"scoring a batch of {len(texts)} texts failed: {type(exc).__name__}: {exc}")
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(ScoringFailed(f"{type(exc).__name__}: {exc}"))
            return
        start = 0
        for job in jobs:
            if not job.future.done():  # a timed-out caller is gone; its rows are dropped
                job.future.set_result(probs[start : start + len(job.texts)])
            start += len(job.texts)

    async def close(self) -> None:
        """Stop after the queue is empty (uvicorn has already waited for in-flight requests)."""
        if self.task is not None:
            while not self.queue.empty() and not self.task.done():
                await asyncio.sleep(0.01)
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.executor.shutdown(wait=True)


# ---------------------------------------------------------------- the app


class State:
    """What the endpoints share: config, the classifier once loaded, the batcher and the metrics."""

    def __init__(self, cfg: ServeConfig, model: str, log: Callable[[str], None], url: str = ""):
        self.cfg, self.model, self.log, self.url = cfg, model, log, url
        self.metrics = Metrics()
        self.classifier: Any = None
        self.batcher: Batcher | None = None
        self.load_error: BaseException | None = None
        self.stop_server: Callable[[], None] = lambda: None

    async def load(self) -> None:
        """Load the model in a thread (health answers 503 meanwhile), warm it up, start the batcher."""
        try:
            clf = await asyncio.to_thread(self._open)
        except Exception as exc:  # the server stops and run() raises it: one line, exit 1/2
            self.load_error = exc
            self.stop_server()
            return
        size = self.cfg.max_batch_size

        def score(texts: list[str]) -> np.ndarray:
            scoring_point(texts)
            return clf.probabilities(texts, size)

        self.batcher = Batcher(score, size, self.cfg.max_wait_ms / 1000,
                               self.cfg.max_queue, self.metrics, self.log)
        self.batcher.start()
        self.classifier = clf
        from rtsent.engines import precision_note

        self.log(f"serving {self.model} ({clf.engine} engine, {clf.precision}) on {self.url} - docs at {self.url}/docs; "
                 f"Ctrl-C to stop")
        if note := precision_note(clf, self.cfg.precision):
            self.log(note)

    def _open(self) -> Any:
        from rtsent.engines import open_classifier

        clf = open_classifier(self.model, precision=self.cfg.precision, engine=self.cfg.engine)
        clf.probabilities(["warm-up"], 1)  # first-call costs (allocator, kernels) before the first client
        return clf

    def info(self) -> dict[str, Any]:
        clf = self.classifier
        meta = clf.meta
        return {
            "model": str(Path(self.model).resolve()),
            "engine": clf.engine,
            "version": __version__,
            "template": clf.prompt.template,
            "label_words": list(clf.prompt.label_words),
            "label_names": list(clf.label_names),
            "max_len": clf.encoder.max_len,
            "temperature": clf.temperature,
            "metrics": {"best": meta.best, "calibration": meta.calibration, **_eval_reports(Path(self.model))},
            "run": meta.run,
            "precision": self.cfg.precision,
            "limits": {k: getattr(self.cfg, k) for k in ("max_batch_size", "max_wait_ms", "max_queue", "max_texts",
                                                        "max_body_bytes", "timeout_s")},
        }


def _eval_reports(folder: Path) -> dict[str, Any]:
    """Headline figures of `rtsent evaluate` reports saved next to the model (eval-<split>.json)."""
    return {Path(r["path"]).stem: {k: r.get(k) for k in ("examples", "accuracy", "macro_f1", "ece")}
            for r in read_eval_reports(ModelPaths(folder)).values()}


def _error(status: int, message: str, retry: bool = False) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if retry else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(state: State) -> Any:
    """The FastAPI app over `state`; the model loads in the background once the server starts."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = asyncio.create_task(state.load())
        yield
        if not loader.done():  # stopped while loading: the loading thread finishes on its own
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
        if state.batcher is not None:
            await state.batcher.close()

    app = FastAPI(title="rtsent", version=__version__, lifespan=lifespan,
                  description="Sentiment of movie reviews from a GPT-2 label-word classifier (`rtsent serve`).")
    app.add_middleware(_BodyLimit, limit=state.cfg.max_body_bytes)
    app.add_middleware(_Measure, metrics=state.metrics, path="/predict")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        return JSONResponse({"error": "; ".join(dict.fromkeys(_describe(e) for e in errors)),
                             "detail": jsonable_encoder(errors)}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.post("/predict", response_model=Union[List[LabelScore], List[List[LabelScore]]],
              responses={413: {}, 422: {}, 429: {}, 500: {}, 503: {}, 504: {}})
    async def predict(body: PredictRequest) -> Any:
        """Classify one review (`"inputs": "text"` -> `[{"label","score"}, ...]`) or several
        (`"inputs": [...]` -> one such list per review, in order). Each list holds every class, most
        probable first (`"parameters": {"top_k": k}` keeps the first k); scores are the model's
        calibrated probabilities."""
        single = isinstance(body.inputs, str)
        texts = [body.inputs] if single else list(body.inputs)
        problem = _check_texts(texts, state.cfg.max_texts)
        if problem:
            return _error(*problem)
        if state.batcher is None:
            return _error(503, "the model is still loading; retry shortly", retry=True)
        try:
            probs = await asyncio.wait_for(state.batcher.submit(texts), state.cfg.timeout_s)
        except QueueFull:
            return _error(429, f"the server is at capacity ({state.cfg.max_queue} requests queued); retry shortly",
                          retry=True)
        except asyncio.TimeoutError:
            return _error(504, f"not answered within {state.cfg.timeout_s:g} s (--timeout-s); the server is "
                               f"overloaded, retry later or send fewer texts")
        except ScoringFailed as exc:
            return _error(500, f"scoring failed for this batch: {exc}")
        top_k = body.parameters.top_k if body.parameters else None
        ranked = [_ranked(row, state.classifier.label_names, top_k) for row in probs]
        return JSONResponse(ranked[0] if single else ranked)  # already the declared shape: skip re-validation

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 once the model is loaded and /predict answers; 503 before."""
        if state.batcher is None:
            return _error(503, "loading the model", retry=True)
        return JSONResponse({"status": "ok"})

    @app.get("/info")
    async def info() -> JSONResponse:
        """Model, prompt, label names, training and evaluation metrics, engine, version, limits."""
        if state.classifier is None:
            return _error(503, "loading the model", retry=True)
        return JSONResponse(state.info())

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        """Prometheus text format: requests by status, latency and batch-size histograms, queue depth."""
        queued = state.batcher.queue.qsize() if state.batcher else 0
        return PlainTextResponse(state.metrics.render(queued, state.batcher is not None),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def _check_texts(texts: list[str], max_texts: int) -> tuple[int, str] | None:
    """(status, message) for a list of texts the server will not score, else None."""
    if not texts:
        return 422, "inputs is an empty list; send at least one review"
    if len(texts) > max_texts:
        return 413, f"inputs has {len(texts)} texts, more than the limit of {max_texts} per request (--max-texts); split it"
    for i, text in enumerate(texts):
        where = "inputs" if len(texts) == 1 and i == 0 else f"inputs[{i}]"
        if not text.strip():
            return 422, f"{where} is empty or blank; send non-empty reviews"
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # JSON's \ud800-style escapes can name lone surrogates
            return 422, f"{where} is not valid Unicode text (a lone surrogate escape); send UTF-8 text"
    return None


def _ranked(row: np.ndarray, names: Sequence[str], top_k: int | None) -> list[dict[str, Any]]:
    order = np.argsort(-row, kind="stable")[: top_k or len(names)]
    return [{"label": names[i], "score": float(row[i])} for i in order]


def _describe(error: dict[str, Any]) -> str:
    """'inputs[2]: Input should be a valid string' from a pydantic error (union branch names dropped)."""
    if error.get("type") == "json_invalid":
        return f"the body is not valid JSON ({error.get('ctx', {}).get('error', error.get('msg'))})"
    field = ""
    for part in error.get("loc", ())[1:]:
        if isinstance(part, int):
            field += f"[{part}]"
        elif part not in ("str", "list[str]"):
            field += ("." if field else "") + str(part)
    return f"{field or 'body'}: {error.get('msg')}"


# ---------------------------------------------------------------- ASGI middleware


class _BodyLimit:
    """413 for a body over `limit` bytes: at once from Content-Length, else while it streams in."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"the request body is larger than {self.limit} bytes (--max-body-bytes); send fewer or shorter texts"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _error(413, message)(scope, receive, send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            event = await receive()
            seen += len(event.get("body", b""))
            if seen > self.limit:  # raised inside FastAPI's body read: its exception handler answers
                raise HTTPException(413, message)
            return event

        await self.app(scope, limited, send)


class _Measure:
    """Counts responses of one path by status and times them."""

    def __init__(self, app: Any, metrics: Metrics, path: str):
        self.app, self.metrics, self.path = app, metrics, path

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500

        async def sending(event: dict) -> None:
            nonlocal status
            if event["type"] == "http.response.start":
                status = event["status"]
            await send(event)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.request(status, time.perf_counter() - started)


# ---------------------------------------------------------------- lifecycle


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
    model = str(resolve_model(ws, cfg.model))
    sock = bind(cfg.host, cfg.port)
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    state = State(cfg, model, log, f"http://{host}:{sock.getsockname()[1]}")
    config = uvicorn.Config(create_app(state), log_level="warning", access_log=False,
                            timeout_graceful_shutdown=int(cfg.timeout_s) + 5)
    server = _Server(config)
    state.stop_server = lambda: setattr(server, "should_exit", True)
    log(f"loading {model} ...")
    server.run(sockets=[sock])
    if state.load_error is not None:
        raise state.load_error
    log("stopped")


class _Server(uvicorn.Server):
    """uvicorn's Server, except that it does not re-raise the stop signal after its graceful shutdown,
    so that SIGTERM/SIGINT end `rtsent serve` with exit code 0 once in-flight requests are answered."""

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
