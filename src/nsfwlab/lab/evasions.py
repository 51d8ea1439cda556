"""Everyday evasions: what users do to an image, without any optimisation, that moves a score.

Moderators report simple tricks rather than adversarial noise: a border or a photo frame, a
collage with the picture in one cell, a meme caption, a screenshot of the picture, a mirrored or
slightly rotated copy, shifted colours, and one explicit frame hidden in an otherwise innocuous
animation. Each evasion here is a named, deterministic (given a seed) transform of an HxWx3
uint8 image; AugLy does the transforms it has and Pillow the rest, offline (AugLy's fonts and
screenshot templates ship with it).

:func:`evasion_table` applies them to a set of images and scores every result with each
Detector exactly as a user's upload is scored (PNG bytes; the animation through the Detector's
frame path, as ``nsfwlab score`` scores a GIF), and reports per evasion and model the mean score
change with its interval, the decisions flipped at the threshold, and, with ``tiles=True``, what
tiled scoring (:mod:`nsfwlab.tiles`) gives back.
"""

from __future__ import annotations

import functools
import io
import math
import os
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from ..errors import ConfigError, ImageError, NsfwlabError
from ..imageio import ImageInput, describe_source, load_image
from ..progress import ProgressCallback, notify

if TYPE_CHECKING:
    from ..detector import Detector
    from ..tiles import TileLayout

__all__ = [
    "DEFAULT_EVASIONS",
    "EVASIONS",
    "TILED_EVASIONS",
    "Evasion",
    "EvasionReport",
    "EvasionStat",
    "TilesStat",
    "apply_evasion",
    "evasion_table",
]

#: A figure resting on fewer examples than this carries a warning.
MIN_EXAMPLES = 20
#: The share of lost score that tiles recover is not reported where less than this was lost on average: a
#: ratio over a smaller loss is noise (tiles that raise a composite's score by 0.05 over a loss of 0.01
#: would "recover" 500 %).
MIN_LOSS = 0.05


# -- building blocks --------------------------------------------------------------------------
def _rng(seed: int, name: str) -> np.random.Generator:
    """A generator for one (seed, evasion) pair: the same every run, different per evasion."""
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB")


