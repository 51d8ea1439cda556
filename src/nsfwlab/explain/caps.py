"""The caps of explain and censor at work: refusing extreme aspect ratios, the working copy (the
image downscaled so its long side is at most ``ExplainCaps.max_work_side``), sizes fitted under a
long-side cap (the core's :mod:`nsfwlab.sizing`), and resizing heatmaps between them. (A leaf:
it imports no other explain module but the light ``options``.)"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .. import sizing
from ..sizing import downscale, fit_side
from .options import ExplainCaps

__all__ = ["ExplainCaps", "check_aspect", "fit_side", "resize_map", "working_copy"]


def check_aspect(height: int, width: int, caps: ExplainCaps) -> None:
    """Refuse an image whose long side is more than ``caps.max_aspect`` times its short side."""
    sizing.check_aspect(height, width, caps.max_aspect, who="explain")


def working_copy(img: Image.Image, caps: ExplainCaps) -> Image.Image:
    """The image explainers work on: ``img`` itself when its long side is within
    ``caps.max_work_side``, else a bilinear (antialiased) downscale to that size. Refuses extreme
    aspect ratios first (:func:`check_aspect`)."""
    check_aspect(img.height, img.width, caps)
    return downscale(img, caps.max_work_side)


def resize_map(heat: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a 2-D map to (height, width) with bilinear interpolation (float32; a copy)."""
    heat = np.asarray(heat, dtype=np.float32)
    if heat.shape == (height, width):
        return heat.copy()
    resized = Image.fromarray(heat, mode="F").resize((width, height), resample=Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.float32)
