"""The FastAPI app: /predict (Hugging Face's text-classification dialect), /classify (vLLM's), /health,
/info, /metrics, /docs; both scoring endpoints share one batching queue and the same limits."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path
from typing import Any, Callable, List, Literal, Optional, Sequence, Union

import numpy as np
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from rtsent import __version__
from rtsent.artifacts.files import finite
from rtsent.artifacts.model import ModelPaths, read_eval_reports
from rtsent.config import ServeConfig
from rtsent.engines.base import Classifier
from rtsent.faults import scoring_point
from rtsent.serve.batcher import Batcher, QueueFull, ScoringFailed
from rtsent.serve.metrics import CONTENT_TYPE, Metrics
from rtsent.sources.inputs import EMPTY, problem

RETRY_AFTER_S = 1
SCORING_PATHS = ("/predict", "/classify")


# ---------------------------------------------------------------- request and response shapes


class Parameters(BaseModel):
    top_k: Optional[int] = Field(None, ge=1, description="Return only the k most probable classes (null: all).")
    function_to_apply: Optional[Literal["softmax", "sigmoid", "none"]] = Field(
        None, description="softmax (default): the calibrated probabilities; sigmoid or none: of/the calibrated "
                          "label-word logits (scores / temperature).")


class PredictRequest(BaseModel):
    """Hugging Face's text-classification request (the Inference API's, which InferenceClient sends)."""

    inputs: Union[str, List[str]] = Field(..., description="One review, or a list of reviews.")
    parameters: Optional[Parameters] = None

    model_config = {"json_schema_extra": {"examples": [{"inputs": ["a gripping, funny film", "dull and far too long"]}]}}


class LabelScore(BaseModel):
    label: str
    score: float


class ClassifyRequest(BaseModel):
    """vLLM's (and SGLang's) classify request."""

    model: Optional[str] = Field(None, description="Any name: the server answers with the model it serves.")
    input: Union[str, List[str]] = Field(..., description="One review, or a list of reviews.")
    truncate_prompt_tokens: Optional[int] = Field(None, ge=-1, description="null or -1: the model's max-len.")
    use_activation: Optional[bool] = Field(None, description="false: calibrated logits instead of probabilities.")


class ClassifyData(BaseModel):
    index: int
    label: str
    probs: List[float]
    num_classes: int


class ClassifyResponse(BaseModel):
    id: str
    object: str = "list"
    created: int
    model: str
    data: List[ClassifyData]
    usage: dict[str, Any]


# ---------------------------------------------------------------- state


class Refused(Exception):
    """A request the server answers with an error status instead of scores."""

    def __init__(self, status: int, message: str, retry: bool = False):
        super().__init__(message)
        self.status, self.message, self.retry = status, message, retry


class State:
    """What the endpoints share: config, the classifier once loaded, the batcher and the metrics."""

    def __init__(self, cfg: ServeConfig, model: str, log: Callable[[str], None], url: str = ""):
        self.cfg, self.model, self.log, self.url = cfg, model, log, url
        self.metrics = Metrics(queued=lambda: self.batcher.queue.qsize() if self.batcher else 0,
                               loaded=lambda: self.batcher is not None)
        self.classifier: Classifier | None = None
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

        def score(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
            scoring_point(texts)
            rows = clf.encoder.encode(texts).input_ids
            return clf.scores(rows, size), np.array([len(r) for r in rows])

        self.batcher = Batcher(score, size, self.cfg.max_wait_ms / 1000, self.cfg.max_queue, self.metrics, self.log)
        self.batcher.start()
        self.classifier = clf
        self.log(f"serving {self.model} ({clf.engine} engine, {clf.precision}) on {self.url} - docs at {self.url}/docs; "
                 f"Ctrl-C to stop")
        if clf.choice is not None:
            self.log(clf.choice.line())

    @property
    def public_name(self) -> str:
        """The model's name for clients: its run's name, else its folder's; never the server's local path."""
        meta = self.classifier.meta if self.classifier is not None else None
        return (meta.run if meta is not None and meta.run else None) or Path(self.model).name

    def _open(self) -> Classifier:
        from rtsent.engines import open_classifier

        clf = open_classifier(self.model, precision=self.cfg.precision, engine=self.cfg.engine)
        clf.probabilities(["warm-up"], 1)  # first-call costs (allocator, kernels) before the first client
        return clf

    async def score(self, texts: list[str], field: str) -> tuple[np.ndarray, np.ndarray]:
        """Raw label-word scores and prompt lengths of a request's texts (from its `field`); raises Refused."""
        checked = _check_texts(texts, self.cfg.max_texts, field)
        if checked:
            raise Refused(*checked)
        if self.batcher is None:
            raise Refused(503, "the model is still loading; retry shortly", retry=True)
        try:
            return await asyncio.wait_for(self.batcher.submit(texts), self.cfg.timeout_s)
        except QueueFull:
            raise Refused(429, f"the server is at capacity ({self.cfg.max_queue} requests queued); retry shortly",
                          retry=True) from None
        except asyncio.TimeoutError:
            raise Refused(504, f"not answered within {self.cfg.timeout_s:g} s (--timeout-s); the server is "
                               f"overloaded, retry later or send fewer texts") from None
        except ScoringFailed as exc:
            raise Refused(500, f"scoring failed for this batch: {exc}") from None

    def info(self) -> dict[str, Any]:
        clf = self.classifier
        meta = clf.meta
        reports = read_eval_reports(ModelPaths(Path(self.model)))
        return {
            "model": self.public_name,
            "engine": clf.engine,
            "version": __version__,
            "template": clf.prompt.template,
            "label_words": list(clf.prompt.label_words),
            "label_names": list(clf.label_names),
            "max_len": clf.encoder.max_len,
            "temperature": clf.temperature,
            "metrics": {"best": meta.best, "calibration": meta.calibration,
                        **{Path(r["path"]).stem: {k: r.get(k) for k in ("examples", "accuracy", "macro_f1", "ece")}
                           for r in reports.values()}},
            "run": meta.run,
            "precision": clf.precision,
            "engine_choice": clf.choice.to_dict() if clf.choice else None,
            "limits": {k: getattr(self.cfg, k) for k in ("max_batch_size", "max_wait_ms", "max_queue", "max_texts",
                                                        "max_body_bytes", "timeout_s")},
        }


