"""Metrics of a scored, labelled set: ROC AUC and average precision (scikit-learn) with stratified
bootstrap confidence intervals, confusion matrices at the score bands, and threshold
recommendations for stated targets.

Conventions (those of :class:`~nsfwlab.config.Thresholds`): label 1 (NSFW) is the positive class;
an image is labelled NSFW when ``score > nsfw_above`` and safe when ``score < safe_below``.
So a false-positive-rate or precision target fixes ``nsfw_above`` (what is flagged without a human),
and a recall target fixes ``safe_below`` (what is passed without a human: at most ``1 - recall`` of
the NSFW images may score below it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from ..config import Thresholds
from ..errors import ConfigError
from ..verdict import band_counts
from .uncertainty import MIN_CLASS_FOR_AUC, RateInterval, demonstrating_threshold, min_examples

__all__ = [
    "DEFAULT_TARGETS",
    "MAX_BOOTSTRAP",
    "Confusion",
    "Interval",
    "Metrics",
    "Recommendation",
    "TargetKind",
    "TargetRate",
    "bootstrap_interval",
    "check_bootstrap",
    "compute_metrics",
    "confusion",
    "fast_average_precision",
    "fast_roc_auc",
    "recommend_threshold",
    "recommend_thresholds",
]


class TargetKind(StrEnum):
    """What a recommended threshold must achieve on the data it is fitted to."""

    FPR = "fpr"  # at most this fraction of safe images flagged NSFW (sets nsfw_above)
    PRECISION = "precision"  # at least this fraction of flagged images truly NSFW (sets nsfw_above)
    RECALL = "recall"  # at least this fraction of NSFW images not passed as safe (sets safe_below)


@dataclass(frozen=True)
class TargetRate:
    """A rate a recommended threshold must achieve: ``TargetRate("fpr", 0.01)`` (at most 1% of safe
    images flagged), ``TargetRate("recall", 0.95)``, ``TargetRate("precision", 0.9)``. (Not to be
    confused with :mod:`nsfwlab.objectives`' targets, what the lab maximises.)"""

    kind: TargetKind
    value: float

    def __post_init__(self) -> None:
        try:
            kind = TargetKind(self.kind)
        except ValueError:
            raise ConfigError(f"unknown target {self.kind!r}: use one of {[k.value for k in TargetKind]}") from None
        object.__setattr__(self, "kind", kind)
        if kind is TargetKind.FPR and not 0.0 <= self.value < 1.0:
            raise ConfigError(f"target fpr must lie in [0, 1), got {self.value}")
        if kind is not TargetKind.FPR and not 0.0 < self.value <= 1.0:
            raise ConfigError(f"target {kind.value} must lie in (0, 1], got {self.value}")

    @property
    def name(self) -> str:
        return f"{self.kind.value}={self.value:g}"


DEFAULT_TARGETS: tuple[TargetRate, ...] = (TargetRate(TargetKind.FPR, 0.01), TargetRate(TargetKind.RECALL, 0.95))


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap percentile interval at ``level``."""

    value: float
    low: float
    high: float
    level: float
    n_boot: int

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ci_low": self.low, "ci_high": self.high, "ci_level": self.level,
                "n_boot": self.n_boot}


@dataclass(frozen=True)
class Confusion:
    """Counts when images are flagged by ``score > threshold`` (``rule='>'``) or ``>=``."""

    threshold: float
    rule: str
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def fpr(self) -> float:
        return self.fp / (self.fp + self.tn) if self.fp + self.tn else float("nan")

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def accuracy(self) -> float:
        total = self.tp + self.fp + self.tn + self.fn
        return (self.tp + self.tn) / total if total else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "rule": f"score {self.rule} {self.threshold:.6g}",
                "tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn,
                "recall": _num(self.recall), "fpr": _num(self.fpr), "precision": _num(self.precision),
                "accuracy": _num(self.accuracy)}


def _num(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _arrays(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ConfigError(f"{len(y)} labels but {len(s)} scores")
    if not np.isin(y, (0, 1)).all():
        raise ConfigError("labels must be 0 (safe) or 1 (nsfw)")
    if not np.isfinite(s).all():
        raise ConfigError("scores must be finite")
    return y, s


def confusion(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, threshold: float,
              rule: str = ">") -> Confusion:
    """The confusion matrix when images with ``score > threshold`` (or ``>=``) are flagged NSFW."""
    y, s = _arrays(labels, scores)
    if rule not in (">", ">="):
        raise ConfigError(f"rule must be '>' or '>=', got {rule!r}")
    flagged = s > threshold if rule == ">" else s >= threshold
    pos = y == 1
    tp = int(np.sum(flagged & pos))
    fp = int(np.sum(flagged & ~pos))
    return Confusion(float(threshold), rule, tp, fp, int(np.sum(~pos)) - fp, int(np.sum(pos)) - tp)


_EXAMPLES = {TargetKind.FPR: "safe images", TargetKind.RECALL: "nsfw images",
             TargetKind.PRECISION: "flagged images"}


@dataclass(frozen=True)
class Recommendation:
    """The threshold chosen for one target and what it achieves on the data it was fitted to.

    ``met``: the target holds on this data. ``demonstrated``: it also holds for the whole
    Clopper-Pearson interval of the achieved rate (``rate``; see :mod:`.uncertainty`), so the
    data supports it. ``min_examples``: the fewest safe images (FPR), nsfw images (recall) or
    flagged images (precision) with which even a perfect result would demonstrate the target
    (``None``: no number does, as for an FPR target of 0). ``demonstrated_threshold``: the least
    strict threshold (same side as ``threshold``) at which this data demonstrates the target,
    ``None`` when none does; usually stricter than ``threshold``, which only meets it."""

    target: TargetRate
    threshold: float
    sets: str  # "nsfw_above" or "safe_below"
    achieved: Confusion
    met: bool
    rate: RateInterval | None = None
    demonstrated: bool = False
    min_examples: int | None = None
    demonstrated_threshold: float | None = None

    def note(self) -> str | None:
        """One sentence when the target is met on the data but not demonstrated by it, else ``None``."""
        if not self.met or self.demonstrated or self.rate is None:
            return None
        kind, r, pct = self.target.kind, self.rate, f"{100 * self.rate.level:g}%"
        if kind is TargetKind.FPR:
            seen = f"{r.k} false positive(s) in {r.n} safe images put the FPR anywhere up to {100 * r.high:.3g}%"
            perfect = "with no false positive"
        elif kind is TargetKind.RECALL:
            seen = f"{r.k} of {r.n} nsfw images caught put the recall anywhere down to {100 * r.low:.3g}%"
            perfect = "all caught"
        else:
            seen = f"{r.k} of {r.n} flagged images nsfw put the precision anywhere down to {100 * r.low:.3g}%"
            perfect = "all nsfw"
        if self.demonstrated_threshold is not None:
            need = f"{self.sets} = {self.demonstrated_threshold:.6g} demonstrates it"
        elif self.min_examples is None:
            need = "no number of images can demonstrate it"
        else:
            need = (f"demonstrating {self.target.value:g} needs at least {self.min_examples} "
                    f"{_EXAMPLES[kind]}, {perfect}")
        return f"target {self.target.name} is met on this data but not demonstrated: {seen} ({pct} interval); {need}"

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target.name, "kind": self.target.kind.value, "value": self.target.value,
                "threshold": self.threshold, "sets": self.sets, "met": self.met,
                "demonstrated": self.demonstrated, "demonstrated_threshold": self.demonstrated_threshold,
                "min_examples": self.min_examples,
                "examples": _EXAMPLES[self.target.kind],
                "rate_interval": None if self.rate is None else self.rate.to_dict(),
                "achieved": self.achieved.to_dict()}


def _supported(target: TargetRate, achieved: Confusion, met: bool, level: float, y: np.ndarray,
               s: np.ndarray) -> dict[str, Any]:
    """The uncertainty fields of a :class:`Recommendation` (see its docstring)."""
    a = achieved
    if target.kind is TargetKind.FPR:
        rate = RateInterval.of(a.fp, a.fp + a.tn, level)
        ok = rate.high <= target.value + 1e-12
    else:
        n = a.tp + a.fn if target.kind is TargetKind.RECALL else a.tp + a.fp
        rate = RateInterval.of(a.tp, n, level)
        ok = rate.low >= target.value - 1e-12
    return {"rate": rate, "demonstrated": bool(met and ok),
            "min_examples": min_examples(target.value, level, upper=target.kind is TargetKind.FPR),
            "demonstrated_threshold": demonstrating_threshold(target.kind.value, y, s, target.value, level)}


def _need(count_fraction: float, n: int) -> int:
    # ceil(target * n) without float noise turning 0.95 * 20 = 19.000000000000004 into 20
    return math.ceil(count_fraction * n - 1e-9)


def recommend_threshold(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
                        target: TargetRate, *, level: float = 0.95) -> Recommendation:
    """The threshold meeting ``target`` on this data with the least cost to the other error.

    - FPR ``f``: the smallest ``nsfw_above`` with ``#{safe: score > t} <= f * #safe`` (maximum
      recall at that false-positive rate).
    - precision ``p``: the smallest ``nsfw_above`` whose flagged set has precision ``>= p``
      (maximum recall at that precision); ``met`` is false when no threshold reaches it.
    - recall ``r``: the largest ``safe_below`` with ``#{nsfw: score >= t} >= r * #nsfw`` (the fewest
      images left for review or flagged).

    Whether the data *demonstrates* the target (the interval at ``level`` of the achieved rate)
    is recorded next to whether it is met (:class:`Recommendation`)."""
    y, s = _arrays(labels, scores)
    neg = np.sort(s[y == 0])[::-1]
    pos = np.sort(s[y == 1])[::-1]
    if target.kind is TargetKind.FPR:
        if not len(neg):
            raise ConfigError("an FPR target needs safe images in the data")
        k = math.floor(target.value * len(neg) + 1e-9)
        t = float(neg[k]) if k < len(neg) else 0.0
        achieved = confusion(y, s, t, ">")
        met = achieved.fpr <= target.value + 1e-12
        return Recommendation(target, t, "nsfw_above", achieved, met, **_supported(target, achieved, met, level, y, s))
    if target.kind is TargetKind.RECALL:
        if not len(pos):
            raise ConfigError("a recall target needs NSFW images in the data")
        m = _need(target.value, len(pos))
        t = float(pos[m - 1]) if m >= 1 else 1.0
        achieved = confusion(y, s, t, ">=")
        met = achieved.recall >= target.value - 1e-12
        return Recommendation(target, t, "safe_below", achieved, met, **_supported(target, achieved, met, level, y, s))
    # precision: scan candidate thresholds (0 and every distinct score), smallest that works.
    candidates = np.unique(np.concatenate([[0.0], s]))
    pos_sorted, neg_sorted = np.sort(s[y == 1]), np.sort(s[y == 0])
    tp = len(pos_sorted) - np.searchsorted(pos_sorted, candidates, side="right")
    fp = len(neg_sorted) - np.searchsorted(neg_sorted, candidates, side="right")
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
    ok = np.flatnonzero((precision >= target.value - 1e-12) & (tp > 0))
    t = float(candidates[ok[0]]) if len(ok) else float(candidates[-1])
    achieved, met = confusion(y, s, t, ">"), bool(len(ok))
    return Recommendation(target, t, "nsfw_above", achieved, met, **_supported(target, achieved, met, level, y, s))


def recommend_thresholds(recommendations: Sequence[Recommendation], current: Thresholds) -> Thresholds:
    """Combine per-target thresholds into score bands that meet every met target at once:
    ``nsfw_above`` is the strictest (highest) FPR/precision threshold and ``safe_below`` the
    lowest recall threshold; a side with no target keeps ``current``. If the two cross, the review
    band is empty and ``safe_below = nsfw_above`` (both kinds of target still hold)."""
    above = [r.threshold for r in recommendations if r.sets == "nsfw_above" and r.met]
    below = [r.threshold for r in recommendations if r.sets == "safe_below" and r.met]
    nsfw_above = max(above) if above else current.nsfw_above
    safe_below = min(below) if below else current.safe_below
    return Thresholds(safe_below=min(safe_below, nsfw_above), nsfw_above=nsfw_above)


def fast_roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic with average ranks for ties: equal to scikit-learn's
    ``roc_auc_score`` (tested), about 20x faster on small sets; used inside the bootstrap."""
    from scipy.stats import rankdata

    y = np.asarray(labels)
    n_pos = int(np.sum(y == 1))
    n_neg = len(y) - n_pos
    ranks = rankdata(scores)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def fast_average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision, ``sum((R_k - R_{k-1}) * P_k)`` over distinct thresholds: equal to
    scikit-learn's ``average_precision_score`` (tested); used inside the bootstrap."""
    y = np.asarray(labels)
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    s_sorted = np.asarray(scores)[order]
    hits = (y[order] == 1).astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s_sorted) - 1]  # end of each tie block
    tps = np.cumsum(hits)[last]
    precision = tps / (last + 1.0)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


