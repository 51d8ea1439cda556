"""The lab: images evolved or synthesised against open_nsfw, verified on the exact pipeline.

Submodules are imported on use (DEAP, pycma and torch load only when a run starts)."""

from __future__ import annotations

from .evolve import Algorithm, EvolveConfig, EvolveResult, detector_scorer, evolve
from .render import ShapeKind, render, render_population
from .synthesize import Param, SynthConfig, Synthesizer, SynthResult

__all__ = [
    "Algorithm",
    "EvolveConfig",
    "EvolveResult",
    "Param",
    "ShapeKind",
    "SynthConfig",
    "SynthResult",
    "Synthesizer",
    "detector_scorer",
    "evolve",
    "render",
    "render_population",
]
