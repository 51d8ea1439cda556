"""Adversarial attacks on the exact open_nsfw pipeline: the smallest change that gives an image a chosen score.

>>> from nsfwlab.lab import attack
>>> res = attack("painting.png", to=0.983, survive_jpeg=70, survive_resize=(0.5,))   # doctest: +SKIP
>>> res.score_after, res.views                                                        # doctest: +SKIP

Play_NSFW's "inverse open NSFW" optimised the 256x256 resized image with Adam for 1000-8000 iterations through a
learned mock of the JPEG step, and reached L-inf 10/255. Here the whole pipeline is differentiable or exact:

- ``space="original"`` (default): the perturbation lives on the image at its own resolution (on a working copy
  of at most ``max_work_side`` pixels on the long side); the forward pass is Pillow's BILINEAR resize bit for
  bit (:func:`nsfwlab.preprocess.resize.resize_exact`) with the gradient of its linear map, then the JPEG round
  trip, crop, BGR, mean (the core's differentiable preprocessing).
- ``space="resized"``: the classic setting; the 256x256 resized image is optimised (and returned).
- The JPEG step: ``differentiable`` (default: forward Pillow's real round trip, backward kornia's differentiable
  JPEG at quality 75; kornia needs sides that are multiples of 16, else straight-through is used),
  ``straight-through`` (forward Pillow's, backward identity), ``eot`` (gradients summed over re-encodings at
  qualities 60, 75 and 90; the quality-75 member gives the exact forward value).
- Surviving re-saves and resizes: every quality of ``survive_jpeg`` and every factor of ``survive_resize`` is a
  view of the image that is part of every optimisation step (the loss sums the margins over the set:
  expectation over transformations) and that the result is verified against (``AttackResult.views``).

The search: integer L-inf budgets ``eps`` (1, 2, 4, ... then bisection up to ``max_eps``), at each a
sign-gradient PGD with integer steps (every iterate is an exact uint8 image); the first iterate that meets the
goal is verified by the Detector on the uint8 pixels. Then the perturbation is thinned (a seeded random mask,
bisected on the kept fraction) and, with ``fewest_pixels``, cut to the fewest changed pixels that still meet
the goal (gradient-ranked). Only Detector scores of the saved result are reported; the optimiser's own
estimates appear only in the history, labelled as such.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

from ..imageio import ImageInput
from ..progress import ProgressCallback
from .attack_options import AttackConfig, Goal, GoalKind, JpegMode, Norm, Space
from .options import configure
from .pgd import AttackResult, Engine, image_metrics

__all__ = [
    "AttackConfig",
    "AttackResult",
    "Attacker",
    "Goal",
    "GoalKind",
    "JpegMode",
    "Norm",
    "Space",
    "attack",
    "image_metrics",
]


def attack(image: ImageInput, detector: Any | None = None, config: AttackConfig | None = None, *,
           progress: ProgressCallback | None = None, **overrides: Any) -> AttackResult:
    """The smallest verified change that brings ``image``'s score to ``config.to``.

    ``image``: a path, bytes, PIL image or uint8 array. ``detector``: the :class:`nsfwlab.Detector` to attack
    and verify with (default ``Detector()``). ``config``: an :class:`AttackConfig`; keywords override its
    fields (``attack(img, to=0.02, max_eps=4)``). ``to >= 0.95`` above the current score means "at least
    ``to``", ``<= 0.05`` below means "at most"; any other target is reached within ``tolerance``.
    ``progress`` gets a ``budget`` event per budget level tried. Returns an :class:`AttackResult` whose scores
    are the Detector's on the saved result, after each transformation it must survive.

    The older form ``attack(image, to, **options)`` still works for one release, with a DeprecationWarning
    (a detector then goes by keyword only as ``attack(image, to=..., detector=...)``, the new form).
    """
    if isinstance(detector, (int, float)) and not isinstance(detector, bool):
        warnings.warn("attack(image, to, ...) is deprecated; use attack(image, detector, config, to=...)",
                      DeprecationWarning, stacklevel=2)
        overrides = {"to": float(detector), **overrides}
        detector = None
    cfg = configure(AttackConfig, config, overrides)
    if detector is None:
        from ..detector import Detector

        detector = Detector()
    engine = Engine(cfg, detector)
    return engine.run_goal(image, lambda before: Goal.from_target(cfg.to, before, cfg.tolerance),
                           views=engine.survive_views(), progress=progress)


class Attacker:
    """Deprecated: ``Attacker(config, detector=d).run(image, to)`` is ``attack(image, d, config, to=to)``."""

    def __init__(self, config: AttackConfig | None = None, *, detector: Any | None = None) -> None:
        warnings.warn("Attacker(config).run(image, to) is deprecated; use attack(image, detector, config, to=...)",
                      DeprecationWarning, stacklevel=2)
        self.config = config or AttackConfig()
        self.detector = detector

    def run(self, image: ImageInput, to: float, *, progress: ProgressCallback | None = None) -> AttackResult:
        return attack(image, self.detector, dataclasses.replace(self.config, to=to), progress=progress)
