"""Request limits of the service: the streaming body cap and deadline, admission, API keys.

The body cap is enforced while the body streams in: :class:`CountingReceive` wraps the ASGI
``receive`` callable and raises :class:`BodyTooLargeError` as soon as the bytes received exceed
the cap, so a chunked upload without ``Content-Length`` is stopped at the cap, never buffered.
It also holds the body to a deadline (:class:`RequestTimeoutError`, 408): a client that sends its
body slowly, or never finishes it, would otherwise keep one of the ``max_concurrent_requests``
slots forever, and a few hundred such connections shut every other client out (slowloris).
When the server cancels a request whose body is still arriving (uvicorn does at the end of the
graceful-shutdown timeout), the request is answered :class:`NotReadyError` (503, retry on another
instance) and one line is logged, instead of a 500 and tracebacks.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from .errors import (
    BadRequestError,
    BodyTooLargeError,
    NotFoundError,
    NotReadyError,
    OverloadedError,
    RateLimitedError,
    RequestTimeoutError,
    TooManyFilesError,
    UnauthorizedError,
    http_status_for,
)

__all__ = [  # the errors are re-exported for the callers that took them from here
    "Admission",
    "BadRequestError",
    "BodyTooLargeError",
    "CountingReceive",
    "NotFoundError",
    "NotReadyError",
    "OverloadedError",
    "RateLimitedError",
    "RequestTimeoutError",
    "TooManyFilesError",
    "UnauthorizedError",
    "check_api_key",
    "check_declared_length",
    "http_status_for",
    "match_api_key",
]


log = logging.getLogger("nsfwlab.serve")

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class CountingReceive:
    """An ASGI ``receive`` wrapper that counts body bytes and stops at ``cap``, and gives the whole
    body ``timeout`` seconds (``None``: no deadline) from the first read."""

    def __init__(self, receive: Receive, cap: int, timeout: float | None = None, *,
                 cap_name: str = "max_body_bytes") -> None:
        self._receive = receive
        self.cap = cap
        self.cap_name = cap_name
        self.received = 0
        self.timeout = timeout
        self._deadline: float | None = None

    async def __call__(self) -> MutableMapping[str, Any]:
        try:
            message = await self._next()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or not task.cancelling():
                raise
            task.uncancel()  # the server gave up on this request at shutdown: answer it, once
            log.warning("shutting down with the request body unfinished (%d bytes received): answered 503",
                        self.received)
            raise NotReadyError("the server is shutting down; retry on another instance") from None
        if message.get("type") == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.cap:
                raise BodyTooLargeError(f"request body is over the cap of {self.cap} bytes ({self.cap_name})",
                                        param=self.cap_name)
        return message

    async def _next(self) -> MutableMapping[str, Any]:
        if self.timeout is None:
            return await self._receive()
        now = time.monotonic()
        if self._deadline is None:
            self._deadline = now + self.timeout
        try:
            return await asyncio.wait_for(self._receive(), max(0.0, self._deadline - now))
        except TimeoutError:
            raise RequestTimeoutError(
                f"the request body did not arrive within {self.timeout:g} s "
                f"({self.received} bytes received); send it faster or raise body_timeout_s",
                param="body_timeout_s",
            ) from None


def check_declared_length(headers: Mapping[str, str], cap: int, cap_name: str) -> None:
    """Refuse at once (413) a body whose ``Content-Length`` is over ``cap``, before reading any of it
    (400 when the header is not a number)."""
    declared = headers.get("content-length")
    if declared is None:
        return
    try:
        size = int(declared)
    except ValueError:
        raise BadRequestError("Content-Length is not a number") from None
    if size > cap:
        raise BodyTooLargeError(f"request body of {size} bytes is over the cap of {cap} bytes ({cap_name})",
                                param=cap_name)


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


def match_api_key(given: str | None, keys: tuple[str, ...]) -> str | None:
    """The configured key equal to ``given`` (``None`` when no keys are configured); raise
    :class:`UnauthorizedError` when keys are configured and ``given`` is none of them."""
    if not keys:
        return None
    if not given:
        raise UnauthorizedError("an API key is required: send it as 'X-API-Key: KEY' or 'Authorization: Bearer KEY'")
    given_b = given.encode("utf-8", "surrogateescape")
    # Compare against every key so timing does not tell which (or whether an early) key matched.
    found: str | None = None
    for key in keys:
        if hmac.compare_digest(given_b, key.encode("utf-8")):
            found = key
    if found is None:
        raise UnauthorizedError("the API key is not valid")
    return found


def check_api_key(headers: Mapping[str, str], keys: tuple[str, ...]) -> str | None:
    """:func:`match_api_key` on the key a request's headers carry (``X-API-Key``, else
    ``Authorization: Bearer``)."""
    given = headers.get("x-api-key")
    if given is None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token:
            given = token.strip()
    return match_api_key(given, keys)
