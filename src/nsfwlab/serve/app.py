"""The FastAPI application: ``create_app(config, detector=None)``.

Routes: ``POST /v1/score`` (multipart field ``file``, repeatable, or a raw image body),
``GET /healthz``, ``GET /readyz``, ``GET /metrics``, the review page ``GET /review`` and its API
under ``/v1/review``, and FastAPI's ``/openapi.json`` and ``/docs``.

Decoding and preprocessing go through the core (``Detector.preprocess``) in a small thread pool;
model calls go through the :class:`~nsfwlab.serve.batching.MicroBatcher` worker thread. Nothing
blocks the event loop. Errors become JSON ``{"error", "code"}`` with the status of
:func:`~nsfwlab.serve.limits.http_status_for`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from enum import Enum
from importlib.resources import files
from typing import Any

import numpy as np
from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..config import Label
from ..detector import Detector
from ..errors import ImageError, NsfwlabError, UnsupportedFormatError
from ..imageio import sniff_format
from ..preprocess import preprocess
from .batching import MicroBatcher
from .config import ServeConfig
from .limits import (
    Admission,
    BadRequestError,
    BodyTooLargeError,
    CountingReceive,
    NotFoundError,
    NotReadyError,
    TooManyFilesError,
    check_api_key,
    http_status_for,
)
from .metrics import ServiceMetrics
from .review import QueueReason, ReviewLabel, ReviewStatus, ReviewStore

__all__ = ["ErrorResponse", "ScoreItem", "ScoreResponse", "Service", "create_app"]

log = logging.getLogger("nsfwlab.serve")

DetectorSource = Detector | Callable[[], Detector] | None


# -- response models (the OpenAPI document) ------------------------------------------------------
class ScoreItem(BaseModel):
    """One uploaded image: a score and label, or the error that stopped it."""

    filename: str
    score: float | None = Field(default=None, ge=0.0, le=1.0, description="NSFW probability (absent on error)")
    label: Label | None = Field(default=None, description="safe / review / nsfw by the server's thresholds")
    review_id: str | None = Field(default=None, description="sha256 of the image when it was queued for review")
    error: str | None = Field(default=None, description="what was wrong with this image (absent on success)")
    code: str | None = Field(default=None, description="machine-readable error code (absent on success)")


class ScoreResponse(BaseModel):
    results: list[ScoreItem]
    model: dict[str, Any]


class ErrorResponse(BaseModel):
    error: str
    code: str


class ReviewFilter(str, Enum):
    PENDING = "pending"
    SAFE = "safe"
    NSFW = "nsfw"
    SKIP = "skip"
    ALL = "all"


class LabelRequest(BaseModel):
    label: ReviewLabel
    reviewer: str = Field("anonymous", min_length=1, max_length=64)


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "malformed request", 401: "missing or invalid API key", 413: "body, image or file count over a cap",
        415: "not an allowed image format", 422: "truncated, corrupt or empty image", 429: "overloaded, retry",
        503: "model not loaded yet, or shutting down",
    }.items()
}

_SCORE_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                "required": ["file"],
            }
        },
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        "image/png": {"schema": {"type": "string", "format": "binary"}},
    },
}


class Service:
    """The state of one app: detector, batcher, decode pool, review store, limits and metrics."""

    def __init__(self, config: ServeConfig, detector: DetectorSource) -> None:
        self.config = config
        self.metrics = ServiceMetrics()
        self.admission = Admission(config.max_concurrent_requests)
        self._detector_source = detector
        self._owns_detector = not isinstance(detector, Detector)
        self.detector: Detector | None = None
        self.batcher: MicroBatcher | None = None
        self.store: ReviewStore | None = None
        self.load_error: str | None = None
        self.shutting_down = False
        self._pool: ThreadPoolExecutor | None = None
        self._rng = random.Random(config.audit_seed)
        self._rng_lock = threading.Lock()
        self._loader: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start (or restart, after :meth:`stop`) the pools, the store and the model."""
        self.shutting_down = False
        self.load_error = None
        self._pool = ThreadPoolExecutor(self.config.decode_workers, thread_name_prefix="nsfwlab-serve")
        if self.config.data_dir is not None:
            self.store = ReviewStore(self.config.data_dir)
        if isinstance(self._detector_source, Detector):
            self._attach(self._detector_source)
        else:
            # Load in the background: /healthz answers at once, /readyz turns 200 when loaded.
            self._loader = threading.Thread(target=self._load, name="nsfwlab-load", daemon=True)
            self._loader.start()

    def _load(self) -> None:
        try:
            source = self._detector_source
            det = source() if callable(source) else Detector()
        except NsfwlabError as exc:
            self.load_error = str(exc)
            log.error("model failed to load: %s", exc)
            return
        except Exception as exc:  # reported on /readyz instead of killing the server
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model failed to load")
            return
        if self.shutting_down:
            det.close()
            return
        self._attach(det)

    def _attach(self, det: Detector) -> None:
        batcher = MicroBatcher(det.predict_arrays, max_batch=self.config.model_batch,
                               max_wait_s=self.config.max_wait_s, max_queue=self.config.queue_size,
                               on_batch=self.metrics.observe_batch)
        batcher.start()
        self.batcher = batcher
        self.detector = det
        self.metrics.ready.set(1)
        log.info("model ready: %s", det.describe())

    def stop(self) -> None:
        """Finish queued model calls, then release everything (``start`` may run again)."""
        self.shutting_down = True
        self.metrics.ready.set(0)
        if self._loader is not None:
            self._loader.join(timeout=60)
            self._loader = None
        if self.batcher is not None:
            self.batcher.stop()
            self.batcher = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self.store is not None:
            self.store.close()
            self.store = None
        if self.detector is not None and self._owns_detector:
            self.detector.close()
        self.detector = None

    @property
    def ready(self) -> bool:
        return self.detector is not None and self.batcher is not None and not self.shutting_down

    def require_ready(self) -> tuple[Detector, MicroBatcher]:
        if self.shutting_down:
            raise NotReadyError("the server is shutting down; retry on another instance")
        if self.detector is None or self.batcher is None:
            if self.load_error:
                raise NotReadyError(f"the model failed to load: {self.load_error}")
            raise NotReadyError("the model is still loading; retry in a few seconds")
        return self.detector, self.batcher

    def require_store(self) -> ReviewStore:
        if self.store is None:
            raise NotFoundError("review is disabled: start the server with --data-dir DIR")
        return self.store

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._pool is not None
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # -- scoring ------------------------------------------------------------------------------
    def _prepare(self, det: Detector, data: bytes) -> tuple[np.ndarray, str] | NsfwlabError:
        """Decode and preprocess one upload through the core (the detector's pipeline under the
        server's ``limits``); errors are returned, not raised."""
        try:
            fmt = sniff_format(data[:32])
            if fmt is not None and fmt not in self.config.formats:
                raise UnsupportedFormatError(
                    f"{fmt} is not accepted by this server; allowed: {', '.join(self.config.formats)}"
                )
            return preprocess(data, det.preprocess_config, self.config.limits), fmt or ""
        except NsfwlabError as exc:
            return exc
        except Exception as exc:  # one hostile file must not fail the request
            return ImageError(f"unexpected {type(exc).__name__}: {exc}")

    def _audit_draw(self) -> bool:
        if self.config.audit_rate <= 0.0:
            return False
        with self._rng_lock:
            return self._rng.random() < self.config.audit_rate

    def _queue_for_review(self, det: Detector, data: bytes, fmt: str, name: str, score: float,
                          label: Label) -> str | None:
        if self.store is None:
            return None
        if label is Label.REVIEW:
            reason = QueueReason.BAND
        elif self._audit_draw():
            reason = QueueReason.AUDIT
        else:
            return None
        try:
            item = self.store.add(data, fmt, score=score, model_label=label.value, reason=reason,
                                  model_version=det.model_version, filename=name, limits=self.config.limits)
        except Exception as exc:  # a full disk must not lose the score itself
            log.error("could not queue %s for review: %s", name, exc)
            self.metrics.errors.labels(code="review_store_failed").inc()
            return None
        self.metrics.review_queued.labels(reason=reason.value).inc()
        return item.sha256

    async def score_uploads(self, uploads: list[tuple[str, bytes]]) -> tuple[int, ScoreResponse]:
        det, batcher = self.require_ready()
        batcher.check_capacity(len(uploads))
        prepared = await asyncio.gather(*(self.run(self._prepare, det, data) for _, data in uploads))
        arrays = [p[0] for p in prepared if isinstance(p, tuple)]
        self.metrics.queue_depth.set(batcher.depth + len(arrays))
        scores = iter(await batcher.score(arrays))
        self.metrics.queue_depth.set(batcher.depth)
        items: list[ScoreItem] = []
        first_error: NsfwlabError | None = None
        scored: list[tuple[int, str, bytes, str, float, Label]] = []  # review candidates
        for (name, data), prep in zip(uploads, prepared, strict=True):
            if isinstance(prep, tuple):
                s = float(next(scores))
                label = det.label(s)
                self.metrics.images.labels(outcome="scored").inc()
                self.metrics.scores.observe(s)
                self.metrics.labels.labels(label=label.value).inc()
                items.append(ScoreItem(filename=name, score=s, label=label))
                scored.append((len(items) - 1, name, data, prep[1], s, label))
            else:
                first_error = first_error or prep
                self.metrics.images.labels(outcome="error").inc()
                self.metrics.errors.labels(code=prep.code).inc()
                items.append(ScoreItem(filename=name, error=prep.message, code=prep.code))
        if self.store is not None and scored:
            ids = await asyncio.gather(*(self.run(self._queue_for_review, det, data, fmt, name, s, label)
                                         for _, name, data, fmt, s, label in scored))
            for (idx, *_), rid in zip(scored, ids, strict=True):
                if rid is not None:
                    items[idx] = items[idx].model_copy(update={"review_id": rid})
        status = 200 if scored or first_error is None else http_status_for(first_error)
        return status, ScoreResponse(results=items, model=det.describe())