def _state(request: Request) -> State:
    return request.app.state.rtsent


def _error(status: int, message: str, retry: bool = False) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if retry else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


# ---------------------------------------------------------------- endpoints


async def predict(body: PredictRequest, request: Request) -> Any:
    """Classify reviews the way Hugging Face's Inference API does, so that `InferenceClient.text_classification`
    and pipeline-style clients read it: one list per review (`"inputs": "text"` is one review, so its answer is
    `[[...]]`), each holding every class, most probable first (`"parameters": {"top_k": k}` keeps k).
    Scores are the model's calibrated probabilities (`function_to_apply`: sigmoid or none for logits)."""
    state = _state(request)
    texts = [body.inputs] if isinstance(body.inputs, str) else list(body.inputs)
    params = body.parameters or Parameters()
    try:
        scores, _ = await state.score(texts, "inputs")
    except Refused as exc:
        return _error(exc.status, exc.message, exc.retry)
    values = _apply(state.classifier, scores, params.function_to_apply or "softmax")
    names = state.classifier.label_names
    return JSONResponse(finite([_ranked(row, names, params.top_k) for row in values]))  # the declared shape


async def classify(body: ClassifyRequest, request: Request) -> Any:
    """vLLM's classify API: per review its index, the most probable label and every class's calibrated
    probability in class order (`use_activation: false`: calibrated logits), with token usage."""
    state = _state(request)
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    max_len = state.classifier.encoder.max_len if state.classifier else None
    try:
        if body.truncate_prompt_tokens not in (None, -1) and max_len and body.truncate_prompt_tokens < max_len:
            raise Refused(422, f"truncate_prompt_tokens: rtsent cuts each review to the model's max-len of {max_len} "
                               f"tokens, keeping the template; pass null, -1 or {max_len} or more")
        scores, tokens = await state.score(texts, "input")
    except Refused as exc:
        return _error(exc.status, exc.message, exc.retry)
    clf = state.classifier
    values = _apply(clf, scores, "softmax" if body.use_activation in (None, True) else "none")
    k = len(clf.label_names)
    data = [{"index": i, "label": clf.label_names[int(np.argmax(row))], "probs": [float(v) for v in row],
             "num_classes": k} for i, row in enumerate(values)]
    used = int(tokens.sum())
    return JSONResponse({"id": f"classify-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
                         "model": state.public_name, "data": data,
                         "usage": {"prompt_tokens": used, "total_tokens": used, "completion_tokens": 0,
                                   "prompt_tokens_details": None}})


