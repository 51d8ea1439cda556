"""nsfwlab: Yahoo's open_nsfw image classifier as real software.

>>> from nsfwlab import Detector, nsfw_score
>>> nsfw_score("photo.jpg")          # doctest: +SKIP
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

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

try:
    __version__ = version("nsfwlab")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

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
