"""The service's own errors and the one mapping of errors to HTTP statuses.

The HTTP-only errors are ordinary :class:`~nsfwlab.errors.NsfwlabError` subclasses (a stable
``code`` and a message), declared in one line each: :class:`ServeError` takes ``code`` and
``status`` as class keywords, so each class carries its own status. Core errors map to statuses
in :data:`CORE_STATUS`. Nothing here imports the web stack.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from .. import errors as core

__all__ = [
    "CORE_STATUS",
    "BadRequestError",
    "BodyTooLargeError",
    "ForbiddenHostError",
    "ForbiddenOriginError",
    "InvalidRequestError",
    "NotFoundError",
    "NotReadyError",
    "OverloadedError",
    "QueryAttackError",
    "RateLimitedError",
    "RequestTimeoutError",
    "ServeError",
    "TooManyFilesError",
    "UnauthorizedError",
    "UnknownModelError",
    "UnsupportedMediaTypeError",
    "describe_validation",
    "error_headers",
    "http_status_for",
]


class ServeError(core.NsfwlabError):
    """An error only the HTTP edge raises; its class carries its HTTP ``status``.

    ``retry_after``: seconds a client should wait (sent as ``Retry-After`` on 429 and 503).
    """

    status: ClassVar[int] = 500
    retry_after: float | None = None

    def __init_subclass__(cls, *, code: str | None = None, status: int | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code
        if status is not None:
            cls.status = status


class BadRequestError(ServeError, ValueError, code="bad_request", status=400):
    """The request itself is malformed (no image in it, a broken multipart body)."""


class InvalidRequestError(ServeError, ValueError, code="invalid_request", status=422):
    """A parameter or JSON body does not match the API's schema."""


class UnauthorizedError(ServeError, code="unauthorized", status=401):
    """API keys are configured and the request carries none of them."""


class ForbiddenOriginError(ServeError, code="forbidden_origin", status=403):
    """A state-changing request came from a web page of another origin (its ``Origin`` header is
    neither the server's own origin nor one of ``ServeConfig.allow_origins``)."""


class ForbiddenHostError(ServeError, code="forbidden_host", status=403):
    """The request's ``Host`` header is none of ``ServeConfig.allowed_hosts`` (a page reaching a
    local server through a DNS name of its own: DNS rebinding)."""


class QueryAttackError(ServeError, code="query_attack", status=403):
    """This API key (or client) was flagged as running a query attack (many near-duplicates of one
    image probing the model) and the server blocks flagged callers (``ServeConfig.on_attack``)."""


class UnsupportedMediaTypeError(ServeError, code="unsupported_media_type", status=415):
    """A JSON route was sent a body whose ``Content-Type`` is not ``application/json``."""


class NotFoundError(ServeError, LookupError, code="not_found", status=404):
    """No such review item (or route)."""


class UnknownModelError(ServeError, LookupError, code="unknown_model", status=404):
    """A request names a model (``?model=``) that this server does not serve."""


class RequestTimeoutError(ServeError, code="request_timeout", status=408):
    """The request body did not arrive within ``ServeConfig.body_timeout_s``."""


class BodyTooLargeError(ServeError, core.ImageTooLargeError, code="body_too_large", status=413):
    """The request body is over ``ServeConfig.max_body_bytes``."""


class TooManyFilesError(ServeError, core.ImageTooLargeError, code="too_many_files", status=413):
    """A multipart request carries more image parts than ``ServeConfig.max_files``."""


class OverloadedError(ServeError, code="overloaded", status=429):
    """Too much work is queued; the client should retry later."""

    retry_after = 1.0


class RateLimitedError(ServeError, code="rate_limited", status=429):
    """This API key (or client) sent more requests than ``ServeConfig.rate_limit`` allows."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotReadyError(ServeError, code="not_ready", status=503):
    """The model is still loading, failed to load, or the server is shutting down."""

    retry_after = 1.0


#: Statuses of the core's errors; the first matching class wins (subclasses before their bases).
CORE_STATUS: tuple[tuple[type[core.NsfwlabError], int], ...] = (
    (core.ImageTooLargeError, 413),
    (core.UnsupportedFormatError, 415),
    (core.ImageError, 422),
    (core.ConfigError, 400),
    (core.ModelError, 500),
)


def http_status_for(exc: core.NsfwlabError) -> int:
    """The one place where error classes map to HTTP statuses."""
    if isinstance(exc, ServeError):
        return exc.status
    return next((status for cls, status in CORE_STATUS if isinstance(exc, cls)), 500)


def error_headers(exc: core.NsfwlabError) -> dict[str, str]:
    """The headers an error's answer carries: ``Retry-After`` for those that say when to come back
    (429, 503), ``WWW-Authenticate`` for 401. Used by every path that answers an error's status."""
    headers: dict[str, str] = {}
    retry = exc.retry_after if isinstance(exc, ServeError) else None
    if retry is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry)))
    if http_status_for(exc) == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="nsfwlab"'
    return headers


def describe_validation(errors: Iterable[Mapping[str, Any]], where: str | None = None) -> str:
    """One line from pydantic's validation errors: ``query.limit: Input should be ...; ...``."""
    parts = []
    for err in errors:
        loc = [str(x) for x in err.get("loc", ())]
        if where is not None and (not loc or loc[0] != where):
            loc.insert(0, where)
        parts.append(f"{'.'.join(loc) or 'request'}: {err.get('msg', 'invalid')}")
    return "invalid request: " + ("; ".join(parts[:5]) or "malformed")
