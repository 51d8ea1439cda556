"""Yahoo's exact open_nsfw preprocessing, and batch assembly.

The exact pipeline (``PreprocessConfig()``), in this order: RGB image -> Pillow BILINEAR resize to
256x256 -> JPEG encode with Pillow's defaults (quality 75) -> decode -> crop rows/cols 16..240 ->
RGB->BGR -> subtract (104, 117, 123) -> float32. The model input layout is NHWC (as the bundled
ONNX graph takes it); the torch backend views it as NCHW channels-last without a copy.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from ..config import DecodeLimits, PreprocessConfig
from ..imageio import ImageInput, load_image

__all__ = [
    "EXACT",
    "center_crop",
    "jpeg_roundtrip",
    "preprocess",
    "preprocess_rgb",
    "resize_image",
    "stack_batch",
    "to_network_input",
]

EXACT = PreprocessConfig()


def resize_image(img: Image.Image, size: int) -> Image.Image:
    """Resize to ``size`` x ``size`` with Pillow's (antialiased) BILINEAR filter."""
    return img.resize((size, size), resample=Image.Resampling.BILINEAR)


def jpeg_roundtrip(img: Image.Image, quality: int = 75) -> np.ndarray:
    """Encode as baseline JPEG with Pillow's defaults (4:2:0 subsampling) and decode to uint8 RGB."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf, formats=["JPEG"]) as decoded:
        return np.asarray(decoded.convert("RGB"))


def center_crop(arr: np.ndarray, crop: int) -> np.ndarray:
    """Crop the central ``crop`` x ``crop`` window (offset ``(H - crop) // 2``) of an HxWxC array."""
    h, w = arr.shape[:2]
    top, left = max((h - crop) // 2, 0), max((w - crop) // 2, 0)
    return arr[top : top + crop, left : left + crop]


def to_network_input(rgb: np.ndarray, mean_bgr: Sequence[float] = EXACT.mean_bgr) -> np.ndarray:
    """uint8 RGB HxWx3 -> float32 BGR, mean-subtracted, C-contiguous."""
    bgr = rgb[:, :, ::-1].astype(np.float32)
    bgr -= np.asarray(mean_bgr, dtype=np.float32)
    return np.ascontiguousarray(bgr)


def preprocess_rgb(img: Image.Image, config: PreprocessConfig = EXACT) -> np.ndarray:
    """An RGB PIL image -> the network's (crop, crop, 3) float32 input."""
    resized = resize_image(img, config.resize)
    if config.jpeg_roundtrip:
        arr = jpeg_roundtrip(resized, config.jpeg_quality)
    else:
        arr = np.asarray(resized)
    return to_network_input(center_crop(arr, config.crop), config.mean_bgr)


def preprocess(source: ImageInput, config: PreprocessConfig = EXACT,
               limits: DecodeLimits | None = None) -> np.ndarray:
    """Decode ``source`` safely and preprocess it; raises an ``ImageError`` for bad input."""
    draft = config.resize if config.draft else None
    return preprocess_rgb(load_image(source, limits, draft_size=draft), config)


def stack_batch(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Stack preprocessed (H, W, 3) arrays into one C-contiguous NHWC float32 batch."""
    if not arrays:
        raise ValueError("cannot stack an empty batch")
    return np.ascontiguousarray(np.stack(arrays, axis=0), dtype=np.float32)
