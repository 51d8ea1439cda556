"""The exact differentiable form of Pillow's BILINEAR resize (nsfwlab.preprocess.resize)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nsfwlab.preprocess.resize import bilinear_taps, resize_exact, resize_linear, resize_matrix


def _pillow(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.asarray(Image.fromarray(arr).resize((w, h), Image.Resampling.BILINEAR))


def _nchw(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr).permute(2, 0, 1)[None].double()


@pytest.mark.parametrize("shape", [(37, 91), (256, 256), (300, 451), (100, 700), (17, 5), (513, 257)])
@pytest.mark.parametrize("out", [(256, 256), (8, 13), (64, 40)])
def test_exact_resize_equals_pillow_bit_for_bit(shape: tuple[int, int], out: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape) + sum(out))
    arr = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    got = resize_exact(_nchw(arr), out)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got.astype(np.uint8), _pillow(arr, *out))
    assert np.all(got == np.round(got))


def test_exact_resize_equals_pillow_on_photos(photos: dict[str, np.ndarray]) -> None:
    for name in ("astronaut", "coffee", "chelsea"):
        arr = photos[name]
        got = resize_exact(_nchw(arr))[0].permute(1, 2, 0).numpy().astype(np.uint8)
        np.testing.assert_array_equal(got, _pillow(arr, 256, 256), err_msg=name)


def test_exact_resize_rounds_and_clamps_float_input() -> None:
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.uniform(-20, 280, (1, 3, 40, 50)))
    q = x.clamp(0, 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(resize_exact(x, 16)[0].permute(1, 2, 0).numpy(), _pillow(q, 16, 16))


def test_linear_map_is_within_one_level_of_pillow(photos: dict[str, np.ndarray]) -> None:
    """The only gap is Pillow's two roundings: the rounded linear map is off by at most 1 level."""
    arr = photos["astronaut"]
    lin = resize_linear(_nchw(arr))[0].permute(1, 2, 0).numpy()
    diff = np.abs(np.round(lin) - _pillow(arr, 256, 256))
    assert diff.max() <= 1.0
    assert (diff == 0).mean() > 0.8


def test_linear_map_is_separable_matrix_product() -> None:
    rng = np.random.default_rng(2)
    img = rng.uniform(0, 255, (23, 31))
    ry, rx = resize_matrix(23, 9), resize_matrix(31, 12)
    got = resize_linear(torch.from_numpy(img), (9, 12)).numpy()
    np.testing.assert_allclose(got, ry @ img @ rx.T, rtol=0, atol=1e-9)
    # Pillow's fixed-point weights: each row sums to 1 within the rounding of its taps
    assert np.all(np.abs(rx.sum(axis=1) - 1) <= rx.shape[1] * 2.0**-22)


def test_taps_follow_pillow_window() -> None:
    taps = bilinear_taps(512, 256)  # scale 2: support 2, windows of 4 source pixels
    assert taps.index[0, :3].tolist() == [0, 1, 2]
    assert taps.weight.sum(axis=1).min() > 0
    assert bilinear_taps(256, 256).identity


def test_gradcheck_linear_resize() -> None:
    x = torch.rand(1, 2, 7, 11, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: resize_linear(t, (4, 5)), (x,))
    y = torch.rand(1, 1, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: resize_linear(t, (8, 9)), (y,))


def test_gradient_is_the_adjoint() -> None:
    """<R x, g> == <x, R^T g> with R = Ry (x) Rx; resize_exact's backward is the same adjoint."""
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.uniform(0, 255, (1, 1, 30, 45))).requires_grad_(True)
    g = torch.from_numpy(rng.normal(size=(1, 1, 10, 16)))
    ry, rx = resize_matrix(30, 10), resize_matrix(45, 16)
    adjoint = ry.T @ g[0, 0].numpy() @ rx
    (grad_lin,) = torch.autograd.grad(resize_linear(x, (10, 16)), x, g)
    (grad_exact,) = torch.autograd.grad(resize_exact(x, (10, 16)), x, g)
    np.testing.assert_allclose(grad_lin[0, 0].numpy(), adjoint, atol=1e-9)
    np.testing.assert_allclose(grad_exact[0, 0].numpy(), adjoint, atol=1e-9)


def test_rejects_integer_tensor() -> None:
    with pytest.raises(TypeError):
        resize_exact(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))


def test_exact_resize_equals_pillow_on_random_sizes() -> None:
    """Both pass orders (Pillow >= 13 runs the vertical pass first when the height shrinks most)."""
    rng = np.random.default_rng(5)
    for _ in range(60):
        ih, iw, oh, ow = (int(v) for v in rng.integers(1, 120, 4))
        arr = rng.integers(0, 256, (ih, iw, 3), dtype=np.uint8)
        got = resize_exact(_nchw(arr).float(), (oh, ow))[0].permute(1, 2, 0).numpy().astype(np.uint8)
        np.testing.assert_array_equal(got, _pillow(arr, oh, ow), err_msg=f"{ih}x{iw} -> {oh}x{ow}")
