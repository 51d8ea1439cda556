"""What to maximise: small composable callables shared by explainers, attacks and synthesis.

A :class:`Target` maps the model's logits ``(N, 2)`` (``[sfw, nsfw]``) to one value per image
``(N,)`` that a method explains or an optimiser pushes up. Gradient methods call it on logits;
black-box methods (occlusion, sliding windows, censoring), which only see the Detector's NSFW
probability, call :meth:`Target.from_probabilities`, which exists for the targets that can be
recovered from a probability (the NSFW logit alone cannot: softmax forgets a shared offset).

Targets compose: ``-target`` minimises, ``target * 2.0`` scales, ``a + b`` adds.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:
    import torch

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

NSFW, SFW = 1, 0


class TargetName(str, Enum):
    """The named targets offered by the CLI and HTTP schema."""

    NSFW_PROBABILITY = "nsfw-probability"
    NSFW_LOGIT = "nsfw-logit"
    LOGIT_MARGIN = "logit-margin"


class Target:
    """Base class: ``target(logits) -> (N,)`` tensor; optional probability form for black boxes."""

    name = "target"

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def from_probabilities(self, nsfw: np.ndarray) -> np.ndarray:
        """The same value computed from NSFW probabilities ``(N,)`` (what a Detector returns)."""
        raise ConfigError(
            f"target {self.name!r} needs the model's logits; black-box methods (occlusion, "
            "sliding-window, censor) support nsfw-probability and logit-margin"
        )

    def __neg__(self) -> Target:
        return Negated(self)

    def __mul__(self, factor: float) -> Target:
        return Scaled(self, float(factor))

    __rmul__ = __mul__

    def __add__(self, other: Target) -> Target:
        return Summed(self, other)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NsfwProbability(Target):
    """The softmax NSFW probability: the score people see (saturates near 0 and 1)."""

    name = TargetName.NSFW_PROBABILITY.value

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.softmax(logits, dim=1)[:, NSFW]

    def from_probabilities(self, nsfw: np.ndarray) -> np.ndarray:
        return np.asarray(nsfw, dtype=np.float64)


class NsfwLogit(Target):
    """The raw NSFW logit (gradient methods only)."""

    name = TargetName.NSFW_LOGIT.value

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[:, NSFW]


class LogitMargin(Target):
    """``logit_nsfw - logit_sfw`` = ``log(p / (1 - p))``: does not saturate, so it still has
    useful gradients on images that score 0.999."""

    name = TargetName.LOGIT_MARGIN.value

    #: Probabilities are clipped to [eps, 1 - eps] before the log-odds (float32 resolution).
    eps = 1e-7

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[:, NSFW] - logits[:, SFW]

    def from_probabilities(self, nsfw: np.ndarray) -> np.ndarray:
        p = np.clip(np.asarray(nsfw, dtype=np.float64), self.eps, 1.0 - self.eps)
        return np.log(p) - np.log1p(-p)


class Negated(Target):
    def __init__(self, inner: Target) -> None:
        self.inner = inner
        self.name = f"-{inner.name}"

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return -self.inner(logits)

    def from_probabilities(self, nsfw: np.ndarray) -> np.ndarray:
        return -self.inner.from_probabilities(nsfw)

    def __repr__(self) -> str:
        return f"-{self.inner!r}"


class Scaled(Target):
    def __init__(self, inner: Target, factor: float) -> None:
        self.inner, self.factor = inner, factor
        self.name = f"{factor:g}*{inner.name}"

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return self.inner(logits) * self.factor

    def from_probabilities(self, nsfw: np.ndarray) -> np.ndarray:
        return self.inner.from_probabilities(nsfw) * self.factor

    def __repr__(self) -> str:
        return f"{self.factor:g} * {self.inner!r}"


class Summed(Target):
    def __init__(self, left: Target, right: Target) -> None:
        self.left, self.right = left, right
        self.name = f"{left.name}+{right.name}"

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return self.left(logits) + self.right(logits)

    def from_probabilities(self, nsfw: np.ndarray) -> np.ndarray:
        return self.left.from_probabilities(nsfw) + self.right.from_probabilities(nsfw)

    def __repr__(self) -> str:
        return f"({self.left!r} + {self.right!r})"


def make_target(target: Target | TargetName | str | None) -> Target:
    """A Target from a name (``nsfw-probability``, ``nsfw-logit``, ``logit-margin``) or itself."""
    if target is None:
        return NsfwProbability()
    if isinstance(target, Target):
        return target
    try:
        name = TargetName(target)
    except ValueError:
        raise ConfigError(
            f"unknown target {target!r}; choose one of: " + ", ".join(t.value for t in TargetName)
        ) from None
    return {TargetName.NSFW_PROBABILITY: NsfwProbability, TargetName.NSFW_LOGIT: NsfwLogit,
            TargetName.LOGIT_MARGIN: LogitMargin}[name]()
