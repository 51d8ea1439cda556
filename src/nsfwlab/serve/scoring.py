"""Scoring one request's uploads, in three stages:

1. ``decode``: each upload is checked against the allowed formats and preprocessed through the
   core (the detector's pipeline under the server's ``limits``) in the decode pool; a bad file
   becomes its own error entry.
2. ``model``: the preprocessed images go through the micro-batcher's model calls. (A stage that
   settles some images without the model, such as a match against known hashes, belongs between
   1 and 2: it takes the decoded uploads and returns the ones still to score.)
3. ``label``: each score is labelled by the detector's thresholds, counted, and queued for human
   review when :class:`~nsfwlab.serve.queue.ReviewQueue` says so.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import numpy as np

from ..config import Label
from ..detector import Detector
from ..errors import ImageError, NsfwlabError, UnsupportedFormatError
from ..imageio import sniff_format
from ..preprocess import preprocess
from .config import ServeConfig
from .errors import http_status_for
from .review import QueueReason
from .schemas import ScoreItem, ScoreResponse
from .service import Service

__all__ = ["Decoded", "score_uploads"]

log = logging.getLogger("nsfwlab.serve")


@dataclass(frozen=True)
class Decoded:
    """One upload ready for the model: its name, bytes, sniffed format and network input."""

    name: str
    data: bytes
    fmt: str
    array: np.ndarray


def _decode(config: ServeConfig, det: Detector, name: str, data: bytes) -> Decoded | NsfwlabError:
    """Errors are returned, not raised: one hostile file must not fail the request."""
    try:
        fmt = sniff_format(data[:32])
        if fmt is not None and fmt not in config.formats:
            raise UnsupportedFormatError(f"{fmt} is not accepted by this server; allowed: {', '.join(config.formats)}")
        return Decoded(name, data, fmt or "", preprocess(data, det.preprocess_config, config.limits))
    except NsfwlabError as exc:
        return exc
    except Exception as exc:
        return ImageError(f"unexpected {type(exc).__name__}: {exc}")


async def score_uploads(svc: Service, uploads: list[tuple[str, bytes]]) -> tuple[int, ScoreResponse]:
    """Score ``uploads``; the status is 200 when at least one image was scored, else that of the
    first error."""
    det, batcher = svc.require_ready()
    batcher.check_capacity(len(uploads))
    decoded = await asyncio.gather(*(svc.run(_decode, svc.config, det, name, data) for name, data in uploads))
    ready = [d for d in decoded if isinstance(d, Decoded)]
    svc.metrics.queue_depth.set(batcher.depth + len(ready))
    scores = dict(zip(map(id, ready), await batcher.score([d.array for d in ready]), strict=True))
    svc.metrics.queue_depth.set(batcher.depth)
    items = [_item(svc, det, name, d, scores) for (name, _), d in zip(uploads, decoded, strict=True)]
    await _queue_for_review(svc, det, ready, items)
    first_error = next((d for d in decoded if isinstance(d, NsfwlabError)), None)
    status = 200 if ready or first_error is None else http_status_for(first_error)
    return status, ScoreResponse(results=items, model=det.describe())


def _item(svc: Service, det: Detector, name: str, d: Decoded | NsfwlabError, scores: dict[int, float]) -> ScoreItem:
    m = svc.metrics
    if isinstance(d, NsfwlabError):
        m.images.labels(outcome="error").inc()
        m.errors.labels(code=d.code).inc()
        return ScoreItem(filename=name, error=d.message, code=d.code)
    s = float(scores[id(d)])
    label = det.label(s)
    m.images.labels(outcome="scored").inc()
    m.scores.observe(s)
    m.labels.labels(label=label.value).inc()
    return ScoreItem(filename=name, score=s, label=label)


async def _queue_for_review(svc: Service, det: Detector, ready: list[Decoded], items: list[ScoreItem]) -> None:
    if svc.review.store is None or not ready:
        return
    scored = [(i, item) for i, item in enumerate(items) if item.score is not None]
    jobs = []
    for (idx, item), d in zip(scored, ready, strict=True):
        assert item.label is not None and item.score is not None
        reason = svc.review.reason_for(item.label)
        if reason is not None:
            jobs.append((idx, reason, svc.run(_submit, svc, det, d, item.score, item.label, reason)))
    ids = await asyncio.gather(*(job for _, _, job in jobs))
    for (idx, reason, _), rid in zip(jobs, ids, strict=True):
        if rid is not None:
            svc.metrics.review_queued.labels(reason=reason.value).inc()
            items[idx] = items[idx].model_copy(update={"review_id": rid})


def _submit(svc: Service, det: Detector, d: Decoded, score: float, label: Label,
            reason: QueueReason) -> str | None:
    try:
        return svc.review.submit(d.data, d.fmt, name=d.name, score=score, label=label, reason=reason,
                                 model_version=det.model_version)
    except Exception as exc:  # a full disk must not lose the score itself
        log.error("could not queue %s for review: %s", d.name, exc)
        svc.metrics.errors.labels(code="review_store_failed").inc()
        return None
