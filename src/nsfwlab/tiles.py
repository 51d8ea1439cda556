"""Tiled scoring with max: a defence of the scorers against grids, borders and frames.

A classifier sees the whole image shrunk to its input size (224 or 299 pixels). Put the image in
one cell of a 3x3 collage, or inside a wide border, and the model sees it at a ninth of the area
beside content that pulls the score down. Tiled scoring also scores crops of the image: a centre
crop and overlapping tiles of a 2x2 and a 3x3 grid, and reports the highest score. A tile whose
content the model finds NSFW makes the image's score NSFW, whatever surrounds it.

:class:`TileLayout` says which crops: the whole image; a centre crop of ``centre`` of each side;
for each ``n`` of ``grids``, tiles of ``1/n`` of each side, one every ``(1 - overlap)`` of a tile's
side (with the default overlap of one half: 3x3 = 9 tiles of the 2x2 grid, 5x5 = 25 of the 3x3,
so that a cell of an aligned grid is a tile, and so is the window straddling two cells); grids
whose tiles would be under ``min_side`` pixels are skipped. Each crop is prepared like a whole
image (the Detector's own pipeline) and scored; the default layout costs 36 forwards per image.

The price is false positives: the max of 36 scores is never below the whole image's score, so a
safe image with one NSFW-looking patch gains. ``nsfwlab score --tiles`` reports which tile won.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .errors import ConfigError, ImageError, NsfwlabError
from .imageio import ImageInput, describe_source, load_image, read_bytes
from .verdict import Kind, check_bank, kind_of

if TYPE_CHECKING:
    from .detector import Detector, FramesResult, ScoreResult
    from .frames import FrameOptions

__all__ = ["Tile", "TileLayout", "TiledScore", "score_media_tiled", "tiled_result", "tiled_score"]

#: (left, top, right, bottom) in pixels, right and bottom exclusive (Pillow's crop box).
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Tile:
    """One crop: ``name`` (``full``, ``centre``, or ``NxN``: a tile of the N x N grid) and its box."""

    name: str
    box: Box

    @property
    def xywh(self) -> list[int]:
        left, top, right, bottom = self.box
        return [left, top, right - left, bottom - top]


@dataclass(frozen=True)
class TileLayout:
    """Which crops are scored besides the whole image (see the module doc)."""

    grids: tuple[int, ...] = (2, 3)
    overlap: float = 0.5
    centre: float | None = 0.7
    min_side: int = 32

    def __post_init__(self) -> None:
        if any(isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= 8 for n in self.grids):
            raise ConfigError(f"tile grids must be integers from 2 to 8, got {self.grids!r}", param="tiles")
        if not 0.0 <= self.overlap < 1.0:
            raise ConfigError(f"tile overlap must lie in [0, 1), got {self.overlap}", param="tiles")
        if self.centre is not None and not 0.0 < self.centre < 1.0:
            raise ConfigError(f"centre crop must lie in (0, 1), got {self.centre}", param="tiles")
        if self.min_side < 1:
            raise ConfigError(f"min_side must be at least 1, got {self.min_side}", param="tiles")

    def tiles(self, width: int, height: int) -> list[Tile]:
        """The crops of a ``width`` x ``height`` image, the whole image first."""
        out = [Tile("full", (0, 0, width, height))]
        if self.centre is not None:
            cw, ch = round(width * self.centre), round(height * self.centre)
            if min(cw, ch) >= self.min_side:
                left, top = (width - cw) // 2, (height - ch) // 2
                out.append(Tile("centre", (left, top, left + cw, top + ch)))
        for n in self.grids:
            tw, th = width / n, height / n
            if min(tw, th) < self.min_side:
                continue
            for y in _starts(height, th, self.overlap):
                for x in _starts(width, tw, self.overlap):
                    box = (round(x), round(y), round(x + tw), round(y + th))
                    out.append(Tile(f"{n}x{n}", box))
        return out

    def forwards(self, width: int, height: int) -> int:
        """How many crops (model forwards) an image of this size costs."""
        return len(self.tiles(width, height))


def _starts(side: int, tile: float, overlap: float) -> list[float]:
    """Evenly spaced tile starts from 0 to ``side - tile``, at most ``(1 - overlap) * tile`` apart."""
    span = side - tile
    count = max(1, math.ceil(span / (tile * (1.0 - overlap)) - 1e-9) + 1)
    return [float(x) for x in np.linspace(0.0, span, count)]


@dataclass(frozen=True)
class TiledScore:
    """The tiled score of one image: ``score``, the highest raw model score over the crops;
    ``tile``, the crop that gave it; ``full_score``, the whole image's raw score (what scoring
    without tiles answers); ``forwards``, the crops scored; ``scores``, each crop's raw score in
    the order of :meth:`TileLayout.tiles`; ``classes`` and the winning crop's class probabilities
    (a zoo model's; ``None`` for open_nsfw)."""

    score: float
    tile: Tile
    full_score: float
    forwards: int
    scores: tuple[float, ...]
    classes: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "tile": self.tile.name, "tile_box": self.tile.xywh,
                "full_score": self.full_score, "forwards": self.forwards}


