"""Augmentation on preprocessed network inputs (NCHW float32, BGR, mean-subtracted).

The core's exact preprocessing runs once per image (and is cached); augmentation is applied to
the cached tensors, batch by batch, from a seeded :class:`torch.Generator`, so a run (and a
resumed run) is reproducible. Nothing here modifies its input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..config import YAHOO_MEAN_BGR
from ..errors import ConfigError

__all__ = ["NO_AUGMENT", "AugmentConfig", "augment_batch"]


@dataclass(frozen=True)
class AugmentConfig:
    """Random horizontal flip with probability ``flip``; a random crop covering ``crop_scale`` of
    each side (``1.0`` disables), resized back to the input size (bilinear); brightness shift
    uniform in ``±brightness`` (grey levels) and contrast factor uniform in ``1 ± contrast``."""

    flip: float = 0.5
    crop_scale: float = 0.85
    brightness: float = 20.0
    contrast: float = 0.15

    def __post_init__(self) -> None:
        if not 0.0 <= self.flip <= 1.0:  # the comparisons also refuse NaN
            raise ConfigError(f"flip (a probability) must lie in [0, 1], got {self.flip}", param="flip")
        if not 0.5 <= self.crop_scale <= 1.0:
            raise ConfigError(f"crop_scale must lie in [0.5, 1], got {self.crop_scale}", param="crop_scale")
        if not 0.0 <= self.brightness <= 255.0:
            raise ConfigError(f"brightness must lie in [0, 255] (grey levels), got {self.brightness}",
                              param="brightness")
        if not 0.0 <= self.contrast < 1.0:
            raise ConfigError(f"contrast must lie in [0, 1), got {self.contrast}", param="contrast")

    @property
    def enabled(self) -> bool:
        return self != NO_AUGMENT


NO_AUGMENT = AugmentConfig(flip=0.0, crop_scale=1.0, brightness=0.0, contrast=0.0)


def augment_batch(x: torch.Tensor, config: AugmentConfig, generator: torch.Generator,
                  mean_bgr: Sequence[float] = YAHOO_MEAN_BGR) -> torch.Tensor:
    """A new augmented batch; ``x`` is (N, 3, H, W) BGR minus ``mean_bgr`` (the preprocessing's
    mean, :attr:`PreprocessConfig.mean_bgr`) and is left unchanged."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ConfigError(f"expected an NCHW batch with 3 channels, got shape {tuple(x.shape)}")
    n, _, h, w = x.shape
    out = x.clone()
    if config.flip > 0:
        flip = torch.rand(n, generator=generator) < config.flip
        if flip.any():
            out[flip] = out[flip].flip(-1)
    if config.crop_scale < 1.0:
        ch, cw = max(1, round(h * config.crop_scale)), max(1, round(w * config.crop_scale))
        tops = torch.randint(0, h - ch + 1, (n,), generator=generator).tolist()
        lefts = torch.randint(0, w - cw + 1, (n,), generator=generator).tolist()
        crops = [out[i : i + 1, :, t : t + ch, lf : lf + cw] for i, (t, lf) in enumerate(zip(tops, lefts, strict=True))]
        out = torch.cat([torch.nn.functional.interpolate(c, size=(h, w), mode="bilinear", align_corners=False)
                         for c in crops])
    if config.brightness > 0 or config.contrast > 0:
        mean = torch.tensor(mean_bgr, dtype=out.dtype).view(1, 3, 1, 1)
        pixels = out + mean
        shift = (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * config.brightness
        factor = 1.0 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * config.contrast
        centre = pixels.mean(dim=(1, 2, 3), keepdim=True)
        pixels = ((pixels - centre) * factor + centre + shift).clamp(0.0, 255.0)
        out = pixels - mean
    return out
