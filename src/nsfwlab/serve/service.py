"""The state of one app (``app.state.service``): detector, micro-batcher, decode pools (one for
still images, one for animations and videos), review queue, hash bank, admission and metrics,
started and stopped by the app's lifespan."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from ..bank import Bank
from ..detector import Detector
from ..errors import NsfwlabError
from ..frames import media_kind
from .batching import MicroBatcher
from .config import ServeConfig
from .errors import NotReadyError
from .limits import Admission
from .matching import open_bank
from .metrics import ServiceMetrics
from .queue import ReviewQueue
from .ratelimit import RateLimit, RateLimiter
from .sentinel import Sentinel

__all__ = ["DetectorSource", "Service"]

log = logging.getLogger("nsfwlab.serve")

DetectorSource = Detector | Callable[[], Detector] | None


class Service:
    """Everything the routes share; one per app."""

    def __init__(self, config: ServeConfig, detector: DetectorSource) -> None:
        self.config = config
        self.metrics = ServiceMetrics()
        self.admission = Admission(config.max_concurrent_requests)
        self.media_admission = Admission(config.max_concurrent_media, "animations and videos")
        self.review = ReviewQueue(config.data_dir, audit_rate=config.audit_rate, audit_seed=config.audit_seed,
                                  limits=config.limits)
        limit = config.rate_limit
        self.rate_limiter = RateLimiter(limit) if isinstance(limit, RateLimit) else None
        self._detector_source = detector
        self._owns_detector = not isinstance(detector, Detector)
        self.detector: Detector | None = None
        self.batcher: MicroBatcher | None = None
        self.bank: Bank | None = None
        self.sentinel: Sentinel | None = None
        self.load_error: str | None = None
        self.shutting_down = False
        self._pool: ThreadPoolExecutor | None = None
        self._media_pool: ThreadPoolExecutor | None = None
        self._loader: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start (or restart, after :meth:`stop`) the pools, the review store and the model."""
        self.shutting_down = False
        self.load_error = None
        self._pool = ThreadPoolExecutor(self.config.decode_workers, thread_name_prefix="nsfwlab-serve")
        self._media_pool = ThreadPoolExecutor(self.config.media_workers, thread_name_prefix="nsfwlab-media")
        self.review.open()
        self.bank = open_bank(self.config.bank, self.config.limits)
        if isinstance(self._detector_source, Detector):
            self._attach(self._detector_source)
        else:
            # Load in the background: /healthz answers at once, /readyz turns 200 when loaded.
            self._loader = threading.Thread(target=self._load, name="nsfwlab-load", daemon=True)
            self._loader.start()

    def _load(self) -> None:
        try:
            source = self._detector_source
            det = source() if callable(source) else Detector()
        except NsfwlabError as exc:
            self.load_error = str(exc)
            log.error("model failed to load: %s", exc)
            return
        except Exception as exc:  # reported on /readyz instead of killing the server
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model failed to load")
            return
        if self.shutting_down:
            det.close()
            return
        self._attach(det)

    def _attach(self, det: Detector) -> None:
        batcher = MicroBatcher(det.predict_arrays, max_batch=self.config.model_batch,
                               max_wait_s=self.config.max_wait_s, max_queue=self.config.queue_size,
                               on_batch=self.metrics.observe_batch)
        batcher.start()
        self.batcher = batcher
        if self.config.detect_attacks is not None and self.sentinel is None:
            # The boundaries an attacker aims at are the detector's, whatever the rule's default.
            t = det.thresholds
            self.sentinel = Sentinel(replace(self.config.detect_attacks, boundaries=(t.safe_below, t.nsfw_above)))
        self.detector = det
        self.metrics.ready.set(1)
        log.info("model ready: %s", det.describe())

    def stop(self) -> None:
        """Finish queued model calls, then release everything (``start`` may run again)."""
        self.shutting_down = True
        self.metrics.ready.set(0)
        if self._loader is not None:
            self._loader.join(timeout=60)
            self._loader = None
        if self.batcher is not None:
            self.batcher.stop()
            self.batcher = None
        for pool in (self._pool, self._media_pool):
            if pool is not None:
                pool.shutdown(wait=True)
        self._pool = self._media_pool = None
        self.review.close()
        if self.bank is not None:
            self.bank.close()
            self.bank = None
        if self.detector is not None and self._owns_detector:
            self.detector.close()
        self.detector = None

    # -- access -------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.detector is not None and self.batcher is not None and not self.shutting_down

    def require_ready(self) -> tuple[Detector, MicroBatcher]:
        if self.shutting_down:
            raise NotReadyError("the server is shutting down; retry on another instance")
        if self.detector is None or self.batcher is None:
            if self.load_error:
                raise NotReadyError(f"the model failed to load: {self.load_error}")
            raise NotReadyError("the model is still loading; retry in a few seconds")
        return self.detector, self.batcher

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run blocking ``fn(*args)`` in the decode pool, off the event loop."""
        if self._pool is None:
            raise NotReadyError("the server is not running")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def run_media(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run blocking ``fn(*args)`` on an animation or a video, in the media pool."""
        if self._media_pool is None:
            raise NotReadyError("the server is not running")
        return await asyncio.get_running_loop().run_in_executor(self._media_pool, fn, *args)

    async def run_upload(self, data: bytes, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` for the upload ``data``: in the media pool, holding a media slot, when it
        is an animation or a video (``OverloadedError``, 429, when all ``max_concurrent_media``
        slots are taken); else in the decode pool."""

        def unless_media() -> Any:  # one trip through the decode pool for a still, as before
            return _MEDIA if _is_media(data) else fn(*args)

        result = await self.run(unless_media)
        if result is not _MEDIA:
            return result
        self.media_admission.enter()
        try:
            return await self.run_media(fn, *args)
        finally:
            self.media_admission.leave()


_MEDIA = object()


def _is_media(data: bytes) -> bool:
    """Whether ``data`` is a video or an animation, from its headers (what it is exactly, and
    whether the server accepts it, is for the scoring to say)."""
    try:
        return media_kind(data) != "image"
    except Exception:
        return False