# -- request helpers ---------------------------------------------------------------------------------
async def _read_uploads(request: Request, config: ServeConfig, filename: str | None) -> list[tuple[str, bytes]]:
    """The uploads of a request: multipart ``file`` parts, or the raw body as one image.

    The body is counted as it streams in and refused at ``max_body_bytes``.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            too_big = int(declared) > config.max_body_bytes
        except ValueError:
            raise BadRequestError("Content-Length is not a number") from None
        if too_big:
            raise BodyTooLargeError(
                f"request body of {declared} bytes is over the cap of {config.max_body_bytes} bytes "
                "(send fewer or smaller images, or raise --max-body-bytes)"
            )
    counted = Request(request.scope, CountingReceive(request.receive, config.max_body_bytes, config.body_timeout_s))
    try:
        return await _parse_uploads(counted, request.headers.get("content-type", "").lower(), config, filename)
    except ClientDisconnect:
        raise BadRequestError("the client disconnected before sending the whole body") from None


async def _parse_uploads(counted: Request, ctype: str, config: ServeConfig,
                         filename: str | None) -> list[tuple[str, bytes]]:
    if ctype.startswith("multipart/form-data"):
        try:
            form = await counted.form(max_files=config.max_files, max_fields=config.max_files + 16)
        except StarletteHTTPException as exc:
            if "too many files" in str(exc.detail).lower():
                raise TooManyFilesError(
                    f"more than {config.max_files} files in one request; split it (or raise --max-files)"
                ) from None
            raise BadRequestError(f"malformed multipart body: {exc.detail}") from None
        try:
            uploads: list[tuple[str, bytes]] = []
            for i, value in enumerate(form.getlist("file")):
                if isinstance(value, str):
                    raise BadRequestError("the 'file' field must be a file upload, not a text field")
                uploads.append((value.filename or f"file{i}", await value.read()))
        finally:
            await form.close()
        if not uploads:
            raise BadRequestError(
                "no image in the request: send multipart field 'file' (repeatable) or a raw image body"
            )
        return uploads
    # Anything else is one raw image, judged by its bytes, not by its Content-Type (curl's
    # --data-binary sends application/x-www-form-urlencoded). A URL in a JSON or form body is text:
    # 415, never fetched.
    return [(filename or "upload", await counted.body())]


class _MetricsMiddleware:
    """Counts every HTTP request by route template, method and status, times it, and reports the
    time spent in the app as a ``Server-Timing: app;dur=MS`` header."""

    def __init__(self, app: Any, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
                # Time spent in the app before answering (the load test reads it).
                elapsed_ms = (time.perf_counter() - start) * 1000
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"server-timing", f"app;dur={elapsed_ms:.1f}".encode())]}
            await send(message)

        start = time.perf_counter()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(route=route, method=scope.get("method", ""),
                                         status=str(status["code"])).inc()
            self.metrics.latency.labels(route=route).observe(time.perf_counter() - start)


def _error_response(exc: NsfwlabError, metrics: ServiceMetrics | None = None) -> JSONResponse:
    status = http_status_for(exc)
    headers: dict[str, str] = {}
    if status in (429, 503):
        headers["Retry-After"] = "1"
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="nsfwlab"'
    if metrics is not None:
        metrics.errors.labels(code=exc.code).inc()
    return JSONResponse({"error": exc.message, "code": exc.code}, status_code=status, headers=headers)


def create_app(config: ServeConfig | None = None, detector: DetectorSource = None) -> FastAPI:
    """Build the service.

    ``detector``: a ready :class:`~nsfwlab.Detector` (shared, not closed by the app), a callable
    returning one (called in a background thread at startup), or ``None`` for the default
    ``Detector()``. Its thresholds define the review band.
    """
    config = config or ServeConfig()
    if config.data_dir is not None:
        # An unusable --data-dir is a typed error here, not a traceback at the server's startup.
        ReviewStore(config.data_dir).close()
    svc = Service(config, detector)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, svc.stop)

    from .. import __version__

    app = FastAPI(title="nsfwlab", version=__version__, lifespan=lifespan,
                  description="Yahoo's open_nsfw classifier as an HTTP service, with limits, metrics and "
                              "a human-review queue. Images are never fetched from URLs.")
    app.state.service = svc
    app.add_middleware(_MetricsMiddleware, metrics=svc.metrics)

    @app.exception_handler(NsfwlabError)
    async def _nsfwlab_error(request: Request, exc: NsfwlabError) -> JSONResponse:
        return _error_response(exc, svc.metrics)

    def authorize(request: Request) -> None:
        check_api_key(request.headers, config.api_keys)

    @app.get("/healthz", tags=["ops"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], summary="The model is loaded and the service scores",
             responses={503: _ERRORS[503]})
    async def readyz() -> Response:
        det, _ = svc.require_ready()
        return JSONResponse({"status": "ready", "model": det.describe()})

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        body, ctype = svc.metrics.render()
        return Response(body, media_type=ctype)

    @app.post("/v1/score", tags=["score"], summary="Score one or more images",
              response_model=ScoreResponse, openapi_extra={"requestBody": _SCORE_BODY},
              responses={k: v for k, v in _ERRORS.items()})
    async def score(request: Request,
                    filename: str | None = Query(None, max_length=255,
                                                 description="name reported for a raw-body upload")) -> Response:
        """Multipart field ``file`` (repeatable) or a raw image body. A request with several files
        answers 200 when at least one image was scored, with an error entry for each bad one; when
        none could be scored it answers the status of the first error."""
        authorize(request)
        svc.admission.enter()
        svc.metrics.in_flight.inc()
        try:
            svc.require_ready()
            uploads = await _read_uploads(request, config, filename)
            status, body = await svc.score_uploads(uploads)
        finally:
            svc.admission.leave()
            svc.metrics.in_flight.dec()
        return JSONResponse(body.model_dump(mode="json", exclude_none=True), status_code=status)

    # -- review -------------------------------------------------------------------------------
    page = files("nsfwlab.serve").joinpath("static/review.html").read_text(encoding="utf-8")

    @app.get("/review", tags=["review"], summary="The human-review page", response_class=HTMLResponse)
    async def review_page() -> HTMLResponse:
        return HTMLResponse(page, headers={
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            # The page loads nothing from elsewhere: its own script and style, thumbnails as blobs.
            "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'unsafe-inline'; "
                                       "script-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
        })

    @app.get("/v1/review/items", tags=["review"], summary="Items queued for review",
             responses={401: _ERRORS[401], 404: {"model": ErrorResponse}})
    async def review_items(request: Request, status: ReviewFilter = ReviewFilter.PENDING,
                           limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0)) -> dict[str, Any]:
        authorize(request)
        store = svc.require_store()
        wanted = None if status is ReviewFilter.ALL else ReviewStatus(status.value)
        items = await svc.run(lambda: store.items(wanted, limit=limit, offset=offset))
        counts = await svc.run(store.counts)
        return {"items": [i.to_dict() for i in items], "counts": counts}

    sha_path = Path(..., pattern="^[0-9a-f]{64}$", description="sha256 of the image")

    @app.get("/v1/review/items/{sha256}/thumbnail", tags=["review"], summary="A review item's thumbnail (JPEG)",
             response_class=Response, responses={401: _ERRORS[401], 404: {"model": ErrorResponse}})
    async def review_thumbnail(request: Request, sha256: str = sha_path) -> Response:
        authorize(request)
        store = svc.require_store()
        path = store.thumbnail_path(sha256)

        def read() -> bytes:
            try:
                return path.read_bytes()
            except FileNotFoundError:
                raise NotFoundError(f"no review item {sha256!r}") from None

        data = await svc.run(read)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    @app.post("/v1/review/items/{sha256}/label", tags=["review"], summary="Label a review item",
              responses={401: _ERRORS[401], 404: {"model": ErrorResponse}})
    async def review_label(request: Request, body: LabelRequest, sha256: str = sha_path) -> dict[str, Any]:
        authorize(request)
        store = svc.require_store()
        item = await svc.run(store.set_label, sha256, body.label, body.reviewer)
        svc.metrics.review_labels.labels(label=body.label.value).inc()
        return item.to_dict()

    return app
