"""One progress-callback shape for every long-running call in the package.

A callable taking a :class:`Progress` event. ``done`` counts finished units of ``stage`` out of
``total`` (``None`` when the total is unknown in advance); ``item`` carries the unit's own result
where the caller may want it (a ``ScoreResult``, an evolution ``Generation``, a synthesis step's
objective value), so that a progress bar and a live log read the same event.

>>> seen = []
>>> report = seen.append
>>> report(Progress("score", 1, 3))
>>> seen[0].fraction
0.3333333333333333
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Progress", "ProgressCallback", "notify"]


@dataclass(frozen=True, slots=True)
class Progress:
    stage: str
    done: int
    total: int | None = None
    item: Any = None

    @property
    def fraction(self) -> float | None:
        """``done / total``, or ``None`` where the total is unknown (or zero)."""
        return self.done / self.total if self.total else None


ProgressCallback = Callable[[Progress], None]


def notify(callback: ProgressCallback | None, stage: str, done: int, total: int | None = None,
           item: Any = None) -> None:
    """Call ``callback`` with one event, if there is one."""
    if callback is not None:
        callback(Progress(stage, done, total, item))