def _array(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


#: scikit-image's bundled photos (public domain / CC0) that fill the other cells of a collage and the
#: other frames of an animation: safe pictures whose crops all three models tested score under 0.1
#: (crops of chelsea, coffee, camera, moon or horse reach 0.3 to 0.9 on nsfwjs, and would confound
#: every score taken as a max over cells, tiles or frames).
FILLER_PHOTOS = ("rocket", "hubble_deep_field", "grass", "gravel", "page", "coins", "checkerboard")


@functools.lru_cache(maxsize=1)
def _filler_photos() -> tuple[Image.Image, ...]:
    try:
        import skimage.data
    except ImportError as exc:  # pragma: no cover - scikit-image is in the lab extra
        raise ConfigError("everyday evasions need scikit-image: pip install 'nsfwlab[lab]'",
                          param="evasions") from exc
    out = []
    for name in FILLER_PHOTOS:
        arr = np.asarray(getattr(skimage.data, name)())
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        out.append(Image.fromarray(arr.astype(np.uint8)).convert("RGB"))
    return tuple(out)


def filler(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Innocuous content for a collage cell or an animation frame: a random crop of one of
    :data:`FILLER_PHOTOS` (chosen by ``rng``), resized to ``width`` x ``height``.

    (Synthetic colour fields and shapes were the first choice; some score up to 0.28 on open_nsfw
    themselves.)"""
    photos = _filler_photos()
    src = photos[int(rng.integers(0, len(photos)))]
    aspect = width / height
    w = min(src.width, round(src.height * aspect))
    h = min(src.height, round(w / aspect))
    zoom = float(rng.uniform(0.6, 1.0))
    w, h = max(1, round(w * zoom)), max(1, round(h * zoom))
    left, top = int(rng.integers(0, src.width - w + 1)), int(rng.integers(0, src.height - h + 1))
    return _array(src.resize((width, height), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h)))


def _augly() -> Any:
    try:
        import augly.image as imaugs
    except ImportError as exc:  # pragma: no cover - AugLy is in the lab extra
        raise ConfigError("everyday evasions need AugLy: pip install 'nsfwlab[lab]'", param="evasions") from exc
    return imaugs


def _augly_font(name: str) -> str:
    import augly.utils as autils

    return str(getattr(autils, name))


# -- the evasions -----------------------------------------------------------------------------
def border(image: np.ndarray, rng: np.random.Generator, *, share: float = 0.2) -> np.ndarray:
    """A plain white or black border, ``share`` of the width (height) on each side (AugLy ``pad``)."""
    colour = (255, 255, 255) if rng.random() < 0.5 else (0, 0, 0)
    return _array(_augly().pad(_pil(image), w_factor=share, h_factor=share, color=colour))


def photo_frame(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A framed photo: a wood-like moulding (grain, a lit bevel) around a pale mat, each about
    8% of the shorter side; the picture keeps its size."""
    h, w = image.shape[:2]
    side = min(h, w)
    mat, moulding = max(2, round(0.08 * side)), max(2, round(0.08 * side))
    pad = mat + moulding
    H, W = h + 2 * pad, w + 2 * pad
    base = np.array([rng.uniform(90, 150), rng.uniform(55, 90), rng.uniform(25, 50)])
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    grain = 1.0 + 0.12 * np.sin((xx + yy) * rng.uniform(0.15, 0.35) + 3 * np.sin(yy * 0.02)) \
        + rng.normal(0, 0.03, (H, W))
    out = base * grain[..., None]
    dist = np.minimum(np.minimum(xx, W - 1 - xx), np.minimum(yy, H - 1 - yy))  # to the outer edge
    bevel = np.clip(1.0 - np.abs(dist - moulding / 2) / (moulding / 2), 0, 1)
    out *= (0.8 + 0.45 * bevel)[..., None]
    mat_colour = np.array([rng.uniform(225, 245)] * 3) - np.array([0.0, 4.0, 12.0])
    inner = (dist >= moulding)
    out[inner] = mat_colour
    out[pad : pad + h, pad : pad + w] = image
    return np.clip(out, 0, 255).astype(np.uint8)


def grid(image: np.ndarray, rng: np.random.Generator, *, n: int) -> np.ndarray:
    """An n x n collage the size of the image: the image, shrunk to one cell, in a cell chosen by
    ``rng``; other safe photos (:func:`filler`) in the others."""
    h, w = image.shape[:2]
    out = np.zeros((h, w, 3), np.uint8)
    cell = int(rng.integers(0, n * n))
    xs = [round(i * w / n) for i in range(n + 1)]
    ys = [round(j * h / n) for j in range(n + 1)]
    for k in range(n * n):
        r, c = divmod(k, n)
        cw, ch = xs[c + 1] - xs[c], ys[r + 1] - ys[r]
        if cw < 1 or ch < 1:
            continue
        part = (_array(_pil(image).resize((cw, ch), Image.Resampling.LANCZOS)) if k == cell
                else filler(cw, ch, rng))
        out[ys[r] : ys[r + 1], xs[c] : xs[c + 1]] = part
    return out


#: AugLy's bold sans font; its character list (the ``.pkl`` beside it) starts with printable ASCII
#: in order, so that character ``c`` has index ``ord(c) - 32``.
TEXT_FONT = "IBMPlexSans-Bold.ttf"
#: Bland overlay texts.
OVERLAY_TEXTS = ("swipe for more", "link in bio", "follow for part 2", "new post!", "you won't believe this",
                 "check my profile", "lol", "best day ever")


def text_overlay(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two lines of white text over the picture, a tenth of its shorter side high, at a height
    chosen by ``rng`` (AugLy ``overlay_text`` with its bundled IBM Plex Sans Bold)."""
    import augly.utils as autils

    picks = rng.choice(len(OVERLAY_TEXTS), 2, replace=False)
    lines = [[ord(ch) - 32 for ch in OVERLAY_TEXTS[int(k)]] for k in picks]
    return _array(_augly().overlay_text(_pil(image), text=lines, font_file=os.path.join(autils.FONTS_DIR, TEXT_FONT),
                                        font_size=0.1, color=(255, 255, 255), x_pos=0.05,
                                        y_pos=float(rng.uniform(0.1, 0.6))))


#: Bland captions for the meme format.
MEME_CAPTIONS = ("when the weekend finally arrives", "nobody:\nme at 3 am", "me explaining my plans",
                 "monday again", "this is fine", "they said it could not be done")


def meme(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The meme format: a white caption bar above the picture (a quarter of its height) with black
    text in AugLy's meme font. (AugLy's own ``meme_format`` uses a Pillow call removed in Pillow 10;
    this draws the same layout.)"""
    h, w = image.shape[:2]
    bar = max(12, round(0.25 * h))
    text = MEME_CAPTIONS[int(rng.integers(0, len(MEME_CAPTIONS)))]
    canvas = Image.new("RGB", (w, h + bar), (255, 255, 255))
    canvas.paste(_pil(image), (0, bar))
    draw = ImageDraw.Draw(canvas)
    font_path = _augly_font("MEME_DEFAULT_FONT")
    size = bar - 10
    while True:
        font = ImageFont.truetype(font_path, max(size, 6))
        left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=font, align="center")
        if (right - left <= w - 10 and bottom - top <= bar - 10) or size <= 6:
            break
        size -= 2
    x, y = (w - (right - left)) / 2 - left, (bar - (bottom - top)) / 2 - top
    draw.multiline_text((x, y), text, fill=(0, 0, 0), font=font, align="center")
    return _array(canvas)


def screenshot(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The picture inside a screenshot of a social-media page (AugLy ``overlay_onto_screenshot``,
    its bundled web or mobile template, chosen by ``rng``)."""
    import augly.utils as autils

    template = autils.TEMPLATE_PATH
    if rng.random() < 0.5:
        template = os.path.join(autils.SCREENSHOT_TEMPLATES_DIR, "mobile.png")
    return _array(_augly().overlay_onto_screenshot(_pil(image), template_filepath=template))


def mirror(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirrored left to right (AugLy ``hflip``)."""
    return _array(_augly().hflip(_pil(image)))


def rotation(image: np.ndarray, rng: np.random.Generator, *, degrees: float) -> np.ndarray:
    """Rotated by ``degrees`` (the sign chosen by ``rng``) and cropped to the largest upright
    rectangle inside, so that no corner shows (AugLy ``rotate``)."""
    sign = 1.0 if rng.random() < 0.5 else -1.0
    return _array(_augly().rotate(_pil(image), degrees=sign * degrees))


def hue_shift(image: np.ndarray, rng: np.random.Generator, *, degrees: float) -> np.ndarray:
    """Every pixel's hue turned by ``degrees`` (Pillow's HSV; saturation and value kept)."""
    hsv = np.asarray(_pil(image).convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int32) + round(degrees / 360 * 256)) % 256
    return _array(Image.fromarray(hsv, "HSV").convert("RGB"))


def invert(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The negative (Pillow ``ImageOps.invert``)."""
    return _array(ImageOps.invert(_pil(image)))


def hidden_frame(image: np.ndarray, rng: np.random.Generator, *, frames: int = 24,
                 duration_ms: int = 100) -> bytes:
    """An animated GIF of ``frames`` frames, ``duration_ms`` each: other safe photos
    (:func:`filler`), and the picture as one frame at a place chosen by ``rng``. Returns the
    GIF's bytes (each frame quantised to its own 256-colour palette, as GIF needs)."""
    h, w = image.shape[:2]
    at = int(rng.integers(0, frames))
    shots = [_pil(image) if i == at else _pil(filler(w, h, rng)) for i in range(frames)]
    buf = io.BytesIO()
    shots[0].save(buf, format="GIF", save_all=True, append_images=shots[1:], duration=duration_ms, loop=0)
    return buf.getvalue()


@dataclass(frozen=True)
class Evasion:
    """A named everyday evasion: ``apply(image, rng)`` gives an HxWx3 uint8 image, or the bytes of
    an animation when ``animation`` is true."""

    name: str
    description: str
    apply: Callable[[np.ndarray, np.random.Generator], Any]
    animation: bool = False


def _registry() -> dict[str, Evasion]:
    items = [
        Evasion("border", "a plain white or black border, 20% of the side on each side", border),
        Evasion("frame", "a photo frame: wood-like moulding and a mat, 8% of the shorter side each", photo_frame),
        Evasion("grid2", "a 2x2 collage, the image in one cell, other safe photos elsewhere",
                lambda im, r: grid(im, r, n=2)),
        Evasion("grid3", "a 3x3 collage, the image in one cell, other safe photos elsewhere",
                lambda im, r: grid(im, r, n=3)),
        Evasion("text", "two lines of text over the image (AugLy overlay_text)", text_overlay),
        Evasion("meme", "a meme caption bar above the image, a quarter of its height", meme),
        Evasion("screenshot", "the image in a screenshot of a web or mobile page (AugLy)", screenshot),
        Evasion("mirror", "mirrored left to right", mirror),
        Evasion("rotate5", "rotated by 5 degrees, cropped to no corners", lambda im, r: rotation(im, r, degrees=5)),
        Evasion("rotate15", "rotated by 15 degrees, cropped to no corners",
                lambda im, r: rotation(im, r, degrees=15)),
        Evasion("hue30", "hue turned by 30 degrees", lambda im, r: hue_shift(im, r, degrees=30)),
        Evasion("hue90", "hue turned by 90 degrees", lambda im, r: hue_shift(im, r, degrees=90)),
        Evasion("invert", "the negative", invert),
        Evasion("gif_frame", "the image as one frame of a 24-frame GIF of other safe photos (scored over its frames)",
                hidden_frame, animation=True),
    ]
    return {e.name: e for e in items}


#: Every evasion by name.
EVASIONS: dict[str, Evasion] = _registry()
#: All of them, in table order.
DEFAULT_EVASIONS: tuple[str, ...] = tuple(EVASIONS)
#: Those that tiled scoring is meant to answer (and that ``tiles=True`` re-scores with tiles).
TILED_EVASIONS: tuple[str, ...] = ("border", "frame", "grid2", "grid3", "meme", "screenshot")


def _check_names(names: Sequence[str]) -> tuple[str, ...]:
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in EVASIONS]
    if unknown or not names:
        raise ConfigError(f"unknown evasion(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                          f"choose from {', '.join(EVASIONS)}", param="evasions")
    return tuple(dict.fromkeys(names))


def apply_evasion(name: str, image: np.ndarray, *, seed: int = 0) -> Any:
    """Evasion ``name`` applied to an HxWx3 uint8 ``image``: a new HxWx3 uint8 array, or the bytes
    of a GIF for an animation evasion. Deterministic in (``name``, ``image``, ``seed``)."""
    (checked,) = _check_names([name])
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
        raise ImageError(f"an evasion needs an HxWx3 uint8 image, got {arr.dtype} {arr.shape}")
    return EVASIONS[checked].apply(arr, _rng(seed, checked))


# -- the table --------------------------------------------------------------------------------
def _interval(values: np.ndarray, seed: int, statistic: Callable[..., Any] = np.mean
              ) -> list[float] | None:
    """A 95% percentile bootstrap interval (2000 resamples) of ``statistic``; ``None`` under 2 values."""
    if len(values) < 2:
        return None
    if np.ptp(values) == 0:
        v = float(values[0])
        return [v, v]
    from scipy.stats import bootstrap

    res = bootstrap((values,), statistic, n_resamples=2000, confidence_level=0.95, method="percentile",
                    random_state=np.random.default_rng(seed))
    low, high = res.confidence_interval
    return [float(low), float(high)]


def _ratio_interval(num: np.ndarray, den: np.ndarray, seed: int) -> list[float] | None:
    """A 95% percentile bootstrap interval of ``sum(num) / sum(den)`` over images (2000 resamples,
    resamples whose ``den`` sums to under :data:`MIN_LOSS` per image dropped)."""
    n = len(num)
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, (2000, n))
    d = den[idx].mean(axis=1)
    keep = d >= MIN_LOSS
    if not keep.any():
        return None
    ratios = num[idx].mean(axis=1)[keep] / d[keep]
    low, high = np.quantile(ratios, [0.025, 0.975])
    return [float(low), float(high)]


@dataclass(frozen=True)
class EvasionStat:
    """One evasion on one model: the mean change of the score (evaded minus clean) with its 95%
    bootstrap interval, over ``n`` images; decisions flipped at the threshold (``flips``: all,
    ``to_safe``: NSFW images the evasion makes safe, ``to_nsfw``: the other way); with tiles, the
    mean change of the tiled score of the evaded image from the plain score of the clean one."""

    mean_change: float | None
    ci95: list[float] | None
    n: int
    flips: int
    to_safe: int
    to_nsfw: int
    clean_mean: float | None
    evaded_mean: float | None
    tiled_mean_change: float | None = None
    tiled_to_safe: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"mean_change": self.mean_change, "ci95": self.ci95, "n": self.n, "flips": self.flips,
               "to_safe": self.to_safe, "to_nsfw": self.to_nsfw, "clean_mean": self.clean_mean,
               "evaded_mean": self.evaded_mean, "tiled_mean_change": self.tiled_mean_change}
        if self.tiled_to_safe is not None:
            out["tiled_to_safe"] = self.tiled_to_safe
        return out


@dataclass(frozen=True)
class TilesStat:
    """Tiled scoring on one model: ``cost`` (model forwards per image, against one without tiles)
    and seconds per image with and without; for each tiled evasion, the share of the score the
    evasion took that tiles give back (``recovered``: mean of tiled(evaded) - plain(evaded) over
    the mean of plain(clean) - plain(evaded); ``None`` where under :data:`MIN_LOSS` was lost),
    with a bootstrap interval (``recovered_detail`` also holds ``tiled_lost``: what the evasion still
    takes from a tiled scorer, tiled(clean) - tiled(evaded)); and the price on clean images (their
    mean score rise, and how many tiles turn from safe to NSFW at the threshold)."""

    cost: float
    seconds_plain: float | None
    seconds_tiled: float | None
    recovered: dict[str, float | None]
    recovered_detail: dict[str, dict[str, Any]]
    clean_change: float | None
    clean_to_nsfw: int
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"cost": self.cost, "forwards": self.cost,
                "seconds_per_image": {"plain": self.seconds_plain, "tiled": self.seconds_tiled},
                "recovered": self.recovered, "recovered_detail": self.recovered_detail,
                "clean_change": self.clean_change, "clean_to_nsfw": self.clean_to_nsfw, "n": self.n}


