"""Every model's NSFW probability as a differentiable function of pixels, and the oracles attacks query.

A :class:`Scorer` takes ``(N, 3, H, W)`` float32 RGB pixels in [0, 1], of any size, and returns the
model's ``(N,)`` NSFW probability with gradients, through the model's own preprocessing:

- ``open_nsfw``: Pillow's bilinear resize bit for bit (its linear map's gradient), Pillow's JPEG
  round trip straight-through, the centre crop, BGR and the mean (:mod:`nsfwlab.preprocess.differentiable`).
  On uint8 pixels the forward pass is the Detector's score up to float arithmetic (~1e-5).
- zoo classifiers (nsfwjs): the card's preprocessing (:func:`nsfwlab.zoo.runtime.prepare`) in torch and the
  converted network; on uint8 pixels, the zoo model's own score.
- ensembles: the members' scores combined by ``mean`` or ``max``, as :class:`nsfwlab.zoo.EnsembleModel` does.

NudeNet's detector runs in onnxruntime only and has no differentiable form here.

What an attack reports is never this estimate: :func:`exact_score` scores the saved uint8 PNG with the
Detector, and only that decides a success.
"""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import ConfigError

__all__ = ["DetectorOracle", "LocalOracle", "Oracle", "Scorer", "exact_score", "load_scorer", "query_batch",
           "to_pixels", "to_tensor"]


class Scorer(nn.Module):
    """A model's NSFW probability: ``forward(x)`` with ``x`` (N, 3, H, W) float RGB in [0, 1] -> (N,).
    ``logits(x)`` -> (N, 2) ``[log(1 - p), log(p)]`` (class 1 is NSFW), for cross-entropy losses and
    libraries that expect a classifier's logits. Parameters are frozen; gradients are for inputs."""

    model_id: str

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        p = self(x).clamp(1e-7, 1 - 1e-7)
        return torch.stack([torch.log1p(-p), torch.log(p)], dim=1)

    def for_class(self, name: str) -> Scorer:
        """The same network's probability of class ``name`` instead of the NSFW score (a zoo classifier's
        class: nsfwjs's ``Drawing``, say); a model without class probabilities is a ConfigError."""
        raise ConfigError(f"model {self.model_id} gives no class probabilities to aim at", param="target_class")


class _OpenNsfw(Scorer):
    def __init__(self, detector: Any) -> None:
        super().__init__()
        from ..preprocess.differentiable import network_input, straight_through_jpeg
        from ..preprocess.resize import resize_exact

        self.model_id = "open_nsfw"
        self.net = detector.torch_model()
        self.pre = detector.preprocess_config
        if self.pre.draft:
            raise ConfigError("gradients need the exact resize; use a Detector without draft decoding",
                              param="detector")
        self._resize, self._jpeg, self._input = resize_exact, straight_through_jpeg, network_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.pre.resize
        v = x * 255.0
        if v.shape[-2:] != (size, size):
            v = self._resize(v, size)
        if self.pre.jpeg_roundtrip:
            v = self._jpeg(v, self.pre.jpeg_quality)
        logits = self.net(self._input(v, self.pre))
        return torch.softmax(logits, dim=1)[:, 1]


class _ZooClassifier(Scorer):
    def __init__(self, model: Any) -> None:
        super().__init__()
        card = model.card
        runner = model._runner
        module = getattr(runner, "module", None)
        if module is None:
            raise ConfigError(f"{card.id} has no PyTorch module to differentiate", param="model")
        self.model_id = card.id
        self.net = module
        self.spec = card.input
        self.output = runner.output
        self.classes = tuple(card.classes)
        self.nsfw = list(card.nsfw_indices)

    def for_class(self, name: str) -> Scorer:
        if name not in self.classes:
            raise ConfigError(f"model {self.model_id} has no class {name!r}; its classes: {', '.join(self.classes)}",
                              param="target_class")
        picked = copy.copy(self)  # shares the network; only the summed indices differ
        picked.nsfw = [self.classes.index(name)]
        return picked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        spec = self.spec
        inverse = 1.0 / spec.scale
        v = x if math.isclose(inverse, 255.0) else x * (255.0 * spec.scale)
        if v.shape[-2:] != (spec.size, spec.size):
            v = F.interpolate(v, size=(spec.size, spec.size), mode="bilinear",
                              align_corners=spec.resize == "bilinear-align-corners")
        if spec.channel_order == "BGR":
            v = v.flip(1)
        if spec.mean != (0.0, 0.0, 0.0) or spec.std != (1.0, 1.0, 1.0):
            mean = torch.tensor(spec.mean, dtype=v.dtype, device=v.device).view(1, 3, 1, 1)
            std = torch.tensor(spec.std, dtype=v.dtype, device=v.device).view(1, 3, 1, 1)
            v = (v - mean) / std
        v = v.permute(0, 2, 3, 1).contiguous() if spec.layout == "NHWC" else v
        out = self.net(v)
        if self.output == "logits":
            out = torch.softmax(out, dim=1)
        return out[:, self.nsfw].sum(dim=1).clamp(0.0, 1.0)


class _Ensemble(Scorer):
    def __init__(self, model_id: str, members: Sequence[Scorer], combine: str) -> None:
        super().__init__()
        self.model_id = model_id
        self.members = nn.ModuleList(members)
        self.combine = combine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = torch.stack([m(x) for m in self.members], dim=1)
        return scores.max(dim=1).values if self.combine == "max" else scores.mean(dim=1)


