"""The verdict: a model's raw output and the policy become the answer. The one place where a score
is calibrated, compared with the thresholds, aggregated over frames, cut into segments, and where a
hash bank's human decision replaces the label.

Every caller goes through here: :class:`~nsfwlab.detector.Detector` (and so ``nsfwlab score``),
the scanner (which keeps only raw model output in its store and derives the rest here, again
whenever the policy changes) and the HTTP service. The verdict is model-agnostic: it takes a
model's NSFW score (for a model with several classes, the score its model card derives from
them) and never runs a model.

Rules:

- Routing, by content: a video (MP4/MOV, Matroska/WebM) and an animated GIF/PNG/WebP are scored
  over their frames (``kind`` ``video`` / ``animation``; ``FrameOptions.mode="first"`` samples
  only the first frame); everything else is a still ``image``.
- Calibration (monotone) maps each raw score, a frame's included, to the reported score; the
  label, the aggregation and the segments follow the reported scores.
- Bands: ``score < safe_below`` is safe, ``score > nsfw_above`` NSFW, else review
  (:meth:`~nsfwlab.config.Thresholds.label`).
- The hash bank: a still image within ``match_distance`` PDQ bits of a banked hash takes the
  human decision as its label (the model's score is still reported). Videos and animations are
  never matched (one frame's hash is not the file's), and an image whose hash is below PDQ's
  quality floor is not either: both say why in ``match_skipped``.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np

from .calibration import Calibration
from .config import Label, Thresholds
from .errors import NsfwlabError
from .frames import FrameOptions, aggregate_scores, media_kind, open_scores, segments, sniff_video
from .imageio import sniff_format

if TYPE_CHECKING:
    from .bank import Bank, Match, PdqHash
    from .imageio import ImageInput

__all__ = [
    "ANIMATED_FORMATS",
    "BankCheck",
    "FramesResult",
    "Kind",
    "Policy",
    "ScoreResult",
    "Verdict",
    "band_counts",
    "check_bank",
    "decide_frames",
    "decide_still",
    "kind_of",
    "may_hold_frames",
    "stop_early",
]

#: Image formats that may hold an animation (told apart by content: :func:`kind_of`).
ANIMATED_FORMATS = frozenset({"GIF", "PNG", "WEBP"})
#: Segment times are reported to the millisecond (frame times are sums of float durations).
TIME_DIGITS = 3
#: Why videos and animations are never matched against a hash bank.
NOT_MATCHED_MEDIA = "videos and animations are not matched: one frame's hash is not the file's"


class Kind(StrEnum):
    IMAGE = "image"
    ANIMATION = "animation"
    VIDEO = "video"


def may_hold_frames(head: bytes) -> bool:
    """Whether a file's first bytes say video, or an image format that may be animated."""
    return sniff_video(head[:16]) is not None or sniff_format(head[:32]) in ANIMATED_FORMATS


def kind_of(data: bytes) -> Kind:
    """What ``data`` is, by content: a video, an animation (an animated GIF, PNG or WebP) or an image."""
    if sniff_video(data[:16]) is not None:
        return Kind.VIDEO
    if sniff_format(data[:32]) not in ANIMATED_FORMATS:
        return Kind.IMAGE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hostile files warn (DecompressionBombWarning); decoding refuses them
        return Kind(media_kind(data))


@dataclass(frozen=True)
class Policy:
    """What turns raw model output into an answer: thresholds, an optional calibration, how frame
    scores combine (``frames``: aggregation and ``min_consecutive``), and the most differing PDQ
    bits of a bank match."""

    thresholds: Thresholds = field(default_factory=Thresholds)
    calibration: Calibration | None = None
    frames: FrameOptions = field(default_factory=FrameOptions)
    match_distance: int = 31

    def calibrate(self, raw: float) -> float:
        return raw if self.calibration is None else self.calibration.apply(raw)

    def band(self, score: float) -> Label:
        return self.thresholds.label(score)

    def describe(self, bank: str | None = None) -> dict[str, Any]:
        """The parts of the policy an answer depends on, as JSON-able values (stored next to
        derived answers, so that a change of any of them is seen). ``bank``: the bank's identity."""
        cal = self.calibration
        return {
            "thresholds": [self.thresholds.safe_below, self.thresholds.nsfw_above],
            "calibration": None if cal is None else hashlib.sha256(
                json.dumps([cal.method.value, cal.params], sort_keys=True).encode()).hexdigest()[:16],
            "aggregate": [self.frames.aggregate, self.frames.topk, self.frames.min_consecutive],
            "bank": None if bank is None else [bank, self.match_distance],
        }


@dataclass(frozen=True)
class BankCheck:
    """What the hash bank said about one input: its ``match``, or why it was not matched
    (``skipped``: a video or animation, a hash below the quality floor, a failed lookup, which
    also sets ``failed``). ``hash``: the input's PDQ hash, when one was computed."""

    match: Match | None = None
    skipped: str | None = None
    failed: bool = False
    hash: PdqHash | None = None


