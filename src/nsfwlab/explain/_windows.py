"""Shared machinery of the black-box methods: window grids, per-pixel averaging, and batched
scoring of many image variants through a :class:`~nsfwlab.detector.Detector`."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from PIL import Image

from ..detector import Detector
from ..errors import ConfigError
from ..preprocess import finish_resized, preprocess_rgb, stack_batch

__all__ = ["Box", "ProgressCallback", "WindowExplainer", "average_over_boxes", "score_variants",
           "window_grid", "window_starts"]

#: (top, left, bottom, right) in pixels, bottom/right exclusive.
Box = tuple[int, int, int, int]

#: Called with the number of items just finished (``nsfwlab.cli._common.progress_bar``'s advance).
ProgressCallback = Callable[[int], None]


class WindowExplainer:
    """Shared by the window-based explainers (occlusion, sliding window): a Detector built on
    first use when none was given, and the number of windows an image needs."""

    _detector: Detector | None

    def geometry(self, height: int, width: int) -> tuple[int, int]:  # pragma: no cover - abstract
        """The (window size, stride) used for an image of this size."""
        raise NotImplementedError

    @property
    def detector(self) -> Detector:
        if self._detector is None:
            self._detector = Detector()
        return self._detector

    def count(self, height: int, width: int) -> int:
        """How many windows (model inputs besides the original) an image of this size needs."""
        return len(window_grid(height, width, *self.geometry(height, width)))


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
    the model, so memory stays bounded however many variants there are.
    """
    if count == 0:
        return np.zeros((0,), dtype=np.float32)
    config = detector.preprocess_config
    bs = detector.batch_size

    def prepare(lo: int, hi: int) -> np.ndarray:
        if resized:
            return stack_batch([finish_resized(render(i), config) for i in range(lo, hi)])
        return stack_batch([preprocess_rgb(render(i), config) for i in range(lo, hi)])

    # Split each batch into per-worker parts so that the threads share one batch.
    workers = max(1, detector.workers)
    out = np.empty((count,), dtype=np.float32)
    with ThreadPoolExecutor(workers, thread_name_prefix="nsfwlab-explain") as pool:
        pending: deque[tuple[int, int, list[Future[np.ndarray]]]] = deque()
        starts = iter(range(0, count, bs))

        def submit() -> bool:
            lo = next(starts, None)
            if lo is None:
                return False
            hi = min(lo + bs, count)
            step = max(1, -(-(hi - lo) // workers))
            parts = [pool.submit(prepare, s, min(s + step, hi)) for s in range(lo, hi, step)]
            pending.append((lo, hi, parts))
            return True

        submit()
        submit()
        while pending:
            lo, hi, parts = pending.popleft()
            batch = np.concatenate([f.result() for f in parts], axis=0)
            submit()
            out[lo:hi] = detector.predict_arrays(batch)
            if progress is not None:
                progress(hi - lo)
    return out
