"""Request limits of the service, its own error classes, and the one mapping of errors to HTTP
statuses.

The body cap is enforced while the body streams in: :class:`CountingReceive` wraps the ASGI
``receive`` callable and raises :class:`BodyTooLargeError` as soon as the bytes received exceed
the cap, so a chunked upload without ``Content-Length`` is stopped at the cap, never buffered.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from ..errors import (
    ConfigError,
    CorruptImageError,
    EmptyImageError,
    ImageError,
    ImageTooLargeError,
    ModelError,
    NsfwlabError,
    TruncatedImageError,
    UnsupportedFormatError,
)

__all__ = [
    "Admission",
    "BadRequestError",
    "BodyTooLargeError",
    "CountingReceive",
    "NotFoundError",
    "NotReadyError",
    "OverloadedError",
    "TooManyFilesError",
    "UnauthorizedError",
    "check_api_key",
    "http_status_for",
]


class BodyTooLargeError(ImageTooLargeError):
    """The request body is over ``ServeConfig.max_body_bytes``."""

    code = "body_too_large"


class TooManyFilesError(ImageTooLargeError):
    """A multipart request carries more image parts than ``ServeConfig.max_files``."""

    code = "too_many_files"


class BadRequestError(NsfwlabError, ValueError):
    """The request itself is malformed (no image in it, a broken multipart body)."""

    code = "bad_request"


class NotFoundError(NsfwlabError, LookupError):
    """No such review item."""

    code = "not_found"


class UnauthorizedError(NsfwlabError):
    """API keys are configured and the request carries none of them."""

    code = "unauthorized"


class OverloadedError(NsfwlabError):
    """Too much work is queued; the client should retry later (429 with ``Retry-After``)."""

    code = "overloaded"


class NotReadyError(NsfwlabError):
    """The model is still loading, failed to load, or the server is shutting down (503)."""

    code = "not_ready"


# Order matters: the first matching class wins (subclasses before their bases).
_STATUS: tuple[tuple[type[NsfwlabError], int], ...] = (
    (UnauthorizedError, 401),
    (OverloadedError, 429),
    (NotReadyError, 503),
    (BadRequestError, 400),
    (NotFoundError, 404),
    (BodyTooLargeError, 413),
    (TooManyFilesError, 413),
    (ImageTooLargeError, 413),
    (UnsupportedFormatError, 415),
    (TruncatedImageError, 422),
    (CorruptImageError, 422),
    (EmptyImageError, 422),
    (ImageError, 422),
    (ConfigError, 400),
    (ModelError, 500),
)


def http_status_for(exc: NsfwlabError) -> int:
    """The one place where error classes map to HTTP statuses."""
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class CountingReceive:
    """An ASGI ``receive`` wrapper that counts body bytes and stops at ``cap``."""

    def __init__(self, receive: Receive, cap: int) -> None:
        self._receive = receive
        self.cap = cap
        self.received = 0

    async def __call__(self) -> MutableMapping[str, Any]:
        message = await self._receive()
        if message.get("type") == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.cap:
                raise BodyTooLargeError(
                    f"request body is over the cap of {self.cap} bytes "
                    "(send fewer or smaller images, or raise --max-body-bytes)"
                )
        return message


class Admission:
    """A non-blocking counter of requests in progress: ``enter`` refuses at once when full."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._active = 0
        self._lock = threading.Lock()

    @property
    def active(self) -> int:
        return self._active

    def enter(self) -> None:
        with self._lock:
            if self._active >= self.limit:
                raise OverloadedError(
                    f"{self._active} requests are already being handled (limit {self.limit}); retry shortly"
                )
            self._active += 1

    def leave(self) -> None:
        with self._lock:
            self._active -= 1


def check_api_key(headers: Mapping[str, str], keys: tuple[str, ...]) -> None:
    """Raise :class:`UnauthorizedError` unless ``keys`` is empty or a header carries one of them."""
    if not keys:
        return
    given = headers.get("x-api-key")
    if given is None:
        auth = headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token:
            given = token.strip()
    if not given:
        raise UnauthorizedError("an API key is required: send it as 'X-API-Key: KEY' or 'Authorization: Bearer KEY'")
    given_b = given.encode("utf-8", "surrogateescape")
    # Compare against every key so timing does not tell which (or whether an early) key matched.
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given_b, key.encode("utf-8"))
    if not ok:
        raise UnauthorizedError("the API key is not valid")
