"""Gradient explainers on the PyTorch model: Grad-CAM, guided backprop, deconvnet, integrated
gradients (captum for the last three).

Where the gradient is taken. The exact preprocessing is: resize to 256x256 (Pillow bilinear) ->
JPEG round trip -> centre crop 224 -> RGB->BGR -> mean subtraction. Everything after the JPEG
round trip is differentiable and is done here in torch (:class:`DifferentiablePreprocess`). The
JPEG round trip is not (quantisation has zero gradient almost everywhere); it is applied as a
*straight-through* step: the forward pass uses Pillow's real JPEG output, so the explained score is
exactly the Detector's, and the backward pass treats it as the identity (both from
:mod:`nsfwlab.preprocess.differentiable`). Attributions are taken
with respect to the 256x256 resized image (Pillow's exact resize output) and mapped back to the
original resolution by bilinear resizing of the per-pixel map. The outer 16-pixel frame of the
256x256 image is cropped away by the model and so always gets zero attribution.

Explainers take their configuration in the constructor and return (H, W) float32 heatmaps of the
image's own size from :meth:`explain`. Gradients are computed with ``torch.autograd.grad``, so the
model's parameters are never modified (no ``.grad`` is accumulated). The module given is never
moved, hooked or switched to eval mode either: each explainer works on a private view of it
(:func:`private_module`), which shares its fp32 parameters or, on another device or dtype, copies
them. So a Detector's own module keeps serving scores while it is explained.

Targets are the core's objectives (:mod:`nsfwlab.objectives`), evaluated with
:func:`nsfwlab.objectives.forward_target`: logit targets and layer targets (``Channel``, ``Neuron``,
through ``forward_intermediates``) alike; Grad-CAM takes logit targets only.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..config import DecodeLimits, PreprocessConfig, Settings, option
from ..errors import BackendUnavailableError, ConfigError
from ..imageio import ImageInput
from ..objectives import Target, TargetName, forward_target, make_target
from ..preprocess.differentiable import DifferentiablePreprocess, resized_tensor
from ._windows import ProgressCallback, load_input
from .caps import check_aspect, fit_side, resize_map
from .options import Baseline, ExplainCaps, Reduction

__all__ = [
    "Baseline",
    "Deconvnet",
    "DifferentiablePreprocess",
    "GradCAM",
    "GuidedBackprop",
    "IntegratedGradients",
    "Reduction",
    "TargetModel",
    "predicted_class_target",
    "private_module",
    "reduce_channels",
    "resized_tensor",
    "to_image_resolution",
    "torch_device",
]


class TargetModel(nn.Module):
    """Resized RGB image -> preprocessing -> model -> target, as an (N, 1) output (captum's shape).
    A target that reads layers gets them through the model's ``forward_intermediates``."""

    def __init__(self, model: nn.Module, target: Target, config: PreprocessConfig | None = None) -> None:
        super().__init__()
        self.pre = DifferentiablePreprocess(config)
        self.model = model
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return forward_target(self.model, self.pre(x), self.target)[1].unsqueeze(1)


def torch_device(device: str) -> torch.device:
    """``device`` as a torch device (``cuda`` as the current CUDA device): a ConfigError for a
    name torch does not know, a BackendUnavailableError for CUDA on a machine without it."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"unknown device {device!r}: {exc}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailableError("CUDA was requested but torch sees no CUDA device")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def private_module(model: nn.Module, device: torch.device) -> nn.Module:
    """A module for one explainer alone, in eval mode, fp32 on ``device``: its own module objects
    (so the hooks of guided backprop, deconvnet and layer targets, and the eval mode, never reach
    ``model``). Where ``model``'s parameters and buffers already are fp32 on ``device`` they are
    shared, not copied (nothing writes them: gradients are taken with respect to the input);
    otherwise the view is an fp32 copy on ``device``. ``model`` itself is never changed."""
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.device == device and t.dtype == torch.float32 for t in tensors):
        view = copy.deepcopy(model, {id(t): t for t in tensors})
    else:
        view = copy.deepcopy(model).to(device=device, dtype=torch.float32)
    return view.eval()


#: Resize a 2-D map to (height, width), bilinear, float32 (:func:`nsfwlab.explain.caps.resize_map`).
to_image_resolution = resize_map


def reduce_channels(attr: np.ndarray, reduction: Reduction | str) -> np.ndarray:
    """(3, H, W) -> (H, W) by :class:`Reduction`."""
    reduction = Reduction(reduction)
    if reduction is Reduction.ABS:
        return np.abs(attr).sum(axis=0)
    total = attr.sum(axis=0)
    return np.maximum(total, 0.0) if reduction is Reduction.POSITIVE else total


class _TorchExplainer:
    """Common parts: the model (the stock weights unless given), device, preprocessing.

    ``model`` is used through :func:`private_module`: never moved, hooked or put in eval mode in
    place. Explanations run in fp32 (fp16 gradients are too coarse for attributions), so a model on
    another device or in another dtype is copied once, here."""

    def __init__(self, model: nn.Module | None = None, *, preprocess: PreprocessConfig | None = None,
                 device: str = "cpu", limits: DecodeLimits | None = None, caps: ExplainCaps | None = None) -> None:
        self.limits = limits or Settings.from_env().limits
        self.caps = caps or ExplainCaps()
        if model is not None and not isinstance(model, nn.Module):
            raise ConfigError("model must be a torch.nn.Module taking NCHW BGR input and returning logits")
        dev = torch_device(device)
        if model is None:
            from ..model import load_open_nsfw

            model = load_open_nsfw()
        self.model = private_module(model, dev)
        self.preprocess = preprocess or PreprocessConfig()
        self.device = device

    def _load(self, image: ImageInput) -> Image.Image:
        """The decoded image, refused when its aspect ratio is over ``caps.max_aspect``. It is
        used at full resolution: the model sees it resized to 256x256 anyway, so the explained
        score is the Detector's; only the returned map is capped (:meth:`_heatmap`)."""
        img = load_input(image, self.limits)
        check_aspect(img.height, img.width, self.caps)
        return img

    def _heatmap(self, heat: np.ndarray, img: Image.Image) -> np.ndarray:
        """A map on the resized canvas brought to the image's size, or to the working copy's
        when the image is over ``caps.max_work_side``."""
        return resize_map(heat, *fit_side(img.height, img.width, self.caps.max_work_side))

    def _input(self, img: Image.Image) -> torch.Tensor:
        return resized_tensor(img, self.preprocess).to(self.device)

    def score(self, image: ImageInput, target: Target | TargetName | str | None = None) -> float:
        """The target's value on the image through this explainer's pipeline (equals the
        Detector's score for the default target, the stock model and the exact preprocessing)."""
        wrapped = TargetModel(self.model, make_target(target), self.preprocess)
        with torch.no_grad():
            return float(wrapped(self._input(self._load(image)))[0, 0])


def predicted_class_target(logits: torch.Tensor) -> Target:
    """The target Grad-CAM explains by default: the class the model predicts. ``logit-margin``
    (``nsfw - sfw``) when the NSFW probability is at least 0.5, else its negation (``sfw - nsfw``).

    Grad-CAM keeps only the positive part of its weighted feature map. On a safe image nothing
    argues for NSFW, so the map of an NSFW target is zero everywhere (measured: blank on three of
    four scikit-image photos scoring 0.0001-0.013); the evidence for the predicted class is what
    the network looks at."""
    from ..objectives import LogitMargin

    margin = LogitMargin()
    return margin if float(margin(logits.detach())[0]) >= 0.0 else -margin


class GradCAM(_TorchExplainer):
    """Grad-CAM (Selvaraju et al. 2017): ``relu(sum_k mean(dT/dA_k) * A_k)`` over a feature map
    ``A``, upsampled over the 224 crop, zero on the cropped-away frame, then resized to the original
    image. ``layer`` names the feature map, as the model's ``forward_intermediates`` knows it
    (``stage2``, ``stage3_block5``, ``conv_1``; :meth:`~nsfwlab.model.OpenNSFW.layer_names` lists
    them); by default the last one (``forward_features``: 7x7 for open_nsfw). The target is on the
    logits (a layer target is upstream of the feature map it weights: use the other gradient
    methods for those); without one, the predicted class is explained
    (:func:`predicted_class_target`)."""

    def __init__(self, model: nn.Module | None = None, *, preprocess: PreprocessConfig | None = None,
                 device: str = "cpu", layer: str | None = None, limits: DecodeLimits | None = None,
                 caps: ExplainCaps | None = None) -> None:
        super().__init__(model, preprocess=preprocess, device=device, limits=limits, caps=caps)
        if layer is not None:
            names = getattr(self.model, "layer_names", None)
            if names is None or not hasattr(self.model, "forward_intermediates"):
                raise ConfigError("layer needs a model with forward_intermediates and layer_names", param="layer")
            known = list(names())
            if layer not in known:
                shown = ", ".join(n for n in known if "." not in n)
                raise ConfigError(f"unknown layer {layer!r}; choose one of: {shown}", param="layer")
        self.layer = layer

    def explain(self, image: ImageInput, *, target: Target | TargetName | str | None = None,
                progress: ProgressCallback | None = None) -> np.ndarray:
        img = self._load(image)
        cam = self.cam(self._input(img), None if target is None else make_target(target))
        if progress is not None:
            progress(1)
        return self._heatmap(cam, img)

    def cam(self, x: torch.Tensor, target: Target | None = None) -> np.ndarray:
        """(1, 3, R, R) resized image -> the (R, R) Grad-CAM map on the resized canvas (``target``
        ``None``: the predicted class)."""
        if target is not None and target.layers:
            raise ConfigError(f"Grad-CAM explains targets on the logits, and {target.name!r} reads layers "
                              f"{list(target.layers)}; use guided-backprop, deconvnet or integrated-gradients")
        feats, grad = self._features_and_gradient(DifferentiablePreprocess(self.preprocess)(x), target)
        weights = grad.mean(dim=(2, 3), keepdim=True)
        cam = torch.relu((weights * feats).sum(dim=1, keepdim=True)).detach()
        crop = self.preprocess.crop
        up = nn.functional.interpolate(cam, size=(crop, crop), mode="bilinear", align_corners=False)
        size = x.shape[2]
        canvas = torch.zeros((size, size), dtype=torch.float32)
        top = max((size - crop) // 2, 0)
        canvas[top : top + crop, top : top + crop] = up[0, 0].cpu()
        return canvas.numpy()

    def _features_and_gradient(self, net_input: torch.Tensor,
                               target: Target | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The feature map (the named layer's, else the last) and the target's gradient on it."""
        model: Any = self.model
        with torch.enable_grad():
            if self.layer is not None:
                # The model's parameters may be frozen: the input is made a leaf so the layer is in a graph.
                logits, acts = model.forward_intermediates(net_input.detach().requires_grad_(True), [self.layer])
                feats = acts[self.layer]
            else:
                if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
                    raise ConfigError("Grad-CAM needs a model with forward_features and forward_head")
                feats = model.forward_features(net_input).detach().requires_grad_(True)
                logits = model.forward_head(feats)
            if feats.dim() != 4:
                raise ConfigError(f"layer {self.layer!r} is not a feature map (shape {tuple(feats.shape)})",
                                  param="layer")
            chosen = target if target is not None else predicted_class_target(logits)
            (grad,) = torch.autograd.grad(chosen(logits).sum(), feats)
        return feats.detach(), grad


class _CaptumExplainer(_TorchExplainer):
    """A captum attribution method on the resized RGB image; ``reduction`` folds its colour
    channels into one map."""

    def __init__(self, model: nn.Module | None = None, *, preprocess: PreprocessConfig | None = None,
                 device: str = "cpu", reduction: Reduction | str = Reduction.ABS,
                 limits: DecodeLimits | None = None, caps: ExplainCaps | None = None) -> None:
        super().__init__(model, preprocess=preprocess, device=device, limits=limits, caps=caps)
        self.reduction = option(Reduction, reduction, "reduction")

    def _method(self, wrapped: nn.Module) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _attribute(self, method: Any, x: torch.Tensor) -> torch.Tensor:
        return method.attribute(x, target=0)

    def attributions(self, image: ImageInput, *, target: Target | TargetName | str | None = None) -> np.ndarray:
        """The raw (3, R, R) attribution on the resized RGB image (R = the preprocessing's resize)."""
        return self._attributions(self._input(self._load(image)), make_target(target))

    def _attributions(self, x: torch.Tensor, target: Target) -> np.ndarray:
        wrapped = TargetModel(self.model, target, self.preprocess)
        x = x.clone().requires_grad_(True)
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Setting backward hooks", category=UserWarning)
            attr = self._attribute(self._method(wrapped), x)
        return attr.detach()[0].cpu().numpy().astype(np.float32)

    def explain(self, image: ImageInput, *, target: Target | TargetName | str | None = None,
                progress: ProgressCallback | None = None) -> np.ndarray:
        img = self._load(image)
        attr = self._attributions(self._input(img), make_target(target))
        if progress is not None:
            progress(1)
        return self._heatmap(reduce_channels(attr, self.reduction), img)


def _captum() -> Any:
    try:
        import captum.attr
    except ImportError:  # pragma: no cover - captum is in the explain extra
        raise ConfigError("this method needs captum: pip install 'nsfwlab[explain]'") from None
    return captum.attr


class GuidedBackprop(_CaptumExplainer):
    """Guided backpropagation (Springenberg et al. 2015): at every ReLU only positive gradients
    pass where the forward activation was positive. Sharp, edge-like maps."""

    def _method(self, wrapped: nn.Module) -> Any:
        return _captum().GuidedBackprop(wrapped)


class Deconvnet(_CaptumExplainer):
    """The deconvnet of Zeiler & Fergus 2014: the backward pass through
    each ReLU rectifies the gradient itself, ignoring the forward activation."""

    def _method(self, wrapped: nn.Module) -> Any:
        return _captum().Deconvolution(wrapped)


class IntegratedGradients(_CaptumExplainer):
    """Integrated gradients (Sundararajan et al. 2017) from a baseline image to the input, in the
    256x256 resized RGB space, ``steps`` Gauss-Legendre points; each path point goes through the
    real JPEG round trip forward (straight-through backward). Attributions sum to about
    ``target(input) - target(baseline)`` (completeness)."""

    def __init__(self, model: nn.Module | None = None, *, preprocess: PreprocessConfig | None = None,
                 device: str = "cpu", steps: int = 32, baseline: Baseline | str = Baseline.BLACK,
                 batch_size: int = 16, reduction: Reduction | str = Reduction.ABS,
                 limits: DecodeLimits | None = None, caps: ExplainCaps | None = None) -> None:
        super().__init__(model, preprocess=preprocess, device=device, reduction=reduction, limits=limits,
                         caps=caps)
        if steps < 1:
            raise ConfigError(f"steps must be at least 1, got {steps}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.steps = steps
        self.baseline = option(Baseline, baseline, "baseline")
        self.batch_size = batch_size

    def baseline_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """The baseline image: black, or the preprocessing's own mean colour (``mean_bgr``), which
        is the network input zero."""
        if self.baseline is Baseline.BLACK:
            return torch.zeros_like(x)
        mean_rgb = torch.tensor(self.preprocess.mean_bgr[::-1], dtype=x.dtype, device=x.device)
        return mean_rgb.view(1, 3, 1, 1).expand_as(x).clone()

    def _method(self, wrapped: nn.Module) -> Any:
        return _captum().IntegratedGradients(wrapped)

    def _attribute(self, method: Any, x: torch.Tensor) -> torch.Tensor:
        return method.attribute(x, baselines=self.baseline_tensor(x), target=0, n_steps=self.steps,
                                internal_batch_size=self.batch_size)