@dataclass
class EvasionReport:
    """What :func:`evasion_table` found: ``stats[evasion][model]``, ``tiles[model]`` (with
    ``tiles=True``), per-image scores, the sources that could not be read, and warnings.
    :meth:`to_dict` gives the ``evasions``, ``evasions_detail`` and ``tiles`` sections of
    ``robustness.json`` (and ``evasion_images``, ``evasion_errors``, ``evasion_setup``, ``warnings``)."""

    names: tuple[str, ...]
    models: tuple[str, ...]
    stats: dict[str, dict[str, EvasionStat]]
    tiles: dict[str, TilesStat] | None
    images: list[dict[str, Any]]
    errors: list[dict[str, str]]
    warnings: list[str]
    setup: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "evasions": {e: {m: s.mean_change for m, s in per.items()} for e, per in self.stats.items()},
            "evasions_detail": {e: {m: s.to_dict() for m, s in per.items()} for e, per in self.stats.items()},
            "evasion_setup": self.setup,
            "evasion_images": self.images,
            "evasion_errors": self.errors,
            "warnings": list(self.warnings),
        }
        if self.tiles is not None:
            out["tiles"] = {m: t.to_dict() for m, t in self.tiles.items()}
        return out


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    _pil(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _load(source: ImageInput, work_side: int | None) -> np.ndarray:
    img = load_image(source, None)
    if work_side is not None and max(img.size) > work_side:
        scale = work_side / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.LANCZOS)
    return _array(img)


