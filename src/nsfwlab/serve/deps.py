"""FastAPI dependencies: the service, the caller (the API-key check, a security dependency, so the
OpenAPI document declares both schemes, then the caller's rate limit), admission (a ``yield``
dependency around the handler) and JSON bodies (:func:`json_body`)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from .config import AttackPolicy
from .errors import (
    BadRequestError,
    InvalidRequestError,
    QueryAttackError,
    RateLimitedError,
    UnsupportedMediaTypeError,
    describe_validation,
)
from .limits import CountingReceive, check_declared_length, match_api_key
from .service import Service

__all__ = ["Caller", "admitted", "attack_guard", "authenticated", "caller", "get_service", "json_body", "key_id",
           "service_of", "tracked_id"]

ModelT = TypeVar("ModelT", bound=BaseModel)

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="one of the server's API keys")
bearer_scheme = HTTPBearer(auto_error=False, description="one of the server's API keys as a bearer token")


def service_of(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


async def get_service(request: Request) -> Service:
    """The app's :class:`Service` (``async``: FastAPI runs a plain ``def`` dependency in a thread)."""
    return service_of(request)


def key_id(key: str) -> str:
    """A short, stable, non-reversible id of an API key (metrics and the audit log name keys by it)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the id of its API key (``None`` without keys) and its client address."""

    key_id: str | None
    client: str


def tracked_id(who: Caller) -> str:
    """Whom per-caller state (rate limit, attack sentinel) is kept for: the API key, else the client."""
    return f"key:{who.key_id}" if who.key_id else f"client:{who.client}"


# The dependencies below take the service from the request rather than through Depends(get_service):
# each sub-dependency costs FastAPI a solve on every /v1 request.


async def authenticated(request: Request, x_api_key: str | None = Security(api_key_header),
                        bearer: HTTPAuthorizationCredentials | None = Security(bearer_scheme)) -> Caller:
    """Raise ``UnauthorizedError`` (401) unless keys are off or the request carries one."""
    given = x_api_key or (bearer.credentials.strip() if bearer is not None else None)
    key = match_api_key(given, service_of(request).config.api_keys)
    return Caller(key_id(key) if key is not None else None, request.client.host if request.client else "")


async def caller(request: Request, who: Caller = Security(authenticated)) -> Caller:
    """The authenticated caller, within its rate limit (else ``RateLimitedError``, 429)."""
    svc = service_of(request)
    limiter = svc.rate_limiter
    label = who.key_id or "-"
    if limiter is not None:
        wait = limiter.take(who.key_id or f"client:{who.client}")
        if wait is not None:
            svc.metrics.key_requests.labels(key=label, outcome="rate_limited").inc()
            raise RateLimitedError(f"over the rate limit of {limiter.limit} for this "
                                   f"{'API key' if who.key_id else 'client'}; retry in {wait:.1f} s",
                                   retry_after=wait)
    svc.metrics.key_requests.labels(key=label, outcome="allowed").inc()
    return who


async def _guard_attacks(request: Request, who: Caller = Security(caller)) -> Caller:
    """A caller the sentinel flagged is handled by ``ServeConfig.on_attack``: refused
    (``QueryAttackError``, 403), delayed by ``attack_delay_s``, or only counted. Runs before
    admission, so a delayed request holds no scoring slot while it waits."""
    svc = service_of(request)
    sentinel = svc.sentinel
    if sentinel is None or not sentinel.is_flagged(tracked_id(who), time.monotonic()):
        return who
    policy = svc.config.on_attack
    outcome = {AttackPolicy.BLOCK: "blocked", AttackPolicy.SLOW: "slowed"}.get(policy, "logged")
    svc.metrics.attack_requests.labels(outcome=outcome).inc()
    if policy is AttackPolicy.BLOCK:
        raise QueryAttackError(f"this {'API key' if who.key_id else 'client'} was flagged as running a query attack "
                               "(many near-duplicates of one image probing the model); its scoring requests are "
                               "refused for a while")
    if policy is AttackPolicy.SLOW:
        await asyncio.sleep(svc.config.attack_delay_s)
    return who


#: The sentinel's policy for a flagged caller; list it before ``admitted``.
attack_guard = Depends(_guard_attacks)


async def _admit(request: Request) -> AsyncIterator[None]:
    svc = service_of(request)
    svc.admission.enter()  # 429 at once when max_concurrent_requests are being handled
    svc.metrics.in_flight.inc()
    try:
        yield
    finally:
        svc.admission.leave()
        svc.metrics.in_flight.dec()


#: Admission around the handler only (released before the response is sent, as a slot is free then).
admitted = Depends(_admit, scope="function")


def json_body(model: type[ModelT]) -> Callable[[Request], Awaitable[ModelT]]:
    """A dependency reading the request body as ``model``: only ``Content-Type: application/json``
    (415 otherwise: a cross-site HTML form can send only form encodings and ``text/plain``), at
    most ``ServeConfig.max_json_bytes`` (413 from ``Content-Length`` before reading, or as soon as
    a streamed body passes the cap). Declared after the API-key check, it reads nothing for a
    caller without a key."""

    async def read(request: Request) -> ModelT:
        ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            raise UnsupportedMediaTypeError(
                f"this route takes a JSON body sent as 'Content-Type: application/json', not {ctype or 'none'!r}")
        config = service_of(request).config
        check_declared_length(request.headers, config.max_json_bytes, "max_json_bytes")
        receive = CountingReceive(request.receive, config.max_json_bytes, config.body_timeout_s,
                                  cap_name="max_json_bytes")
        try:
            raw = await Request(request.scope, receive).body()
        except ClientDisconnect:
            raise BadRequestError("the client disconnected before sending the whole body") from None
        try:
            return model.model_validate_json(raw or b"null")
        except ValidationError as exc:
            raise InvalidRequestError(describe_validation(exc.errors(), "body")) from None

    return read
