"""The lab: adversarial attacks and robustness reports; images evolved or synthesised against
open_nsfw. Every score the lab reports is the exact pipeline's (``Detector.nsfw_score``) on the saved
uint8 pixels.

>>> from nsfwlab.lab import attack, evolve, robustness, synthesize
>>> attack("painting.png", to=0.983).score_after          # doctest: +SKIP
>>> synthesize(None, objective="nsfw+sfw", steps=100).to_dict()["logits_end"]     # doctest: +SKIP

The attack, robustness and protocol names load torch and are imported on first use
(``nsfwlab.lab.attacks``, ``nsfwlab.lab.robust``, ``nsfwlab.lab.protocol``, ``nsfwlab.lab.transforms``), so the
command line stays light; DEAP and pycma load only when a run starts.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .evolve import Algorithm, EvolveConfig, EvolveResult, detector_scorer, evolve
from .networks import AlsoSpec, build_network, save_network
from .render import ShapeKind, render, render_population
from .synthesize import Param, SynthConfig, Synthesizer, SynthResult, synthesize

if TYPE_CHECKING:
    from .attacks import AttackConfig, Attacker, AttackResult, Goal, GoalKind, JpegMode, Norm, Space, attack
    from .protocol import ProtocolConfig, ProtocolReport, robustness_protocol
    from .robust import RobustnessConfig, RobustnessReport, robustness
    from .transforms import Transform, parse_transform, parse_transforms

_LAZY: dict[str, str] = {
    **dict.fromkeys(("AttackConfig", "AttackResult", "Attacker", "Goal", "GoalKind", "JpegMode", "Norm", "Space",
                     "attack"), ".attacks"),
    **dict.fromkeys(("RobustnessConfig", "RobustnessReport", "robustness"), ".robust"),
    **dict.fromkeys(("ProtocolConfig", "ProtocolReport", "robustness_protocol"), ".protocol"),
    **dict.fromkeys(("Transform", "parse_transform", "parse_transforms"), ".transforms"),
}

__all__ = [
    "Algorithm",
    "AlsoSpec",
    "AttackConfig",
    "AttackResult",
    "Attacker",
    "EvolveConfig",
    "EvolveResult",
    "Goal",
    "GoalKind",
    "JpegMode",
    "Norm",
    "Param",
    "ProtocolConfig",
    "ProtocolReport",
    "RobustnessConfig",
    "RobustnessReport",
    "ShapeKind",
    "Space",
    "SynthConfig",
    "SynthResult",
    "Synthesizer",
    "Transform",
    "attack",
    "build_network",
    "detector_scorer",
    "evolve",
    "parse_transform",
    "parse_transforms",
    "render",
    "render_population",
    "robustness",
    "robustness_protocol",
    "save_network",
    "synthesize",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
