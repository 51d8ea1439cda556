"""Compare zoo models on one labelled set: each image is decoded once (the core's safe loader)
and fed to every model; per model the ROC AUC and average precision with bootstrap intervals,
the threshold at a target false-positive rate and its recall, the per-class confusion of
multi-class models, their speed on this machine; between models Cohen's kappa; and a judge card
(every model's card, weights sha256, thresholds, the versions) from which a figure can be
reproduced.

Agreement labels: by default each model flags an image when its NSFW score is above the model's
own threshold at the target false-positive rate (``agreement="fpr"``), so models with differently
calibrated scores are compared at the same operating point; ``agreement="bands"`` uses each card's
default bands (safe / review / nsfw, three categories) instead.
"""

from __future__ import annotations

import hashlib
import math
import platform
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from ..config import DecodeLimits, Label, Thresholds
from ..datasets import Hygiene, LabelledSet, Problem, check_hygiene
from ..errors import ConfigError, NsfwlabError
from ..progress import ProgressCallback, notify
from .metrics import Metrics, Recommendation, TargetKind, TargetRate, check_bootstrap, compute_metrics
from .uncertainty import MIN_CLASS_FOR_AUC

__all__ = ["AGREEMENTS", "MAX_MODELS", "Comparison", "Disagreement", "ModelResult", "Scorer", "compare", "load_models"]

AGREEMENTS = ("fpr", "bands")
#: The most models in one comparison (each is held in memory at once; the kappa matrix grows as
#: the square).
MAX_MODELS = 16
_BAND_CODE = {Label.SAFE: 0, Label.REVIEW: 1, Label.NSFW: 2}


class Scorer(Protocol):
    """What :func:`compare` needs of a model: :class:`~nsfwlab.zoo.ZooModel` and
    :class:`~nsfwlab.zoo.EnsembleModel` are both."""

    id: str
    classes: tuple[str, ...]

    def predict(self, images: Sequence[np.ndarray]) -> np.ndarray: ...

    def nsfw_score(self, probs: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class ModelResult:
    """One model's outcome. ``scores``/``probs`` are in the order of :attr:`Comparison.paths`;
    ``at_fpr`` is the threshold at the target false-positive rate (``nsfw_above``) with the recall
    it achieves; ``class_confusion`` maps each class to ``{"safe": n, "nsfw": n}``, the images
    whose top class it is by their true label (multi-class models only)."""

    id: str
    classes: tuple[str, ...]
    scores: np.ndarray
    probs: np.ndarray
    metrics: Metrics
    at_fpr: Recommendation
    bands: Thresholds
    class_confusion: dict[str, dict[str, int]] | None
    seconds: float
    judge: dict[str, Any]

    @property
    def images_per_second(self) -> float:
        return len(self.scores) / self.seconds if self.seconds > 0 else float("inf")

    def flags(self, agreement: str) -> np.ndarray:
        """The labels kappa is computed on (see the module's docstring)."""
        if agreement == "fpr":  # flagged: labelled NSFW with nsfw_above at the threshold
            at = Thresholds(self.at_fpr.threshold, self.at_fpr.threshold)
            return np.array([at.label(float(s)) is Label.NSFW for s in self.scores], dtype=np.int64)
        return np.array([_BAND_CODE[self.bands.label(float(s))] for s in self.scores], dtype=np.int64)

    def to_dict(self) -> dict[str, Any]:
        a = self.at_fpr
        return {
            "id": self.id, "classes": list(self.classes),
            "roc_auc": self.metrics.roc_auc.to_dict(), "average_precision": self.metrics.average_precision.to_dict(),
            "at_fpr": {"target_fpr": a.target.value, "nsfw_above": a.threshold, "recall": _num(a.achieved.recall),
                       "fpr": _num(a.achieved.fpr), "precision": _num(a.achieved.precision), "met": a.met,
                       "demonstrated": a.demonstrated, "confusion": a.achieved.to_dict()},
            "bands": {"safe_below": self.bands.safe_below, "nsfw_above": self.bands.nsfw_above,
                      "counts": self.metrics.bands},
            "class_confusion": self.class_confusion,
            "images_per_second": _num(self.images_per_second), "seconds": self.seconds,
            "backend": self.judge.get("backend", ""),
            "warnings": list(self.metrics.warnings),
        }


@dataclass(frozen=True)
class Disagreement:
    """One image and every model's NSFW score; ``spread`` is the highest minus the lowest."""

    path: str
    label: int
    scores: dict[str, float]
    spread: float

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "label": "nsfw" if self.label else "safe", "spread": self.spread,
                "scores": self.scores}


