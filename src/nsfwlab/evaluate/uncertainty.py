"""How far a rate measured on a labelled set can be trusted: exact binomial (Clopper-Pearson)
intervals, whether a target rate is *demonstrated* by the data rather than merely met on it, and
the fewest examples a demonstration needs.

Why: a false-positive rate of 0 measured on 30 safe images is compatible with a true rate of
about 12% (the upper end of its 95% interval), so "FPR <= 1% met" would be an unsupported claim.
A target counts as demonstrated when the whole interval of the achieved rate lies on the right
side of it: for an FPR target its upper end is at most the target; for a recall or precision
target its lower end is at least the target.

The interval is two-sided at ``level`` (the level of the report's other intervals), so a
demonstrated bound holds with one-sided confidence ``(1 + level) / 2``. Clopper-Pearson is
conservative (its coverage is at least ``level`` for every true rate), which is what a claim
needs. Only scipy's beta quantiles are used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["MIN_CLASS_FOR_AUC", "RateInterval", "clopper_pearson", "demonstrating_threshold", "min_examples"]

#: Below this many images in the smaller class the ROC AUC and average precision come with a
#: warning that they rest on few examples (their bootstrap interval is stated next to it).
MIN_CLASS_FOR_AUC = 30


def _check_level(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ConfigError(f"level must lie in (0, 1), got {level}", param="level")
    return (1.0 - level) / 2.0


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact two-sided interval at ``level`` of a binomial rate with ``k`` successes in ``n``
    trials; ``(0, 1)`` when ``n`` is 0 (nothing is known)."""
    from scipy.stats import beta

    alpha = _check_level(level)
    if not 0 <= k <= n:
        raise ConfigError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    low = 0.0 if k == 0 else float(beta.ppf(alpha, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1.0 - alpha, k + 1, n - k))
    return low, high


def min_examples(target: float, level: float = 0.95, *, upper: bool) -> int | None:
    """The fewest examples with which a perfect result demonstrates ``target``: with ``upper``
    (an FPR target), the ``n`` where the interval of 0 errors in ``n`` ends at or below ``target``
    (``n >= log(alpha/2) / log(1 - target)``: 368 safe images for 1% at 95%); without (recall,
    precision), the ``n`` where the interval of ``n`` out of ``n`` starts at or above it.
    ``None`` when no number suffices (an FPR target of 0, a recall or precision target of 1)."""
    alpha = _check_level(level)
    miss = target if upper else 1.0 - target  # the margin left for the rate's interval
    if miss <= 0.0:
        return None
    if miss >= 1.0:
        return 1
    n = math.ceil(math.log(alpha) / math.log1p(-miss) - 1e-9)
    # the closed form is exact; guard the float rounding at the boundary with the interval itself
    while True:
        low, high = clopper_pearson(0 if upper else n, n, level)
        if (high <= target) if upper else (low >= target):
            return max(n, 1)
        n += 1


@dataclass(frozen=True)
class RateInterval:
    """A rate measured as ``k`` of ``n`` and its Clopper-Pearson interval at ``level``."""

    k: int
    n: int
    low: float
    high: float
    level: float

    @classmethod
    def of(cls, k: int, n: int, level: float = 0.95) -> RateInterval:
        low, high = clopper_pearson(k, n, level)
        return cls(k, n, low, high, level)

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "n": self.n, "ci_low": self.low, "ci_high": self.high, "ci_level": self.level,
                "method": "clopper-pearson"}


def demonstrating_threshold(kind: str, labels: np.ndarray, scores: np.ndarray, target: float,
                            level: float = 0.95) -> float | None:
    """The least strict threshold at which the data *demonstrates* a target (its rate's whole
    interval meets it), with the flagging rules of :mod:`.metrics`; ``None`` when none does.

    - ``fpr``: ``nsfw_above`` = the ``(k+1)``-th highest safe score for the largest ``k`` whose
      interval of ``k`` false positives among the safe images ends at or below ``target``;
    - ``recall``: ``safe_below`` = the ``m``-th highest nsfw score for the smallest ``m`` whose
      interval of ``m`` caught ends at or above ``target``;
    - ``precision``: the smallest ``nsfw_above`` (0 or a score) whose flagged set's precision
      interval starts at or above ``target``.
    """
    from scipy.stats import beta

    alpha = _check_level(level)
    y, s = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if kind == "fpr":
        neg = np.sort(s[y == 0])[::-1]
        n = len(neg)
        if n == 0:
            return None
        k = np.arange(n)  # k false positives out of n (k = n never ends below a target < 1)
        ok = np.flatnonzero(beta.ppf(1.0 - alpha, k + 1, n - k) <= target)
        return float(neg[ok[-1]]) if len(ok) else None
    if kind == "recall":
        pos = np.sort(s[y == 1])[::-1]
        n = len(pos)
        m = np.arange(1, n + 1)
        ok = np.flatnonzero(beta.ppf(alpha, m, n - m + 1) >= target)
        return float(pos[ok[0]]) if len(ok) else None
    candidates = np.unique(np.concatenate([[0.0], s]))
    pos_sorted, neg_sorted = np.sort(s[y == 1]), np.sort(s[y == 0])
    tp = len(pos_sorted) - np.searchsorted(pos_sorted, candidates, side="right")
    fp = len(neg_sorted) - np.searchsorted(neg_sorted, candidates, side="right")
    with np.errstate(invalid="ignore"):
        low = np.where(tp > 0, beta.ppf(alpha, np.maximum(tp, 1), fp + 1), 0.0)
    ok = np.flatnonzero(low >= target)
    return float(candidates[ok[0]]) if len(ok) else None
