"""The FastAPI application: ``create_app(config, detector=None)``.

Routes (see :mod:`nsfwlab.serve.routers`): ``POST /v1/score`` (multipart field ``file``,
repeatable, or a raw image body; ``?model=ID`` on a server of several models), ``GET /v1/models``,
``GET /healthz``, ``GET /readyz``, ``GET /metrics``, the review
page ``GET /review`` and its API under ``/v1/review``, and FastAPI's ``/openapi.json`` and ``/docs``.
The ``/v1`` routes depend on the API-key check; scoring also on admission. State-changing requests
from another web origin are refused before any route (:mod:`~nsfwlab.serve.origin`); no CORS
headers are sent. The state of the app
(:class:`~nsfwlab.serve.service.Service`) lives on ``app.state.service``.

Decoding and preprocessing go through the core (``Detector.preprocess``) in a small thread pool;
model calls go through the :class:`~nsfwlab.serve.batching.MicroBatcher` worker thread. Nothing
blocks the event loop. Every error becomes JSON ``{"error", "code"}`` with the status of
:func:`~nsfwlab.serve.errors.http_status_for`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ConfigError, NsfwlabError
from .config import ServeConfig
from .errors import InvalidRequestError, NotFoundError, describe_validation, error_headers, http_status_for
from .matching import check_bank
from .metrics import ServiceMetrics
from .origin import OriginMiddleware
from .review import ReviewStore
from .routers import ops, review, score
from .schemas import ErrorResponse, ScoreItem, ScoreResponse
from .service import DetectorSource, ModelSources, Service

__all__ = ["ErrorResponse", "ScoreItem", "ScoreResponse", "Service", "create_app"]


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


def error_response(exc: NsfwlabError, metrics: ServiceMetrics | None = None) -> JSONResponse:
    """The one JSON shape of every error: ``{"error", "code"}``, with its status and headers."""
    if metrics is not None:
        metrics.errors.labels(code=exc.code).inc()
    return JSONResponse({"error": exc.message, "code": exc.code}, status_code=http_status_for(exc),
                        headers=error_headers(exc))


def _install_error_handlers(app: FastAPI, metrics: ServiceMetrics) -> None:
    async def nsfwlab_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, NsfwlabError)
        return error_response(exc, metrics)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(InvalidRequestError(describe_validation(exc.errors())), metrics)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            return error_response(NotFoundError(f"no route {request.url.path!r}"), metrics)
        code = {405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": str(exc.detail), "code": code}, status_code=exc.status_code,
                            headers=dict(exc.headers or {}))

    app.add_exception_handler(NsfwlabError, nsfwlab_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)


def create_app(config: ServeConfig | None = None, detector: DetectorSource | ModelSources = None) -> FastAPI:
    """Build the service.

    ``detector``: a ready :class:`~nsfwlab.Detector` (shared, not closed by the app), a callable
    returning one (called in a background thread at startup), or ``None`` for the default
    ``Detector()``. Its thresholds define the review band. Several models: a mapping of ids to
    such sources, the default first; a request picks one with ``?model=ID``, and each model
    answers with its own bands and calibration.
    """
    config = config or ServeConfig()
    if config.data_dir is not None:
        # An unusable --data-dir is a typed error here, not a traceback at the server's startup.
        ReviewStore(config.data_dir).close()
    check_bank(config.bank)
    if config.detect_attacks is not None and importlib.util.find_spec("pdqhash") is None:
        raise ConfigError("detecting query attacks needs PDQ hashing: pip install 'nsfwlab[bank]'",
                          param="detect_attacks")
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
    # Added last, the metrics middleware is outermost: it also counts the origin check's refusals.
    app.add_middleware(OriginMiddleware, allowed=config.allow_origins, metrics=svc.metrics,
                       hosts=config.allowed_hosts)
    app.add_middleware(_MetricsMiddleware, metrics=svc.metrics)
    _install_error_handlers(app, svc.metrics)
    for router in (ops.router, score.router, review.page, review.api):
        app.include_router(router)
    return app
