"""What an attack aims at and how: the goal, the option enums and :class:`AttackConfig`.

Light (no torch), so the CLI and the robustness report can read them without the model stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

from ..config import Device
from ..errors import ConfigError

__all__ = [
    "EOT_QUALITIES",
    "AttackConfig",
    "Goal",
    "GoalKind",
    "JpegMode",
    "Norm",
    "Space",
    "attackable_models",
    "check_attackable",
    "check_attackable_card",
    "jpeg_qualities",
    "survive_specs",
]


class Norm(StrEnum):
    """The budget's norm: L-inf (max change per value) or L2 (its RMS per value), both in /255 levels."""

    LINF = "linf"
    L2 = "l2"


class JpegMode(StrEnum):
    STRAIGHT_THROUGH = "straight-through"
    DIFFERENTIABLE = "differentiable"
    EOT = "eot"


class Space(StrEnum):
    ORIGINAL = "original"
    RESIZED = "resized"


class GoalKind(StrEnum):
    AT_LEAST = "at-least"
    AT_MOST = "at-most"
    WITHIN = "within"


#: Qualities of the EOT mode of the pipeline's own JPEG step (75 is the pipeline's and gives the exact value).
EOT_QUALITIES = (60, 75, 90)


@dataclass(frozen=True)
class Goal:
    """What the score must satisfy: ``at-least value``, ``at-most value`` or ``within tolerance of value``."""

    kind: GoalKind
    value: float
    tolerance: float = 0.01

    @classmethod
    def from_target(cls, to: float, before: float, tolerance: float) -> Goal:
        """``to >= 0.95`` above the score means at least; ``<= 0.05`` below, at most; else within tolerance."""
        if to >= 0.95 and to > before:
            return cls(GoalKind.AT_LEAST, to, tolerance)
        if to <= 0.05 and to < before:
            return cls(GoalKind.AT_MOST, to, tolerance)
        return cls(GoalKind.WITHIN, to, tolerance)

    def met(self, score: float, slack: float = 0.0) -> bool:
        if self.kind is GoalKind.AT_LEAST:
            return score >= self.value + slack
        if self.kind is GoalKind.AT_MOST:
            return score <= self.value - slack
        return abs(score - self.value) <= self.tolerance - slack

    def crossed(self, score: float, up: bool, slack: float = 0.0) -> bool:
        """Met, or (within-goals) beyond the value in the direction of travel: the bisection can land it."""
        if self.met(score, slack):
            return True
        return self.kind is GoalKind.WITHIN and (score >= self.value if up else score <= self.value)

    def describe(self) -> str:
        return {GoalKind.AT_LEAST: ">= {v:g}", GoalKind.AT_MOST: "<= {v:g}",
                GoalKind.WITHIN: "{v:g} +- {t:g}"}[self.kind].format(v=self.value, t=self.tolerance)


def jpeg_qualities(value: int | str | Sequence[int] | None) -> tuple[int, ...]:
    """The JPEG qualities a result must survive: ``None`` none; ``Q`` every quality from Q to 95 in
    steps of 5 (and Q) -- a re-save at Q or better; ``"LO-HI"`` the same between LO and HI; a list as
    given. Sorted, without duplicates."""
    if value is None or (not isinstance(value, (int, str)) and len(value) == 0):
        return ()
    if isinstance(value, str):
        lo_text, sep, hi_text = value.partition("-")
        try:
            lo, hi = int(lo_text), int(hi_text) if sep else 95
        except ValueError:
            raise ConfigError(f"survive_jpeg is a quality Q, a range LO-HI or a list; got {value!r}",
                              param="survive_jpeg") from None
        if lo > hi and sep:
            raise ConfigError(f"survive_jpeg range {value!r} runs backwards", param="survive_jpeg")
        qs: list[int] = [lo, *range(lo - lo % 5 + 5, hi + 1, 5)] if lo < hi else [lo]
        if sep:
            qs.append(hi)
    elif isinstance(value, int):
        qs = [value, *range(value - value % 5 + 5, 96, 5)] if value < 95 else [value]
    else:
        qs = [int(q) for q in value]
    if not qs or any(not 1 <= q <= 100 for q in qs):
        raise ConfigError(f"survive_jpeg qualities must lie in [1, 100], got {value!r}", param="survive_jpeg")
    return tuple(sorted(set(qs)))


def survive_specs(config: AttackConfig) -> tuple[str, ...]:
    """The transformation specs a result must survive (``jpeg:Q``, ``scale:F``), each verified on the
    saved pixels and each part of the optimisation (expectation over the set)."""
    return (*(f"jpeg:{q}" for q in config.survive_jpeg), *(f"scale:{f:g}" for f in config.survive_resize))


