"""Request limits of the service, its own error classes, and the one mapping of errors to HTTP
statuses.

The body cap is enforced while the body streams in: :class:`CountingReceive` wraps the ASGI
``receive`` callable and raises :class:`BodyTooLargeError` as soon as the bytes received exceed
the cap, so a chunked upload without ``Content-Length`` is stopped at the cap, never buffered.
It also holds the body to a deadline (:class:`RequestTimeoutError`, 408): a client that sends its
body slowly, or never finishes it, would otherwise keep one of the ``max_concurrent_requests``
slots forever, and a few hundred such connections shut every other client out (slowloris).
"""

from __future__ import annotations

import asyncio
import hmac
import threading
import time
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
    "RequestTimeoutError",
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


class RequestTimeoutError(NsfwlabError):
    """The request body did not arrive within ``ServeConfig.body_timeout_s`` (408)."""

    code = "request_timeout"


class NotReadyError(NsfwlabError):
    """The model is still loading, failed to load, or the server is shutting down (503)."""

    code = "not_ready"


# Order matters: the first matching class wins (subclasses before their bases).
_STATUS: tuple[tuple[type[NsfwlabError], int], ...] = (
    (UnauthorizedError, 401),
    (OverloadedError, 429),
    (NotReadyError, 503),
    (RequestTimeoutError, 408),
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
    """An ASGI ``receive`` wrapper that counts body bytes and stops at ``cap``, and gives the whole
    body ``timeout`` seconds (``None``: no deadline) from the first read."""

    def __init__(self, receive: Receive, cap: int, timeout: float | None = None) -> None:
        self._receive = receive
        self.cap = cap
        self.received = 0
        self.timeout = timeout
        self._deadline: float | None = None

    async def __call__(self) -> MutableMapping[str, Any]:
        if self.timeout is None:
            message = await self._receive()
        else:
            now = time.monotonic()
            if self._deadline is None:
                self._deadline = now + self.timeout
            try:
                message = await asyncio.wait_for(self._receive(), max(0.0, self._deadline - now))
            except TimeoutError:
                raise RequestTimeoutError(
                    f"the request body did not arrive within {self.timeout:g} s "
                    f"({self.received} bytes received); send it faster or raise --body-timeout"
                ) from None
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
