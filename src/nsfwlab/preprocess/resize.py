"""Pillow's antialiased BILINEAR resize as an exact, differentiable linear map.

Pillow (``libImaging/Resample.c``) resizes in two separable passes. For each
output index ``i`` of an axis of input length ``n`` and output length ``m`` it computes, in double
precision, ``scale = n / m``, ``filterscale = max(scale, 1)``, ``support = filterscale`` (the
triangle filter's support 1 widened by the downscale factor), ``center = (i + 0.5) * scale``, the
tap window ``[int(center - support + 0.5), int(center + support + 0.5))`` clipped to ``[0, n)``,
weights ``tri((j - center + 0.5) / filterscale)`` normalised to sum 1, and then rounds each weight to
22-bit fixed point (``int(0.5 + w * 2**22)``). A pass is ``clip8((2**21 + sum(pixel * weight)) >> 22)``
on uint8 pixels, so the first pass's output is rounded to uint8 before the second. The order: before
Pillow 13 always horizontal first; from Pillow 13 vertical first when the height shrinks by more than
twice as many pixels as the width (``in_h - out_h > 0`` and ``> 2 * (in_w - out_w)``). The linear map does
not depend on the order; the exact forward follows the installed Pillow's order.

This module rebuilds those taps (:func:`bilinear_taps`) and offers:

- :func:`resize_linear`: the linear map ``Ry @ img @ Rx.T`` with Pillow's fixed-point weights (no
  rounding): differentiable, and its gradient is exactly the map's adjoint.
- :func:`resize_exact`: forward bit for bit Pillow's output on the rounded, clamped image (integer
  arithmetic, the intermediate uint8 rounding included); backward the adjoint of the linear map
  (a straight-through estimator). This is what an attack on the full-resolution image uses.
- :func:`resize_matrix`: the dense ``(m, n)`` matrix of one axis, for inspection and tests.

The linear map and Pillow differ only by the two roundings: at most 1 level after rounding the linear
map's output (measured in ``tests/test_resize_linear.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

__all__ = [
    "PRECISION_BITS",
    "ResampleTaps",
    "bilinear_taps",
    "resize_exact",
    "resize_linear",
    "resize_matrix",
    "vertical_first",
]

#: Pillow's fixed-point precision for 8-bit images (32 - 8 - 2).
PRECISION_BITS = 22
_ONE = 1 << PRECISION_BITS
_HALF = 1 << (PRECISION_BITS - 1)


@dataclass(frozen=True)
class ResampleTaps:
    """The taps of one axis: output ``i`` is ``sum_k weight[i, k] * input[index[i, k]] / 2**22``.

    Unused taps (beyond a window's end) have weight 0 and repeat the window's first index.
    ``identity`` is true when Pillow skips this pass (same size in and out).
    """

    in_size: int
    out_size: int
    index: np.ndarray
    weight: np.ndarray
    identity: bool

    def matrix(self) -> np.ndarray:
        """The dense ``(out_size, in_size)`` float64 matrix of this pass (fixed-point weights / 2**22)."""
        mat = np.zeros((self.out_size, self.in_size), dtype=np.float64)
        if self.identity:
            np.fill_diagonal(mat, 1.0)
            return mat
        rows = np.repeat(np.arange(self.out_size), self.index.shape[1])
        np.add.at(mat, (rows, self.index.ravel()), self.weight.ravel() / _ONE)
        return mat


def _triangle(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < 1.0, 1.0 - np.abs(x), 0.0)


@lru_cache(maxsize=64)
def bilinear_taps(in_size: int, out_size: int) -> ResampleTaps:
    """Pillow's BILINEAR taps for one axis (``precompute_coeffs`` + ``normalize_coeffs_8bpc``)."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got {in_size} -> {out_size}")
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    ksize = int(np.ceil(support)) * 2 + 1
    index = np.zeros((out_size, ksize), dtype=np.int64)
    weight = np.zeros((out_size, ksize), dtype=np.int64)
    for i in range(out_size):
        center = (i + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # C's (int) truncates toward zero
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = _triangle((np.arange(xmax) + xmin - center + 0.5) * (1.0 / filterscale))
        total = w.sum()
        if total != 0.0:
            w = w / total
        # normalize_coeffs_8bpc: round half away from zero to 22-bit fixed point (weights are >= 0 here)
        weight[i, :xmax] = (0.5 + w * _ONE).astype(np.int64)
        index[i, :xmax] = np.arange(xmax) + xmin
        index[i, xmax:] = xmin
    return ResampleTaps(in_size, out_size, index, weight, identity=in_size == out_size)


def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _apply(x: torch.Tensor, taps: ResampleTaps, dim: int) -> torch.Tensor:
    """One linear pass along ``dim`` (-1: width, -2: height); weights cast to ``x``'s dtype."""
    index = torch.as_tensor(taps.index, device=x.device)
    weight = torch.as_tensor(taps.weight, device=x.device).to(x.dtype)
    if x.dtype.is_floating_point:
        weight = weight / _ONE
    out = None
    for k in range(index.shape[1]):
        picked = x.index_select(dim, index[:, k])
        w = weight[:, k] if dim == -1 else weight[:, k, None]
        term = picked * w
        out = term if out is None else out + term
    assert out is not None
    return out


def resize_linear(x: torch.Tensor, size: int | tuple[int, int] = 256) -> torch.Tensor:
    """The linear form of Pillow's BILINEAR resize: ``(..., H, W)`` float -> ``(..., h, w)``.

    ``size`` is an int (square) or ``(height, width)``. No rounding or clamping: this is the map whose
    adjoint the exact resize's backward pass uses, and it is what ``gradcheck`` checks.
    """
    h, w = _size_hw(size)
    taps_x = bilinear_taps(x.shape[-1], w)
    taps_y = bilinear_taps(x.shape[-2], h)
    out = x if taps_x.identity else _apply(x, taps_x, -1)
    return out if taps_y.identity else _apply(out, taps_y, -2)


def _pillow_major() -> int:
    import PIL

    return int(PIL.__version__.split(".")[0])


def vertical_first(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> bool:
    """Whether the installed Pillow runs the vertical pass first for this resize."""
    shrink_y, shrink_x = in_hw[0] - out_hw[0], in_hw[1] - out_hw[1]
    return _pillow_major() >= 13 and shrink_y > 0 and shrink_y > 2 * shrink_x


def _exact_pass(x: torch.Tensor, taps: ResampleTaps, dim: int) -> torch.Tensor:
    acc = _apply(x, taps, dim) + _HALF
    return torch.div(acc, _ONE, rounding_mode="floor").clamp_(0, 255)


@torch.no_grad()
def _exact_forward(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    img = x.detach().clamp(0, 255).round().to(torch.int64)
    taps_x = bilinear_taps(img.shape[-1], w)
    taps_y = bilinear_taps(img.shape[-2], h)
    passes = [(taps_x, -1), (taps_y, -2)]
    if vertical_first((img.shape[-2], img.shape[-1]), (h, w)):
        passes.reverse()
    for taps, dim in passes:
        if not taps.identity:
            img = _exact_pass(img, taps, dim)
    return img.to(x.dtype)


def resize_exact(x: torch.Tensor, size: int | tuple[int, int] = 256) -> torch.Tensor:
    """Pillow's resize of ``round(clamp(x, 0, 255))``, bit for bit, with the linear map's gradient.

    ``x``: ``(..., H, W)`` float in [0, 255] (e.g. ``(N, 3, H, W)`` RGB). The forward pass is Pillow's
    integer arithmetic (both passes, the intermediate uint8 rounding included); the backward pass is the
    adjoint of :func:`resize_linear` (straight-through over the roundings).
    """
    if not x.dtype.is_floating_point:
        raise TypeError(f"resize_exact takes a floating tensor, got {x.dtype}")
    h, w = _size_hw(size)
    exact = _exact_forward(x, h, w)
    if not x.requires_grad:
        return exact
    linear = resize_linear(x, (h, w))
    return linear + (exact - linear).detach()


def resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """The dense ``(out_size, in_size)`` matrix of one axis (Pillow's fixed-point weights / 2**22)."""
    return bilinear_taps(in_size, out_size).matrix()
