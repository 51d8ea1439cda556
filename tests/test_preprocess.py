"""Hand-checked unit tests of each preprocessing step, and a golden check of the whole pipeline
against an independent re-implementation of Yahoo's classify_nsfw.py."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from nsfwlab.config import PreprocessConfig
from nsfwlab.errors import ConfigError
from nsfwlab.preprocess import (
    EXACT,
    center_crop,
    jpeg_roundtrip,
    preprocess,
    preprocess_rgb,
    resize_image,
    stack_batch,
    to_network_input,
)


def test_center_crop_takes_rows_and_cols_16_to_240() -> None:
    arr = np.arange(256 * 256).reshape(256, 256, 1)
    out = center_crop(arr, 224)
    assert out.shape == (224, 224, 1)
    assert out[0, 0, 0] == 16 * 256 + 16
    assert out[-1, -1, 0] == 239 * 256 + 239


def test_to_network_input_swaps_to_bgr_and_subtracts_mean() -> None:
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20, 30
    out = to_network_input(rgb)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out[0, 0], [30 - 104, 20 - 117, 10 - 123])


def test_resize_is_256_square_and_keeps_flat_colour() -> None:
    img = Image.new("RGB", (640, 480), (200, 100, 50))
    out = resize_image(img, 256)
    assert out.size == (256, 256)
    assert np.all(np.asarray(out) == (200, 100, 50))


def test_resize_is_pillow_bilinear() -> None:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))
    expected = np.asarray(img.resize((256, 256), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(np.asarray(resize_image(img, 256)), expected)
    nearest = np.asarray(img.resize((256, 256), Image.Resampling.NEAREST))
    assert not np.array_equal(np.asarray(resize_image(img, 256)), nearest)


def test_jpeg_roundtrip_is_lossy_quality_75() -> None:
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8))
    out = jpeg_roundtrip(img)
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    assert not np.array_equal(out, np.asarray(img))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=75)
    np.testing.assert_array_equal(out, np.asarray(Image.open(io.BytesIO(buf.getvalue()))))
    buf95 = io.BytesIO()
    img.save(buf95, format="JPEG", quality=95)
    assert not np.array_equal(out, np.asarray(Image.open(io.BytesIO(buf95.getvalue()))))


def _yahoo_reference(img: Image.Image) -> np.ndarray:
    """classify_nsfw.py, re-implemented independently: resize_image() then caffe.io.load_image
    (float RGB in [0, 1]), centre crop, transpose-free HWC, raw_scale 255, channel swap, mean."""
    import skimage.io

    if img.mode != "RGB":
        img = img.convert("RGB")
    imr = img.resize((256, 256), resample=Image.Resampling.BILINEAR)
    fh = io.BytesIO()
    imr.save(fh, format="JPEG")
    fh.seek(0)
    image = skimage.io.imread(fh).astype(np.float32) / 255.0  # caffe.io.load_image
    h_off = w_off = (256 - 224) // 2
    crop = image[h_off : h_off + 224, w_off : w_off + 224, :]
    data = crop * 255.0
    data = data[:, :, [2, 1, 0]]
    data = data - np.array([104, 117, 123], dtype=np.float32)
    return data.astype(np.float32)


def test_exact_pipeline_matches_yahoo_reference(photos: dict[str, np.ndarray]) -> None:
    for name, arr in photos.items():
        img = Image.fromarray(arr)
        ours = preprocess_rgb(img.convert("RGB"))
        ref = _yahoo_reference(img)
        assert ours.shape == (224, 224, 3)
        np.testing.assert_allclose(ours, ref, atol=1e-4, err_msg=name)


def test_crop_happens_after_the_jpeg_round_trip(photos: dict[str, np.ndarray]) -> None:
    # Cropping before the round trip (as one PyPI wrapper does) changes the JPEG blocks.
    img = Image.fromarray(photos["astronaut"])
    resized = resize_image(img, 256)
    wrong = to_network_input(jpeg_roundtrip(resized.crop((16, 16, 240, 240))))
    assert not np.array_equal(preprocess_rgb(img), wrong)


def test_preprocess_does_not_mutate_inputs(photos: dict[str, np.ndarray]) -> None:
    arr = photos["coffee"].copy()
    img = Image.fromarray(arr)
    before = np.asarray(img).copy()
    preprocess(arr)
    preprocess(img)
    np.testing.assert_array_equal(arr, photos["coffee"])
    np.testing.assert_array_equal(np.asarray(img), before)


def test_no_jpeg_variant_differs_and_is_named() -> None:
    cfg = PreprocessConfig(jpeg_roundtrip=False)
    assert not cfg.is_exact and cfg.version.startswith("custom-") and "nojpeg" in cfg.version
    assert EXACT.version == "yahoo-exact-v1"
    assert PreprocessConfig(draft=True).version != EXACT.version


def test_config_validation() -> None:
    with pytest.raises(ConfigError):
        PreprocessConfig(resize=200, crop=224)
    with pytest.raises(ConfigError):
        PreprocessConfig(jpeg_quality=0)


def test_stack_batch_is_nhwc_float32() -> None:
    a = np.zeros((224, 224, 3), np.float32)
    batch = stack_batch([a, a + 1])
    assert batch.shape == (2, 224, 224, 3) and batch.dtype == np.float32
    with pytest.raises(ValueError, match="empty batch"):
        stack_batch([])
