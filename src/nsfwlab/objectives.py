"""What to maximise: small composable callables shared by explainers, attacks and synthesis.

A :class:`Target` maps the model's logits ``(N, 2)`` (``[sfw, nsfw]``), and the named layer
activations it asks for in :attr:`Target.layers`, to one value per image ``(N,)`` that a method
explains or an optimiser pushes up. :func:`forward_target` runs a model and a target together (through
``forward_intermediates`` when the target reads layers). Black-box methods (occlusion, sliding
windows, censoring), which only see the Detector's NSFW probability, call
:meth:`Target.from_probabilities`, which exists for the targets that can be recovered from a
probability (the NSFW logit alone cannot: softmax forgets a shared offset).

Targets compose: ``-target`` minimises, ``target * 2.0`` scales, ``a + b`` adds, and
:func:`parse_objective` reads the same algebra from text (``0.5*nsfw+sfw``,
``channel:stage3_block2:17``), for the command line.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = [
    "Channel",
    "LogitMargin",
    "Negated",
    "Neuron",
    "NsfwLogit",
    "NsfwProbability",
    "Scaled",
    "SfwLogit",
    "Summed",
    "Target",
    "TargetName",
    "evaluate",
    "forward_target",
    "make_target",
    "parse_objective",
]

Activations = Mapping[str, "torch.Tensor"]

NSFW, SFW = 1, 0


class TargetName(StrEnum):
    """The named targets offered by the CLI and HTTP schema."""

    NSFW_PROBABILITY = "nsfw-probability"
    NSFW_LOGIT = "nsfw-logit"
    LOGIT_MARGIN = "logit-margin"


class Target:
    """Base class: ``target(logits, activations) -> (N,)`` tensor; optional probability form for
    black boxes. ``layers`` names the activations the target reads (none for logit targets)."""

    name = "target"
    layers: tuple[str, ...] = ()

    def __call__(self, logits: torch.Tensor,
                 activations: Activations | None = None) -> torch.Tensor:  # pragma: no cover - abstract
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

    def __sub__(self, other: Target) -> Target:
        return Summed(self, Negated(other))

    def summands(self) -> list[Target]:
        """The terms this target adds up (itself, unless it is a sum): ``(a + b).summands() == [a, b]``."""
        return [self]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class NsfwProbability(Target):
    """The softmax NSFW probability: the score people see (saturates near 0 and 1)."""

    name = TargetName.NSFW_PROBABILITY.value

    def __call__(self, logits: torch.Tensor, activations: Activations | None = None) -> torch.Tensor:
        import torch

        return torch.softmax(logits, dim=1)[:, NSFW]

    def from_probabilities(self, nsfw: np.ndarray) -> np.ndarray:
        return np.asarray(nsfw, dtype=np.float64)


class NsfwLogit(Target):
    """The raw NSFW logit (gradient methods only)."""

    name = TargetName.NSFW_LOGIT.value

    def __call__(self, logits: torch.Tensor, activations: Activations | None = None) -> torch.Tensor:
        return logits[:, NSFW]


class SfwLogit(Target):
    """The raw SFW logit (gradient methods only): what synthesis maximises for "sfw"."""

    name = "sfw-logit"

    def __call__(self, logits: torch.Tensor, activations: Activations | None = None) -> torch.Tensor:
        return logits[:, SFW]


class LogitMargin(Target):
    """``logit_nsfw - logit_sfw`` = ``log(p / (1 - p))``: does not saturate, so it still has
    useful gradients on images that score 0.999."""

    name = TargetName.LOGIT_MARGIN.value

    #: Probabilities are clipped to [eps, 1 - eps] before the log-odds (float32 resolution).
    eps = 1e-7

    def __call__(self, logits: torch.Tensor, activations: Activations | None = None) -> torch.Tensor:
        return logits[:, NSFW] - logits[:, SFW]

    def from_probabilities(self, nsfw: np.ndarray) -> np.ndarray:
        p = np.clip(np.asarray(nsfw, dtype=np.float64), self.eps, 1.0 - self.eps)
        return np.log(p) - np.log1p(-p)


class _LayerTarget(Target):
    """Base of the targets that read one named layer's activation ``(N, C, H, W)``."""

    kind = "layer"

    def __init__(self, layer: str, channel: int) -> None:
        if channel < 0:
            raise ConfigError(f"channel must be >= 0, got {channel}")
        self.layer, self.channel = layer, int(channel)
        self.layers = (layer,)
        self.name = f"{self.kind}:{layer}:{channel}"

    def _activation(self, activations: Activations | None) -> torch.Tensor:
        if activations is None or self.layer not in activations:
            raise ConfigError(f"target {self.name!r} needs the activation of layer {self.layer!r}; "
                              "run it with nsfwlab.objectives.forward_target(model, x, target)")
        act = activations[self.layer]
        if act.dim() < 2 or self.channel >= act.shape[1]:
            raise ConfigError(f"layer {self.layer!r} has {act.shape[1] if act.dim() >= 2 else 0} channels; "
                              f"channel {self.channel} does not exist")
        return act[:, self.channel]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.layer!r}, {self.channel})"


class Channel(_LayerTarget):
    """The mean activation of channel ``k`` of a named layer over all positions (lucent's
    ``channel`` objective): what a whole feature map responds to."""

    kind = "channel"

    def __call__(self, logits: torch.Tensor, activations: Activations | None = None) -> torch.Tensor:
        act = self._activation(activations)
        return act.reshape(act.shape[0], -1).mean(dim=1)


