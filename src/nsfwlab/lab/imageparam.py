"""Image parameterisations for feature visualisation: what the optimiser's parameters are.

After Olah, Mordvintsev & Schubert, "Feature Visualization" (Distill, 2017), as lucid/lucent do it
(written here from the paper's description):

- :class:`FourierImage`: the image is the inverse real FFT of a learned spectrum whose
  coefficients are scaled by ``1 / frequency`` (a natural image's falloff), so that gradient
  steps change low frequencies as readily as high ones; colours are learned in a decorrelated
  space (the square root of ImageNet's colour covariance) and squashed to [0, 1] by a sigmoid.
- :class:`PixelImage`: plain pixels (a sigmoid of free logits), the baseline.

Every parameterisation maps its parameters to ``(N, 3, H, W)`` in [0, 1] and can be set from a
given image (:meth:`ImageParam.set_image`), which inverts it exactly up to float rounding. The random
transforms applied before the network sees the image are in :mod:`nsfwlab.lab.augment`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["COLOR_CORRELATION_SQRT", "FourierImage", "ImageParam", "PixelImage"]

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
        # / 4 on top of the orthonormal inverse FFT, as lucid and lucent do. A larger scale saturates
        # the sigmoid: with x size as well, 98-99% of the channel values of a run ended clipped at 0 or 255.
        self.register_buffer("scale", (scale / 4.0).to(torch.float32), persistent=False)
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