#: The most bootstrap resamples: the replicates are held in memory (8 bytes each) and cost about
#: 0.1 ms each on 1000 images, so 100000 is ~10 s per statistic; beyond that the percentiles of
#: the interval no longer move.
MAX_BOOTSTRAP = 100_000


def check_bootstrap(n_boot: int, level: float) -> None:
    """ConfigError unless ``1 <= n_boot <= MAX_BOOTSTRAP`` and ``0 < level < 1`` (checked before
    any scoring, so a typo fails at once)."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or not 1 <= n_boot <= MAX_BOOTSTRAP:
        raise ConfigError(f"n_boot must be an integer in [1, {MAX_BOOTSTRAP}], got {n_boot!r}", param="n_boot")
    if not 0.0 < level < 1.0:  # also refuses NaN
        raise ConfigError(f"level must lie in (0, 1), got {level}", param="level")


def bootstrap_interval(labels: np.ndarray, scores: np.ndarray, statistic: Any, *, n_boot: int = 1000,
                       level: float = 0.95, seed: int = 0, point: float | None = None) -> Interval:
    """Percentile interval of ``statistic(labels, scores)`` over ``n_boot`` stratified resamples
    (safe and NSFW images resampled separately, so every replicate holds both classes).
    ``point`` is the reported estimate (default: ``statistic`` on the full data)."""
    y, s = _arrays(labels, scores)
    check_bootstrap(n_boot, level)
    point = float(statistic(y, s)) if point is None else float(point)
    rng = np.random.default_rng(seed)
    pos_idx, neg_idx = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    values = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([rng.choice(pos_idx, len(pos_idx)), rng.choice(neg_idx, len(neg_idx))])
        values[b] = statistic(y[idx], s[idx])
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return Interval(point, float(low), float(high), level, n_boot)


@dataclass(frozen=True)
class Metrics:
    """Everything ``nsfwlab evaluate`` reports about one scored set."""

    n: int
    n_pos: int
    n_neg: int
    roc_auc: Interval
    average_precision: Interval
    current: Thresholds
    at_nsfw_above: Confusion
    at_safe_below: Confusion
    bands: dict[str, dict[str, int]]
    recommendations: tuple[Recommendation, ...]
    recommended: Thresholds
    #: Figures that rest on too few examples, one sentence each (also in ``to_dict()["warnings"]``).
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "warnings": list(self.warnings),
            "n": self.n, "n_nsfw": self.n_pos, "n_safe": self.n_neg,
            "roc_auc": self.roc_auc.to_dict(),
            "average_precision": self.average_precision.to_dict(),
            "current_thresholds": {"safe_below": self.current.safe_below, "nsfw_above": self.current.nsfw_above},
            "confusion_at_nsfw_above": self.at_nsfw_above.to_dict(),
            "confusion_at_safe_below": self.at_safe_below.to_dict(),
            "bands": self.bands,
            "recommendations": [r.to_dict() for r in self.recommendations],
            "recommended_thresholds": {"safe_below": self.recommended.safe_below,
                                       "nsfw_above": self.recommended.nsfw_above},
        }


def _bands(y: np.ndarray, s: np.ndarray, th: Thresholds) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for name, cls in (("safe", 0), ("nsfw", 1)):
        out[name] = band_counts(s[y == cls], th)
    return out


def compute_metrics(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, *,
                    thresholds: Thresholds | None = None, targets: Sequence[TargetRate] = DEFAULT_TARGETS,
                    n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> Metrics:
    """ROC AUC and average precision (with bootstrap intervals), confusion at the current bands,
    and recommended thresholds. Needs both classes; raises :class:`ConfigError` otherwise."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y, s = _arrays(labels, scores)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        raise ConfigError(f"evaluation needs both safe and NSFW images; got {len(y) - n_pos} safe, {n_pos} nsfw")
    th = thresholds or Thresholds()
    # point estimates from scikit-learn; replicates from the equal, faster numpy versions
    auc = bootstrap_interval(y, s, fast_roc_auc, n_boot=n_boot, level=level, seed=seed,
                             point=roc_auc_score(y, s))
    ap = bootstrap_interval(y, s, fast_average_precision, n_boot=n_boot, level=level, seed=seed + 1,
                            point=average_precision_score(y, s))
    recs = tuple(recommend_threshold(y, s, t, level=level) for t in targets)
    return Metrics(
        n=len(y), n_pos=n_pos, n_neg=len(y) - n_pos, roc_auc=auc, average_precision=ap, current=th,
        at_nsfw_above=confusion(y, s, th.nsfw_above, ">"), at_safe_below=confusion(y, s, th.safe_below, ">="),
        bands=_bands(y, s, th), recommendations=recs, recommended=recommend_thresholds(recs, th),
        warnings=_warnings(n_pos, len(y) - n_pos, auc, recs),
    )


def _warnings(n_pos: int, n_neg: int, auc: Interval, recs: Sequence[Recommendation]) -> tuple[str, ...]:
    out = []
    if min(n_pos, n_neg) < MIN_CLASS_FOR_AUC:
        out.append(f"ROC AUC and average precision rest on {n_neg} safe and {n_pos} nsfw images (fewer than "
                   f"{MIN_CLASS_FOR_AUC} in a class): ROC AUC {auc.value:.3f} lies anywhere in "
                   f"[{auc.low:.3f}, {auc.high:.3f}] at {100 * auc.level:g}%")
    out += [n for r in recs if (n := r.note()) is not None]
    return tuple(out)


def __getattr__(name: str) -> Any:
    # ``Target``: the former name of TargetRate (it clashed with nsfwlab.objectives.Target), a
    # deprecated alias until 0.3.
    if name == "Target":
        import warnings

        warnings.warn("nsfwlab.evaluate.metrics.Target is deprecated: use TargetRate", DeprecationWarning,
                      stacklevel=2)
        return TargetRate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