@dataclass(frozen=True)
class Comparison:
    """The outcome of :func:`compare`. ``kappa[i][j]`` is Cohen's kappa between models ``i`` and
    ``j`` on the labels of ``agreement`` (``None`` where it is undefined: both label every image
    alike)."""

    source: str
    paths: tuple[str, ...]
    labels: np.ndarray
    models: tuple[ModelResult, ...]
    agreement: str
    kappa: tuple[tuple[float | None, ...], ...]
    hygiene: Hygiene
    judge: dict[str, Any]
    decode_seconds: float
    warnings: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)

    def disagreements(self, limit: int | None = None) -> list[Disagreement]:
        """Images by how far the models' NSFW scores spread (highest first; ties by path)."""
        stack = np.stack([m.scores for m in self.models], axis=1)
        spread = stack.max(axis=1) - stack.min(axis=1)
        order = sorted(range(len(self.paths)), key=lambda i: (-spread[i], self.paths[i]))[:limit]
        return [Disagreement(self.paths[i], int(self.labels[i]),
                             {m.id: float(m.scores[i]) for m in self.models}, float(spread[i])) for i in order]

    def to_dict(self, top: int = 20) -> dict[str, Any]:
        """The content of ``compare.json`` (per-image scores are written separately)."""
        n_pos = int(self.labels.sum())
        return {
            "data": {"source": self.source, "scored": len(self.paths), "n_safe": len(self.paths) - n_pos,
                     "n_nsfw": n_pos, **self.hygiene.to_dict()},
            "params": self.params,
            "warnings": list(self.warnings),
            "models": [m.to_dict() for m in self.models],
            "agreement": {"labels": self.agreement, "models": [m.id for m in self.models],
                          "kappa": [list(row) for row in self.kappa]},
            "decode_seconds": self.decode_seconds,
            "disagreements": [d.to_dict() for d in self.disagreements(top)],
            "judge": self.judge,
        }


def _num(x: float) -> float | None:
    return None if math.isnan(x) or math.isinf(x) else float(x)


def load_models(model_ids: Sequence[str], *, backend: str | None = None, threads: int | None = None,
                batch_size: int = 8) -> list[Any]:
    """The zoo models of ``model_ids`` (built-in ids, user cards, ``ensemble:A+B``), distinct."""
    from .. import zoo

    ids = [m.strip() for m in model_ids]
    if not ids or any(not m for m in ids):
        raise ConfigError("models must name at least one model, e.g. open_nsfw,nsfwjs-mobilenetv2", param="models")
    if len(set(ids)) != len(ids):
        raise ConfigError(f"models names a model twice: {', '.join(ids)}", param="models")
    if len(ids) > MAX_MODELS:
        raise ConfigError(f"models names {len(ids)} models; at most {MAX_MODELS}", param="models")
    return [zoo.load(m, backend=backend, threads=threads, batch_size=batch_size) for m in ids]


def _check(models: Sequence[Scorer], fpr: float, agreement: str, batch_size: int) -> TargetRate:
    if not models:
        raise ConfigError("models must hold at least one model", param="models")
    ids = [m.id for m in models]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"models names a model twice: {', '.join(ids)}", param="models")
    if len(ids) > MAX_MODELS:
        raise ConfigError(f"models holds {len(ids)} models; at most {MAX_MODELS}", param="models")
    if agreement not in AGREEMENTS:
        raise ConfigError(f"agreement must be one of {', '.join(AGREEMENTS)}, got {agreement!r}", param="agreement")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}", param="batch_size")
    if isinstance(fpr, bool) or not isinstance(fpr, (int, float)) or not 0.0 <= fpr < 1.0:
        raise ConfigError(f"fpr must lie in [0, 1), got {fpr!r}", param="fpr")
    return TargetRate(TargetKind.FPR, float(fpr))