def load_scorer(model: str = "open_nsfw", *, detector: Any | None = None) -> Scorer:
    """The :class:`Scorer` of a model id (``open_nsfw``, a zoo classifier, ``ensemble:A+B[:mean|max]``).
    ``detector``: the open_nsfw :class:`~nsfwlab.Detector` whose weights to use (a checkpoint's, say);
    default the stock model. A model without a differentiable form is a ConfigError (``param="model"``)."""
    from ..zoo.registry import parse_ensemble

    if detector is not None and getattr(detector, "zoo", None) is not None:
        model = detector.zoo.model_id
        detector = None
    ensemble = parse_ensemble(model)
    if ensemble is not None:
        members = [load_scorer(m) for m in ensemble.members]
        scorer: Scorer = _Ensemble(model, members, ensemble.combine)
    elif model == "open_nsfw":
        if detector is None:
            from ..detector import Detector

            detector = Detector(device="cpu")
        scorer = _OpenNsfw(detector)
    else:
        from .. import zoo

        card = zoo.get_card(model)
        if card.kind != "classifier" or card.weights.format == "onnx":
            raise ConfigError(f"{card.id} (a {card.weights.format} {card.kind}) has no differentiable form here; "
                              "the gradient methods take open_nsfw, the nsfwjs models and their ensembles",
                              param="model")
        scorer = _ZooClassifier(zoo.load(model, backend="torch"))
    for p in scorer.parameters():
        p.requires_grad_(False)
    return scorer.eval()


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) or (H, W, 3) uint8 -> (N, 3, H, W) float32 in [0, 1]."""
    arr = images[None] if images.ndim == 3 else images
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).to(torch.float32) / 255.0


def to_pixels(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) float in [0, 1] -> (N, H, W, 3) uint8, rounded."""
    return (x.detach().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def exact_score(detector: Any, pixels: np.ndarray) -> float:
    """The Detector's exact NSFW score of ``pixels`` (HxWx3 uint8) saved as a PNG file: what a user who
    downloads the image and scores it gets. Only this decides whether an attack succeeded."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ConfigError("pixels must be an HxWx3 uint8 RGB array", param="pixels")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return float(detector.nsfw_score(buf.getvalue()))


class Oracle(Protocol):
    """Anything that answers queries about images, counting them: a local model or a live service.
    ``scores`` takes (N, H, W, 3) uint8 and returns (N,) NSFW probabilities; an oracle that answers
    labels only (``labels_only``) returns 1.0 for NSFW and 0.0 otherwise."""

    name: str
    queries: int
    labels_only: bool
    threshold: float

    def scores(self, images: np.ndarray) -> np.ndarray: ...


def query_batch(images: np.ndarray) -> np.ndarray:
    """An oracle's query: (N, H, W, 3) uint8 RGB (one (H, W, 3) image is a batch of one); anything else is a
    ConfigError."""
    arr = images[None] if images.ndim == 3 else images
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ConfigError("images must be (N, H, W, 3) uint8 RGB", param="images")
    return arr


class _CountingOracle:
    """What every local oracle shares: the threshold, the query count, the labels-only answer."""

    def __init__(self, name: str, threshold: float, labels_only: bool) -> None:
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"threshold must lie strictly between 0 and 1, got {threshold}", param="threshold")
        self.name = name
        self.threshold = threshold
        self.labels_only = labels_only
        self.queries = 0

    def scores(self, images: np.ndarray) -> np.ndarray:
        arr = query_batch(images)
        scores = self._answer(arr).astype(np.float64) if len(arr) else np.zeros(0)
        self.queries += len(arr)
        return (scores >= self.threshold).astype(np.float64) if self.labels_only else scores

    def _answer(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class LocalOracle(_CountingOracle):
    """A :class:`Scorer` as a black box: its forward pass without gradients, batched; each image is one
    query. ``labels_only=True`` hides the scores (1.0 NSFW, 0.0 otherwise, at ``threshold``)."""

    def __init__(self, scorer: Scorer, threshold: float = 0.5, *, labels_only: bool = False,
                 batch_size: int = 16) -> None:
        super().__init__(scorer.model_id, threshold, labels_only)
        self.scorer = scorer
        self.batch_size = batch_size

    def _answer(self, images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return np.concatenate([self.scorer(to_tensor(images[i:i + self.batch_size])).numpy()
                                   for i in range(0, len(images), self.batch_size)])


class DetectorOracle(_CountingOracle):
    """Any :class:`~nsfwlab.Detector` as a black box, answering with its exact score of each uint8 image
    (:func:`exact_score`): the oracle for models with no differentiable form (NudeNet's detector, whose
    NSFW score is its most confident exposed-body-part box, so evading it means no box at or above the
    threshold), and the strictest one for any other. ``labels_only`` as :class:`LocalOracle`."""

    def __init__(self, detector: Any, threshold: float = 0.5, *, labels_only: bool = False) -> None:
        super().__init__(detector.model_id, threshold, labels_only)
        self.detector = detector

    def _answer(self, images: np.ndarray) -> np.ndarray:
        return np.array([exact_score(self.detector, a) for a in images])
