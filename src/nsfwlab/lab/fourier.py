"""Image parameterisations and transformation robustness for feature visualisation.

After Olah, Mordvintsev & Schubert, "Feature Visualization" (Distill, 2017), as lucid/lucent do it
(written here from the paper's description):

- :class:`FourierImage`: the image is the inverse real FFT of a learned spectrum whose
  coefficients are scaled by ``1 / frequency`` (a natural image's falloff), so that gradient
  steps change low frequencies as readily as high ones; colours are learned in a decorrelated
  space (the square root of ImageNet's colour covariance) and squashed to [0, 1] by a sigmoid.
- :class:`PixelImage`: plain pixels (a sigmoid of free logits), the baseline.
- :func:`robustness_transforms`: random padding, jitter, scale and rotation applied before the
  network sees the image, so that the optimum is not a fragile high-frequency pattern.

Every parameterisation maps its parameters to ``(N, 3, H, W)`` in [0, 1] and can be set from a
given image (:meth:`set_image`), which inverts it exactly up to float rounding.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["COLOR_CORRELATION_SQRT", "FourierImage", "ImageParam", "PixelImage", "robustness_transforms"]

#: Square root of the colour covariance of ImageNet photos (RGB), as published with lucid.
COLOR_CORRELATION_SQRT = torch.tensor([[0.26, 0.09, 0.02],
                                       [0.27, 0.00, -0.05],
                                       [0.27, -0.09, 0.03]])
_EPS = 1e-6


def _colour_matrix() -> torch.Tensor:
    return COLOR_CORRELATION_SQRT / COLOR_CORRELATION_SQRT.norm(dim=0).max()


def _logit(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(_EPS, 1 - _EPS)
    return torch.log(x) - torch.log1p(-x)


class ImageParam(nn.Module):
    """Base: ``forward() -> (N, 3, H, W)`` in [0, 1]; ``set_image(x)`` makes forward return x."""

    def forward(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def set_image(self, image: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class PixelImage(ImageParam):
    """Free per-pixel logits, sigmoid to [0, 1]."""

    def __init__(self, batch: int, size: int, *, std: float = 0.01, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.randn(batch, 3, size, size, generator=generator) * std)

    def forward(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def set_image(self, image: torch.Tensor) -> None:
        with torch.no_grad():
            self.logits.copy_(_logit(image.to(self.logits)))


class FourierImage(ImageParam):
    """A spectrum scaled by ``1 / max(f, 1/size) ** decay`` in decorrelated colour space."""

    scale: torch.Tensor
    colour: torch.Tensor

    def __init__(self, batch: int, size: int, *, std: float = 0.01, decay: float = 1.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.size = size
        fy = torch.fft.fftfreq(size).view(-1, 1)
        fx = torch.fft.rfftfreq(size).view(1, -1)
        freqs = torch.sqrt(fx * fx + fy * fy)
        scale = 1.0 / torch.clamp(freqs, min=1.0 / size) ** decay
        # x size: the ortho transform divides by it; / 4: a gentler start (lucid uses the same).
        self.register_buffer("scale", (scale * size / 4.0).to(torch.float32), persistent=False)
        self.register_buffer("colour", _colour_matrix(), persistent=False)
        shape = (batch, 3, size, size // 2 + 1, 2)
        self.spectrum = nn.Parameter(torch.randn(shape, generator=generator) * std)

    def _decorrelated(self) -> torch.Tensor:
        coeffs = torch.view_as_complex(self.spectrum) * self.scale
        return torch.fft.irfft2(coeffs, s=(self.size, self.size), norm="ortho")

    def forward(self) -> torch.Tensor:
        flat = self._decorrelated()  # (N, 3, H, W) in decorrelated colour space
        rgb = torch.einsum("ij,njhw->nihw", self.colour, flat)
        return torch.sigmoid(rgb)

    def set_image(self, image: torch.Tensor) -> None:
        """Invert: sigmoid, colour matrix, scale and FFT, so that ``forward()`` returns ``image``."""
        with torch.no_grad():
            rgb = _logit(image.to(self.spectrum.dtype))
            flat = torch.einsum("ij,njhw->nihw", torch.linalg.inv(self.colour), rgb)
            coeffs = torch.fft.rfft2(flat, norm="ortho") / self.scale
            self.spectrum.copy_(torch.view_as_real(coeffs))


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
