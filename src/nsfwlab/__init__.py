"""nsfwlab: Yahoo's open_nsfw image classifier as real software.

>>> from nsfwlab import Detector, nsfw_score
>>> nsfw_score("photo.jpg")          # doctest: +SKIP
"""

from __future__ import annotations

from .config import BackendName, DecodeLimits, Device, Label, Precision, PreprocessConfig, Thresholds
from .detector import Detector, FramesResult, ScoreResult, nsfw_score
from .errors import (
    BackendUnavailableError,
    ConfigError,
    CorruptImageError,
    EmptyImageError,
    ImageError,
    ImageTooLargeError,
    MediaTooLongError,
    ModelError,
    NsfwlabError,
    TruncatedImageError,
    UnsupportedFormatError,
    WeightsError,
)


def __getattr__(name: str) -> str:
    # ``__version__`` is read from the installed metadata on first use: importlib.metadata costs
    # ~50 ms of every command's start-up (measured; BENCHMARKS.md, "Scan").
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("nsfwlab")
        except PackageNotFoundError:  # pragma: no cover - a source tree without install
            return "0.0.0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "BackendName",
    "BackendUnavailableError",
    "ConfigError",
    "CorruptImageError",
    "DecodeLimits",
    "Detector",
    "Device",
    "EmptyImageError",
    "FramesResult",
    "ImageError",
    "ImageTooLargeError",
    "Label",
    "MediaTooLongError",
    "ModelError",
    "NsfwlabError",
    "Precision",
    "PreprocessConfig",
    "ScoreResult",
    "Thresholds",
    "TruncatedImageError",
    "UnsupportedFormatError",
    "WeightsError",
    "__version__",
    "nsfw_score",
]
