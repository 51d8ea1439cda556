"""Yahoo's exact open_nsfw preprocessing, its named shortcuts, batch assembly and the uint8
transport form: the one place where an image becomes the network's input. The torch forms of the
same steps (differentiable, for gradients) are in :mod:`nsfwlab.preprocess.differentiable`.

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
    "finish_resized",
    "jpeg_roundtrip",
    "pack_array",
    "preprocess",
    "preprocess_rgb",
    "resize_image",
    "stack_batch",
    "to_network_input",
    "unpack_array",
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


def finish_resized(resized: Image.Image, config: PreprocessConfig = EXACT) -> np.ndarray:
    """The steps after the resize (JPEG round trip, crop, BGR, mean) of an already resized RGB
    image: ``preprocess_rgb(img) == finish_resized(resize_image(img, 256))``. For callers that
    render many variants at the network's resolution (occlusion, evolution)."""
    arr = jpeg_roundtrip(resized, config.jpeg_quality) if config.jpeg_roundtrip else np.asarray(resized)
    return to_network_input(center_crop(arr, config.crop), config.mean_bgr)


def preprocess_rgb(img: Image.Image, config: PreprocessConfig = EXACT) -> np.ndarray:
    """An RGB PIL image -> the network's (crop, crop, 3) float32 input."""
    return finish_resized(resize_image(img, config.resize), config)


def preprocess(source: ImageInput, config: PreprocessConfig = EXACT,
               limits: DecodeLimits | None = None) -> np.ndarray:
    """Decode ``source`` safely and preprocess it; raises an ``ImageError`` for bad input."""
    return preprocess_rgb(load_image(source, limits, draft_size=config.draft_size), config)


def stack_batch(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Stack preprocessed (H, W, 3) arrays into one C-contiguous NHWC float32 batch."""
    if not arrays:
        raise ValueError("cannot stack an empty batch")
    return np.ascontiguousarray(np.stack(arrays, axis=0), dtype=np.float32)


def pack_array(arr: np.ndarray, mean_bgr: Sequence[float] = EXACT.mean_bgr) -> np.ndarray:
    """A lossless, 4x smaller transport (or storage) form of a preprocessed array: the uint8 BGR
    pixels when ``arr`` is exactly ``uint8 - mean`` in float32 (always, for the exact pipeline and
    open_nsfw's integer mean), else ``arr`` itself. :func:`unpack_array` restores the identical
    float32 array, so scores computed from the packed form equal the direct ones bit for bit."""
    mean = np.asarray(mean_bgr, dtype=np.float32)
    restored = arr + mean
    if restored.min() < 0 or restored.max() > 255:
        return arr
    pixels = restored.astype(np.uint8)
    back = pixels.astype(np.float32)
    back -= mean
    return pixels if np.array_equal(back, arr) else arr


def unpack_array(arr: np.ndarray, mean_bgr: Sequence[float] = EXACT.mean_bgr) -> np.ndarray:
    """The float32 network input of a :func:`pack_array` result (a float array passes through)."""
    if arr.dtype != np.uint8:
        return arr
    out = arr.astype(np.float32)
    out -= np.asarray(mean_bgr, dtype=np.float32)  # the same float32 operation as to_network_input
    return out
