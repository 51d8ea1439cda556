"""The named methods (shared by the library, CLI and HTTP schema) and a factory that builds them
from one frozen options object, consistent with a Detector (same model, same preprocessing)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..config import option
from ..detector import Detector
from ..errors import ConfigError
from ..imageio import ImageInput
from ..objectives import Target, TargetName
from ._windows import ProgressCallback, load_input
from .options import Baseline, ExplainCaps, Fill, Method, Reduction

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "ALL_METHODS",
    "GRADIENT_METHODS",
    "ExplainOptions",
    "Explainer",
    "Method",
    "explain_many",
    "load_input",
    "make_explainer",
    "torch_model_for",
    "work_units",
]


#: Every concrete method, in the order ``all`` draws them.
ALL_METHODS: tuple[Method, ...] = tuple(m for m in Method if m is not Method.ALL)

#: Methods that run on the PyTorch model (gradients) rather than through the Detector.
GRADIENT_METHODS = frozenset({Method.GRADCAM, Method.GUIDED_BACKPROP, Method.DECONVNET,
                              Method.INTEGRATED_GRADIENTS})


class Explainer(Protocol):
    """What every explainer offers: an (H, W) float32 heatmap of the image's own size, or of its
    working copy when the image is over ``ExplainCaps.max_work_side``."""

    def explain(self, image: ImageInput, *, target: Target | TargetName | str | None = None,
                progress: ProgressCallback | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class ExplainOptions:
    """Per-method settings; ``None`` sizes mean "relative to the image" (see each method)."""

    box: int | None = None  # occlusion box, pixels
    stride: int | None = None  # occlusion stride, pixels
    fill: Fill = Fill.MEAN
    window: int | None = None  # sliding-window crop, pixels
    window_stride: int | None = None
    steps: int = 32  # integrated gradients
    baseline: Baseline = Baseline.BLACK
    reduction: Reduction = Reduction.ABS
    layer: str | None = None  # Grad-CAM's feature map (a forward_intermediates name); None: the last
    device: str = "cpu"  # where gradient methods run
    caps: ExplainCaps = field(default_factory=ExplainCaps)  # working-copy size, windows, aspect ratio (docs/explain.md)


def torch_model_for(detector: Detector, device: str | None = None) -> nn.Module:
    """The fp32 PyTorch model that computes the same scores as ``detector``, on ``device``
    (default: the CPU): :meth:`Detector.torch_model`. Explainers never move, hook or switch the
    mode of the module they are given (they work on a private view of it), so this may be the
    Detector's own module."""
    if device is not None:
        from .gradients import torch_device

        torch_device(device)  # a clear error for a missing CUDA before any copy is made
    model: nn.Module = detector.torch_model(device)
    return model


def make_explainer(method: Method | str, detector: Detector | None = None, *,
                   options: ExplainOptions | None = None, model: nn.Module | None = None) -> Explainer:
    """Build one method's explainer. Black-box methods run through ``detector``; gradient methods
    on ``model`` (default: :func:`torch_model_for` the detector on ``options.device``) with the
    detector's preprocessing. Neither the detector's module nor ``model`` is ever modified."""
    method = option(Method, method, "method")
    if method is Method.ALL:
        raise ConfigError("make_explainer builds one method; use explain_many for all of them")
    opts = options or ExplainOptions()
    det = detector or Detector()
    if method is Method.OCCLUSION:
        from .occlusion import Occlusion

        return Occlusion(det, box=opts.box, stride=opts.stride, fill=opts.fill, caps=opts.caps)
    if method is Method.SLIDING_WINDOW:
        from .sliding import SlidingWindow

        return SlidingWindow(det, window=opts.window, stride=opts.window_stride, caps=opts.caps)
    from . import gradients as g

    net = model if model is not None else torch_model_for(det, opts.device)
    pre, device, limits, caps = det.preprocess_config, opts.device, det.limits, opts.caps
    if method is Method.GRADCAM:
        return g.GradCAM(net, preprocess=pre, device=device, layer=opts.layer, limits=limits, caps=caps)
    if method is Method.GUIDED_BACKPROP:
        return g.GuidedBackprop(net, preprocess=pre, device=device, reduction=opts.reduction, limits=limits, caps=caps)
    if method is Method.DECONVNET:
        return g.Deconvnet(net, preprocess=pre, device=device, reduction=opts.reduction, limits=limits, caps=caps)
    return g.IntegratedGradients(net, preprocess=pre, device=device, steps=opts.steps, baseline=opts.baseline,
                                 reduction=opts.reduction, limits=limits, caps=caps)


def explain_many(image: ImageInput, methods: list[Method] | tuple[Method, ...], detector: Detector | None = None,
                 *, options: ExplainOptions | None = None, target: Target | TargetName | str | None = None,
                 model: nn.Module | None = None,
                 progress: ProgressCallback | None = None) -> dict[Method, np.ndarray]:
    """Heatmaps of several methods for one image (``Method.ALL`` expands to every method), in
    order; the gradient methods share one model."""
    expanded: list[Method] = []
    for m in methods:
        m = Method(m)
        for item in (ALL_METHODS if m is Method.ALL else (m,)):
            if item not in expanded:
                expanded.append(item)
    det = detector or Detector()
    if model is None and any(m in GRADIENT_METHODS for m in expanded):
        model = torch_model_for(det, (options or ExplainOptions()).device)
    return {m: make_explainer(m, det, options=options, model=model).explain(image, target=target, progress=progress)
            for m in expanded}


def work_units(method: Method, explainer: Explainer, height: int, width: int) -> int:
    """How many progress units one method reports for an image (windows, or 1)."""
    count = getattr(explainer, "count", None)
    if count is None:
        return 1
    extra = 1 if method is Method.OCCLUSION else 0
    return int(count(height, width)) + extra
