"""Configuration: option enums shared by the library, CLI and HTTP schema; frozen dataclasses;
and the one place where environment variables are read."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import TypeVar

from .errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "YAHOO_MEAN_BGR",
    "BackendName",
    "DecodeLimits",
    "Device",
    "Label",
    "Precision",
    "PreprocessConfig",
    "Settings",
    "Thresholds",
]

ENV_PREFIX = "NSFWLAB_"

E = TypeVar("E", bound=Enum)

#: open_nsfw's per-channel mean, in BGR order, subtracted from the 0..255 pixels (Yahoo's
#: ``classify_nsfw.py``). The one definition: everything else takes it from here or from a
#: :class:`PreprocessConfig`.
YAHOO_MEAN_BGR: tuple[float, float, float] = (104.0, 117.0, 123.0)


def option(cls: type[E], value: E | str, what: str) -> E:
    """``cls(value)``, or a :class:`ConfigError` that names ``what`` and the choices (an Enum's
    own ``ValueError`` would be an untyped error)."""
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(str(m.value) for m in cls)  # type: ignore[attr-defined]
        raise ConfigError(f"unknown {what} {value!r}; choose one of: {choices}") from None


class Label(StrEnum):
    """The three score bands of the original authors: safe, human review, NSFW."""

    SAFE = "safe"
    REVIEW = "review"
    NSFW = "nsfw"


class Device(StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class BackendName(StrEnum):
    AUTO = "auto"
    ONNXRUNTIME = "onnxruntime"
    TORCH = "torch"


class Precision(StrEnum):
    """Numeric precision of the torch backend. ``auto`` is fp16 on CUDA and fp32 on CPU."""

    AUTO = "auto"
    FP32 = "fp32"
    FP16 = "fp16"


@dataclass(frozen=True)
class Thresholds:
    """Score bands: ``score < safe_below`` is safe, ``score > nsfw_above`` is NSFW, else review.

    The defaults (0.2 / 0.8) are the original authors' advice; pick your own from an evaluation
    on your data (``nsfwlab evaluate``).
    """

    safe_below: float = 0.2
    nsfw_above: float = 0.8

    def __post_init__(self) -> None:
        for name in ("safe_below", "nsfw_above"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must lie in [0, 1], got {value}")
        if self.safe_below > self.nsfw_above:
            raise ConfigError(
                f"safe_below ({self.safe_below}) must not exceed nsfw_above ({self.nsfw_above})"
            )

    def label(self, score: float) -> Label:
        if score < self.safe_below:
            return Label.SAFE
        if score > self.nsfw_above:
            return Label.NSFW
        return Label.REVIEW


@dataclass(frozen=True)
class DecodeLimits:
    """Caps checked before any pixel is decoded.

    ``max_bytes`` bounds the encoded input; ``max_pixels`` bounds width x height read from the
    header, so decompression bombs are refused without decoding them.
    """

    max_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 100_000_000

    def __post_init__(self) -> None:
        if self.max_bytes <= 0:
            raise ConfigError(f"max_bytes must be positive, got {self.max_bytes}")
        if self.max_pixels <= 0:
            raise ConfigError(f"max_pixels must be positive, got {self.max_pixels}")

    @classmethod
    def from_env(cls, max_bytes: int | None = None, max_pixels: int | None = None, *,
                 env: Mapping[str, str] | None = None) -> DecodeLimits:
        """The given caps; where one is ``None``, ``NSFWLAB_MAX_BYTES`` / ``NSFWLAB_MAX_PIXELS``,
        else the defaults. The CLI and the scan and serve configurations take their caps here."""
        env = os.environ if env is None else env
        return cls(
            max_bytes=_env_int(env, "MAX_BYTES", cls.max_bytes) if max_bytes is None else max_bytes,
            max_pixels=_env_int(env, "MAX_PIXELS", cls.max_pixels) if max_pixels is None else max_pixels,
        )


#: A DCT-scaled decode keeps both sides >= this many times the resize size (see PreprocessConfig).
DRAFT_FACTOR = 2


@dataclass(frozen=True)
class PreprocessConfig:
    """How an RGB image becomes the network's 224x224 input.

    The defaults are Yahoo's exact pipeline: Pillow bilinear resize to 256x256, a JPEG round trip
    at ``jpeg_quality`` (Pillow's default 75), centre crop 224, RGB->BGR, mean subtraction.
    ``draft`` lets libjpeg decode JPEGs at a reduced DCT scale before the resize (faster, with a
    measured drift; see docs/scan.md) and is off in the exact pipeline: the smallest of libjpeg's 1/2,
    1/4, 1/8 scales that keeps both sides >= :attr:`draft_size`, twice ``resize``, so that the
    bilinear resize still reduces by at least 2. Scaling right down to ``resize`` (as Pillow's
    ``draft`` does when asked for the output size) replaces most of the antialiasing filter with
    libjpeg's DCT truncation: up to 0.16 of drift on painting-like images, against 0.01 at twice
    the size (BENCHMARKS.md, "Scan").
    """

    resize: int = 256
    crop: int = 224
    jpeg_roundtrip: bool = True
    jpeg_quality: int = 75
    draft: bool = False
    mean_bgr: tuple[float, float, float] = YAHOO_MEAN_BGR

    def __post_init__(self) -> None:
        if self.crop > self.resize:
            raise ConfigError(f"crop ({self.crop}) must not exceed resize ({self.resize})")
        if not 1 <= self.jpeg_quality <= 95:
            raise ConfigError(f"jpeg_quality must lie in [1, 95], got {self.jpeg_quality}")

    @property
    def is_exact(self) -> bool:
        return self == PreprocessConfig()

    @property
    def draft_size(self) -> int | None:
        """The least side length a DCT-scaled JPEG decode keeps (``None``: a full decode)."""
        return DRAFT_FACTOR * self.resize if self.draft else None

    @property
    def version(self) -> str:
        """A short stable identifier of this pipeline, stored next to every result."""
        if self.is_exact:
            return "yahoo-exact-v1"
        parts = [f"r{self.resize}", f"c{self.crop}"]
        parts.append(f"jpeg{self.jpeg_quality}" if self.jpeg_roundtrip else "nojpeg")
        if self.draft:
            parts.append(f"draft{DRAFT_FACTOR}x")
        if self.mean_bgr != YAHOO_MEAN_BGR:
            parts.append("mean" + "-".join(f"{m:g}" for m in self.mean_bgr))
        return "custom-" + "_".join(parts)


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(ENV_PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {ENV_PREFIX}{name} must be an integer, got {raw!r}") from None


@dataclass(frozen=True)
class Settings:
    """Process-wide defaults that may come from the environment.

    Read with :meth:`from_env`; nothing is read at import time.

    - ``NSFWLAB_MAX_BYTES``, ``NSFWLAB_MAX_PIXELS``: decode caps.
    - ``NSFWLAB_MODEL_PATH``: an ONNX file to use instead of the bundled one (sha256 is still checked).
    - ``NSFWLAB_THREADS``: threads for the CPU backends (default: all cores).
    - ``NSFWLAB_HOME``: the model zoo's weight cache (default ``$XDG_CACHE_HOME/nsfwlab``, else
      ``~/.cache/nsfwlab``).
    """

    limits: DecodeLimits = field(default_factory=DecodeLimits)
    model_path: str | None = None
    threads: int | None = None
    home: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        limits = DecodeLimits.from_env(env=env)
        threads_raw = env.get(ENV_PREFIX + "THREADS")
        threads = _env_int(env, "THREADS", 0) if threads_raw else None
        home = env.get(ENV_PREFIX + "HOME") or os.path.join(
            env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "nsfwlab")
        return cls(limits=limits, model_path=env.get(ENV_PREFIX + "MODEL_PATH") or None, threads=threads, home=home)
