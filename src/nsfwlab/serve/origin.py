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

One attack passes the Origin rule: DNS rebinding, where a page's own host name is made to resolve
to the server (127.0.0.1), so its requests are same-origin. They still carry the page's host name
in ``Host``: with ``ServeConfig.allowed_hosts`` set (the CLI sets the loopback names when it
listens on a loopback address), any other ``Host`` is refused with 403 on every request.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError
from .errors import ForbiddenHostError, ForbiddenOriginError, ServeError, error_headers, http_status_for
from .metrics import ServiceMetrics

__all__ = ["STATE_CHANGING_METHODS", "OriginMiddleware", "host_name", "normalize_host", "normalize_origin",
           "own_origin"]

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
    host = _header(scope, b"host")
    if not host:
        return None
    scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
    try:
        return normalize_origin(f"{scheme}://{host}")
    except ConfigError:
        return None


def normalize_host(text: str) -> str:
    """A host name as ``allowed_hosts`` holds it: lower case, IPv6 in brackets, no port."""
    name = text.strip().lower()
    bare = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    if ":" in bare:
        try:
            return f"[{ipaddress.IPv6Address(bare)}]"
        except ValueError:
            pass
    elif bare and all(c.isalnum() or c in ".-_" for c in bare):
        return bare
    raise ConfigError(f"allowed_hosts: {text!r} is not a host name (give a name or an address, without a port)",
                      param="allowed_hosts")


def host_name(scope: dict[str, Any]) -> str | None:
    """The host name of a request's ``Host`` header, normalised, without its port."""
    host = _header(scope, b"host")
    if not host:
        return None
    try:
        name = urlsplit(f"http://{host}").hostname
    except ValueError:
        return None
    try:
        return normalize_host(name) if name else None
    except ConfigError:
        return None


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    return next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == name), None)


class OriginMiddleware:
    """Answers 403 ``forbidden_host`` to a request whose ``Host`` is not allowed (when
    ``allowed_hosts`` is set), and 403 ``forbidden_origin`` to a state-changing request from
    another web origin."""

    def __init__(self, app: Any, allowed: Iterable[str], metrics: ServiceMetrics | None = None,
                 hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = frozenset(allowed)
        self.hosts = frozenset(hosts)
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            refusal = self._refusal(scope)
            if refusal is not None:
                from starlette.responses import JSONResponse

                if self.metrics is not None:
                    self.metrics.errors.labels(code=refusal.code).inc()
                response = JSONResponse({"error": refusal.message, "code": refusal.code},
                                        status_code=http_status_for(refusal), headers=error_headers(refusal))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: dict[str, Any]) -> ServeError | None:
        if self.hosts and host_name(scope) not in self.hosts:
            host = _header(scope, b"host") or ""
            return ForbiddenHostError(f"this server does not answer to the host name {host[:200]!r} "
                                      f"(allowed: {', '.join(sorted(self.hosts))})")
        if scope.get("method", "") in STATE_CHANGING_METHODS:
            origin = _header(scope, b"origin")
            if origin is not None and not self._allows(origin, scope):
                return ForbiddenOriginError(
                    f"requests from the web origin {origin[:200]!r} may not change this server's state "
                    "(only its own origin and the allowed origins may)")
        return None

    def _allows(self, origin: str, scope: dict[str, Any]) -> bool:
        try:
            given = normalize_origin(origin)  # "null" (sandboxed frames, file: pages) is no origin: refused
        except ConfigError:
            return False
        return given in self.allowed or given == own_origin(scope)
