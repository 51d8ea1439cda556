"""Image transformations on uint8 RGB arrays: what a user or a platform does to an image after it is made.

One spec string names each (``jpeg:50``, ``scale:0.5``, ``blur:1.5``, ``noise:4``, ``crop:0.9``, ``rotate:5``,
``flip``, ``grayscale``, and the input-transformation defences ``bits:4``, ``median:3``). The robustness
report scores an image under each; an attack that must survive one (``survive_jpeg``) or beat a defence
optimises through it with :func:`straight_through` (forward: this exact transform; backward: identity).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageFilter

from ..errors import ConfigError

__all__ = [
    "DEFAULT_DEFENCES",
    "DEFAULT_PERTURBATIONS",
    "Transform",
    "parse_transform",
    "parse_transforms",
    "straight_through",
]

DEFAULT_PERTURBATIONS = (
    "jpeg:95", "jpeg:90", "jpeg:75", "jpeg:50", "jpeg:30", "jpeg:10",
    "scale:0.5", "scale:0.25", "blur:1", "blur:2", "noise:4", "noise:8",
    "crop:0.9", "crop:0.75", "rotate:5", "flip", "grayscale",
)
#: Input-transformation defences: JPEG re-encode, bit-depth reduction, median filter.
DEFAULT_DEFENCES = ("jpeg:75", "bits:4", "median:3")


@dataclass(frozen=True)
class Transform:
    """A named uint8 HxWx3 RGB -> uint8 RGB function. ``aligned``: output pixel (y, x) sits where input
    pixel (y, x) was (same size, no geometric change), so a straight-through gradient is meaningful."""

    spec: str
    fn: Callable[[np.ndarray], np.ndarray] = field(compare=False, repr=False)
    aligned: bool = field(default=True, compare=False)

    @property
    def kind(self) -> str:
        return self.spec.split(":", 1)[0]

    @property
    def value(self) -> float | None:
        return float(self.spec.split(":", 1)[1]) if ":" in self.spec else None

    def __call__(self, arr: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.fn(arr), dtype=np.uint8)


def _jpeg(q: int) -> Callable[[np.ndarray], np.ndarray]:
    def fn(arr: np.ndarray) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=q)
        buf.seek(0)
        with Image.open(buf, formats=["JPEG"]) as im:
            return np.asarray(im.convert("RGB"))
    return fn


def _scale(f: float) -> Callable[[np.ndarray], np.ndarray]:
    def fn(arr: np.ndarray) -> np.ndarray:
        h, w = arr.shape[:2]
        size = (max(1, round(w * f)), max(1, round(h * f)))
        return np.asarray(Image.fromarray(arr).resize(size, Image.Resampling.BILINEAR))
    return fn


def _blur(r: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda arr: np.asarray(Image.fromarray(arr).filter(ImageFilter.GaussianBlur(r)))


def _noise(sigma: float, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    def fn(arr: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(seed)
        noisy = arr.astype(np.float32) + rng.normal(0.0, sigma, arr.shape).astype(np.float32)
        return np.clip(np.round(noisy), 0, 255).astype(np.uint8)
    return fn


def _crop(f: float) -> Callable[[np.ndarray], np.ndarray]:
    def fn(arr: np.ndarray) -> np.ndarray:
        h, w = arr.shape[:2]
        ch, cw = max(1, round(h * f)), max(1, round(w * f))
        top, left = (h - ch) // 2, (w - cw) // 2
        return arr[top : top + ch, left : left + cw]
    return fn


def _rotate(deg: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda arr: np.asarray(Image.fromarray(arr).rotate(deg, resample=Image.Resampling.BILINEAR))


def _bits(b: int) -> Callable[[np.ndarray], np.ndarray]:
    shift = 8 - b

    def fn(arr: np.ndarray) -> np.ndarray:  # keep the top b bits, centred in their bin
        kept = (arr >> shift) << shift
        return (kept + ((1 << shift) >> 1)).astype(np.uint8) if shift else arr
    return fn


def _median(k: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda arr: np.asarray(Image.fromarray(arr).filter(ImageFilter.MedianFilter(k)))


def _number(spec: str, kind: str, raw: str, lo: float, hi: float, integer: bool = False) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"perturbation {spec!r}: {raw!r} is not a number") from None
    if not lo <= value <= hi or (integer and value != int(value)):
        what = "an integer" if integer else "a number"
        raise ConfigError(f"perturbation {spec!r}: {kind} takes {what} in [{lo:g}, {hi:g}]")
    return value


def parse_transform(spec: str, *, seed: int = 0) -> Transform:
    """``"jpeg:50"`` -> its :class:`Transform`. Raises ``ConfigError`` naming the valid forms."""
    spec = spec.strip().lower()
    kind, _, raw = spec.partition(":")
    if kind in ("flip", "grayscale") and not raw:
        if kind == "flip":
            return Transform(spec, lambda a: a[:, ::-1], aligned=False)
        return Transform(spec, lambda a: np.asarray(Image.fromarray(a).convert("L").convert("RGB")))
    table: dict[str, tuple[float, float, bool]] = {
        "jpeg": (1, 100, True), "scale": (0.01, 4, False), "blur": (0.1, 50, False), "noise": (0.1, 128, False),
        "crop": (0.05, 1, False), "rotate": (-360, 360, False), "bits": (1, 8, True), "median": (3, 15, True),
    }
    if kind not in table or not raw:
        raise ConfigError(f"unknown perturbation {spec!r}; use jpeg:Q, scale:F, blur:R, noise:S, crop:F, rotate:D, "
                          "bits:B, median:K, flip or grayscale")
    lo, hi, integer = table[kind]
    v = _number(spec, kind, raw, lo, hi, integer)
    if kind == "median" and int(v) % 2 == 0:
        raise ConfigError(f"perturbation {spec!r}: the median filter size must be odd")
    spec = f"{kind}:{int(v) if integer else v:g}"
    makers: dict[str, Callable[[], Transform]] = {
        "jpeg": lambda: Transform(spec, _jpeg(int(v))),
        "scale": lambda: Transform(spec, _scale(v), aligned=False),
        "blur": lambda: Transform(spec, _blur(v)),
        "noise": lambda: Transform(spec, _noise(v, seed)),
        "crop": lambda: Transform(spec, _crop(v), aligned=False),
        "rotate": lambda: Transform(spec, _rotate(v), aligned=False),
        "bits": lambda: Transform(spec, _bits(int(v))),
        "median": lambda: Transform(spec, _median(int(v))),
    }
    return makers[kind]()


def parse_transforms(specs: str | Sequence[str], *, seed: int = 0) -> list[Transform]:
    """A comma-separated string or a list of specs -> transforms (duplicates dropped, order kept)."""
    items = specs.split(",") if isinstance(specs, str) else list(specs)
    out: dict[str, Transform] = {}
    for item in items:
        if item.strip():
            t = parse_transform(item, seed=seed)
            out.setdefault(t.spec, t)
    if not out:
        raise ConfigError("no perturbations given")
    return list(out.values())


def straight_through(transform: Transform, x: torch.Tensor) -> torch.Tensor:
    """``transform`` on each image of ``x`` ((N, 3, H, W) float RGB in [0, 255], rounded and clamped first);
    the gradient passes through as the identity (BPDA). Only for aligned transforms."""
    if not transform.aligned:
        raise ConfigError(f"{transform.spec} moves pixels; an attack can only optimise through aligned transforms")
    arr = x.detach().clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = np.stack([transform(a) for a in arr])
    exact = torch.from_numpy(out).permute(0, 3, 1, 2).to(device=x.device, dtype=x.dtype)
    return x + (exact - x).detach()
