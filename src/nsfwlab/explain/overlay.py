"""Pictures of heatmaps: colormap blends at the image's own resolution, a colour scale, and a
labelled grid for several methods. Everything returns uint8 RGB arrays; only the CLI writes files.

matplotlib is used for its colormaps only (imported when a picture is made)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import ConfigError

__all__ = ["BLOCK_PIXELS", "attach_scale", "blend", "colorize", "colour_scale", "labelled_grid", "normalize",
           "overlay_with_scale", "value_range"]


#: Pictures are coloured and blended in blocks of about this many pixels, so that the float64
#: temporaries of a large picture stay small.
BLOCK_PIXELS = 1 << 18


def value_range(heat: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> tuple[float, float]:
    """The (vmin, vmax) :func:`normalize` uses: the given values, else the map's min and max."""
    heat = np.asarray(heat)
    if heat.ndim != 2:
        raise ConfigError(f"a heatmap must be 2-D, got shape {heat.shape}")
    if not np.isfinite(heat).all():
        raise ConfigError("the heatmap holds NaN or infinite values")
    lo = float(heat.min()) if vmin is None else float(vmin)
    hi = float(heat.max()) if vmax is None else float(vmax)
    return lo, hi


def normalize(heat: np.ndarray, vmin: float | None = None,
              vmax: float | None = None) -> tuple[np.ndarray, float, float]:
    """Map ``heat`` linearly to [0, 1]: ``vmin`` -> 0 and ``vmax`` -> 1 (defaults: the map's
    minimum and maximum; a constant map becomes all zeros). Returns (map, vmin, vmax)."""
    lo, hi = value_range(heat, vmin, vmax)
    heat = np.asarray(heat, dtype=np.float64)
    if hi <= lo:
        return np.zeros_like(heat, dtype=np.float32), lo, hi
    return np.clip((heat - lo) / (hi - lo), 0.0, 1.0).astype(np.float32), lo, hi