@dataclass(frozen=True)
class AttackConfig:
    """How to attack. ``to``: the target score (see :meth:`Goal.from_target`). ``max_eps``: the largest
    budget. ``survive_jpeg`` / ``survive_resize``: JPEG qualities (an int Q means Q..95) and resize
    factors the result must also meet the target after. ``fewest_pixels``: after the budget search, look
    for the fewest changed pixels at that budget. ``max_work_side``: images with a longer side are
    attacked on a downscaled working copy (the result has the working copy's size); ``max_aspect``
    refuses extreme aspect ratios (the core's :mod:`nsfwlab.sizing`). ``target_class``: aim at this class's
    probability (a class of a zoo classifier, e.g. nsfwjs's ``Drawing``) instead of the model's NSFW score
    (:func:`check_attackable`)."""

    to: float = 0.983
    max_eps: float = 8.0
    norm: Norm = Norm.LINF
    tolerance: float = 0.01
    steps: int = 30
    jpeg: JpegMode = JpegMode.DIFFERENTIABLE
    survive_jpeg: tuple[int, ...] = ()
    survive_resize: tuple[float, ...] = ()
    space: Space = Space.ORIGINAL
    fewest_pixels: bool = False
    max_work_side: int = 2048
    max_aspect: float = 20.0
    seed: int = 0
    device: str = "auto"
    target_class: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", _enum(Norm, self.norm, "norm"))
        object.__setattr__(self, "jpeg", _enum(JpegMode, self.jpeg, "jpeg"))
        object.__setattr__(self, "space", _enum(Space, self.space, "space"))
        object.__setattr__(self, "survive_jpeg", jpeg_qualities(self.survive_jpeg))  # type: ignore[arg-type]
        resize = (self.survive_resize,) if isinstance(self.survive_resize, (int, float)) else self.survive_resize
        object.__setattr__(self, "survive_resize", tuple(sorted({float(f) for f in resize})))
        _check(0.0 <= self.to <= 1.0, "to", f"the target score to must lie in [0, 1], got {self.to}")
        _check(1 <= self.max_eps <= 255, "max_eps", f"max_eps is in /255 levels and must lie in [1, 255], "
               f"got {self.max_eps}")
        _check(0 < self.tolerance < 0.5, "tolerance", f"tolerance must lie in (0, 0.5), got {self.tolerance}")
        _check(self.steps >= 1, "steps", f"steps must be at least 1, got {self.steps}")
        _check(all(0.05 <= f <= 4 for f in self.survive_resize), "survive_resize",
               f"survive_resize factors must lie in [0.05, 4], got {self.survive_resize}")
        _check(self.max_work_side >= 32, "max_work_side",
               f"max_work_side must be at least 32, got {self.max_work_side}")
        _check(self.max_aspect >= 1, "max_aspect", f"max_aspect must be at least 1, got {self.max_aspect}")
        _check(self.target_class is None or (isinstance(self.target_class, str) and self.target_class.strip() != ""),
               "target_class", f"target_class must be a class name, got {self.target_class!r}")
        try:
            Device(self.device)
        except ValueError:
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}", param="device") from None


def attackable_models() -> list[str]:
    """The zoo models the attack's gradients go through: open_nsfw and every classifier converted to PyTorch
    (the nsfwjs models); ensembles of them also (``ensemble:A+B[:mean|max]``)."""
    from ..zoo import DEFAULT_MODEL, all_cards

    return [DEFAULT_MODEL, *sorted(c.id for c in all_cards().values()
                                   if c.kind == "classifier" and c.weights.format == "tfjs")]


def check_attackable(model: str, target_class: str | None = None) -> None:
    """Refuse, in one line naming what works, a model the attack cannot differentiate (NudeNet's ONNX
    detector, a user's ONNX card) or a ``target_class`` the model has not: a class target needs one zoo
    classifier (an ensemble combines NSFW scores; open_nsfw's score is its ``nsfw`` class). ``model``: a zoo
    id or ensemble id; a checkpoint file (``.pt``) is open_nsfw's architecture and always attackable."""
    from ..modelsource import is_model_file
    from ..zoo import DEFAULT_MODEL, get_card, parse_ensemble

    if is_model_file(model):
        members: tuple[str, ...] = (DEFAULT_MODEL,)
    else:
        ensemble = parse_ensemble(model)
        members = tuple(ensemble.members) if ensemble is not None else (model,)
    cards = {m: get_card(m) for m in members if m != DEFAULT_MODEL}
    for card in cards.values():
        check_attackable_card(card)
    if target_class is None:
        return
    if len(members) > 1:
        raise ConfigError(f"target_class needs one classifier: {model} combines its members' NSFW scores; "
                          "aim at its NSFW score (no target_class)", param="target_class")
    card = cards.get(members[0]) or get_card(DEFAULT_MODEL)
    if members[0] == DEFAULT_MODEL and target_class != "nsfw":
        from ..zoo.registry import NSFWJS_CLASSES

        raise ConfigError(f"open_nsfw's attack aims at its NSFW score (class 'nsfw'), not {target_class!r}; other "
                          f"classes are a zoo classifier's (the nsfwjs models: {', '.join(NSFWJS_CLASSES)})",
                          param="target_class")
    if target_class not in card.classes:
        raise ConfigError(f"model {card.id} has no class {target_class!r}; its classes: {', '.join(card.classes)}",
                          param="target_class")


def check_attackable_card(card: Any) -> None:
    """Refuse one model card (:class:`~nsfwlab.zoo.ModelCard`) the attack cannot differentiate: anything but a
    classifier with converted (PyTorch) weights."""
    if card.id != "open_nsfw" and (card.kind != "classifier" or card.weights.format != "tfjs"):
        what = "a detector in onnxruntime" if card.kind == "detector" else f"{card.weights.format} weights"
        raise ConfigError(f"model {card.id} ({what}) has no differentiable form to attack; the attack takes "
                          f"{', '.join(attackable_models())} and their ensembles", param="model")


def _check(ok: bool, param: str, message: str) -> None:
    if not ok:
        raise ConfigError(message, param=param)


def _enum(cls: type[Enum], value: Any, name: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(str(m.value) for m in cls)  # type: ignore[attr-defined]
        raise ConfigError(f"{name} must be one of {choices}; got {value!r}", param=name) from None
