"""The torch twin of the exact pipeline (nsfwlab.preprocess.differentiable), the uint8 transport
form (pack_array / unpack_array) and the streamed file hash."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nsfwlab.config import PreprocessConfig
from nsfwlab.hashing import file_sha256
from nsfwlab.preprocess import (
    finish_resized,
    jpeg_roundtrip,
    pack_array,
    preprocess_rgb,
    resize_image,
    unpack_array,
)
from nsfwlab.preprocess.differentiable import DifferentiablePreprocess, resized_tensor, straight_through_jpeg


def _rgb(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(arr).convert("RGB")


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return t[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("config", [PreprocessConfig(), PreprocessConfig(jpeg_roundtrip=False),
                                    PreprocessConfig(jpeg_quality=40, mean_bgr=(100.5, 110.25, 120.0))],
                         ids=["exact", "no-jpeg", "q40-fractional-mean"])
def test_differentiable_preprocess_equals_preprocess_rgb_bit_for_bit(photos: dict[str, np.ndarray],
                                                                     config: PreprocessConfig) -> None:
    module = DifferentiablePreprocess(config)
    for name, arr in photos.items():
        img = _rgb(arr)
        expected = preprocess_rgb(img, config)
        got = module(resized_tensor(img, config))
        assert got.dtype == torch.float32 and got.shape == (1, 3, config.crop, config.crop)
        assert np.array_equal(_nhwc(got), expected), name
        assert np.array_equal(finish_resized(resize_image(img, config.resize), config), expected), name


def test_straight_through_jpeg_forward_is_pillows_round_trip() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 48, 40, 3), dtype=np.uint8)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    out = straight_through_jpeg(x, 75)
    for i, img in enumerate(images):
        assert np.array_equal(_nhwc(out[i : i + 1]), jpeg_roundtrip(Image.fromarray(img), 75))
    # non-integral and out-of-range values are rounded and clamped to the uint8 image first
    noisy = x + torch.from_numpy(rng.uniform(-0.49, 0.49, x.shape).astype(np.float32))
    noisy[0, 0, 0, 0], noisy[0, 1, 0, 0] = -30.0, 300.0
    clean = x.clone()
    clean[0, 0, 0, 0], clean[0, 1, 0, 0] = 0.0, 255.0
    assert torch.equal(straight_through_jpeg(noisy, 75), straight_through_jpeg(clean, 75))


def test_straight_through_jpeg_gradient_is_the_identity() -> None:
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255
    x.requires_grad_(True)
    weights = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    (straight_through_jpeg(x, 60) * weights).sum().backward()
    assert x.grad is not None and torch.equal(x.grad, weights)
    # through the whole module: d(network input)/d(resized pixels) is the crop with channels flipped
    y = torch.rand(1, 3, 256, 256, requires_grad=True)
    g = torch.randn(1, 3, 224, 224)
    (DifferentiablePreprocess()(y * 255) * g).sum().backward()
    assert y.grad is not None
    expected = torch.zeros(1, 3, 256, 256)
    expected[:, :, 16:240, 16:240] = g.flip(1) * 255
    torch.testing.assert_close(y.grad, expected)


def test_pack_and_unpack_are_bit_exact(photos: dict[str, np.ndarray]) -> None:
    for name, arr in photos.items():
        x = preprocess_rgb(_rgb(arr))
        packed = pack_array(x)
        assert packed.dtype == np.uint8 and packed.shape == x.shape, name
        back = unpack_array(packed)
        assert back.dtype == np.float32 and np.array_equal(back, x), name
        assert back.tobytes() == x.tobytes()  # bit for bit, signed zeros included


@pytest.mark.parametrize("mean", [(104.0, 117.0, 123.0), (104.3, 116.7, 123.1), (0.5, 0.25, 0.125)])
def test_pack_falls_back_to_float_when_not_lossless(mean: tuple[float, float, float]) -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    exact = pixels.astype(np.float32) - np.asarray(mean, dtype=np.float32)
    # whatever form the exact array takes, it comes back identical
    assert unpack_array(pack_array(exact, mean), mean).tobytes() == exact.tobytes()
    for lossy in (exact + np.float32(0.3),  # not whole pixels
                  exact - np.float32(300.0),  # below pixel 0
                  exact + np.float32(300.0)):  # above pixel 255
        packed = pack_array(lossy, mean)
        assert packed is lossy and packed.dtype == np.float32
        assert unpack_array(packed, mean) is lossy  # a float array passes through


def test_file_sha256_equals_hashlib_on_a_multi_megabyte_file(tmp_path: Path) -> None:
    data = np.random.default_rng(2).integers(0, 256, 5 * (1 << 20) + 12345, dtype=np.uint8).tobytes()
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert file_sha256(str(path)) == hashlib.sha256(data).hexdigest()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert file_sha256(empty) == hashlib.sha256(b"").hexdigest()
