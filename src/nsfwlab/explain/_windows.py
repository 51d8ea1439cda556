"""Shared machinery of the explainers: loading their input, and for the black-box methods window
grids, per-pixel averaging, and batched scoring of many image variants through a
:class:`~nsfwlab.detector.Detector`. (It imports only the leaves ``caps`` and ``options``.)"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import closing
from itertools import islice
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..config import DecodeLimits
from ..detector import Detector
from ..errors import ConfigError, NsfwlabError
from ..imageio import ImageInput, describe_source, load_image
from ..modelsource import rgb_pixels
from ..objectives import Target, TargetName, make_target
from ..preprocess import finish_resized, preprocess_rgb, stack_batch
from ..readahead import ordered_map
from .caps import check_aspect, fit_side, working_copy
from .options import ExplainCaps

if TYPE_CHECKING:
    from ..config import PreprocessConfig

__all__ = ["Box", "ProgressCallback", "WindowExplainer", "average_over_boxes", "load_input", "score_variants",
           "window_grid", "window_starts"]

#: (top, left, bottom, right) in pixels, bottom/right exclusive.
Box = tuple[int, int, int, int]

#: Called with the number of items just finished (``nsfwlab.cli._common.progress_bar``'s advance).
ProgressCallback = Callable[[int], None]


def load_input(image: ImageInput, limits: DecodeLimits | None = None) -> Image.Image:
    """Decode an explainer's input safely (an RGB image); errors name the input."""
    try:
        return load_image(image, limits)
    except NsfwlabError as exc:
        raise exc.with_source(describe_source(image)) from None


class WindowExplainer:
    """Shared by the window-based explainers (occlusion, sliding window): a Detector built on
    first use when none was given, the working copy (:func:`~nsfwlab.explain.caps.working_copy`)
    and its windows, at most ``caps.max_windows`` of them."""

    _detector: Detector | None
    caps: ExplainCaps
    explicit: bool  # the caller fixed the window or stride: a grid over the cap is refused

    def geometry(self, height: int, width: int) -> tuple[int, int]:  # pragma: no cover - abstract
        """The (window size, stride) in pixels of an image of this size."""
        raise NotImplementedError

    @property
    def detector(self) -> Detector:
        if self._detector is None:
            self._detector = Detector()
        return self._detector

    def count(self, height: int, width: int) -> int:
        """How many windows (model inputs besides the original) an image of this size needs."""
        return len(self.plan(height, width))

    def plan(self, height: int, width: int) -> list[Box]:
        """The windows on the working copy of an image of this size: an explicit geometry (in
        pixels of the image) scaled to the working copy, or the default one of the working copy.
        A default grid with more than ``caps.max_windows`` windows is coarsened (window and
        stride grow together) until it fits; an explicit one is refused with a ConfigError."""
        check_aspect(height, width, self.caps)
        wh, ww = fit_side(height, width, self.caps.max_work_side)
        if self.explicit:
            scale = max(wh, ww) / max(height, width)
            size, stride = (max(1, round(v * scale)) for v in self.geometry(height, width))
        else:
            size, stride = self.geometry(wh, ww)  # defaults are fractions of the explained image
        cap = self.caps.max_windows
        while (n := len(window_starts(wh, size, stride)) * len(window_starts(ww, size, stride))) > cap:
            if self.explicit:
                raise ConfigError(f"{n} windows of {size} px every {stride} px on the {ww}x{wh} working copy "
                                  f"are over the cap of {cap}: use a larger box/stride or raise max_windows",
                                  param="max_windows")
            size, stride = max(size + 1, round(size * 1.25)), max(stride + 1, round(stride * 1.25))
        return window_grid(wh, ww, size, stride)

    def _setup(self, image: ImageInput,
               target: Target | TargetName | str | None) -> tuple[Target, Image.Image, Image.Image, list[Box]]:
        """The target (refused before any work when it needs logits), the decoded image, its
        working copy (the image itself under the cap) and the windows on the working copy."""
        tgt = make_target(target)
        tgt.from_probabilities(np.asarray([0.5]))  # fail fast on targets that need logits
        img = load_input(image, self.detector.limits)
        boxes = self.plan(img.height, img.width)
        return tgt, img, working_copy(img, self.caps), boxes


def window_starts(length: int, size: int, stride: int) -> list[int]:
    """Start offsets of windows of ``size`` every ``stride`` along ``length``; the last window
    always ends at the edge, so every pixel is covered."""
    size = min(size, length)
    last = length - size
    starts = list(range(0, last + 1, stride))
    if starts[-1] != last:
        starts.append(last)
    return starts


def window_grid(height: int, width: int, size: int, stride: int) -> list[Box]:
    """All square windows (clipped to the image) of a grid covering ``height`` x ``width``."""
    if size < 1 or stride < 1:
        raise ConfigError(f"window size and stride must be at least 1 pixel, got {size} and {stride}")
    bh, bw = min(size, height), min(size, width)
    return [(t, left, t + bh, left + bw)
            for t in window_starts(height, size, stride) for left in window_starts(width, size, stride)]


def average_over_boxes(values: Sequence[float] | np.ndarray, boxes: Sequence[Box], height: int,
                       width: int) -> np.ndarray:
    """Per pixel, the mean of the values of the boxes covering it (0 where none does)."""
    total = np.zeros((height, width), dtype=np.float64)
    count = np.zeros((height, width), dtype=np.float64)
    for v, (t, left, b, r) in zip(values, boxes, strict=True):
        total[t:b, left:r] += float(v)
        count[t:b, left:r] += 1.0
    out = np.zeros((height, width), dtype=np.float64)
    np.divide(total, count, out=out, where=count > 0)
    return out.astype(np.float32)


def score_variants(detector: Detector, render: Callable[[int], Image.Image], count: int, *,
                   progress: ProgressCallback | None = None, resized: bool = False) -> np.ndarray:
    """NSFW probabilities of ``render(0) .. render(count - 1)``, each through the detector's exact
    preprocessing and model, in batches of ``detector.batch_size``. With ``resized=True``,
    ``render`` returns the image already resized to ``config.resize`` (see
    :class:`~nsfwlab.explain.occlusion.LocalResizer`) and only the steps after the resize run.

    Rendering and preprocessing run in ``detector.workers`` threads, at most two batches ahead of
    the model (:func:`nsfwlab.readahead.ordered_map`, the Detector's read-ahead rule), so memory
    stays bounded however many variants there are.
    """
    out = np.empty((count,), dtype=np.float32)
    config = detector.preprocess_config
    zoo = getattr(detector, "zoo", None)
    finish: Callable[[Image.Image, PreprocessConfig], np.ndarray] = finish_resized if resized else preprocess_rgb
    if zoo is not None:  # a zoo model takes the decoded pixels and prepares them as its card says
        if resized:
            raise ConfigError(f"model {zoo.model_id} resizes its own input; render the images at their size")
        finish = lambda img, _config: rgb_pixels(img)  # noqa: E731
    bs = detector.batch_size
    with closing(ordered_map(lambda i: finish(render(i), config), range(count), ahead=2 * bs,
                             workers=max(1, detector.workers), name="nsfwlab-explain")) as arrays:
        for lo in range(0, count, bs):
            items = list(islice(arrays, bs))
            if zoo is not None:
                out[lo : lo + len(items)] = zoo.nsfw_scores(zoo.run_images(items)[0])
            else:
                out[lo : lo + len(items)] = detector.predict_arrays(stack_batch(items))
            if progress is not None:
                progress(len(items))
    return out
