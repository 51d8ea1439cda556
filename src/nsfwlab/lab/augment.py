"""Transformation robustness for feature visualisation: random padding, jitter, scale and rotation
applied to the image before the network sees it, so that the optimum is not a fragile
high-frequency pattern (Olah et al., "Feature Visualization", Distill 2017; lucid's
``transform.standard_transforms``). Differentiable; one random draw per batch.

These are augmentations of an image being optimised, not the uint8 perturbations a platform applies
to a finished image (:mod:`nsfwlab.lab.transforms`).
"""

from __future__ import annotations

import math

import torch

__all__ = ["robustness_transforms"]


def robustness_transforms(x: torch.Tensor, generator: torch.Generator, *, pad: int = 12, jitter: int = 8,
                          scales: tuple[float, float] = (0.9, 1.1), degrees: float = 10.0) -> torch.Tensor:
    """Random pad (mid-grey), jitter, scale and rotation of ``(N, 3, H, W)`` images in [0, 1],
    then a final small jitter; the output keeps the input's size. One draw per batch."""
    import torch.nn.functional as F

    n, _, h, w = x.shape
    x = F.pad(x, (pad, pad, pad, pad), mode="constant", value=0.5)
    x = _roll(x, jitter, generator)
    u = torch.rand(2, generator=generator).tolist()
    scale = scales[0] + (scales[1] - scales[0]) * u[0]
    angle = math.radians(-degrees + 2 * degrees * u[1])
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=x.dtype, device=x.device).expand(n, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    x = _roll(x, max(1, jitter // 2), generator)
    top, left = (x.shape[2] - h) // 2, (x.shape[3] - w) // 2
    return x[:, :, top : top + h, left : left + w]


def _roll(x: torch.Tensor, amount: int, generator: torch.Generator) -> torch.Tensor:
    dy, dx = (torch.randint(-amount, amount + 1, (2,), generator=generator)).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))
