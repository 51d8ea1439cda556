"""The state of one app (``app.state.service``): its models (each a detector with its own
micro-batcher), decode pools (one for still images, one for animations and videos), review queue,
hash bank, admission and metrics, started and stopped by the app's lifespan.

A server serves one model or several: the first is the default, the others are picked per request
by id (:meth:`Service.require_ready`). Each is loaded once, in the background, one after the other;
the review queue, the hash bank, admission and the sentinel are shared by all.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..bank import Bank
from ..detector import Detector
from ..errors import ConfigError, NsfwlabError
from ..frames import media_kind
from .batching import MicroBatcher
from .config import ServeConfig
from .errors import NotReadyError, UnknownModelError
from .limits import Admission
from .matching import open_bank
from .metrics import ServiceMetrics
from .queue import ReviewQueue
from .ratelimit import RateLimit, RateLimiter
from .sentinel import Sentinel

__all__ = ["DetectorSource", "ModelSources", "ServedModel", "Service"]

log = logging.getLogger("nsfwlab.serve")

DetectorSource = Detector | Callable[[], Detector] | None
#: The models of a server by id, the default first (a mapping keeps its order).
ModelSources = Mapping[str, DetectorSource]


@dataclass(frozen=True)
class ServedModel:
    """One loaded model: its id on this server (what ``?model=`` names), detector and micro-batcher."""

    id: str
    detector: Detector
    batcher: MicroBatcher

    def describe(self) -> dict[str, Any]:
        """The detector's description under this server's id, with its card id (``card``)."""
        return {**self.detector.describe(), "id": self.id, "card": self.detector.model_id}


class _Slot:
    """A model the server was given: its id (None: the single unnamed model, named by its card when
    loaded), where it comes from, and once loaded, the model or why it failed."""

    def __init__(self, name: str | None, source: DetectorSource) -> None:
        self.name = name
        self.source = source
        self.served: ServedModel | None = None
        self.error: str | None = None


def _predictor(det: Detector) -> tuple[Callable[[Any], Any], bool]:
    """The micro-batcher's model call for ``det`` and whether its inputs stack into one batch.

    open_nsfw takes stacked preprocessed arrays and gives NSFW scores; a zoo model takes decoded
    images of any size and gives ``(score, classes)`` per image."""
    zoo = det.zoo
    if zoo is None:
        return det.predict_arrays, True

    def predict(images: Sequence[np.ndarray]) -> list[tuple[float, dict[str, float]]]:
        probs = zoo.predict_images(images)
        scores = zoo.nsfw_scores(probs).tolist()
        return [(float(s), zoo.class_dict(row)) for s, row in zip(scores, probs, strict=True)]

    return predict, False


class Service:
    """Everything the routes share; one per app.

    ``models``: one detector source (a ready Detector, shared and never closed here; a callable
    returning one, loaded in the background; ``None``: ``Detector()``), or several by id, the
    default first."""

    def __init__(self, config: ServeConfig, models: DetectorSource | ModelSources) -> None:
        self.config = config
        self.metrics = ServiceMetrics()
        self.admission = Admission(config.max_concurrent_requests)
        self.media_admission = Admission(config.max_concurrent_media, "animations and videos")
        self.review = ReviewQueue(config.data_dir, audit_rate=config.audit_rate, audit_seed=config.audit_seed,
                                  limits=config.limits)
        limit = config.rate_limit
        self.rate_limiter = RateLimiter(limit) if isinstance(limit, RateLimit) else None
        if isinstance(models, Mapping):
            if not models:
                raise ConfigError("models must name at least one model", param="models")
            bad = [k for k in models if not isinstance(k, str) or not k or k != k.strip()]
            if bad:
                raise ConfigError(f"model ids must be non-empty names without surrounding whitespace, got {bad[0]!r}",
                                  param="models")
            self._slots = [_Slot(name, src) for name, src in models.items()]
        else:
            self._slots = [_Slot(None, models)]
        self.bank: Bank | None = None
        self.sentinel: Sentinel | None = None
        self.shutting_down = False
        self._pool: ThreadPoolExecutor | None = None
        self._media_pool: ThreadPoolExecutor | None = None
        self._loader: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start (or restart, after :meth:`stop`) the pools, the review store and the models."""
        self.shutting_down = False
        for slot in self._slots:
            slot.error = None
        self._pool = ThreadPoolExecutor(self.config.decode_workers, thread_name_prefix="nsfwlab-serve")
        self._media_pool = ThreadPoolExecutor(self.config.media_workers, thread_name_prefix="nsfwlab-media")
        self.review.open()
        self.bank = open_bank(self.config.bank, self.config.limits)
        for slot in self._slots:
            if isinstance(slot.source, Detector):
                self._attach(slot, slot.source)
        if any(slot.served is None for slot in self._slots):
            # Load in the background: /healthz answers at once, /readyz turns 200 when all are loaded.
            self._loader = threading.Thread(target=self._load_all, name="nsfwlab-load", daemon=True)
            self._loader.start()

    def _load_all(self) -> None:
        for slot in self._slots:  # one after the other: loading several models at once only competes for memory
            if slot.served is None and not self.shutting_down:
                self._load(slot)

    def _load(self, slot: _Slot) -> None:
        what = f"model {slot.name}" if slot.name else "the model"
        try:
            source = slot.source
            det = source() if callable(source) else Detector()
        except NsfwlabError as exc:
            slot.error = str(exc)
            log.error("%s failed to load: %s", what, exc)
            return
        except Exception as exc:  # reported on /readyz instead of killing the server
            slot.error = f"{type(exc).__name__}: {exc}"
            log.exception("%s failed to load", what)
            return
        if self.shutting_down:
            det.close()
            return
        self._attach(slot, det)

    def _attach(self, slot: _Slot, det: Detector) -> None:
        predict, stack = _predictor(det)
        batcher = MicroBatcher(predict, max_batch=self.config.model_batch, max_wait_s=self.config.max_wait_s,
                               max_queue=self.config.queue_size, on_batch=self.metrics.observe_batch, stack=stack)
        batcher.start()
        if slot is self._slots[0] and self.config.detect_attacks is not None and self.sentinel is None:
            # The boundaries an attacker aims at are the default model's, whatever the rule's default.
            t = det.thresholds
            self.sentinel = Sentinel(replace(self.config.detect_attacks, boundaries=(t.safe_below, t.nsfw_above)))
        if slot.name is None:
            slot.name = det.model_id
        slot.served = ServedModel(slot.name, det, batcher)
        if self.ready:
            self.metrics.ready.set(1)
        log.info("model %s ready: %s", slot.name, det.describe())

    def stop(self) -> None:
        """Finish queued model calls, then release everything (``start`` may run again)."""
        self.shutting_down = True
        self.metrics.ready.set(0)
        if self._loader is not None:
            self._loader.join(timeout=60)
            self._loader = None
        for slot in self._slots:
            if slot.served is not None:
                slot.served.batcher.stop()
        for pool in (self._pool, self._media_pool):
            if pool is not None:
                pool.shutdown(wait=True)
        self._pool = self._media_pool = None
        self.review.close()
        if self.bank is not None:
            self.bank.close()
            self.bank = None
        for slot in self._slots:
            if slot.served is not None and not isinstance(slot.source, Detector):
                slot.served.detector.close()
            slot.served = None

    # -- access -------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Whether every model is loaded and the server is not shutting down."""
        return all(slot.served is not None for slot in self._slots) and not self.shutting_down

    @property
    def models(self) -> list[ServedModel]:
        """The loaded models, the default first."""
        return [slot.served for slot in self._slots if slot.served is not None]

    @property
    def model_ids(self) -> list[str | None]:
        """Every model's id, the default first (None: the single model, not yet loaded)."""
        return [slot.name for slot in self._slots]

    @property
    def detector(self) -> Detector | None:
        """The default model's detector, once loaded."""
        served = self._slots[0].served
        return served.detector if served is not None else None

    @property
    def batcher(self) -> MicroBatcher | None:
        """The default model's micro-batcher, once loaded."""
        served = self._slots[0].served
        return served.batcher if served is not None else None

    def require_ready(self, model: str | None = None) -> ServedModel:
        """The model ``model`` (None: the default): ``UnknownModelError`` (404) when this server has
        no model of that id, ``NotReadyError`` (503) while it loads, when it failed to load, or
        while the server shuts down."""
        if self.shutting_down:
            raise NotReadyError("the server is shutting down; retry on another instance")
        slot = self._slots[0] if model is None else next((s for s in self._slots if s.name == model), None)
        if slot is None:
            if any(s.name is None for s in self._slots):
                raise NotReadyError("the model is still loading; retry in a few seconds")
            raise UnknownModelError(f"this server has no model {model!r}; it serves "
                                    f"{', '.join(str(s.name) for s in self._slots)}")
        if slot.served is not None:
            return slot.served
        what = f"model {slot.name}" if len(self._slots) > 1 else "the model"
        if slot.error:
            raise NotReadyError(f"{what} failed to load: {slot.error}")
        raise NotReadyError(f"{what} is still loading; retry in a few seconds")

    def model_status(self) -> list[dict[str, Any]]:
        """Every model, the default first: its id, whether it is the default, whether it is loaded, and
        a loaded one's description (:meth:`ServedModel.describe`: card id, version, bands, ...) or why
        it failed to load (``error``)."""
        out: list[dict[str, Any]] = []
        for i, slot in enumerate(self._slots):
            row: dict[str, Any] = {"id": slot.name, "default": i == 0, "ready": slot.served is not None}
            if slot.served is not None:
                row.update(slot.served.describe())
            elif slot.error:
                row["error"] = slot.error
            out.append(row)
        return out

    def require_all_ready(self) -> list[ServedModel]:
        """Every model, or the ``NotReadyError`` of the first that is not loaded (for ``/readyz``)."""
        return [self.require_ready(slot.name) if slot.name is not None else self.require_ready()
                for slot in self._slots]

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
