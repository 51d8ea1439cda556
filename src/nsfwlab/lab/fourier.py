"""Deprecated: the parameterisations moved to :mod:`nsfwlab.lab.imageparam` and the robustness
transforms to :mod:`nsfwlab.lab.augment`. This module re-exports them for one release."""

from __future__ import annotations

import warnings

from .augment import robustness_transforms
from .imageparam import COLOR_CORRELATION_SQRT, FourierImage, ImageParam, PixelImage

__all__ = ["COLOR_CORRELATION_SQRT", "FourierImage", "ImageParam", "PixelImage", "robustness_transforms"]

warnings.warn("nsfwlab.lab.fourier is deprecated: import FourierImage and PixelImage from nsfwlab.lab.imageparam "
              "and robustness_transforms from nsfwlab.lab.augment", DeprecationWarning, stacklevel=2)
