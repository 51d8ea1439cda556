"""Explain: heatmaps of what open_nsfw looks at, and censoring driven by them.

>>> from nsfwlab.explain import Occlusion, GradCAM, explain_many, Method, Censor
>>> heat = Occlusion(box=64, stride=16).explain("photo.jpg")      # doctest: +SKIP
>>> heat.shape == (height, width)                                  # doctest: +SKIP

Black-box methods (occlusion, sliding window) run through a :class:`~nsfwlab.Detector`; gradient
methods (Grad-CAM, guided backprop, deconvnet, integrated gradients) on the PyTorch model through
the differentiable part of the exact preprocessing. Every explainer returns an (H, W) float32
heatmap at the image's own resolution (at the working copy's, for an image over
:class:`ExplainCaps`' ``max_work_side``); pictures come from :mod:`nsfwlab.explain.overlay`.

Targets are the core's objectives (:mod:`nsfwlab.objectives`), re-exported here (and from
``nsfwlab.explain.targets``) under the names explain has always offered. Names are imported lazily
on first use, so ``nsfwlab.explain.options`` (the enums the CLI needs) loads without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..objectives import LogitMargin, NsfwLogit, NsfwProbability, Target, TargetName, make_target
    from .censor import Censor, CensorResult, CensorStep, hide
    from .gradients import Deconvnet, GradCAM, GuidedBackprop, IntegratedGradients
    from .methods import ALL_METHODS, Explainer, ExplainOptions, explain_many, make_explainer, torch_model_for
    from .occlusion import Occlusion
    from .options import Baseline, ExplainCaps, Fill, Method, Reduction, Style
    from .overlay import blend, labelled_grid, overlay_with_scale
    from .sliding import SlidingWindow

_EXPORTS: dict[str, str] = {
    "ALL_METHODS": ".methods",
    "Baseline": ".options",
    "Censor": ".censor",
    "CensorResult": ".censor",
    "CensorStep": ".censor",
    "Deconvnet": ".gradients",
    "ExplainCaps": ".options",
    "ExplainOptions": ".methods",
    "Explainer": ".methods",
    "Fill": ".options",
    "GradCAM": ".gradients",
    "GuidedBackprop": ".gradients",
    "IntegratedGradients": ".gradients",
    "LogitMargin": "..objectives",
    "Method": ".options",
    "NsfwLogit": "..objectives",
    "NsfwProbability": "..objectives",
    "Occlusion": ".occlusion",
    "Reduction": ".options",
    "SlidingWindow": ".sliding",
    "Style": ".options",
    "Target": "..objectives",
    "TargetName": "..objectives",
    "blend": ".overlay",
    "explain_many": ".methods",
    "hide": ".censor",
    "labelled_grid": ".overlay",
    "make_explainer": ".methods",
    "make_target": "..objectives",
    "overlay_with_scale": ".overlay",
    "torch_model_for": ".methods",
}

__all__ = [
    "ALL_METHODS",
    "Baseline",
    "Censor",
    "CensorResult",
    "CensorStep",
    "Deconvnet",
    "ExplainCaps",
    "ExplainOptions",
    "Explainer",
    "Fill",
    "GradCAM",
    "GuidedBackprop",
    "IntegratedGradients",
    "LogitMargin",
    "Method",
    "NsfwLogit",
    "NsfwProbability",
    "Occlusion",
    "Reduction",
    "SlidingWindow",
    "Style",
    "Target",
    "TargetName",
    "blend",
    "explain_many",
    "hide",
    "labelled_grid",
    "make_explainer",
    "make_target",
    "overlay_with_scale",
    "torch_model_for",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nsfwlab.explain' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
