"""Working sizes: the one rule for bounding the pixels a capability works on.

Explain and the lab optimise or occlude an image at its own resolution, which costs memory in
proportion to its pixels (a 10000x10000 PNG of 315 KB, under the decode cap, took an attack to
8 GB). Both work on a copy whose long side is at most a cap: :func:`fit_side` gives its size and
:func:`downscale` makes it (Pillow's antialiased bilinear, the resize the exact pipeline uses).
"""

from __future__ import annotations

from PIL import Image

from .errors import ImageTooLargeError

__all__ = ["check_aspect", "downscale", "fit_side"]


def fit_side(height: int, width: int, side: int) -> tuple[int, int]:
    """(height, width) scaled down, keeping the aspect ratio, so the long side is at most
    ``side`` (each side at least 1 pixel); unchanged when it already fits."""
    long = max(height, width)
    if long <= side:
        return height, width
    scale = side / long
    return max(1, round(height * scale)), max(1, round(width * scale))


def check_aspect(height: int, width: int, max_aspect: float, *, who: str, param: str = "max_aspect") -> None:
    """Refuse an image whose long side is more than ``max_aspect`` times its short side (``who``
    names the capability whose cap it is; ``param`` the parameter that raises it)."""
    aspect = max(height, width) / max(1, min(height, width))
    if aspect > max_aspect:
        raise ImageTooLargeError(f"image is {width}x{height}: aspect ratio {aspect:.4g}:1 is over {who}'s cap of "
                                 f"{max_aspect:g}:1 (raise {param})", param=param)


def downscale(img: Image.Image, side: int) -> Image.Image:
    """``img`` itself when its long side is at most ``side``, else a bilinear (antialiased)
    downscale to that long side."""
    h, w = fit_side(img.height, img.width, side)
    if (h, w) == (img.height, img.width):
        return img
    return img.resize((w, h), resample=Image.Resampling.BILINEAR)
