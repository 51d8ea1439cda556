"""Occlusion sensitivity (Zeiler & Fergus 2014; the seed's "occlusion" experiment).

A box slides over the image at its original resolution; each occluded copy is scored through the
Detector (the exact preprocessing and model); the heatmap is, per pixel, the mean drop of the
target over the boxes covering that pixel: ``target(original) - target(occluded)``. Positive
values mark regions that raise the target (for the default target, the NSFW probability).
It treats the model as a black box, so it works with every backend and checkpoint.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from ..detector import Detector
from ..errors import ConfigError, NsfwlabError
from ..imageio import ImageInput, describe_source, load_image
from ._windows import ProgressCallback, average_over_boxes, score_variants, window_grid
from .options import Fill
from .targets import Target, TargetName, make_target

__all__ = ["Fill", "Occlusion", "default_box"]


MEAN_RGB = (123, 117, 104)


def default_box(height: int, width: int) -> int:
    """A sixth of the short side (at least 8 pixels)."""
    return max(8, round(min(height, width) / 6))


class Occlusion:
    """Occlusion heatmaps through a Detector.

    ``box`` and ``stride`` are in pixels of the original image (defaults: a sixth of the short
    side, and a third of the box, so every pixel is covered by about nine boxes).
    """

    def __init__(self, detector: Detector | None = None, *, box: int | None = None,
                 stride: int | None = None, fill: Fill | str = Fill.MEAN) -> None:
        if box is not None and box < 1:
            raise ConfigError(f"box must be at least 1 pixel, got {box}")
        if stride is not None and stride < 1:
            raise ConfigError(f"stride must be at least 1 pixel, got {stride}")
        try:
            self.fill = Fill(fill)
        except ValueError:
            raise ConfigError(f"unknown fill {fill!r}; choose one of: "
                              + ", ".join(f.value for f in Fill)) from None
        self._detector = detector
        self.box = box
        self.stride = stride

    @property
    def detector(self) -> Detector:
        if self._detector is None:
            self._detector = Detector()
        return self._detector

    def geometry(self, height: int, width: int) -> tuple[int, int]:
        """The (box, stride) used for an image of this size."""
        box = self.box or default_box(height, width)
        return box, self.stride or max(1, box // 3)

    def count(self, height: int, width: int) -> int:
        """How many occluded copies an image of this size needs (plus one for the original)."""
        return len(window_grid(height, width, *self.geometry(height, width)))

    def _filler(self, img: Image.Image) -> np.ndarray:
        arr = np.asarray(img)
        if self.fill is Fill.BLUR:
            radius = max(2.0, min(img.width, img.height) / 25)
            return np.asarray(img.filter(ImageFilter.GaussianBlur(radius)))
        colour = {Fill.MEAN: MEAN_RGB, Fill.BLACK: (0, 0, 0), Fill.GREY: (128, 128, 128)}[self.fill]
        return np.broadcast_to(np.asarray(colour, dtype=np.uint8), arr.shape)

    def explain(self, image: ImageInput, *, target: Target | TargetName | str | None = None,
                progress: ProgressCallback | None = None) -> np.ndarray:
        """An (H, W) float32 heatmap: the mean drop of ``target`` when each pixel is hidden."""
        tgt = make_target(target)
        tgt.from_probabilities(np.asarray([0.5]))  # fail fast on targets that need logits
        det = self.detector
        try:
            img = load_image(image, det.limits)
        except NsfwlabError as exc:
            raise exc.with_source(describe_source(image)) from None
        base = np.asarray(img)
        filler = self._filler(img)
        h, w = base.shape[:2]
        boxes = window_grid(h, w, *self.geometry(h, w))

        def render(i: int) -> Image.Image:
            if i == 0:
                return img
            t, left, b, r = boxes[i - 1]
            arr = base.copy()
            arr[t:b, left:r] = filler[t:b, left:r]
            return Image.fromarray(arr)

        def counted(n: int) -> None:
            if progress is not None:
                progress(n)

        scores = score_variants(det, render, len(boxes) + 1, progress=counted)
        values = tgt.from_probabilities(scores)
        drops = values[0] - values[1:]
        return average_over_boxes(drops, boxes, h, w)