async def health(request: Request) -> JSONResponse:
    """200 once the model is loaded and the scoring endpoints answer; 503 before."""
    if _state(request).batcher is None:
        return _error(503, "loading the model", retry=True)
    return JSONResponse({"status": "ok"})


async def info(request: Request) -> JSONResponse:
    """Model, prompt, label names, training and evaluation metrics, engine, version, limits."""
    state = _state(request)
    if state.classifier is None:
        return _error(503, "loading the model", retry=True)
    return JSONResponse(state.info())


async def metrics(request: Request) -> Response:
    """Prometheus exposition (prometheus_client): requests by endpoint and status, latency and batch-size
    histograms, queue depth, whether the model is loaded, and the process's own metrics."""
    return Response(_state(request).metrics.render(), media_type=CONTENT_TYPE)


def create_app(state: State) -> FastAPI:
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
                  description="Sentiment of reviews from a label-word classifier (`rtsent serve`).")
    app.state.rtsent = state
    app.add_middleware(_BodyLimit, limit=state.cfg.max_body_bytes)
    app.add_middleware(_Measure, metrics=state.metrics, paths=SCORING_PATHS)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http_error)
    errors = {413: {}, 422: {}, 429: {}, 500: {}, 503: {}, 504: {}}
    app.post("/predict", response_model=List[List[LabelScore]], responses=errors)(predict)
    app.post("/classify", response_model=ClassifyResponse, responses=errors)(classify)
    app.get("/health")(health)
    app.get("/info")(info)
    app.get("/metrics", response_class=Response)(metrics)
    return app


# ---------------------------------------------------------------- helpers


def _apply(clf: Classifier, scores: np.ndarray, function: str) -> np.ndarray:
    """softmax: the calibrated probabilities (clf.calibrate, as predict); none: scores / temperature; sigmoid of those."""
    if function == "softmax":
        return clf.calibrate(scores)
    logits = np.asarray(scores, dtype=np.float64) / clf.temperature
    return logits if function == "none" else 1.0 / (1.0 + np.exp(-logits))


def _check_texts(texts: list[str], max_texts: int, field: str) -> tuple[int, str] | None:
    """(status, message naming the request field) for a list of texts the server will not score, else None."""
    if not texts:
        return 422, f"{field} is an empty list; send at least one review"
    if len(texts) > max_texts:
        return 413, f"{field} has {len(texts)} texts, more than the limit of {max_texts} per request (--max-texts); split it"
    for i, text in enumerate(texts):
        reason = problem(text)
        where = field if len(texts) == 1 and i == 0 else f"{field}[{i}]"
        if reason == EMPTY:
            return 422, f"{where} is empty or blank; send non-empty reviews"
        if reason:
            return 422, f"{where} is {reason}; send UTF-8 text"
    return None


def _ranked(row: np.ndarray, names: Sequence[str], top_k: int | None) -> list[dict[str, Any]]:
    order = np.argsort(-row, kind="stable")[: top_k or len(names)]
    return [{"label": names[i], "score": float(row[i])} for i in order]


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    # finite(): the offending input may be a NaN or 1e400 (inf), which a JSON response cannot hold
    return JSONResponse({"error": "; ".join(dict.fromkeys(_describe(e) for e in errors)),
                         "detail": finite(jsonable_encoder(errors))}, status_code=422)


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


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
    """Counts responses of the scoring paths by status and times them."""

    def __init__(self, app: Any, metrics: Metrics, paths: Sequence[str]):
        self.app, self.metrics, self.paths = app, metrics, tuple(paths)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
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
            self.metrics.request(scope["path"], status, time.perf_counter() - started)
