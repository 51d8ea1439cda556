"""libspng (through pyspng) gives Pillow's PNG pixels exactly, takes only the PNGs it can, and
every file it refuses still gets Pillow's typed diagnosis."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from nsfwlab.config import DecodeLimits
from nsfwlab.errors import ImageError, TruncatedImageError
from nsfwlab.imageio import _library_decode, load_image, open_image, to_rgb


def _photo(w: int = 301, h: int = 203, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) * 127 // (w + h))], axis=-1)
    noise = rng.integers(0, 60, (h, w, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def _pillow_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(to_rgb(im))


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


PNGS = {
    "RGB": lambda: _encode(_photo(), "PNG"),
    "RGBA": lambda: _encode(_photo().convert("RGBA"), "PNG"),
    "RGBA, transparent pixels keep their colour": lambda: _encode(
        Image.merge("RGBA", (*_photo().split(), _photo().convert("L").point(lambda v: 0 if v < 128 else 255))), "PNG"),
    "grey": lambda: _encode(_photo().convert("L"), "PNG"),
    "grey + alpha": lambda: _encode(_photo().convert("LA"), "PNG"),
    "interlaced": lambda: _adam7(_photo()),
    "RGB with tRNS": lambda: _encode(_photo(), "PNG", transparency=(0, 0, 0)),
    "grey with tRNS": lambda: _encode(_photo().convert("L"), "PNG", transparency=7),
    "compress 0": lambda: _encode(_photo(), "PNG", compress_level=0),
    "with gAMA": lambda: _with_chunk(_encode(_photo(), "PNG"), b"gAMA", (100000).to_bytes(4, "big")),
}


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")


def _with_chunk(png: bytes, kind: bytes, payload: bytes) -> bytes:
    """Insert an ancillary chunk right after IHDR (8-byte signature + 25-byte IHDR chunk)."""
    return png[:33] + _chunk(kind, payload) + png[33:]


def _adam7(img: Image.Image) -> bytes:
    """An Adam7-interlaced 8-bit RGB PNG (Pillow cannot write one), filter 0 on every row."""
    arr = np.asarray(img.convert("RGB"))
    h, w = arr.shape[:2]
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
    raw = bytearray()
    for x0, y0, dx, dy in passes:
        sub = arr[y0::dy, x0::dx]
        if sub.size == 0:
            continue
        for row in sub:
            raw += b"\x00" + row.tobytes()
    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 2, 0, 0, 1])
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(bytes(raw)))
            + _chunk(b"IEND", b""))


@pytest.mark.parametrize("name", list(PNGS))
def test_libspng_equals_pillow(name: str) -> None:
    data = PNGS[name]()
    limits = DecodeLimits()
    fast = _library_decode(data, open_image(data, limits))
    assert fast is not None, f"{name}: expected the library decoder to take this file"
    assert fast.mode == "RGB"
    assert np.array_equal(np.asarray(fast), _pillow_rgb(data)), name
    assert np.array_equal(np.asarray(load_image(data)), _pillow_rgb(data)), name


def test_other_kinds_stay_with_pillow() -> None:
    limits = DecodeLimits()
    palette = _encode(_photo().convert("P"), "PNG")
    deep = _encode(Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16), "PNG")
    cmyk = _encode(_photo().convert("CMYK"), "JPEG")
    jpeg = _encode(_photo(), "JPEG")
    for data in (palette, deep, cmyk, jpeg, _encode(_photo(), "WEBP"), _encode(_photo(), "BMP")):
        assert _library_decode(data, open_image(data, limits)) is None
        assert load_image(data).mode == "RGB"


@pytest.mark.parametrize("cut", [0.3, 0.7, 0.98])
def test_a_truncated_png_is_refused_and_gets_pillows_diagnosis(cut: float) -> None:
    broken = PNGS["RGB"]()[: int(len(PNGS["RGB"]()) * cut)]
    assert _library_decode(broken, open_image(broken, DecodeLimits())) is None
    with pytest.raises(TruncatedImageError):
        load_image(broken)


def test_corrupt_png_data_is_refused_not_guessed() -> None:
    data = bytearray(PNGS["RGB"]())
    # Scribble over the compressed pixels: the IDAT CRC no longer matches; libspng refuses, and
    # Pillow names the problem.
    mid = len(data) // 2
    data[mid : mid + 64] = b"\x00" * 64
    limits = DecodeLimits()
    assert _library_decode(bytes(data), open_image(bytes(data), limits)) is None
    with pytest.raises(ImageError):
        load_image(bytes(data))
