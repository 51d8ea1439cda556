"""Cross-site requests: which web origins may change the service's state.

A browser lets any page send a POST to any server (an HTML form, or ``fetch`` with
``mode: "no-cors"``): the page cannot read the answer, but the request is made. Against a server
without API keys such a request would label review items and bank the decision. Browsers name the
page that sent a request in its ``Origin`` header, which a page cannot forge, so a state-changing
request (``POST``, ``PUT``, ``PATCH``, ``DELETE``) whose ``Origin`` is present and is neither the
server's own origin (the scheme of the connection and its ``Host`` header) nor one of
``ServeConfig.allow_origins`` is refused with 403 before any route runs. Requests without
``Origin`` (curl, SDKs, server-to-server calls) are not browsers' cross-site requests and pass.
The service sends no CORS headers, so no other origin's script can read its answers either.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError
from .errors import ForbiddenOriginError, error_headers, http_status_for
from .metrics import ServiceMetrics

__all__ = ["STATE_CHANGING_METHODS", "OriginMiddleware", "normalize_origin", "own_origin"]

STATE_CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_origin(text: str) -> str:
    """``scheme://host[:port]`` in lower case, without the scheme's default port; ``ConfigError``
    for anything that is not an http(s) origin (a path, a query, credentials, ``*``)."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        parts, port = None, None
    if (parts is None or parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname
            or parts.path not in ("", "/") or parts.query or parts.fragment or parts.username is not None):
        raise ConfigError(f"allow_origins: {text!r} is not a web origin; give scheme://host[:port], e.g. "
                          "https://review.example.com (no path, no wildcard)", param="allow_origins")
    scheme = parts.scheme.lower()
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" if port in (None, _DEFAULT_PORTS[scheme]) else f"{scheme}://{host}:{port}"


def own_origin(scope: dict[str, Any]) -> str | None:
    """The origin a browser gives a page served by this server on this request's connection:
    the connection's scheme and the ``Host`` header (``None`` without a usable one)."""
    host = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"host"), None)
    if not host:
        return None
    scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
    try:
        return normalize_origin(f"{scheme}://{host}")
    except ConfigError:
        return None


class OriginMiddleware:
    """Answers 403 ``forbidden_origin`` to a state-changing request from another web origin."""

    def __init__(self, app: Any, allowed: Iterable[str], metrics: ServiceMetrics | None = None) -> None:
        self.app = app
        self.allowed = frozenset(allowed)
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("method", "") in STATE_CHANGING_METHODS:
            origin = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"origin"), None)
            if origin is not None and not self._allows(origin, scope):
                from starlette.responses import JSONResponse

                exc = ForbiddenOriginError(
                    f"requests from the web origin {origin[:200]!r} may not change this server's state "
                    "(only its own origin and the allowed origins may)")
                if self.metrics is not None:
                    self.metrics.errors.labels(code=exc.code).inc()
                response = JSONResponse({"error": exc.message, "code": exc.code}, status_code=http_status_for(exc),
                                        headers=error_headers(exc))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _allows(self, origin: str, scope: dict[str, Any]) -> bool:
        try:
            given = normalize_origin(origin)  # "null" (sandboxed frames, file: pages) is no origin: refused
        except ConfigError:
            return False
        return given in self.allowed or given == own_origin(scope)
