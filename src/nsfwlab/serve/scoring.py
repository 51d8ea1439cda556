"""Scoring one request's uploads, in three stages:

1. ``prepare`` (in the decode pool; animations and videos in the media pool, see
   :meth:`~nsfwlab.serve.service.Service.run_upload`): each upload's format is checked by its bytes against the
   server's ``formats``.

   - A still image is decoded once under the server's ``limits``, preprocessed through the core
     (the detector's pipeline) and, with a hash bank, PDQ-hashed from that same decoded image and
     looked up through the verdict (:mod:`~nsfwlab.serve.matching`).
   - A video or an animation is scored whole here by ``Detector.score_frames`` with the server's
     :class:`~nsfwlab.frames.FrameOptions`: its frames reach the model from this pool thread in
     batches of the detector's ``batch_size`` (not through the micro-batcher), so the event loop
     never blocks, and at most ``media_workers`` of them decode at once, beside the stills.

   A bad file becomes its own error entry.
2. ``model``: the still images go through the micro-batcher's model calls of the request's model
   (``?model=``, else the server's default; each model has its own batcher). A matched image is
   scored too: the answer reports the model's score beside the human decision.
3. ``label``: each raw score and bank check becomes the answer through the verdict
   (``Detector.result``, :mod:`nsfwlab.verdict`): a bank match replaces the label by the human
   decision and keeps the item out of the review queue.
   The others are queued for review when :class:`~nsfwlab.serve.queue.ReviewQueue` says so (a
   video or animation with its highest-scoring frame as the thumbnail).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image

from ..bank import PdqHash, pdq_hash
from ..config import Label
from ..detector import Detector, FramesResult
from ..errors import BackendUnavailableError, ImageError, NsfwlabError, UnsupportedFormatError
from ..frames import iter_frames, sniff_video
from ..imageio import load_image, read_bytes, sniff_format
from ..preprocess import preprocess_rgb
from ..verdict import BankCheck, Kind, kind_of
from .config import VIDEO_FORMATS
from .deps import Caller, tracked_id
from .errors import error_headers, http_status_for
from .matching import lookup_upload
from .review import QueueReason
from .schemas import BankMatch, ScoreItem, ScoreResponse
from .service import Service

__all__ = ["Framed", "PreparedUpload", "Still", "Upload", "score_uploads"]

log = logging.getLogger("nsfwlab.serve")
#: Security events (a caller flagged as running a query attack), apart from the service's log.
audit_log = logging.getLogger("nsfwlab.serve.audit")

@dataclass(frozen=True)
class Upload:
    """One readable upload: its name, bytes and sniffed format."""

    name: str
    data: bytes
    fmt: str


@dataclass(frozen=True)
class Still(Upload):
    """A still image ready for the model: its network input, its bank check (None: no bank) and,
    when the server detects query attacks, its PDQ hash (None: none usable)."""

    array: np.ndarray
    check: BankCheck | None = None
    pdq: PdqHash | None = None


@dataclass(frozen=True)
class Framed(Upload):
    """A video or animation, already scored frame by frame (its bank check says it is not matched)."""

    result: FramesResult
    check: BankCheck | None = None


#: One upload after the decode pool: ready for the model, already scored, or its error.
PreparedUpload = Still | Framed | NsfwlabError


def _prepare(svc: Service, det: Detector, name: str, data: bytes) -> PreparedUpload:
    """Errors are returned, not raised: one hostile file must not fail the request."""
    try:
        fmt = sniff_video(data[:16]) or sniff_format(data[:32])
        if fmt is not None and fmt not in svc.config.formats:
            raise UnsupportedFormatError(f"{fmt} is not accepted by this server; allowed: "
                                         f"{', '.join(svc.config.formats)}")
        if fmt in VIDEO_FORMATS or kind_of(data) is Kind.ANIMATION:
            return _score_frames(svc, det, name, data, fmt or "")
        return _decode_still(svc, det, name, data, fmt or "")
    except NsfwlabError as exc:
        return exc
    except Exception as exc:
        return ImageError(f"unexpected {type(exc).__name__}: {exc}")


def _decode_still(svc: Service, det: Detector, name: str, data: bytes, fmt: str) -> Still:
    cfg = det.preprocess_config
    # What Detector.preprocess does, keeping the decoded image for the PDQ hash (a draft decode
    # is reduced: then the bank hashes the bytes at full size). A zoo model takes the decoded
    # pixels and prepares them itself.
    zoo = det.zoo
    draft = zoo is None and cfg.draft
    img = load_image(data, svc.config.limits, draft_size=cfg.draft_size if draft else None)
    array = zoo.prepare_image(img) if zoo is not None else preprocess_rgb(img, cfg)
    source = data if draft else img
    check = lookup_upload(svc.bank, source, Kind.IMAGE, svc.config.match_distance, svc.metrics)
    pdq = None
    if svc.sentinel is not None:  # the bank's hash when it computed one: an image is hashed once
        pdq = check.hash if check is not None else _hash_or_none(source, svc)
    return Still(name, data, fmt, array, check, pdq)


def _hash_or_none(image: bytes | Image.Image, svc: Service) -> PdqHash | None:
    try:
        return pdq_hash(image, svc.config.limits)
    except NsfwlabError:
        return None


def _score_frames(svc: Service, det: Detector, name: str, data: bytes, fmt: str) -> Framed:
    read_bytes(data, svc.config.limits)  # the server's byte cap (413), as for images
    result = det.score_frames(data, svc.config.frames)
    if isinstance(result.error, BackendUnavailableError):
        raise UnsupportedFormatError(f"this server cannot decode videos: {result.error.message}")
    if result.error is not None:
        raise result.error
    check = lookup_upload(svc.bank, None, Kind(result.kind), svc.config.match_distance, svc.metrics)
    return Framed(name, data, fmt, result, check)


async def score_uploads(svc: Service, uploads: list[tuple[str, bytes]], *, per_frame: bool = False,
                        caller: Caller | None = None,
                        model: str | None = None) -> tuple[int, dict[str, str], ScoreResponse]:
    """Score ``uploads`` with the server's model ``model`` (None: its default); the status is 200
    when at least one file was scored, else that of the first error, with that error's headers
    (``Retry-After``). ``per_frame``: report every frame's score of videos and animations.
    ``caller``: whose uploads these are, for the query-attack sentinel (when the server has one)."""
    served = svc.require_ready(model)
    det, batcher = served.detector, served.batcher
    batcher.check_capacity(len(uploads))
    prepared: list[PreparedUpload] = await asyncio.gather(
        *(svc.run_upload(data, _prepare, svc, det, name, data) for name, data in uploads))
    stills = [p for p in prepared if isinstance(p, Still)]
    svc.metrics.queue_depth.set(batcher.depth + len(stills))
    raws = dict(zip(map(id, stills), await batcher.score([s.array for s in stills]), strict=True))
    svc.metrics.queue_depth.set(batcher.depth)
    row_model = served.id if len(svc.model_ids) > 1 else None
    items = [_item(svc, det, name, p, raws, per_frame, row_model)
             for (name, _), p in zip(uploads, prepared, strict=True)]
    await _queue_for_review(svc, det, prepared, items)
    if svc.sentinel is not None and caller is not None:
        await _watch(svc, det, caller, prepared, items)
    first_error = next((p for p in prepared if isinstance(p, NsfwlabError)), None)
    scored = any(not isinstance(p, NsfwlabError) for p in prepared)
    body = ScoreResponse(results=items, model=served.describe() if row_model is not None else det.describe())
    if scored or first_error is None:
        return 200, {}, body
    return http_status_for(first_error), error_headers(first_error), body


def _item(svc: Service, det: Detector, name: str, p: PreparedUpload, raws: dict[int, Any],
          per_frame: bool, row_model: str | None) -> ScoreItem:
    """``row_model``: the model's id on a server of several models (every item then names its model);
    else an item names its model only when it is a zoo model (open_nsfw's stay as they were)."""
    m = svc.metrics
    if isinstance(p, NsfwlabError):
        m.images.labels(outcome="error").inc()
        m.errors.labels(code=p.code).inc()
        return ScoreItem(filename=name, error=p.message, code=p.code, model=row_model)
    fields: dict[str, Any]
    if isinstance(p, Framed):
        r = p.result
        assert r.score is not None and r.label is not None
        score, label = r.score, r.label
        fields = {"kind": r.kind, "frames": r.frames, "segments": list(r.segments), "raw_score": r.raw_score,
                  "model": row_model or r.model}
        if per_frame:
            fields["frame_scores"] = list(r.frame_scores)
    else:
        raw, classes = _split(raws[id(p)])
        res = det.result(name, raw, p.check, classes)
        assert res.score is not None and res.label is not None
        score, label = res.score, res.label
        fields = {"kind": "image", "raw_score": res.raw_score, "classes": res.classes, "model": row_model or res.model}
        if res.match is not None:
            fields["match"] = BankMatch.model_validate(res.match.to_dict())
    if p.check is not None and p.check.skipped is not None:
        fields["match_skipped"] = p.check.skipped
    m.images.labels(outcome="scored").inc()
    m.scores.observe(score)
    m.labels.labels(label=label.value).inc()
    return ScoreItem(filename=name, score=score, label=label, **fields)


def _split(value: Any) -> tuple[float, dict[str, float] | None]:
    """A batcher's result: open_nsfw's score, or a zoo model's ``(score, classes)``."""
    if isinstance(value, tuple):
        return float(value[0]), value[1]
    return float(value), None


async def _queue_for_review(svc: Service, det: Detector, prepared: list[PreparedUpload],
                            items: list[ScoreItem]) -> None:
    if svc.review.store is None:
        return
    jobs = []
    for idx, (p, item) in enumerate(zip(prepared, items, strict=True)):
        if isinstance(p, NsfwlabError) or item.match is not None:  # a banked decision needs no human
            continue
        assert item.label is not None and item.score is not None
        reason = svc.review.reason_for(item.label)
        if reason is not None:
            run = svc.run_media if isinstance(p, Framed) else svc.run  # a Framed thumbnail decodes frames again
            jobs.append((idx, reason, run(_submit, svc, det, p, item.score, item.label, reason)))
    ids = await asyncio.gather(*(job for _, _, job in jobs))
    for (idx, reason, _), rid in zip(jobs, ids, strict=True):
        if rid is not None:
            svc.metrics.review_queued.labels(reason=reason.value).inc()
            items[idx] = items[idx].model_copy(update={"review_id": rid})


async def _watch(svc: Service, det: Detector, caller: Caller, prepared: list[PreparedUpload],
                 items: list[ScoreItem]) -> None:
    """Show the sentinel the scored still images; a caller flagged now is counted, logged on the
    audit logger and its flagging upload queued for review (reason ``attack``)."""
    assert svc.sentinel is not None
    now, who = time.monotonic(), tracked_id(caller)
    flagging = None
    for p, item in zip(prepared, items, strict=True):
        if isinstance(p, Still) and item.score is not None:
            verdict = svc.sentinel.observe(who, p.pdq.hex if p.pdq is not None else None, item.score, now)
            if verdict.new:
                flagging = (p, item, verdict)
    if flagging is None:
        return
    p, item, verdict = flagging
    svc.metrics.attack_flags.labels(key=caller.key_id or "-").inc()
    audit_log.warning("query attack: %s flagged (policy %s): %s", who, svc.config.on_attack.value,
                      " ".join(f"{k}={v}" for k, v in verdict.to_dict().items()))
    if svc.review.store is not None and item.label is not None:
        name = f"query attack by {who}: {p.name}"
        rid = await svc.run(_submit, svc, det, replace(p, name=name), item.score, item.label, QueueReason.ATTACK)
        if rid is not None:
            svc.metrics.review_queued.labels(reason=QueueReason.ATTACK.value).inc()


def _submit(svc: Service, det: Detector, p: Upload, score: float, label: Label,
            reason: QueueReason) -> str | None:
    try:
        thumbnail = _thumbnail_frame(svc, det, p) if isinstance(p, Framed) else None
        return svc.review.submit(p.data, p.fmt, name=p.name, score=score, label=label, reason=reason,
                                 model_version=det.model_version, thumbnail=thumbnail)
    except Exception as exc:  # a full disk must not lose the score itself
        log.error("could not queue %s for review: %s", p.name, exc)
        svc.metrics.errors.labels(code="review_store_failed").inc()
        return None


def _thumbnail_frame(svc: Service, det: Detector, p: Framed) -> Image.Image | None:
    """The highest-scoring sampled frame (the earliest of equals), decoded again; else the first."""
    best_t = max(p.result.frame_scores, key=lambda ts: ts[1])[0]
    first: Image.Image | None = None
    for frame in iter_frames(p.data, svc.config.frames, det.limits):
        if frame.time == best_t:
            return frame.image().copy()
        if first is None:
            first = frame.image().copy()
    return first
