"""The exact pipeline's steps in torch, for methods that need gradients (explain, attacks, synthesis).

Tensors are NCHW float, RGB in [0, 255] until :func:`network_input` turns them into the network's
BGR mean-subtracted input. Every step after the resize is differentiable except the JPEG round
trip (quantisation has zero gradient almost everywhere); :func:`straight_through_jpeg` applies
Pillow's real round trip in the forward pass, so a score computed here is exactly the Detector's
on the same uint8 pixels, and passes the gradient through unchanged in the backward pass.

On Pillow's resize output, ``DifferentiablePreprocess()(x)`` equals
:func:`nsfwlab.preprocess.preprocess_rgb` (permuted to NCHW) bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..config import PreprocessConfig
from . import EXACT, jpeg_roundtrip, resize_image

__all__ = [
    "DifferentiablePreprocess",
    "network_input",
    "resized_tensor",
    "straight_through_jpeg",
]


class _StraightThroughJpeg(torch.autograd.Function):
    """Forward: Pillow's JPEG round trip of each image (rounded to uint8). Backward: identity."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, quality: int) -> torch.Tensor:  # type: ignore[override]
        arr = x.detach().clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        out = np.stack([jpeg_roundtrip(Image.fromarray(a), quality) for a in arr])
        return torch.from_numpy(out).permute(0, 3, 1, 2).to(device=x.device, dtype=x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


def straight_through_jpeg(x: torch.Tensor, quality: int = 75) -> torch.Tensor:
    """(N, 3, H, W) RGB float in [0, 255] -> Pillow's JPEG round trip at ``quality`` of the
    rounded, clamped uint8 images (forward); the identity for gradients (backward)."""
    out: torch.Tensor = _StraightThroughJpeg.apply(x, int(quality))
    return out


def network_input(x: torch.Tensor, config: PreprocessConfig = EXACT) -> torch.Tensor:
    """(N, 3, H, W) RGB float in [0, 255], after the JPEG step -> the network's (N, 3, crop, crop)
    BGR mean-subtracted input: centre crop (offset ``(H - crop) // 2``), RGB->BGR, minus the mean.
    The torch twin of ``to_network_input(center_crop(...))``."""
    h, w = x.shape[2], x.shape[3]
    top, left = max((h - config.crop) // 2, 0), max((w - config.crop) // 2, 0)
    x = x[:, :, top : top + config.crop, left : left + config.crop]
    mean = torch.tensor(config.mean_bgr, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return x.flip(1) - mean


class DifferentiablePreprocess(nn.Module):
    """(N, 3, R, R) RGB float in [0, 255] (the resized image) -> the network's (N, 3, crop, crop)
    BGR mean-subtracted input, with the JPEG round trip straight-through (when the configuration
    has one). On Pillow's resize output this reproduces :func:`nsfwlab.preprocess.preprocess_rgb`
    exactly."""

    def __init__(self, config: PreprocessConfig | None = None) -> None:
        super().__init__()
        self.config = config or PreprocessConfig()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.jpeg_roundtrip:
            x = straight_through_jpeg(x, self.config.jpeg_quality)
        return network_input(x, self.config)


def resized_tensor(img: Image.Image, config: PreprocessConfig = EXACT) -> torch.Tensor:
    """Pillow's exact resize of an RGB image as a (1, 3, R, R) float32 tensor in [0, 255]."""
    arr = np.asarray(resize_image(img, config.resize), dtype=np.float32)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0)
