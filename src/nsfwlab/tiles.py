"""Tiled scoring with max: a defence of the scorers against collages, borders and frames.

A classifier sees the whole image shrunk to its input size (224 or 299 pixels). Put the image in
one cell of a 3x3 collage, or inside a wide border, and the model sees it at a ninth (a half) of
the area beside content that pulls the score down. Tiled scoring also scores crops of the image
and reports the highest score: a crop whose content the model finds NSFW makes the image's score
NSFW, whatever surrounds it.

Which crops (:class:`TileLayout`): by default the *panels* found in the image
(:func:`find_panels`): the picture inside uniform margins, the cells between lines that cross a
composite, rectangles bounded on all four sides by straight edges. Most photos hold none, so that
they cost one forward and gain nothing. ``strategy="grid"`` scores a fixed set instead (a centre
crop, overlapping tiles of a 2x2 and a 3x3 grid: 36 forwards), whatever the image; it recovers
collages as well but its max over 36 crops turns many safe photos NSFW on nsfwjs, which scores
about 30% of such crops of safe photos 0.5 or more (BENCHMARKS.md).

Each crop is prepared like a whole image (the Detector's own pipeline) and scored.
``nsfwlab score --tiles`` reports which crop won.
"""

from __future__ import annotations

import itertools
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

__all__ = ["Tile", "TileLayout", "TiledScore", "check_tiles", "find_panels", "score_media_tiled", "tiled_result",
           "tiled_score"]

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


#: How crops are chosen: ``panels`` (found in the image) or ``grid`` (fixed, whatever the image).
STRATEGIES = ("panels", "grid")


@dataclass(frozen=True)
class TileLayout:
    """Which crops are scored besides the whole image (see the module doc).

    ``strategy="panels"`` (the default): the panels :func:`find_panels` finds (at most
    ``most``). ``strategy="grid"``: a centre crop of ``centre`` of each side and, for each ``n``
    of ``grids``, tiles of ``1/n`` of each side every ``(1 - overlap)`` of a tile. Crops under
    ``min_side`` pixels are never scored."""

    strategy: str = "panels"
    grids: tuple[int, ...] = (2, 3)
    overlap: float = 0.5
    centre: float | None = 0.7
    min_side: int = 32
    most: int = 16

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"tile strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}",
                              param="tiles")
        if any(isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= 8 for n in self.grids):
            raise ConfigError(f"tile grids must be integers from 2 to 8, got {self.grids!r}", param="tiles")
        if not 0.0 <= self.overlap < 1.0:
            raise ConfigError(f"tile overlap must lie in [0, 1), got {self.overlap}", param="tiles")
        if self.centre is not None and not 0.0 < self.centre < 1.0:
            raise ConfigError(f"centre crop must lie in (0, 1), got {self.centre}", param="tiles")
        if self.min_side < 1:
            raise ConfigError(f"min_side must be at least 1, got {self.min_side}", param="tiles")
        if self.most < 1:
            raise ConfigError(f"most must be at least 1, got {self.most}", param="tiles")

    def crops(self, img: Image.Image) -> list[Tile]:
        """The crops of ``img`` to score, the whole image first."""
        if self.strategy == "grid":
            return self.tiles(img.width, img.height)
        found = find_panels(img, min_side=self.min_side, most=self.most)
        return [Tile("full", (0, 0, img.width, img.height))] + [Tile("panel", box) for box in found]

    def tiles(self, width: int, height: int) -> list[Tile]:
        """The fixed grid's crops of a ``width`` x ``height`` image (``strategy="grid"``), the
        whole image first."""
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
        """How many crops (model forwards) the fixed grid costs on an image of this size."""
        return len(self.tiles(width, height))


def _starts(side: int, tile: float, overlap: float) -> list[float]:
    """Evenly spaced tile starts from 0 to ``side - tile``, at most ``(1 - overlap) * tile`` apart."""
    span = side - tile
    count = max(1, math.ceil(span / (tile * (1.0 - overlap)) - 1e-9) + 1)
    return [float(x) for x in np.linspace(0.0, span, count)]


