"""Per-caller rate limits: a token bucket per API key (or per client address without keys).

A bucket holds ``burst`` tokens (the requests of one period, at least 1) and refills at
``per_second``; a request takes one token or is refused with the time until the next one. Idle
buckets that have refilled are dropped when the table grows, so a stream of new client addresses
cannot grow memory without bound.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["RateLimit", "RateLimiter"]

_PERIODS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
            "h": 3600.0, "hour": 3600.0}
_SPEC = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*$")


@dataclass(frozen=True)
class RateLimit:
    """``requests`` per ``period_s`` seconds, written ``N/s``, ``N/min`` or ``N/h``."""

    requests: float
    period_s: float

    def __post_init__(self) -> None:
        if not (self.requests > 0 and self.period_s > 0):
            raise ConfigError(f"a rate limit needs a positive rate, got {self.requests}/{self.period_s}s")

    @classmethod
    def parse(cls, spec: str) -> RateLimit:
        match = _SPEC.match(spec.lower())
        if match is None or match.group(2) not in _PERIODS:
            raise ConfigError(f"rate limit {spec!r} is not N/s, N/min or N/h (for example 5/s)")
        return cls(float(match.group(1)), _PERIODS[match.group(2)])

    @property
    def per_second(self) -> float:
        return self.requests / self.period_s

    @property
    def burst(self) -> int:
        return max(1, math.floor(self.requests))

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "min", 3600.0: "h"}.get(self.period_s, f"{self.period_s:g}s")
        return f"{self.requests:g}/{unit}"


class RateLimiter:
    """Token buckets by key; ``take(key)`` is ``None`` when allowed, else the seconds to wait."""

    MAX_BUCKETS = 10_000

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill time)
        self._lock = threading.Lock()

    def take(self, key: str) -> float | None:
        now = self._clock()
        rate, burst = self.limit.per_second, float(self.limit.burst)
        with self._lock:
            tokens, last = self._buckets.get(key, (burst, now))
            tokens = min(burst, tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                self._prune(now)
                return None
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / rate

    def _prune(self, now: float) -> None:
        if len(self._buckets) <= self.MAX_BUCKETS:
            return
        rate, burst = self.limit.per_second, float(self.limit.burst)
        self._buckets = {k: (t, last) for k, (t, last) in self._buckets.items() if t + (now - last) * rate < burst}
