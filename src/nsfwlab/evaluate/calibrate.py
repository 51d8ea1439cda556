"""Fit a score calibration (isotonic or Platt) on a labelled set, with cross-validated Brier scores.

The calibration written to ``calibration.json`` is fitted on the whole set; its quality is
measured honestly by k-fold cross-validation (stratified, seeded): each image's calibrated score
comes from a calibration fitted without it, and the Brier score of those out-of-fold scores is
reported next to the Brier score of the raw model scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..calibration import EPS, Calibration, CalibrationMethod
from ..errors import ConfigError

__all__ = ["MAX_FOLDS", "CalibrationFit", "brier_score", "check_folds", "fit_calibration", "fit_params"]


def brier_score(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean squared error between probabilities and 0/1 labels (0 is perfect)."""
    return float(np.mean((np.asarray(probabilities, dtype=np.float64) - np.asarray(labels)) ** 2))


def _platt(labels: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    s = np.clip(scores.astype(np.float64), EPS, 1.0 - EPS)
    z = (np.log(s) - np.log1p(-s)).reshape(-1, 1)
    lr = LogisticRegression(C=1e4, max_iter=1000).fit(z, labels)
    a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    if a < 0:  # a score that falls as NSFW rises carries no usable order: the constant prevalence
        prevalence = float(np.clip(labels.mean(), EPS, 1.0 - EPS))
        a, b = 0.0, float(np.log(prevalence) - np.log1p(-prevalence))
    return {"a": a, "b": b}


def _isotonic(labels: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    iso.fit(scores.astype(np.float64), labels.astype(np.float64))
    return {"x": [float(v) for v in iso.X_thresholds_], "y": [float(v) for v in iso.y_thresholds_]}


def fit_params(method: CalibrationMethod | str, labels: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """The parameters of a calibration fitted on (label, raw score) pairs."""
    fit = _isotonic if CalibrationMethod(method) is CalibrationMethod.ISOTONIC else _platt
    return fit(np.asarray(labels, dtype=np.int64), np.asarray(scores, dtype=np.float64))


@dataclass(frozen=True)
class CalibrationFit:
    """A calibration fitted on the whole set, and its cross-validated quality."""

    calibration: Calibration
    brier_before: float
    brier_after: float  # of the out-of-fold calibrated scores
    folds: int
    out_of_fold: np.ndarray  # each image's calibrated score from the fold that left it out

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.calibration.method.value, "brier_before": self.brier_before,
                "brier_after_cv": self.brier_after, "folds": self.folds, "n": int(self.out_of_fold.size)}


#: The most cross-validation folds (each fold refits the calibration; more than this measures
#: nothing new, and the folds are capped by the smaller class anyway).
MAX_FOLDS = 100


def check_folds(folds: int) -> None:
    """ConfigError unless ``2 <= folds <= MAX_FOLDS``."""
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or not 2 <= folds <= MAX_FOLDS:
        raise ConfigError(f"folds must be an integer in [2, {MAX_FOLDS}] (cross-validation), got {folds!r}",
                          param="folds")


def fit_calibration(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
                    method: CalibrationMethod | str, *, model_version: str, preprocess_version: str,
                    folds: int = 5, seed: int = 0) -> CalibrationFit:
    """Fit ``method`` on all pairs, and measure it by stratified ``folds``-fold cross-validation
    (fewer folds when a class has fewer images). Needs at least two images of each class."""
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    smallest = int(min(np.sum(y == 0), np.sum(y == 1)))
    if smallest < 2:
        raise ConfigError("calibration needs at least 2 scored images of each class (safe and nsfw)")
    check_folds(folds)
    k = min(folds, smallest)
    oof = np.empty_like(s)
    for train, test in StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(s.reshape(-1, 1), y):
        part = Calibration(CalibrationMethod(method), model_version, preprocess_version,
                           fit_params(method, y[train], s[train]))
        oof[test] = part.apply_array(s[test])
    before, after = brier_score(y, s), brier_score(y, oof)
    whole = Calibration(CalibrationMethod(method), model_version, preprocess_version, fit_params(method, y, s),
                        fitted_on={"n": int(y.size), "nsfw": int(y.sum()), "folds": k, "seed": seed,
                                   "brier_before": before, "brier_after_cv": after})
    return CalibrationFit(whole, before, after, k, oof)