def _r(x: float | None, digits: int = 6) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


class _Timer:
    def __init__(self) -> None:
        self.seconds = 0.0
        self.images = 0

    def add(self, seconds: float, images: int) -> None:
        self.seconds += seconds
        self.images += images

    @property
    def per_image(self) -> float | None:
        return self.seconds / self.images if self.images else None


def evasion_table(sources: Sequence[ImageInput], detectors: Mapping[str, Detector],
                  names: Sequence[str] = DEFAULT_EVASIONS, *, tiles: bool | Sequence[str] = False, seed: int = 0,
                  threshold: float = 0.5, work_side: int | None = 512, layout: TileLayout | None = None,
                  progress: ProgressCallback | None = None) -> EvasionReport:
    """Apply each evasion of ``names`` to each source and score every result with each Detector of
    ``detectors`` (model name -> Detector) as an upload is scored: still images as PNG bytes
    (:meth:`~nsfwlab.detector.Detector.score_many`), the animation over its frames
    (:meth:`~nsfwlab.detector.Detector.score_frames`, default frame options: max over frames).
    Scores are the Detectors' reported scores (calibrated where a Detector has a calibration).

    Sources larger than ``work_side`` (longer side, pixels) are shrunk first (Pillow, Lanczos);
    ``None`` keeps them as they are. A source that cannot be read is reported in ``errors`` and the
    others go on. ``tiles``: ``True`` re-scores the clean images and :data:`TILED_EVASIONS` (a
    sequence: those evasions) with :func:`nsfwlab.tiles.tiled_score` (``layout``: its crops) and
    fills the report's ``tiles`` section. ``progress`` gets one ``"evasions"`` event per source."""
    from ..tiles import TileLayout

    chosen = _check_names(names)
    if not detectors:
        raise ConfigError("evasion_table needs at least one model", param="model")
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"threshold must lie in (0, 1), got {threshold}", param="threshold")
    if work_side is not None and work_side < 16:
        raise ConfigError(f"work_side must be at least 16, got {work_side}", param="work_side")
    tiled_names: tuple[str, ...] = ()
    if tiles:
        tiled_names = tuple(n for n in (TILED_EVASIONS if tiles is True else _check_names(tiles))  # type: ignore[arg-type]
                            if n in chosen and not EVASIONS[n].animation)
    layout = (layout or TileLayout()) if tiles else None
    models = tuple(detectors)
    images: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    timers = {m: (_Timer(), _Timer()) for m in models}
    forwards: dict[str, list[int]] = {m: [] for m in models}
    for i, source in enumerate(sources):
        name = describe_source(source)
        try:
            image = _load(source, work_side)
            row = _score_source(name, image, detectors, chosen, tiled_names, layout, seed, i, timers, forwards)
        except NsfwlabError as exc:
            errors.append({"source": name, "error": exc.message, "code": exc.code})
            notify(progress, "evasions", i + 1, len(sources))
            continue
        images.append(row)
        notify(progress, "evasions", i + 1, len(sources), row)
    warnings: list[str] = []
    stats = {e: {m: _stat(images, e, m, threshold, seed, e in tiled_names) for m in models} for e in chosen}
    if len(images) < MIN_EXAMPLES:
        warnings.append(f"the evasion table rests on {len(images)} image(s) (under {MIN_EXAMPLES}): "
                        "its intervals are wide and its flip counts anecdotal")
    if errors:
        warnings.append(f"{len(errors)} source(s) could not be read and are left out (evasion_errors)")
    tiles_out = None
    if tiles:
        tiles_out = {m: _tiles_stat(images, m, tiled_names, threshold, seed, timers[m], forwards[m], warnings)
                     for m in models}
    setup = {"names": list(chosen), "descriptions": {e: EVASIONS[e].description for e in chosen},
             "seed": seed, "threshold": threshold, "work_side": work_side, "n": len(images),
             "scored_as": "PNG bytes through each Detector; gif_frame through its frame path (max over frames)"}
    if tiles and layout is not None:
        setup["tiles"] = {"evasions": list(tiled_names), "strategy": layout.strategy, "most": layout.most,
                          "grids": list(layout.grids), "overlap": layout.overlap, "centre": layout.centre,
                          "min_side": layout.min_side}
    return EvasionReport(chosen, models, stats, tiles_out, images, errors, warnings, setup)


