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

__all__ = ["FEW_PER_CLASS", "ISOTONIC_MIN_PER_CLASS", "MAX_FOLDS", "CalibrationFit", "brier_score",
           "check_calibration_size", "check_folds", "fit_calibration", "fit_params"]


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
    warnings: tuple[str, ...] = ()  # the fit rests on few images (see check_calibration_size)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.calibration.method.value, "brier_before": self.brier_before,
                "brier_after_cv": self.brier_after, "folds": self.folds, "n": int(self.out_of_fold.size),
                "warnings": list(self.warnings)}


#: The most cross-validation folds (each fold refits the calibration; more than this measures
#: nothing new, and the folds are capped by the smaller class anyway).
MAX_FOLDS = 100


def check_folds(folds: int) -> None:
    """ConfigError unless ``2 <= folds <= MAX_FOLDS``."""
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or not 2 <= folds <= MAX_FOLDS:
        raise ConfigError(f"folds must be an integer in [2, {MAX_FOLDS}] (cross-validation), got {folds!r}",
                          param="folds")


#: Isotonic calibration is refused below this many images in the smaller class: it fits one step
#: per run of same-labelled scores, so on a small set it maps a raw score of 0.2 to 1.0 when the
#: images just above 0.2 happen all to be NSFW. Platt (two parameters) is the method for small sets.
ISOTONIC_MIN_PER_CLASS = 100
#: Below this many images in the smaller class any calibration comes with a warning: its
#: parameters (and the cross-validated Brier score) are uncertain.
FEW_PER_CLASS = 50


def check_calibration_size(method: CalibrationMethod | str, n_safe: int, n_nsfw: int) -> tuple[str, ...]:
    """ConfigError when ``method`` cannot be fitted on that many images (at least 2 of each class;
    isotonic: :data:`ISOTONIC_MIN_PER_CLASS`); otherwise the warnings the fit will carry."""
    method = CalibrationMethod(method)
    smallest = min(n_safe, n_nsfw)
    if smallest < 2:
        raise ConfigError(f"calibration needs at least 2 images of each class (safe and nsfw), got {n_safe} safe "
                          f"and {n_nsfw} nsfw")
    if method is CalibrationMethod.ISOTONIC and smallest < ISOTONIC_MIN_PER_CLASS:
        raise ConfigError(f"isotonic calibration needs at least {ISOTONIC_MIN_PER_CLASS} images of each class, got "
                          f"{n_safe} safe and {n_nsfw} nsfw: on fewer it fits steps to single images; use method "
                          "platt", param="method")
    if smallest < FEW_PER_CLASS:
        return (f"calibration fitted on {n_safe} safe and {n_nsfw} nsfw images (fewer than {FEW_PER_CLASS} in a "
                "class): its probabilities are uncertain; check it on more data",)
    return ()


def fit_calibration(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
                    method: CalibrationMethod | str, *, model_version: str, preprocess_version: str,
                    folds: int = 5, seed: int = 0, groups: Sequence[str] | None = None) -> CalibrationFit:
    """Fit ``method`` on all pairs, and measure it by stratified ``folds``-fold cross-validation
    (fewer folds when a class has fewer images or groups). ``groups`` (one key per image, e.g.
    from :func:`nsfwlab.datasets.near_duplicate_groups`) keeps each group inside one fold, so a
    near-duplicate never scores the calibration fitted on its twin. Sizes are checked by
    :func:`check_calibration_size`; its warnings travel in the result and in ``fitted_on``."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    warnings = check_calibration_size(method, int(np.sum(y == 0)), int(np.sum(y == 1)))
    check_folds(folds)
    if groups is None:
        k = min(folds, int(min(np.sum(y == 0), np.sum(y == 1))))
        splits = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(s.reshape(-1, 1), y)
    else:
        g = np.asarray([str(v) for v in groups])
        if g.shape != y.shape:
            raise ConfigError(f"{len(y)} labels but {len(g)} groups", param="groups")
        per_class = min(len(np.unique(g[y == 0])), len(np.unique(g[y == 1])))
        if per_class < 2:
            raise ConfigError("calibration needs at least 2 distinct (not near-duplicate) images of each class")
        k = min(folds, per_class)
        splits = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(s.reshape(-1, 1), y, g)
    oof = np.empty_like(s)
    for train, test in splits:
        part = Calibration(CalibrationMethod(method), model_version, preprocess_version,
                           fit_params(method, y[train], s[train]))
        oof[test] = part.apply_array(s[test])
    before, after = brier_score(y, s), brier_score(y, oof)
    whole = Calibration(CalibrationMethod(method), model_version, preprocess_version, fit_params(method, y, s),
                        fitted_on={"n": int(y.size), "nsfw": int(y.sum()), "folds": k, "seed": seed,
                                   "grouped": groups is not None, "brier_before": before, "brier_after_cv": after,
                                   "warnings": list(warnings)})
    return CalibrationFit(whole, before, after, k, oof, warnings)
