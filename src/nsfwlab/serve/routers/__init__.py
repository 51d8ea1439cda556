"""The service's routes, one router per concern: ``ops`` (probes, metrics), ``score`` and ``review``."""

from __future__ import annotations

from . import ops, review, score

__all__ = ["ops", "review", "score"]