def _decode(paths: Sequence[str], limits: DecodeLimits) -> list[np.ndarray | NsfwlabError]:
    """Each file as an HxWx3 uint8 RGB array through the core's safe loader, or why it cannot be."""
    from ..imageio import load_image

    out: list[np.ndarray | NsfwlabError] = []
    for p in paths:
        try:
            out.append(np.array(load_image(p, limits)))  # a writable copy: torch refuses read-only views
        except NsfwlabError as exc:
            out.append(exc)
    return out


@dataclass
class _Scored:
    paths: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    failed: list[Problem] = field(default_factory=list)
    decode_seconds: float = 0.0


def _score_all(models: Sequence[Scorer], paths: list[str], labels: list[int], limits: DecodeLimits, batch_size: int,
               progress: ProgressCallback | None, skipped: int = 0) -> tuple[_Scored, list[np.ndarray], list[float]]:
    """Decode in chunks of ``batch_size`` (memory bounded by one chunk) and feed each chunk to every
    model; per model its class probabilities and the seconds it spent. Progress counts the
    ``skipped`` files (unreadable before decoding) as done."""
    done = _Scored()
    probs: list[list[np.ndarray]] = [[] for _ in models]
    seconds = [0.0] * len(models)
    warmed = False
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        t0 = time.perf_counter()
        decoded = _decode(chunk, limits)
        done.decode_seconds += time.perf_counter() - t0
        arrays = []
        for j, got in enumerate(decoded):
            if isinstance(got, NsfwlabError):
                done.failed.append(Problem(chunk[j], labels[start + j], got.code, got.message))
            else:
                arrays.append(got)
                done.paths.append(chunk[j])
                done.labels.append(labels[start + j])
        if arrays and not warmed:  # first-call set-up (lazy kernels, thread pools) is not throughput
            for model in models:
                model.predict(arrays[:1])
            warmed = True
        for k, model in enumerate(models):
            if arrays:
                t0 = time.perf_counter()
                probs[k].append(np.asarray(model.predict(arrays), dtype=np.float32))
                seconds[k] += time.perf_counter() - t0
        notify(progress, "compare", skipped + min(start + batch_size, len(paths)), skipped + len(paths))
    joined = [np.concatenate(p) if p else np.zeros((0, len(m.classes)), np.float32)
              for p, m in zip(probs, models, strict=True)]
    return done, joined, seconds


def _class_confusion(classes: tuple[str, ...], probs: np.ndarray, y: np.ndarray) -> dict[str, dict[str, int]]:
    top = probs.argmax(axis=1)
    return {c: {"safe": int(np.sum((top == i) & (y == 0))), "nsfw": int(np.sum((top == i) & (y == 1)))}
            for i, c in enumerate(classes)}


def _card_dict(card: Any) -> dict[str, Any]:
    d = asdict(card)
    d["nsfw_score"] = card.score_rule
    d["input"]["describe"] = card.input.describe()
    return d


def _model_judge(model: Any) -> dict[str, Any]:
    """A model's card and the sha256 of the weights it ran (ensembles: each member's)."""
    members = getattr(model, "members", None)
    if members is not None:
        return {"ensemble": model.id, "combine": getattr(model, "combine", ""),
                "backend": "+".join(sorted({getattr(m, "backend", "") for m in members})),
                "members": [_model_judge(m) for m in members]}
    card = getattr(model, "card", None)
    if card is None:
        return {"id": model.id, "card": None}
    return {"id": model.id, "backend": getattr(model, "backend", ""), "weights_sha256": card.weights.sha256,
            "card": _card_dict(card)}


def _bands_of(model: Any) -> Thresholds:
    card = getattr(model, "card", None)
    return card.bands if card is not None else Thresholds()


