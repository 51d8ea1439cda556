"""Explain's targets are the core's objectives (:mod:`nsfwlab.objectives`); re-exported here for
the names that explain has always offered."""

from __future__ import annotations

from ..objectives import (
    LogitMargin,
    Negated,
    NsfwLogit,
    NsfwProbability,
    Scaled,
    Summed,
    Target,
    TargetName,
    make_target,
)

__all__ = [
    "LogitMargin",
    "Negated",
    "NsfwLogit",
    "NsfwProbability",
    "Scaled",
    "Summed",
    "Target",
    "TargetName",
    "make_target",
]
