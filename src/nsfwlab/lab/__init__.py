"""The lab: adversarial attacks, robustness reports (and, from the lab-synth side, synthesis).

Every score the lab reports is the exact pipeline's (``Detector.score``) on the saved uint8 pixels.
"""

from .attack import AttackConfig, Attacker, AttackResult, Goal, GoalKind, JpegMode, Norm, Space, attack
from .robustness import RobustnessConfig, RobustnessReport, robustness
from .transforms import Transform, parse_transform, parse_transforms

__all__ = [
    "AttackConfig",
    "AttackResult",
    "Attacker",
    "Goal",
    "GoalKind",
    "JpegMode",
    "Norm",
    "RobustnessConfig",
    "RobustnessReport",
    "Space",
    "Transform",
    "attack",
    "parse_transform",
    "parse_transforms",
    "robustness",
]