def _kappa(results: Sequence[ModelResult], agreement: str) -> tuple[tuple[float | None, ...], ...]:
    from sklearn.metrics import cohen_kappa_score

    flags = [r.flags(agreement) for r in results]
    rows = []
    for a in flags:
        row = []
        for b in flags:
            with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
                warnings.simplefilter("ignore")  # undefined (0/0) when both label every image alike
                k = float(cohen_kappa_score(a, b))
            row.append(_num(k))
        rows.append(tuple(row))
    return tuple(rows)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("nsfwlab", "numpy", "scikit-learn", "torch", "onnxruntime", "pillow"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _data_fingerprint(paths: Sequence[str], labels: Sequence[int], hygiene: Hygiene) -> str:
    """sha256 over the sorted ``content-sha256 label`` lines of the scored images: equal for the
    same images with the same labels wherever they lie."""
    lines = sorted(f"{hygiene.digests.get(p, p)} {'nsfw' if y else 'safe'}" for p, y in zip(paths, labels,
                                                                                             strict=True))
    return hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def compare(data: LabelledSet, models: Sequence[Scorer], *, fpr: float = 0.01, agreement: str = "fpr",
            n_boot: int = 1000, level: float = 0.95, seed: int = 0, batch_size: int = 16,
            limits: DecodeLimits | None = None, progress: ProgressCallback | None = None) -> Comparison:
    """Score ``data`` with every model of ``models`` (loaded zoo models, :func:`load_models`) and
    compare them. Each image is decoded once and fed to all models; unreadable files are reported
    in ``hygiene`` and left out. ``fpr``: the target false-positive rate whose threshold each model
    is measured at; ``agreement``: which labels kappa compares (module docstring). Images/s is each
    model's own time on the decoded images (preparation and network), after one warm-up image."""
    target = _check(models, fpr, agreement, batch_size)
    check_bootstrap(n_boot, level)
    limits = limits or DecodeLimits()
    hygiene = check_hygiene(data.items)
    bad = {p.path for p in hygiene.unreadable}
    items = [it for it in data.items if str(it.path) not in bad]
    done, probs, seconds = _score_all(models, [str(it.path) for it in items], [it.label for it in items], limits,
                                      batch_size, progress, len(data.items) - len(items))
    paths, labels = done.paths, done.labels
    hygiene = hygiene.with_unreadable(done.failed)
    y = np.asarray(labels, dtype=np.int64)
    results = []
    for model, p, secs in zip(models, probs, seconds, strict=True):
        scores = np.asarray(model.nsfw_score(p), dtype=np.float64) if len(p) else np.zeros(0)
        bands = _bands_of(model)
        metrics = compute_metrics(y, scores, thresholds=bands, targets=[target], n_boot=n_boot, level=level,
                                  seed=seed)
        multi = getattr(model, "card", None) is not None and len(model.classes) > 2
        judge = {**_model_judge(model), "bands": {"safe_below": bands.safe_below, "nsfw_above": bands.nsfw_above},
                 "threshold_at_fpr": metrics.recommendations[0].threshold}
        results.append(ModelResult(model.id, tuple(model.classes), scores, p, metrics, metrics.recommendations[0],
                                   bands, _class_confusion(tuple(model.classes), p, y) if multi else None, secs,
                                   judge))
    kappa = _kappa(results, agreement)
    params = {"fpr": target.value, "agreement": agreement, "n_boot": n_boot, "level": level, "seed": seed,
              "batch_size": batch_size, "max_bytes": limits.max_bytes, "max_pixels": limits.max_pixels}
    judge = {"versions": _versions(), "python": platform.python_version(), "machine": platform.machine(),
             "processor": platform.processor() or platform.machine(), "params": params,
             "data": {"source": data.source, "n": len(paths), "sha256": _data_fingerprint(paths, labels, hygiene),
                      "fingerprint": "sha256 of the sorted 'content-sha256 label' lines of the scored images"},
             "models": [r.judge for r in results]}
    return Comparison(data.source, tuple(paths), y, tuple(results), agreement, kappa, hygiene, judge,
                      done.decode_seconds, _warnings(results, y), params)


def _warnings(results: Sequence[ModelResult], y: np.ndarray) -> tuple[str, ...]:
    """The models' own warnings (figures resting on few images), each named, said once when equal."""
    out: list[str] = []
    for r in results:
        for w in r.metrics.warnings:
            out.append(f"{r.id}: {w}")
    n_pos = int(y.sum())
    if min(n_pos, len(y) - n_pos) < MIN_CLASS_FOR_AUC and len(results) > 1:
        out.append(f"the kappa matrix rests on {len(y)} images ({len(y) - n_pos} safe, {n_pos} nsfw): "
                   "differences between models this small may not hold on more data")
    return tuple(out)
