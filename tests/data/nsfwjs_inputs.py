"""The decoded pixels that nsfwjs_golden.mjs scores with nsfwjs on TensorFlow.js and that the tests
score with nsfwlab's port: scikit-image's public photos (whole, and cropped to 224 and 299 so that
nsfwjs's no-resize path is covered) and seeded synthetic images.

    python tests/data/nsfwjs_inputs.py OUT_DIR   # writes OUT_DIR/pixels.bin and OUT_DIR/pixels.json
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np


def _photo(name: str) -> np.ndarray:
    import skimage.data

    arr = np.asarray(getattr(skimage.data, name)())
    return np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr[..., :3]


def golden_inputs() -> dict[str, np.ndarray]:
    """name -> HxWx3 uint8 RGB, deterministic."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:60, 0:90]
    gradient = np.stack([xx * 255 // 89, yy * 255 // 59, (xx + yy) * 255 // 148], axis=2).astype(np.uint8)
    checker = (((np.indices((33, 17)).sum(axis=0)) % 2) * 255).astype(np.uint8)
    out = {
        "astronaut": _photo("astronaut"),
        "coffee": _photo("coffee"),
        "chelsea": _photo("chelsea"),
        "rocket": _photo("rocket"),
        "camera": _photo("camera"),
        "astronaut_224": _photo("astronaut")[100:324, 150:374],
        "coffee_299": _photo("coffee")[50:349, 200:499],
        "gradient": gradient,
        "noise": rng.integers(0, 256, size=(77, 53, 3), dtype=np.uint8),
        "checker": np.repeat(checker[..., None], 3, axis=2),
        "tiny": rng.integers(0, 256, size=(3, 5, 3), dtype=np.uint8),
    }
    return {k: np.ascontiguousarray(v, dtype=np.uint8) for k, v in out.items()}


def pixels_sha256(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr, dtype=np.uint8).tobytes()).hexdigest()


def write(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    index, offset = [], 0
    with (out_dir / "pixels.bin").open("wb") as fh:
        for name, arr in golden_inputs().items():
            fh.write(arr.tobytes())
            index.append({"name": name, "shape": list(arr.shape), "offset": offset, "sha256": pixels_sha256(arr)})
            offset += arr.nbytes
    (out_dir / "pixels.json").write_text(json.dumps(index))


if __name__ == "__main__":
    write(Path(sys.argv[1]))
