"""Occlusion sensitivity (Zeiler & Fergus 2014).

A box slides over the image at its original resolution; each occluded copy is scored through the
Detector (the exact preprocessing and model); the heatmap is, per pixel, the mean drop of the
target over the boxes covering that pixel: ``target(original) - target(occluded)``. Positive
values mark regions that raise the target (for the default target, the NSFW probability).
It treats the model as a black box, so it works with every backend and checkpoint.
"""

from __future__ import annotations

import threading

import numpy as np
from PIL import Image, ImageFilter

from ..config import PreprocessConfig, option
from ..detector import Detector
from ..errors import ConfigError
from ..imageio import ImageInput
from ..objectives import Target, TargetName
from ..preprocess import resize_image
from ._windows import ProgressCallback, WindowExplainer, average_over_boxes, score_variants
from .options import ExplainCaps, Fill

__all__ = ["Fill", "LocalResizer", "Occlusion", "default_box", "mean_rgb"]


def mean_rgb(config: PreprocessConfig) -> tuple[int, int, int]:
    """The preprocessing's mean colour as an RGB pixel (``mean_bgr`` reversed, rounded): the
    colour that becomes zero network input (exactly, for integer means such as Yahoo's)."""
    b, g, r = (round(v) for v in config.mean_bgr)
    return (r, g, b)


def default_box(height: int, width: int) -> int:
    """A sixth of the short side (at least 8 pixels)."""
    return max(8, round(min(height, width) / 6))


class LocalResizer:
    """Occluded copies, resized: each thread occludes its own scratch copy of the image in place,
    resizes it with the exact pipeline's resize and restores the box, so no full-size array is
    copied and converted per window. ``size=None`` (a zoo model, which resizes its own input): a copy
    of the occluded image at its own size.

    Resizing only the output region near the box (Pillow's ``resize(box=...)``) was tried and is
    not bit-exact in Pillow 13 for some image sizes (one-level differences, which the JPEG round
    trip amplifies), so the whole occluded image is resized: exact by construction.
    """

    def __init__(self, img: Image.Image, filler: Image.Image, size: int | None) -> None:
        self.img, self.filler, self.size = img, filler, size
        self.base_image = img if size is None else resize_image(img, size)
        self._local = threading.local()

    def __call__(self, box: tuple[int, int, int, int]) -> Image.Image:
        scratch: Image.Image | None = getattr(self._local, "img", None)
        if scratch is None:
            scratch = self._local.img = self.img.copy()
        t, left, b, r = box
        scratch.paste(self.filler.crop((left, t, r, b)), (left, t))
        try:
            return scratch.copy() if self.size is None else resize_image(scratch, self.size)
        finally:
            scratch.paste(self.img.crop((left, t, r, b)), (left, t))


class Occlusion(WindowExplainer):
    """Occlusion heatmaps through a Detector.

    ``box`` and ``stride`` are in pixels of the original image (defaults: a sixth of the short
    side, and a third of the box, so every pixel is covered by about nine boxes). Over
    ``caps.max_work_side`` the boxes slide over the working copy (geometry scaled to it) and the
    heatmap has the working copy's size; see :class:`~nsfwlab.explain.options.ExplainCaps`.
    """

    def __init__(self, detector: Detector | None = None, *, box: int | None = None,
                 stride: int | None = None, fill: Fill | str = Fill.MEAN, caps: ExplainCaps | None = None) -> None:
        if box is not None and box < 1:
            raise ConfigError(f"box must be at least 1 pixel, got {box}")
        if stride is not None and stride < 1:
            raise ConfigError(f"stride must be at least 1 pixel, got {stride}")
        self.fill = option(Fill, fill, "fill")
        self._detector = detector
        self.box = box
        self.stride = stride
        self.caps = caps or ExplainCaps()
        self.explicit = box is not None or stride is not None

    def geometry(self, height: int, width: int) -> tuple[int, int]:
        """The (box, stride) used for an image of this size."""
        box = self.box or default_box(height, width)
        return box, self.stride or max(1, box // 3)

    def _filler(self, img: Image.Image) -> Image.Image:
        if self.fill is Fill.BLUR:
            radius = max(2.0, min(img.width, img.height) / 25)
            return img.filter(ImageFilter.GaussianBlur(radius))
        colour = {Fill.MEAN: mean_rgb(self.detector.preprocess_config), Fill.BLACK: (0, 0, 0),
                  Fill.GREY: (128, 128, 128)}[self.fill]
        return Image.new("RGB", img.size, colour)

    def explain(self, image: ImageInput, *, target: Target | TargetName | str | None = None,
                progress: ProgressCallback | None = None) -> np.ndarray:
        """An (H, W) float32 heatmap (the working copy's size): the mean drop of ``target`` when
        each pixel is hidden."""
        tgt, _, img, boxes = self._setup(image, target)  # boxes slide over the working copy
        det = self.detector
        own = getattr(det, "zoo", None) is None  # open_nsfw: its exact resize here; a zoo model resizes its own input
        resizer = LocalResizer(img, self._filler(img), det.preprocess_config.resize if own else None)

        def render(i: int) -> Image.Image:
            return resizer.base_image if i == 0 else resizer(boxes[i - 1])

        scores = score_variants(det, render, len(boxes) + 1, progress=progress, resized=own)
        values = tgt.from_probabilities(scores)
        drops = values[0] - values[1:]
        return average_over_boxes(drops, boxes, img.height, img.width)