def _score_source(name: str, image: np.ndarray, detectors: Mapping[str, Detector], chosen: tuple[str, ...],
                  tiled_names: tuple[str, ...], layout: TileLayout | None, seed: int, index: int,
                  timers: dict[str, tuple[_Timer, _Timer]], forwards: dict[str, list[int]]) -> dict[str, Any]:
    """Every score of one source: clean, each evasion, and the tiled ones."""
    from ..tiles import tiled_score

    evaded: dict[str, Any] = {e: apply_evasion(e, image, seed=seed * 100_003 + index) for e in chosen}
    stills = [e for e in chosen if not EVASIONS[e].animation]
    pngs = [_png(image)] + [_png(evaded[e]) for e in stills]
    row: dict[str, Any] = {"source": name, "size": [int(image.shape[1]), int(image.shape[0])],
                           "clean": {}, "evaded": {e: {} for e in chosen}, "tiled": {}}
    for model, det in detectors.items():
        t0 = time.perf_counter()
        results = det.score_many(pngs)
        timers[model][0].add(time.perf_counter() - t0, len(pngs))
        for res in results:
            if res.error is not None:
                raise res.error
        row["clean"][model] = _r(results[0].score)
        for e, res in zip(stills, results[1:], strict=True):
            row["evaded"][e][model] = _r(res.score)
        for e in chosen:
            if EVASIONS[e].animation:
                framed = det.score_frames(evaded[e])
                if framed.error is not None:
                    raise framed.error
                row["evaded"][e][model] = _r(framed.score)
        if layout is not None:  # tiles: the clean image, and the evasions chosen for tiles
            tiled: dict[str, Any] = {}
            for key, pixels in [("clean", image)] + [(e, evaded[e]) for e in tiled_names]:
                t0 = time.perf_counter()
                ts = tiled_score(det, _png(pixels), layout)
                timers[model][1].add(time.perf_counter() - t0, 1)
                forwards[model].append(ts.forwards)
                tiled[key] = {"score": _r(det.calibrate(ts.score)), "tile": ts.tile.name, "box": ts.tile.xywh}
            row["tiled"][model] = tiled
    return row


