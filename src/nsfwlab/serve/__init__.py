"""The HTTP service (``nsfwlab serve``) and its human-review store.

``create_app`` is imported lazily so that ``import nsfwlab.serve`` (for the review store, as used
by ``nsfwlab review export``) never pays for FastAPI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import ServeConfig
from .review import QueueReason, ReviewItem, ReviewLabel, ReviewStatus, ReviewStore

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["QueueReason", "ReviewItem", "ReviewLabel", "ReviewStatus", "ReviewStore", "ServeConfig", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