def check_bank(bank: Bank | None, image: ImageInput | PdqHash | None, kind: Kind,
               max_distance: int) -> BankCheck | None:
    """Look one input up in ``bank`` (``None``: no bank, no check). ``image`` is the still image
    (path, bytes, decoded image) or its PDQ hash; videos and animations are refused by rule, and
    ``image=None`` (a still whose hash could not be computed) is reported as skipped. A failing
    lookup never fails the answer: it is reported in the check."""
    if bank is None:
        return None
    if kind is not Kind.IMAGE:
        return BankCheck(skipped=NOT_MATCHED_MEDIA)
    if image is None:
        return BankCheck(skipped="no PDQ hash could be computed for this image", failed=True)
    try:
        found = bank.lookup(image, max_distance)
    except NsfwlabError as exc:
        return BankCheck(skipped=f"not matched: {exc.message}", failed=True)
    except Exception as exc:  # a locked or broken bank file: the score matters more than the match
        return BankCheck(skipped=f"not matched: {type(exc).__name__}: {exc}", failed=True)
    return BankCheck(found.match, found.skipped, hash=found.hash)


@dataclass(frozen=True)
class Verdict:
    """The answer for one input: the reported ``score`` (calibrated when the policy has a
    calibration) and the model's ``raw_score``, the ``label``, the ``kind``; for videos and
    animations each sampled frame's ``(time_s, score)`` and the ``(start_s, end_s, max_score)``
    segments above the NSFW band; the bank's ``match`` (which decided the label) or why there was
    none (``match_skipped``)."""

    score: float
    raw_score: float
    label: Label
    kind: Kind = Kind.IMAGE
    calibrated: bool = False
    frame_scores: tuple[tuple[float, float], ...] = ()
    segments: tuple[tuple[float, float, float], ...] = ()
    match: Match | None = None
    match_skipped: str | None = None

    @property
    def frames(self) -> int:
        """Frames scored: 1 for a still image."""
        return len(self.frame_scores) if self.kind is not Kind.IMAGE else 1

    def to_row(self) -> dict[str, Any]:
        """The fields every interface reports alike (``score``, CLI, scan export and HTTP)."""
        return {"score": self.score, "raw_score": self.raw_score, "label": self.label.value,
                "kind": self.kind.value, "frames": self.frames,
                "segments": [list(s) for s in self.segments],
                "match": None if self.match is None else self.match.to_dict(),
                "match_skipped": self.match_skipped}


@dataclass(frozen=True)
class ScoreResult:
    """The outcome for one input: a score and label, or the error that stopped it.

    With a calibration, ``score`` is the calibrated probability (and the label follows it) and
    ``raw_score`` the exact model score; without one, ``raw_score`` is None and ``score`` is the model's.
    ``bank_check``: what the Detector's hash bank said (``None``: no bank). ``model``: the zoo id of
    the model that scored it (``None`` for open_nsfw and its checkpoints, whose rows stay as they
    were); ``classes``: that model's class probabilities ``{name: probability}`` (``None`` for
    open_nsfw), from which its card derives the NSFW score. ``boxes``: a detector model's detections,
    ``[{"class", "score", "box": [x, y, w, h]}]`` in pixels of the image, highest score first (``None``
    for a classifier; a list, maybe empty, for a detector).
    """

    source: str
    score: float | None = None
    label: Label | None = None
    error: NsfwlabError | None = None
    raw_score: float | None = None
    bank_check: BankCheck | None = None
    model: str | None = None
    classes: dict[str, float] | None = None
    boxes: list[dict[str, Any]] | None = None

    @classmethod
    def from_verdict(cls, source: str, v: Verdict, check: BankCheck | None = None, *, model: str | None = None,
                     classes: dict[str, float] | None = None,
                     boxes: list[dict[str, Any]] | None = None) -> ScoreResult:
        return cls(source, v.score, v.label, raw_score=v.raw_score if v.calibrated else None, bank_check=check,
                   model=model, classes=classes, boxes=boxes)

    @property
    def match(self) -> Match | None:
        """The hash bank's match, which decided the label."""
        return None if self.bank_check is None else self.bank_check.match

    @property
    def model_score(self) -> float | None:
        """The exact model score, calibrated or not."""
        return self.score if self.raw_score is None else self.raw_score

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"path": self.source, "error": self.error.message, "code": self.error.code}
        assert self.label is not None
        out: dict[str, Any] = {"path": self.source, "score": self.score, "label": self.label.value}
        if self.raw_score is not None:
            out["raw_score"] = self.raw_score
        out = _with_model(out, self.model, self.classes)
        if self.boxes is not None:
            out["boxes"] = [{"class": b["class"], "score": b["score"], "box": list(b["box"])} for b in self.boxes]
        return _with_bank(out, self.bank_check)


def _with_model(out: dict[str, Any], model: str | None, classes: dict[str, float] | None) -> dict[str, Any]:
    """``model`` and ``classes`` for a zoo model's answer (open_nsfw's rows carry neither)."""
    if model is not None:
        out["model"] = model
    if classes is not None:
        out["classes"] = classes
    return out