def _stat(images: list[dict[str, Any]], evasion: str, model: str, threshold: float, seed: int,
          tiled: bool) -> EvasionStat:
    clean = np.array([im["clean"][model] for im in images], dtype=np.float64)
    after = np.array([im["evaded"][evasion][model] for im in images], dtype=np.float64)
    n = len(clean)
    if n == 0:
        return EvasionStat(None, None, 0, 0, 0, 0, None, None)
    change = after - clean
    to_safe = int(((clean >= threshold) & (after < threshold)).sum())
    to_nsfw = int(((clean < threshold) & (after >= threshold)).sum())
    tiled_change = tiled_safe = None
    if tiled:
        t_after = np.array([im["tiled"][model][evasion]["score"] for im in images], dtype=np.float64)
        tiled_change = _r(float((t_after - clean).mean()))
        tiled_safe = int(((clean >= threshold) & (t_after < threshold)).sum())
    return EvasionStat(_r(float(change.mean())), _rounded(_interval(change, seed)), n, to_safe + to_nsfw, to_safe,
                       to_nsfw, _r(float(clean.mean())), _r(float(after.mean())), tiled_change, tiled_safe)


def _rounded(ci: list[float] | None) -> list[float] | None:
    return None if ci is None else [round(v, 6) for v in ci]


