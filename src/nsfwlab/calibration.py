"""Score calibration: map the model's score to a probability fitted on labelled data.

A :class:`Calibration` is a monotone (non-decreasing) map from the raw open_nsfw score to a
calibrated probability, fitted by ``nsfwlab evaluate --calibrate`` (see
:mod:`nsfwlab.evaluate.calibrate`) and applied here with numpy only:

- ``isotonic``: a piecewise-linear interpolation between fitted points (scikit-learn's
  ``IsotonicRegression`` with ``out_of_bounds="clip"``), kept as its breakpoints;
- ``platt``: a logistic curve on the logit of the score, ``sigmoid(a * logit(s) + b)`` with ``a >= 0``.

It records the ``model_version`` and ``preprocess_version`` it was fitted for: applying it to
another model's scores is refused (:meth:`Calibration.check`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError
from .sidefiles import finite_number, parse_json, read_text_file

__all__ = ["CALIBRATION_FORMAT", "Calibration", "CalibrationMethod", "load_calibration"]

CALIBRATION_FORMAT = "nsfwlab-calibration/1"
#: Scores are clipped to [EPS, 1 - EPS] before the logit (float32 softmax outputs reach 0 and 1).
EPS = 1e-7


class CalibrationMethod(StrEnum):
    ISOTONIC = "isotonic"
    PLATT = "platt"

#: Bounds on a calibration file's contents: an isotonic map of more points than any fitted one, and
#: Platt coefficients beyond which the logistic saturates for every score in (1e-7, 1 - 1e-7).
MAX_ISOTONIC_POINTS = 100_000
MAX_PLATT = 1e4


def _logit(s: np.ndarray) -> np.ndarray:
    s = np.clip(s, EPS, 1.0 - EPS)
    return np.log(s) - np.log1p(-s)


@dataclass(frozen=True)
class Calibration:
    """A fitted score calibration (see the module docstring). ``params``: ``{"x": [...], "y": [...]}``
    for isotonic (x increasing, y non-decreasing, both in [0, 1]); ``{"a": a, "b": b}`` for Platt."""

    method: CalibrationMethod
    model_version: str
    preprocess_version: str
    params: dict[str, Any]
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", CalibrationMethod(self.method))
        if self.method is CalibrationMethod.ISOTONIC:
            x, y = self.params.get("x"), self.params.get("y")
            if (not isinstance(x, list) or not isinstance(y, list) or not x or len(x) != len(y)
                    or len(x) > MAX_ISOTONIC_POINTS):
                raise ConfigError("isotonic calibration needs lists x and y of the same length, "
                                  f"1 to {MAX_ISOTONIC_POINTS:,} points")
            xa = np.array([finite_number(v, "isotonic calibration x", lo=0, hi=1) for v in x])
            ya = np.array([finite_number(v, "isotonic calibration y", lo=0, hi=1) for v in y])
            if (not np.isfinite(xa).all() or not np.isfinite(ya).all() or np.any(np.diff(xa) < 0)
                    or np.any(np.diff(ya) < 0) or ya.min() < 0 or ya.max() > 1):
                raise ConfigError("isotonic calibration needs increasing x and non-decreasing y in [0, 1]")
        else:
            a, b = self.params.get("a"), self.params.get("b")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b)):
                raise ConfigError("platt calibration needs finite numbers a and b")
            # A logistic map's useful coefficients are small; past the bound exp() overflows.
            if finite_number(a, "platt calibration a", lo=-MAX_PLATT, hi=MAX_PLATT) < 0:
                raise ConfigError(f"platt calibration needs a >= 0 (non-decreasing), got a={a}")
            finite_number(b, "platt calibration b", lo=-MAX_PLATT, hi=MAX_PLATT)

    # -- applying ---------------------------------------------------------------------------
    def apply_array(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (float64) of raw scores."""
        s = np.asarray(raw, dtype=np.float64)
        if self.method is CalibrationMethod.ISOTONIC:
            return np.interp(s, self.params["x"], self.params["y"])
        z = float(self.params["a"]) * _logit(s) + float(self.params["b"])
        return 1.0 / (1.0 + np.exp(-z))

    def apply(self, raw: float) -> float:
        """The calibrated probability of one raw score."""
        return float(self.apply_array(np.asarray([raw]))[0])

    def check(self, model_version: str, preprocess_version: str) -> None:
        """ConfigError unless this calibration was fitted for that model and preprocessing."""
        if (model_version, preprocess_version) != (self.model_version, self.preprocess_version):
            raise ConfigError(
                f"this calibration was fitted for model {self.model_version!r} with preprocessing "
                f"{self.preprocess_version!r}, not {model_version!r} / {preprocess_version!r}; "
                "fit one on this model's scores (nsfwlab.evaluate.calibrate.fit_calibration, which the "
                "evaluate command runs with its calibrate option)")

    # -- serialising ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": CALIBRATION_FORMAT, "method": self.method.value, "model_version": self.model_version,
                "preprocess_version": self.preprocess_version, "params": self.params, "fitted_on": self.fitted_on}

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Any) -> Calibration:
        if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
            raise ConfigError(f"not an nsfwlab calibration (expected \"format\": \"{CALIBRATION_FORMAT}\")")
        try:
            method = CalibrationMethod(str(data.get("method")))
        except ValueError:
            raise ConfigError(f"unknown calibration method {data.get('method')!r}: isotonic or platt") from None
        model, pre, params = data.get("model_version"), data.get("preprocess_version"), data.get("params")
        if not isinstance(model, str) or not isinstance(pre, str) or not isinstance(params, dict):
            raise ConfigError("a calibration needs model_version and preprocess_version (strings) and params")
        fitted = data.get("fitted_on")
        return cls(method, model, pre, params, fitted if isinstance(fitted, dict) else {})

    @classmethod
    def loads(cls, text: str) -> Calibration:
        return cls.from_dict(parse_json(text, "calibration"))


def load_calibration(source: str | os.PathLike | Calibration) -> Calibration:
    """A :class:`Calibration` from a ``calibration.json`` path (or the object itself); one-line ConfigErrors."""
    if isinstance(source, Calibration):
        return source
    path = Path(source)
    text = read_text_file(path, "calibration", " (expected calibration.json)")
    try:
        return Calibration.loads(text)
    except ConfigError as exc:
        raise ConfigError(f"calibration {path}: {exc.message}") from None