def _block_rows(width: int) -> int:
    """How many rows of ``width`` pixels make a block of about :data:`BLOCK_PIXELS` pixels."""
    return max(1, BLOCK_PIXELS // max(1, width))


def _cmap(name: str):  # type: ignore[no-untyped-def]
    import matplotlib

    try:
        return matplotlib.colormaps[name]
    except KeyError:
        raise ConfigError(f"unknown colormap {name!r} (any matplotlib colormap name, e.g. jet, inferno)") from None


def colorize(norm: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """[0, 1] map -> uint8 RGB through a matplotlib colormap (in row blocks)."""
    colours = _cmap(cmap)
    norm = np.asarray(norm)
    if norm.ndim != 2:
        return np.ascontiguousarray(colours(np.asarray(norm, dtype=np.float64), bytes=True)[..., :3])
    out = np.empty((*norm.shape, 3), dtype=np.uint8)
    rows = _block_rows(norm.shape[1])
    for r in range(0, norm.shape[0], rows):
        out[r : r + rows] = colours(np.asarray(norm[r : r + rows], dtype=np.float64), bytes=True)[..., :3]
    return out


def _as_rgb(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ConfigError(f"expected an HxWx3 uint8 image, got {arr.shape} {arr.dtype}")
    return arr


def blend(image: np.ndarray, heat: np.ndarray, *, cmap: str = "jet", alpha: float = 0.5,
          vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """The coloured heatmap blended over the image, pixel for pixel (same height and width).
    ``alpha`` is the heatmap's weight (0: the image only, 1: the heatmap only)."""
    img = _as_rgb(image)
    if heat.shape != img.shape[:2]:
        raise ConfigError(f"heatmap {heat.shape} and image {img.shape[:2]} differ in size")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must lie in [0, 1], got {alpha}")
    lo, hi = value_range(heat, vmin, vmax)
    out = np.empty_like(img)
    rows = _block_rows(img.shape[1])
    for r in range(0, img.shape[0], rows):
        norm, _, _ = normalize(heat[r : r + rows], lo, hi)
        colour = colorize(norm, cmap).astype(np.float32)
        mixed = (1.0 - alpha) * img[r : r + rows].astype(np.float32) + alpha * colour
        out[r : r + rows] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return out


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1
        return ImageFont.load_default()


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def colour_scale(height: int, vmin: float, vmax: float, *, cmap: str = "jet", label: str = "") -> np.ndarray:
    """A vertical colour bar ``height`` pixels tall (at least 64) with tick labels (top = ``vmax``)
    and ``label`` written vertically beside it."""
    height = max(height, 64)
    font_size = int(np.clip(height / 28, 10, 28))
    font = _font(font_size)
    bar_w = max(12, font_size)
    ticks_w = font_size * 4
    label_w = font_size + 8 if label else 0
    width = 6 + bar_w + 8 + ticks_w + label_w
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    margin = font_size // 2 + 2
    ramp = np.linspace(1.0, 0.0, height - 2 * margin)[:, None].repeat(bar_w, axis=1)
    canvas.paste(Image.fromarray(colorize(ramp, cmap)), (6, margin))
    draw = ImageDraw.Draw(canvas)
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = margin + (1.0 - frac) * (height - 2 * margin - 1)
        draw.line([(6 + bar_w, y), (10 + bar_w, y)], fill=(0, 0, 0))
        draw.text((12 + bar_w, y), _fmt(vmin + frac * (vmax - vmin)), fill=(0, 0, 0), font=font, anchor="lm")
    if label:
        strip = Image.new("RGB", (height, label_w), (255, 255, 255))
        ImageDraw.Draw(strip).text((height // 2, label_w // 2), label, fill=(0, 0, 0), font=font, anchor="mm")
        canvas.paste(strip.rotate(90, expand=True), (width - label_w, 0))
    return np.asarray(canvas)


def overlay_with_scale(image: np.ndarray, heat: np.ndarray, *, cmap: str = "jet", alpha: float = 0.5,
                       vmin: float | None = None, vmax: float | None = None, label: str = "") -> np.ndarray:
    """:func:`blend` at the image's own resolution, with a colour scale attached on the right:
    the left ``W`` columns are exactly the blended image."""
    lo, hi = value_range(heat, vmin, vmax)
    blended = blend(image, heat, cmap=cmap, alpha=alpha, vmin=vmin, vmax=vmax)
    return attach_scale(blended, lo, hi, cmap=cmap, label=label)


def attach_scale(picture: np.ndarray, vmin: float, vmax: float, *, cmap: str = "jet",
                 label: str = "") -> np.ndarray:
    """``picture`` with a colour scale on its right; the picture's pixels are kept as they are
    (a picture shorter than the scale's minimum height is padded with white below)."""
    picture = _as_rgb(picture)
    bar = colour_scale(picture.shape[0], vmin, vmax, cmap=cmap, label=label)
    if bar.shape[0] > picture.shape[0]:
        pad = np.full((bar.shape[0] - picture.shape[0], picture.shape[1], 3), 255, dtype=np.uint8)
        picture = np.concatenate([picture, pad], axis=0)
    return np.concatenate([picture, bar], axis=1)


def labelled_grid(panels: Sequence[tuple[str, np.ndarray]], *, columns: int = 3,
                  max_side: int | None = None) -> np.ndarray:
    """Panels (label, RGB array) in a grid, each with its label written above it. Panels keep
    their resolution unless ``max_side`` caps the longer side (for very large images)."""
    if not panels:
        raise ConfigError("labelled_grid needs at least one panel")
    imgs: list[tuple[str, Image.Image]] = []
    for label, arr in panels:
        im = Image.fromarray(_as_rgb(arr))
        if max_side is not None and max(im.size) > max_side:
            scale = max_side / max(im.size)
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                           Image.Resampling.LANCZOS)
        imgs.append((label, im))
    cell_w = max(im.width for _, im in imgs)
    cell_h = max(im.height for _, im in imgs)
    font_size = int(np.clip(cell_w / 24, 12, 40))
    title_h = font_size + 10
    columns = max(1, min(columns, len(imgs)))
    rows = -(-len(imgs) // columns)
    canvas = Image.new("RGB", (columns * cell_w, rows * (cell_h + title_h)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font(font_size)
    for i, (label, im) in enumerate(imgs):
        x, y = (i % columns) * cell_w, (i // columns) * (cell_h + title_h)
        draw.text((x + 6, y + title_h // 2), label, fill=(0, 0, 0), font=font, anchor="lm")
        canvas.paste(im, (x, y + title_h))
    return np.asarray(canvas)
