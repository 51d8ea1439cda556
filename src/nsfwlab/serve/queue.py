"""The review queue: which scored images a human should see, and the store that keeps them.

A scored image is queued when its label is ``review`` (its score is in the detector's band), or
as a random audit sample of confident decisions (``ServeConfig.audit_rate``, drawn with
``audit_seed``). A failure to store an image is logged and counted; it never loses the score.
"""

from __future__ import annotations

import logging
import random
import threading
from pathlib import Path

from PIL import Image

from ..config import DecodeLimits, Label
from .errors import NotFoundError
from .review import QueueReason, ReviewStore

__all__ = ["ReviewQueue"]

log = logging.getLogger("nsfwlab.serve")


class ReviewQueue:
    """Owns the :class:`ReviewStore` of ``data_dir`` (none: review disabled) and the queueing
    decision. ``open`` / ``close`` follow the app's lifespan."""

    def __init__(self, data_dir: Path | None, *, audit_rate: float = 0.0, audit_seed: int | None = None,
                 limits: DecodeLimits | None = None) -> None:
        self.data_dir = data_dir
        self.audit_rate = audit_rate
        self.limits = limits
        self.store: ReviewStore | None = None
        self._rng = random.Random(audit_seed)
        self._rng_lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.data_dir is not None

    def open(self) -> None:
        if self.data_dir is not None and self.store is None:
            self.store = ReviewStore(self.data_dir)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def require_store(self) -> ReviewStore:
        if self.store is None:
            raise NotFoundError("review is disabled: start the server with --data-dir DIR")
        return self.store

    def reason_for(self, label: Label) -> QueueReason | None:
        """Why an image with this label is queued, or ``None`` when it is not."""
        if label is Label.REVIEW:
            return QueueReason.BAND
        return QueueReason.AUDIT if self._audit_draw() else None

    def _audit_draw(self) -> bool:
        if self.audit_rate <= 0.0:
            return False
        with self._rng_lock:
            return self._rng.random() < self.audit_rate

    def submit(self, data: bytes, fmt: str, *, name: str, score: float, label: Label, reason: QueueReason,
               model_version: str, thumbnail: Image.Image | None = None) -> str:
        """Store one image (or video, with the frame to show as ``thumbnail``) for review and return
        its id (its sha256). Blocking: run in a pool."""
        item = self.require_store().add(data, fmt, score=score, model_label=label.value, reason=reason,
                                        model_version=model_version, filename=name, limits=self.limits,
                                        thumbnail=thumbnail)
        return item.sha256