class Neuron(_LayerTarget):
    """The activation of channel ``k`` of a named layer at the centre position (lucent's
    ``neuron``): one unit's receptive field."""

    kind = "neuron"

    def __call__(self, logits: torch.Tensor, activations: Activations | None = None) -> torch.Tensor:
        act = self._activation(activations)  # (N, H, W), or (N,) for a fully connected layer
        if act.dim() == 1:
            return act
        return act[..., act.shape[-2] // 2, act.shape[-1] // 2]


class Negated(Target):
    def __init__(self, inner: Target) -> None:
        self.inner = inner
        self.name = f"-{inner.name}"
        self.layers = inner.layers

    def __call__(self, logits: torch.Tensor, activations: Activations | None = None) -> torch.Tensor:
        return -self.inner(logits, activations)

    def from_probabilities(self, nsfw: np.ndarray) -> np.ndarray:
        return -self.inner.from_probabilities(nsfw)

    def __repr__(self) -> str:
        return f"-{self.inner!r}"


class Scaled(Target):
    def __init__(self, inner: Target, factor: float) -> None:
        self.inner, self.factor = inner, factor
        self.name = f"{factor:g}*{inner.name}"
        self.layers = inner.layers

    def __call__(self, logits: torch.Tensor, activations: Activations | None = None) -> torch.Tensor:
        return self.inner(logits, activations) * self.factor

    def from_probabilities(self, nsfw: np.ndarray) -> np.ndarray:
        return self.inner.from_probabilities(nsfw) * self.factor

    def __repr__(self) -> str:
        return f"{self.factor:g} * {self.inner!r}"


class Summed(Target):
    def __init__(self, left: Target, right: Target) -> None:
        self.left, self.right = left, right
        self.name = f"{left.name}+{right.name}"
        self.layers = tuple(dict.fromkeys(left.layers + right.layers))

    def summands(self) -> list[Target]:
        return self.left.summands() + self.right.summands()

    def __call__(self, logits: torch.Tensor, activations: Activations | None = None) -> torch.Tensor:
        return self.left(logits, activations) + self.right(logits, activations)

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


#: Short names accepted by :func:`parse_objective` beside the :class:`TargetName` values.
_ATOMS: dict[str, type[Target]] = {
    "nsfw": NsfwLogit,
    "sfw": SfwLogit,
    TargetName.NSFW_LOGIT.value: NsfwLogit,
    SfwLogit.name: SfwLogit,
    TargetName.NSFW_PROBABILITY.value: NsfwProbability,
    TargetName.LOGIT_MARGIN.value: LogitMargin,
}
_LAYER_ATOMS: dict[str, type[_LayerTarget]] = {"channel": Channel, "neuron": Neuron}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_NAME = "|".join([r"(?:channel|neuron):[A-Za-z_][\w.]*:\d+",
                  *(re.escape(n) for n in sorted(_ATOMS, key=len, reverse=True))])
_TERM = re.compile(rf"\s*([+-])?\s*(?:({_NUMBER})\s*\*\s*)?({_NAME})(?:\s*\*\s*({_NUMBER}))?\s*(?=[+-]|$)")


def _atom(text: str) -> Target:
    kind, _, rest = text.partition(":")
    if kind in _LAYER_ATOMS:
        layer, _, channel = rest.rpartition(":")
        return _LAYER_ATOMS[kind](layer, int(channel))
    return _ATOMS[text]()


def parse_objective(expr: str) -> Target:
    """A :class:`Target` from text: terms ``[WEIGHT*]NAME`` (or ``NAME*WEIGHT``) joined by ``+``
    and ``-``, where NAME is ``nsfw`` / ``sfw`` (the logits), ``nsfw-logit``, ``sfw-logit``,
    ``nsfw-probability``, ``logit-margin``, ``channel:LAYER:K`` or ``neuron:LAYER:K``.
    ``-nsfw`` minimises the NSFW logit; ``nsfw+sfw`` raises both ("pareidolia")."""
    text = expr.strip()
    result: Target | None = None
    pos = 0
    while pos < len(text) or result is None:
        match = _TERM.match(text, pos)
        if match is None or (result is not None and match.group(1) is None):
            raise ConfigError(
                f"cannot read the objective {expr!r} at {text[pos:]!r}; use nsfw, sfw, nsfw-probability, "
                "logit-margin, channel:LAYER:K or neuron:LAYER:K, joined by + and - with weights (0.5*nsfw+sfw)")
        sign, w1, name, w2 = match.groups()
        term = _atom(name)
        weight = (float(w1) if w1 else 1.0) * (float(w2) if w2 else 1.0)
        if weight != 1.0:
            term = term * weight
        if sign == "-":
            term = -term
        result = term if result is None else result + term
        pos = match.end()
    return result


def forward_target(model: Any, x: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` on the network input ``x`` and return ``(logits, target values (N,))``.

    A target that reads layers needs a model with ``forward_intermediates(x, names)`` (as
    :class:`nsfwlab.model.OpenNSFW` and :class:`nsfwlab.model.VGG16` have)."""
    if target.layers:
        forward = getattr(model, "forward_intermediates", None)
        if forward is None:
            raise ConfigError(f"target {target.name!r} reads layers {list(target.layers)}, but the model "
                              f"{type(model).__name__} has no forward_intermediates")
        logits, activations = forward(x, target.layers)
        return logits, target(logits, activations)
    logits = model(x)
    return logits, target(logits)


def evaluate(model: Any, x: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
    """Deprecated name of :func:`forward_target` (``evaluate`` is the name of the ``nsfwlab.evaluate``
    package)."""
    warnings.warn("nsfwlab.objectives.evaluate is deprecated; use forward_target", DeprecationWarning, stacklevel=2)
    return forward_target(model, x, target)