def _tiles_stat(images: list[dict[str, Any]], model: str, tiled_names: tuple[str, ...], threshold: float, seed: int,
                timers: tuple[_Timer, _Timer], forwards: list[int], warnings: list[str]) -> TilesStat:
    clean = np.array([im["clean"][model] for im in images], dtype=np.float64)
    t_clean = np.array([im["tiled"][model]["clean"]["score"] for im in images], dtype=np.float64)
    recovered: dict[str, float | None] = {}
    detail: dict[str, dict[str, Any]] = {}
    for e in tiled_names:
        after = np.array([im["evaded"][e][model] for im in images], dtype=np.float64)
        t_after = np.array([im["tiled"][model][e]["score"] for im in images], dtype=np.float64)
        lost, regained = clean - after, t_after - after
        share = float(regained.mean() / lost.mean()) if len(lost) and lost.mean() >= MIN_LOSS else None
        recovered[e] = _r(share, 4)
        detail[e] = {"share": _r(share, 4), "ci95": _rounded(_ratio_interval(regained, lost, seed)) if share else None,
                     "n": len(lost), "lost": _r(float(lost.mean())) if len(lost) else None,
                     "regained": _r(float(regained.mean())) if len(lost) else None,
                     "tiled_lost": _r(float((t_clean - t_after).mean())) if len(lost) else None}
        if share is None and len(lost):
            warnings.append(f"tiles on {model}, {e}: the evasion took {float(lost.mean()):+.4f} of the score on "
                            f"average (under {MIN_LOSS}): no share recovered to report")
    clean_change = _r(float((t_clean - clean).mean())) if len(clean) else None
    clean_to_nsfw = int(((clean < threshold) & (t_clean >= threshold)).sum())
    cost = float(np.mean(forwards)) if forwards else 0.0
    return TilesStat(round(cost, 2), _r(timers[0].per_image, 4), _r(timers[1].per_image, 4), recovered, detail,
                     clean_change, clean_to_nsfw, len(images))