def _with_bank(out: dict[str, Any], check: BankCheck | None) -> dict[str, Any]:
    """``match`` (or null, and ``match_skipped``: why) when a bank was consulted."""
    if check is not None:
        out["match"] = None if check.match is None else check.match.to_dict()
        if check.skipped is not None:
            out["match_skipped"] = check.skipped
    return out


@dataclass(frozen=True)
class FramesResult:
    """The outcome for an image, animation or video scored frame by frame
    (:meth:`~nsfwlab.detector.Detector.score_frames`): the aggregated score and its label, the sampled frames'
    ``(time_s, score)``, and the ``(start_s, end_s, max_score)`` segments above the NSFW band;
    or the error that stopped it."""

    source: str
    score: float | None = None
    label: Label | None = None
    kind: str = "image"
    frame_scores: tuple[tuple[float, float], ...] = ()
    segments: tuple[tuple[float, float, float], ...] = ()
    stopped_early: bool = False
    error: NsfwlabError | None = None
    raw_score: float | None = None
    bank_check: BankCheck | None = None
    model: str | None = None

    @classmethod
    def from_verdict(cls, source: str, v: Verdict, *, stopped_early: bool = False,
                     check: BankCheck | None = None, model: str | None = None) -> FramesResult:
        return cls(source, v.score, v.label, v.kind.value, v.frame_scores, v.segments, stopped_early,
                   raw_score=v.raw_score if v.calibrated else None, bank_check=check, model=model)

    @property
    def match(self) -> Match | None:
        return None if self.bank_check is None else self.bank_check.match

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def frames(self) -> int:
        return len(self.frame_scores)

    def to_dict(self, per_frame: bool = False) -> dict[str, Any]:
        if self.error is not None:
            return {"path": self.source, "error": self.error.message, "code": self.error.code}
        assert self.label is not None
        out: dict[str, Any] = {"path": self.source, "score": self.score, "label": self.label.value,
                               "kind": self.kind, "frames": self.frames,
                               "segments": [list(seg) for seg in self.segments]}
        if self.raw_score is not None:
            out["raw_score"] = self.raw_score
        if self.stopped_early:
            out["stopped_early"] = True
        if per_frame:
            out["frame_scores"] = [list(fs) for fs in self.frame_scores]
        return _with_bank(_with_model(out, self.model, None), self.bank_check)


def _matched(label: Label, check: BankCheck | None) -> tuple[Label, Match | None, str | None]:
    if check is None:
        return label, None, None
    if check.match is not None:
        return Label(check.match.decision.value), check.match, None
    return label, None, check.skipped


def decide_still(raw: float, policy: Policy, check: BankCheck | None = None) -> Verdict:
    """The verdict for a still image's raw model score (and its bank check, if any)."""
    raw = float(raw)
    score = policy.calibrate(raw)
    label, match, skipped = _matched(policy.band(score), check)
    return Verdict(score, raw, label, Kind.IMAGE, policy.calibration is not None, match=match,
                   match_skipped=skipped)


def decide_frames(kind: Kind | str, times: Sequence[float], durations: Sequence[float], raws: Sequence[float],
                  policy: Policy, check: BankCheck | None = None) -> Verdict:
    """The verdict for a video's or animation's sampled frames (their times, display durations and
    raw scores): each frame calibrated, combined by ``policy.frames``, cut into segments."""
    kind = Kind(kind)
    scores = [policy.calibrate(float(r)) for r in raws]
    value = aggregate_scores(scores, policy.frames)
    spans = segments(times, durations, scores, policy.thresholds.nsfw_above, policy.frames.min_consecutive)
    label, match, skipped = _matched(policy.band(value), check)
    return Verdict(value, aggregate_scores([float(r) for r in raws], policy.frames), label, kind,
                   policy.calibration is not None,
                   frame_scores=tuple((float(t), s) for t, s in zip(times, scores, strict=True)),
                   segments=tuple((round(a, TIME_DIGITS), round(b, TIME_DIGITS), m) for a, b, m in spans),
                   match=match, match_skipped=skipped)


def band_counts(scores: Any, thresholds: Thresholds) -> dict[str, int]:
    """How many of ``scores`` (an array) fall in each band: ``{"safe": n, "review": n, "nsfw": n}``."""
    s = np.asarray(scores, dtype=np.float64)
    safe, nsfw = int(np.sum(s < thresholds.safe_below)), int(np.sum(s > thresholds.nsfw_above))
    return {Label.SAFE.value: safe, Label.REVIEW.value: int(s.size) - safe - nsfw, Label.NSFW.value: nsfw}


def stop_early(scores: Sequence[float], policy: Policy) -> bool:
    """Whether the frames scored so far (reported scores) already make the file NSFW."""
    return bool((open_scores(scores, policy.frames.min_consecutive) > policy.thresholds.nsfw_above).any())