def _check_detector(detector: Detector) -> None:
    if detector.zoo is not None and detector.zoo.is_detector:
        raise ConfigError(f"tiled scoring is for classifiers; {detector.zoo.model_id} is a detector, which finds "
                          "boxes in the whole image at its own resolution", param="tiles")


def _score_image(detector: Detector, img: Image.Image, layout: TileLayout) -> TiledScore:
    tiles = layout.tiles(img.width, img.height)
    raws: list[float] = []
    classes: list[dict[str, float] | None] = []
    step = max(1, detector.batch_size)
    for start in range(0, len(tiles), step):
        arrays = [detector._prepare_decoded(img.crop(t.box)) for t in tiles[start : start + step]]
        scored, probs, _ = detector._score(arrays)
        raws.extend(float(s) for s in scored)
        classes.extend(probs)
    best = int(np.argmax(raws))
    return TiledScore(raws[best], tiles[best], raws[0], len(tiles), tuple(raws), classes[best])


def tiled_score(detector: Detector, image: ImageInput, layout: TileLayout | None = None) -> TiledScore:
    """Score ``image`` (a path, bytes, PIL image or HxWx3 array; decoded under the Detector's
    limits) and its crops with ``detector``; the highest raw score wins. Works with any
    classifier: open_nsfw, its checkpoints and the zoo's classifiers (a detector model is a
    :class:`~nsfwlab.errors.ConfigError`). Raises an ``ImageError`` for bad input."""
    _check_detector(detector)
    try:
        img = load_image(image, detector.limits)
    except NsfwlabError as exc:
        raise exc.with_source(describe_source(image)) from None
    return _score_image(detector, img, layout or TileLayout())


def tiled_result(detector: Detector, name: str, source: ImageInput,
                 layout: TileLayout | None = None) -> tuple[ScoreResult, TiledScore | None]:
    """The :class:`~nsfwlab.detector.ScoreResult` of a still image scored with tiles (the tiled
    score decides, calibrated and banded by the Detector's policy; the bank, if any, is
    consulted on the whole image) and its :class:`TiledScore`; an error result and ``None``
    for bad input."""
    from .detector import ScoreResult

    _check_detector(detector)
    try:
        img = load_image(source, detector.limits)
        tiled = _score_image(detector, img, layout or TileLayout())
        check = check_bank(detector.bank, img, Kind.IMAGE, detector.match_distance)
    except NsfwlabError as exc:
        return ScoreResult(name, error=exc.with_source(name)), None
    except Exception as exc:
        return ScoreResult(name, error=ImageError(f"unexpected {type(exc).__name__}: {exc}").with_source(name)), None
    return detector.result(name, tiled.score, check, tiled.classes), tiled


def score_media_tiled(detector: Detector, items: Iterable[tuple[str, object]], options: FrameOptions | None = None,
                      layout: TileLayout | None = None
                      ) -> Iterator[tuple[ScoreResult | FramesResult, TiledScore | None]]:
    """Like :meth:`Detector.score_media <nsfwlab.detector.Detector.score_media>`, with still images
    scored with tiles: each result, in input order, with its :class:`TiledScore` (``None`` for
    errors, videos and animations, which are scored frame by frame as without tiles)."""
    from .detector import ScoreResult

    _check_detector(detector)
    for name, src in items:
        if isinstance(src, NsfwlabError):
            yield ScoreResult(name, error=src.with_source(name)), None
            continue
        data: object = src
        try:
            if not isinstance(src, (Image.Image, np.ndarray)):
                data = read_bytes(src, detector.limits)  # type: ignore[arg-type]
        except NsfwlabError as exc:
            yield ScoreResult(name, error=exc.with_source(name)), None
            continue
        if isinstance(data, bytes) and kind_of(data) is not Kind.IMAGE:
            yield from ((res, None) for res in detector.score_media([(name, data)], options))
            continue
        yield tiled_result(detector, name, data, layout)  # type: ignore[arg-type]
