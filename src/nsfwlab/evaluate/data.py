"""Labelled data sets and their hygiene: these live in the core, :mod:`nsfwlab.datasets` (shared
with training); the same names are re-exported here."""

from __future__ import annotations

from .. import datasets
from ..datasets import *  # noqa: F403

__all__ = list(datasets.__all__)
