"""FastAPI dependencies: the service, the caller (the API-key check, a security dependency, so the
OpenAPI document declares both schemes, then the caller's rate limit) and admission (a ``yield``
dependency around the handler)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from .errors import RateLimitedError
from .limits import match_api_key
from .service import Service

__all__ = ["Caller", "admitted", "authenticated", "caller", "get_service", "key_id", "service_of"]

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
