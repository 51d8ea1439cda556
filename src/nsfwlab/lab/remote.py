"""A live ``nsfwlab serve`` as an attack oracle: each image is one PNG upload to ``POST /v1/score``.

:class:`ServiceOracle` answers what the service answers: the NSFW score, or, from a server that
hides scores (``--answer label``), 1.0 for a label other than ``safe`` and 0.0 for ``safe``. It is
a polite client: a 429 is retried after its ``Retry-After`` (at most ``max_wait_s`` of waiting for
one image, then a one-line :class:`ServiceError`). A 403 ``query_attack`` (a server that flagged
this API key as running a query attack and blocks it) raises :class:`ServiceBlocked`, which tells
the attack at which query it was refused. Every other HTTP or connection failure is a one-line
:class:`ServiceError`.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, NsfwlabError
from ..sidefiles import parse_json

if TYPE_CHECKING:
    import httpx

__all__ = ["ServiceBlocked", "ServiceError", "ServiceOracle"]


class ServiceError(NsfwlabError):
    """The service could not be reached or did not answer a query."""

    code = "service_error"


class ServiceBlocked(ServiceError):
    """The service refused this caller as running a query attack (403 ``query_attack``).

    ``at_query``: the oracle's count of answered queries when it was refused; ``answered``: the
    answers to the images of the refused call that were answered before the refusal."""

    code = "query_attack"

    def __init__(self, message: str, *, at_query: int, answered: np.ndarray | None = None) -> None:
        super().__init__(message)
        self.at_query = at_query
        self.answered = answered


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


#: The largest answer read from a service: nsfwlab's answers are a few hundred bytes; a larger one is refused
#: rather than held in memory.
MAX_ANSWER_BYTES = 1 << 20


@dataclass(frozen=True)
class _Answer:
    """A service's answer, read whole but bounded (:data:`MAX_ANSWER_BYTES`); ``json()`` parses it strictly
    (no NaN, bounded nesting) and raises :class:`ServiceError` on anything else."""

    status_code: int
    headers: Mapping[str, str]
    reason_phrase: str
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return parse_json(self.text, "the service's answer", error=ServiceError)


def _error_text(resp: _Answer) -> str:
    try:
        body = resp.json()
        return f"{body.get('error', '')} ({body.get('code', resp.status_code)})"
    except (ServiceError, AttributeError):
        return resp.text.strip().splitlines()[0][:200] if resp.text.strip() else resp.reason_phrase


class ServiceOracle:
    """An :class:`~nsfwlab.lab.differentiable.Oracle` over a live ``nsfwlab serve`` at ``url``.

    ``api_key``: sent as ``X-API-Key`` (``None``: a server without keys). ``model``: one of the
    server's model ids (``GET /v1/models``); ``None``: its default. ``threshold``: the score at and
    above which an answer is NSFW; a server answering labels only reveals only its bands, and the
    threshold is then the model's ``safe_below`` (a label other than ``safe`` counts as NSFW).
    ``timeout_s``: per HTTP request. ``max_wait_s``: the longest total wait on 429 answers for one
    request. ``client``: an ``httpx.Client`` to send through (tests); by default one is opened.

    On construction it reads ``GET /v1/models`` (not a scoring query) to learn the model's bands and
    whether the server answers labels only. ``queries`` counts the images the service answered;
    ``blocked_at_query`` is that count when it first refused with 403 ``query_attack``;
    ``rate_limited`` counts 429 answers and ``waited_s`` the seconds slept on them."""

    def __init__(self, url: str, api_key: str | None, *, model: str | None = None, threshold: float = 0.5,
                 timeout_s: float = 60.0, max_wait_s: float = 120.0, client: httpx.Client | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        import httpx

        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"threshold must lie strictly between 0 and 1, got {threshold}", param="threshold")
        if not max_wait_s >= 0:
            raise ConfigError(f"max_wait_s must not be negative, got {max_wait_s}", param="max_wait_s")
        self.url = url.rstrip("/")
        headers = {"X-API-Key": api_key} if api_key else {}
        self._client = client if client is not None else httpx.Client(base_url=self.url, timeout=timeout_s)
        self._owns_client = client is None
        self._headers = headers
        self._sleep = sleep
        self.max_wait_s = float(max_wait_s)
        self.queries = 0
        self.blocked_at_query: int | None = None
        self.rate_limited = 0
        self.waited_s = 0.0
        info = self._models()
        listed = info.get("models") or []
        chosen = next((m for m in listed if m.get("id") == model), None) if model is not None else (
            next((m for m in listed if m.get("default")), listed[0] if listed else None))
        if chosen is None:
            ids = ", ".join(str(m.get("id")) for m in listed) or "none"
            raise ConfigError(f"the service at {self.url} serves no model {model!r} (it serves: {ids})",
                              param="model")
        self.model = model
        self.model_info: dict[str, Any] = dict(chosen)
        self.labels_only = info.get("answer") == "label"
        self.threshold = float(chosen.get("safe_below", 0.2)) if self.labels_only else float(threshold)
        self.name = f"{self.url}" + (f" ({model})" if model else "")

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> ServiceOracle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, what: str, **kwargs: Any) -> _Answer:
        """One request, repeated after each 429's ``Retry-After`` while the total wait stays within
        ``max_wait_s``; a transport failure, an answer over :data:`MAX_ANSWER_BYTES` or a 429 past that wait
        is a one-line ``ServiceError``."""
        import httpx

        waited = 0.0
        while True:
            try:
                with self._client.stream(method, path, **kwargs) as raw:
                    body = bytearray()
                    for chunk in raw.iter_bytes():
                        body += chunk
                        if len(body) > MAX_ANSWER_BYTES:
                            raise ServiceError(f"the service at {self.url} answered {what} with over "
                                               f"{MAX_ANSWER_BYTES} bytes (is it an nsfwlab server?)")
                    resp = _Answer(raw.status_code, raw.headers, raw.reason_phrase, bytes(body))
            except httpx.HTTPError as exc:
                raise ServiceError(f"the service at {self.url} did not answer {what}: "
                                   f"{type(exc).__name__}: {exc}") from None
            if resp.status_code != 429:
                return resp
            self.rate_limited += 1
            wait = _retry_after(resp)
            if waited + wait > self.max_wait_s:
                raise ServiceError(f"the service at {self.url} kept answering 429 (rate limited or overloaded) to "
                                   f"{what} for {waited:.0f} s; gave up after {self.queries} answered queries")
            self._sleep(wait)
            waited += wait
            self.waited_s += wait

    def _models(self) -> dict[str, Any]:
        resp = self._request("GET", "/v1/models", "GET /v1/models", headers=self._headers)
        self._check_answered(resp, "GET /v1/models")
        try:
            body = resp.json()
        except ServiceError:
            raise ServiceError(f"the service at {self.url} answered GET /v1/models with something other than "
                               "JSON (is it an nsfwlab server?)") from None
        if not isinstance(body, dict):
            raise ServiceError(f"the service at {self.url} answered GET /v1/models with an unexpected body")
        return body

    def _check_answered(self, resp: _Answer, what: str) -> None:
        """A refused key is a ConfigError naming ``api_key``; any other status but 200 a ServiceError."""
        if resp.status_code == 401:
            raise ConfigError(f"the service at {self.url} refused the API key: {_error_text(resp)}", param="api_key")
        if resp.status_code != 200:
            raise ServiceError(f"the service at {self.url} answered {what} with {resp.status_code}: "
                               f"{_error_text(resp)}")

    def scores(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N,) answers, one upload each (see the class docstring)."""
        from .differentiable import query_batch

        arr = query_batch(images)
        out = np.zeros(len(arr), np.float64)
        for i, img in enumerate(arr):
            try:
                out[i] = self._score(_png(np.ascontiguousarray(img)))
            except ServiceBlocked as exc:
                exc.answered = out[:i].copy()
                raise
        return out

    def _score(self, png: bytes) -> float:
        params = {"model": self.model} if self.model else {}
        resp = self._request("POST", "/v1/score", "a query", content=png, params=params,
                             headers={**self._headers, "Content-Type": "image/png"})
        if resp.status_code == 403:
            code = _code(resp)
            if code == "query_attack":
                if self.blocked_at_query is None:
                    self.blocked_at_query = self.queries
                raise ServiceBlocked(f"the service at {self.url} blocked this API key as running a query attack "
                                     f"after {self.queries} queries", at_query=self.queries)
        self._check_answered(resp, "a query")
        try:
            item = resp.json()["results"][0]
        except (ServiceError, KeyError, IndexError, TypeError):
            raise ServiceError(f"the service at {self.url} answered a query with an unexpected body") from None
        if "error" in item:
            raise ServiceError(f"the service at {self.url} could not score a query: {item['error']} "
                               f"({item.get('code')})")
        self.queries += 1
        if "score" in item:
            return float(item["score"])
        if "label" not in item:
            raise ServiceError(f"the service at {self.url} answered a query with neither a score nor a label")
        if not self.labels_only:  # a server that does not state its answer mode in GET /v1/models
            self.labels_only = True
            self.threshold = float(self.model_info.get("safe_below", 0.2))
        return 0.0 if item["label"] == "safe" else 1.0

def _code(resp: _Answer) -> str | None:
    try:
        body = resp.json()
    except ServiceError:
        return None
    return body.get("code") if isinstance(body, dict) else None


def _retry_after(resp: _Answer) -> float:
    """Seconds to wait from ``Retry-After`` (1 s when absent or not a number of seconds)."""
    try:
        value = float(resp.headers.get("Retry-After", "1"))
    except ValueError:
        return 1.0
    return value if math.isfinite(value) and value >= 0 else 1.0
