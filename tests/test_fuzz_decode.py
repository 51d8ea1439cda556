"""Hostile files: seeded mutations of valid images never escape as anything but an ImageError."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from nsfwlab.config import DecodeLimits
from nsfwlab.errors import ImageError
from nsfwlab.imageio import load_image

FORMATS = ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"]


def _valid(fmt: str) -> bytes:
    rng = np.random.default_rng(7)
    img = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", FORMATS)
def test_mutated_files_fail_cleanly(fmt: str) -> None:
    base = bytearray(_valid(fmt))
    rng = np.random.default_rng(FORMATS.index(fmt))
    limits = DecodeLimits(max_pixels=4_000_000)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(150):
        data = bytearray(base)
        kind = rng.integers(0, 3)
        if kind == 0:  # flip bytes (past the signature, so the format is still recognised)
            for pos in rng.integers(8, len(data), size=int(rng.integers(1, 12))):
                data[pos] = int(rng.integers(0, 256))
        elif kind == 1:  # cut
            data = data[: int(rng.integers(1, len(data)))]
        else:  # splice garbage in
            pos = int(rng.integers(8, len(data)))
            data[pos:pos] = rng.integers(0, 256, size=int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        try:
            img = load_image(bytes(data), limits)
        except ImageError:
            outcomes["error"] += 1
        else:
            assert img.mode == "RGB" and img.width * img.height <= limits.max_pixels
            outcomes["ok"] += 1
    assert outcomes["error"] > 0