# -- panels -----------------------------------------------------------------------------------
#: Step (of 255) in any of R, G, B that counts as an edge between two neighbouring pixels.
EDGE_STEP = 24
#: A cut: a row (column) boundary with an edge along this share of some window of a fifth of the width (height).
CUT_RUN = 0.8
#: A panel: a rectangle between cuts with an edge along at least this share of each of its sides
#: (the image's own edges count as edges).
SIDE_SHARE = 0.4
#: A cut with an edge along this share of the whole image is a line of a composite (as good as the image's edge).
LINE_SHARE = 0.6
#: Panels are at least this share of each side of the image, and under this share of its area.
PANEL_MIN, PANEL_MAX_AREA = 0.2, 0.9
_ANALYSIS_SIDE = 512


def _cuts(strong: np.ndarray, most: int = 10) -> dict[int, float]:
    """Boundaries (index + 1) of the rows of ``strong`` (boundaries x positions, bool) that hold a
    straight edge along ``CUT_RUN`` of some window of a fifth of their length, each with its edge
    share over the whole length; close ones merged; the ``most`` longest kept (so that the lines
    of a collage outrank the edges inside one of its pictures)."""
    length = strong.shape[1]
    window = max(4, length // 5)
    if length <= window:
        return {}
    cs = np.concatenate([np.zeros((strong.shape[0], 1)), np.cumsum(strong, axis=1)], axis=1)
    run = ((cs[:, window:] - cs[:, :-window]) / window).max(axis=1)
    whole = strong.mean(axis=1)
    order = [int(i) for i in np.argsort(-whole, kind="stable") if run[i] >= CUT_RUN]
    kept: list[int] = []
    for i in order:
        if all(abs(i - k) > 3 for k in kept):
            kept.append(i)
        if len(kept) == most:
            break
    return {k + 1: float(whole[k]) for k in sorted(kept)}


def _trimmed(g: np.ndarray, tolerance: float = 6.0) -> tuple[int, int, int, int] | None:
    """The box left when the uniform margins (rows or columns of one grey level, within
    ``tolerance``) are stripped from each edge; ``None`` when nothing is stripped."""
    h, w = g.shape
    rows = g.std(axis=1) <= tolerance
    cols = g.std(axis=0) <= tolerance

    def inward(flags: np.ndarray) -> int:
        bad = np.flatnonzero(~flags)
        return int(bad[0]) if len(bad) else len(flags)

    top, bottom = inward(rows), h - inward(rows[::-1])
    left, right = inward(cols), w - inward(cols[::-1])
    if top >= bottom or left >= right or (top, left, bottom, right) == (0, 0, h, w):
        return None
    return left, top, right, bottom


def find_panels(img: Image.Image, *, min_side: int = 32, most: int = 16) -> list[Box]:
    """Rectangles of ``img`` that look like pictures put into a composite: bounded on all four
    sides by straight edges (or the image's own edges). Cells of a collage, the picture inside a
    border, a frame's mat, a meme's caption bar or a screenshot are such rectangles; a photo
    rarely holds one, so that an ordinary photo costs no extra forward and gains no false
    positive from crops. First, the picture inside uniform margins (a plain border of any colour).
    Then, on a copy at most 512 pixels on its longer side: rows and
    columns holding a long straight edge are cuts (:data:`CUT_RUN`), and every rectangle between
    two cuts per axis whose four sides are edges along :data:`SIDE_SHARE` of their length, of
    :data:`PANEL_MIN` to :data:`PANEL_MAX_AREA` of the image, is a panel, and so is every cell
    between the lines that cross most of the image (:data:`LINE_SHARE`); the ``most`` bounded by
    the longest lines and the sharpest sides are kept (the smaller first among equals), in
    ``img``'s pixels."""
    scale = min(1.0, _ANALYSIS_SIDE / max(img.size))
    small = img.convert("RGB")
    if scale < 1.0:
        small = small.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                             Image.Resampling.BILINEAR)
    rgb = np.asarray(small, dtype=np.int16)
    h, w = rgb.shape[:2]
    if min(h, w) < 8:
        return []
    g = rgb.mean(axis=2)
    dy = np.abs(np.diff(rgb, axis=0)).max(axis=2) > EDGE_STEP  # (h-1, w): between rows y and y+1
    dx = np.abs(np.diff(rgb, axis=1)).max(axis=2) > EDGE_STEP  # (h, w-1): between columns x and x+1
    found: list[tuple[float, int, Box]] = []
    trim = _trimmed(g)
    if trim is not None:  # a plain border: the picture inside comes first
        found.append((-3.0, 0, trim))
    ycuts, xcuts = {0: 1.0, **_cuts(dy), h: 1.0}, {0: 1.0, **_cuts(dx.T), w: 1.0}
    ys, xs = sorted(ycuts), sorted(xcuts)
    # the cells between a composite's lines, whatever their sides look like
    line_ys = [y for y in ys if ycuts[y] >= LINE_SHARE]
    line_xs = [x for x in xs if xcuts[x] >= LINE_SHARE]
    if len(line_ys) > 2 or len(line_xs) > 2:
        for y0, y1 in itertools.pairwise(line_ys):
            for x0, x1 in itertools.pairwise(line_xs):
                area = (x1 - x0) * (y1 - y0)
                if y1 - y0 >= PANEL_MIN * h and x1 - x0 >= PANEL_MIN * w and area <= PANEL_MAX_AREA * w * h:
                    found.append((-2.5, area, (x0, y0, x1, y1)))
    for i, y0 in enumerate(ys):
        for y1 in ys[i + 1 :]:
            if y1 - y0 < PANEL_MIN * h:
                continue
            for j, x0 in enumerate(xs):
                for x1 in xs[j + 1 :]:
                    area = (x1 - x0) * (y1 - y0)
                    if x1 - x0 < PANEL_MIN * w or area > PANEL_MAX_AREA * w * h:
                        continue
                    sides = (1.0 if y0 == 0 else float(dy[y0 - 1, x0:x1].mean()),
                             1.0 if y1 == h else float(dy[y1 - 1, x0:x1].mean()),
                             1.0 if x0 == 0 else float(dx[y0:y1, x0 - 1].mean()),
                             1.0 if x1 == w else float(dx[y0:y1, x1 - 1].mean()))
                    if min(sides) >= SIDE_SHARE:
                        # lines across the whole image first (a collage's), then the sharpest sides, then the smaller
                        lines = min(1.0, min(ycuts[y0], ycuts[y1], xcuts[x0], xcuts[x1]) / LINE_SHARE)
                        found.append((-round(lines, 1) - round(min(sides), 1), area, (x0, y0, x1, y1)))
    found.sort()
    out: list[Box] = []
    for _, _, (x0, y0, x1, y1) in dict.fromkeys(found):
        box = (round(x0 / scale), round(y0 / scale), min(img.width, round(x1 / scale)),
               min(img.height, round(y1 / scale)))
        if min(box[2] - box[0], box[3] - box[1]) >= min_side:
            out.append(box)
        if len(out) == most:
            break
    return out


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


def check_tiles(detector: Detector) -> None:
    """ConfigError unless ``detector`` is a classifier (tiled scoring needs one score per crop)."""
    if detector.zoo is not None and detector.zoo.is_detector:
        raise ConfigError(f"tiled scoring is for classifiers; {detector.zoo.model_id} is a detector, which finds "
                          "boxes in the whole image at its own resolution", param="tiles")


def _score_image(detector: Detector, img: Image.Image, layout: TileLayout) -> TiledScore:
    tiles = layout.crops(img)
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
    check_tiles(detector)
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

    check_tiles(detector)
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

    check_tiles(detector)
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
