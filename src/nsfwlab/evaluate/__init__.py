"""Evaluate the detector (stock or fine-tuned) on your own labelled data.

- :mod:`nsfwlab.datasets` (re-exported here and as :mod:`.data`): load a folder (``safe/``,
  ``nsfw/``) or a CSV of ``path,label``; hygiene checks.
- :mod:`.metrics`: ROC AUC / average precision with bootstrap intervals, confusion matrices,
  threshold recommendations for stated targets.
- :mod:`.evaluation`: :func:`evaluate` scores a set through :class:`~nsfwlab.Detector`.
- :mod:`.plots` and :mod:`.report`: PNG curves and the HTML report, returned as bytes / str.

scikit-learn and matplotlib are imported only when a function needs them.
"""

from __future__ import annotations

from ..datasets import (
    DuplicateGroup,
    Hygiene,
    LabelledItem,
    LabelledSet,
    Problem,
    check_hygiene,
    load_csv,
    load_folder,
    load_labelled,
    parse_label,
)
from .evaluation import Evaluation, ScoredItem, evaluate
from .metrics import (
    DEFAULT_TARGETS,
    Confusion,
    Interval,
    Metrics,
    Recommendation,
    TargetKind,
    TargetRate,
    bootstrap_interval,
    compute_metrics,
    confusion,
    recommend_threshold,
    recommend_thresholds,
)


def __getattr__(name: str) -> object:
    if name == "Target":  # deprecated alias of TargetRate (see .metrics)
        from . import metrics

        return metrics.__getattr__(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_TARGETS",
    "Confusion",
    "DuplicateGroup",
    "Evaluation",
    "Hygiene",
    "Interval",
    "LabelledItem",
    "LabelledSet",
    "Metrics",
    "Problem",
    "Recommendation",
    "ScoredItem",
    "TargetKind",
    "TargetRate",
    "bootstrap_interval",
    "check_hygiene",
    "compute_metrics",
    "confusion",
    "evaluate",
    "load_csv",
    "load_folder",
    "load_labelled",
    "parse_label",
    "recommend_threshold",
    "recommend_thresholds",
]
