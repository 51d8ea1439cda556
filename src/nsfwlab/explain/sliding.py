"""Sliding-window heatmaps: the model scores windows of the image.

Each square crop of the image is scored on its own through the Detector (crop -> the exact
preprocessing -> model), and the heatmap is, per pixel, the mean target over the crops that
contain the pixel. It answers "which parts of the picture would be flagged if they were the whole
picture", a different question from occlusion's "which parts make this picture flagged".
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..detector import Detector
from ..errors import ConfigError
from ..imageio import ImageInput
from ..objectives import Target, TargetName
from ._windows import ProgressCallback, WindowExplainer, average_over_boxes, score_variants
from .options import ExplainCaps

__all__ = ["SlidingWindow", "default_window"]


def default_window(height: int, width: int) -> int:
    """A third of the short side (at least 16 pixels)."""
    return max(16, round(min(height, width) / 3))


class SlidingWindow(WindowExplainer):
    """Sliding-window heatmaps through a Detector; ``window``/``stride`` in original pixels
    (defaults: a third of the short side, and a quarter of the window). Over
    ``caps.max_work_side`` the windows are planned on the working copy (and the heatmap has its
    size), but each crop is cut from the original at the same place: crop scores stay exact, and
    only ``detector.workers`` crops exist at a time."""

    def __init__(self, detector: Detector | None = None, *, window: int | None = None,
                 stride: int | None = None, caps: ExplainCaps | None = None) -> None:
        if window is not None and window < 1:
            raise ConfigError(f"window must be at least 1 pixel, got {window}")
        if stride is not None and stride < 1:
            raise ConfigError(f"stride must be at least 1 pixel, got {stride}")
        self._detector = detector
        self.window = window
        self.stride = stride
        self.caps = caps or ExplainCaps()
        self.explicit = window is not None or stride is not None

    def geometry(self, height: int, width: int) -> tuple[int, int]:
        window = self.window or default_window(height, width)
        return window, self.stride or max(1, window // 4)

    def explain(self, image: ImageInput, *, target: Target | TargetName | str | None = None,
                progress: ProgressCallback | None = None) -> np.ndarray:
        """An (H, W) float32 heatmap: the mean ``target`` of the crops containing each pixel."""
        tgt, img, work, boxes = self._setup(image, target)
        sy, sx = img.height / work.height, img.width / work.width

        def render(i: int) -> Image.Image:
            # The crop is taken from the original (the same box on it, scaled from the working
            # copy), so each crop score is the exact score of that part of the image.
            t, left, b, r = boxes[i]
            return img.crop((round(left * sx), round(t * sy), round(r * sx), round(b * sy)))

        scores = score_variants(self.detector, render, len(boxes), progress=progress)
        return average_over_boxes(tgt.from_probabilities(scores), boxes, work.height, work.width)
