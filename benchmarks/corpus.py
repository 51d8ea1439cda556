"""Benchmark corpora made offline from public safe photos (scikit-image) and synthetic images.

``web_photos(n, out)`` writes ``n`` web-size JPEGs (about 1 MP, 1200x800 or 800x1200, quality 85):
scikit-image's colour photos, upscaled, cropped, flipped and colour-shifted so that no two files
are identical. Deterministic for a given ``n`` and ``seed``.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

SOURCES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field",
           "motorcycle_left", "retina", "camera", "page")


def cpu_name() -> str:
    """The CPU model, for benchmark records."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _sources() -> list[Image.Image]:
    import skimage.data

    out = []
    for name in SOURCES:
        try:
            arr = np.asarray(getattr(skimage.data, name)())
        except Exception:
            continue
        out.append(Image.fromarray(arr).convert("RGB"))
    return out


def _variant(src: Image.Image, w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """A ``w`` x ``h`` view of ``src``: upscaled, cropped at random, maybe mirrored, colour-shifted."""
    scale = max(w / src.width, h / src.height) * float(rng.uniform(1.0, 1.3))
    big = src.resize((int(src.width * scale) + 1, int(src.height * scale) + 1), Image.Resampling.BICUBIC)
    left = int(rng.integers(0, big.width - w + 1))
    top = int(rng.integers(0, big.height - h + 1))
    img = big.crop((left, top, left + w, top + h))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img = ImageEnhance.Color(img).enhance(float(rng.uniform(0.7, 1.3)))
    return ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.85, 1.15)))


def web_photos(n: int, out: Path, *, seed: int = 0, size: tuple[int, int] = (1200, 800)) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sources = _sources()
    paths = []
    for i in range(n):
        w, h = size if i % 3 else size[::-1]
        img = _variant(sources[i % len(sources)], w, h, rng)
        p = out / f"web_{i:05d}.jpg"
        img.save(p, quality=85)
        paths.append(p)
    return paths


#: Web sizes for :func:`mixed_photos` (landscape; about a third are turned to portrait).
MIXED_SIZES = ((320, 240), (640, 480), (800, 600), (1024, 768), (1280, 720), (1200, 800), (1600, 900),
               (1920, 1080))


def mixed_photos(n: int, out: Path, *, seed: int = 0, png_share: float = 0.15) -> list[Path]:
    """``n`` photos of mixed web sizes, 320x240 to 1920x1080, ``png_share`` of them PNG (the rest
    JPEG, quality 75 to 95): the corpus of the whole-command scan benchmark. Deterministic."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sources = _sources()
    pngs = set(rng.choice(n, size=round(n * png_share), replace=False).tolist())
    paths = []
    for i in range(n):
        w, h = MIXED_SIZES[int(rng.integers(0, len(MIXED_SIZES)))]
        if rng.random() < 1 / 3:
            w, h = h, w
        img = _variant(sources[i % len(sources)], w, h, rng)
        if i in pngs:
            p = out / f"mixed_{i:05d}.png"
            img.save(p)
        else:
            p = out / f"mixed_{i:05d}.jpg"
            img.save(p, quality=int(rng.integers(75, 96)))
        paths.append(p)
    return paths


def paintings(photos: list[Path], out: Path) -> list[Path]:
    """Painting-like renderings of ``photos`` (no painting ships offline): a median filter flattens
    the texture into brush-like patches, colours are posterised and saturated, edges enhanced,
    then JPEG quality 90 at the photo's size. Deterministic."""
    from PIL import ImageFilter, ImageOps

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, src in enumerate(photos):
        with Image.open(src) as im:
            img = im.convert("RGB")
        size = 5 if min(img.size) < 600 else 7
        img = img.filter(ImageFilter.ModeFilter(size)).filter(ImageFilter.MedianFilter(3))
        img = ImageOps.posterize(img, 4 + i % 3)
        img = ImageEnhance.Color(img).enhance(1.4).filter(ImageFilter.EDGE_ENHANCE)
        p = out / f"painting_{i:05d}.jpg"
        img.save(p, quality=90)
        paths.append(p)
    return paths


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", type=Path)
    ap.add_argument("-n", type=int, default=100)
    args = ap.parse_args()
    print(len(web_photos(args.n, args.out)), "files in", args.out)
