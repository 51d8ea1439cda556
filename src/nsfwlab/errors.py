"""The exception hierarchy.

Every error nsfwlab raises on purpose derives from :class:`NsfwlabError`. Each class carries a
stable machine-readable ``code`` (used in JSON output, the results store and the HTTP API) and a
message that names the problem and, where possible, how to fix the call. The edges map these
classes to exit codes (``nsfwlab.cli``) and HTTP statuses (``nsfwlab.serve``) in one place each.
"""

from __future__ import annotations

import re

__all__ = [
    "BackendUnavailableError",
    "ConfigError",
    "CorruptImageError",
    "EmptyImageError",
    "ImageError",
    "ImageTooLargeError",
    "MediaTooLongError",
    "ModelError",
    "NsfwlabError",
    "TruncatedImageError",
    "UnsupportedFormatError",
    "WeightsError",
]


class NsfwlabError(Exception):
    """Base class of every error raised by nsfwlab on purpose."""

    code = "error"

    def __init__(self, message: str, *, source: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.source = source
        #: The library parameter the error is about (``"steps"``, ``"trust_code"``), named in the message
        #: as written in Python. The CLI shows its own flag in its place (:meth:`render`).
        self.param = param

    def __str__(self) -> str:
        return self.render()

    def render(self, flags: dict[str, str] | None = None) -> str:
        """The one-line message; with ``flags``, the parameter's name reads as the flag the user typed
        (``{"steps": "--steps"}``) so that library errors never hard-code command-line syntax."""
        message = self.message
        if self.param and flags and self.param in flags:
            message = re.sub(rf"(?<![\w-]){re.escape(self.param)}(?![\w-])", flags[self.param], message, count=1)
        return f"{self.source}: {message}" if self.source else message

    def with_source(self, source: str) -> NsfwlabError:
        """Return this error tagged with the input it concerns (a path or a name)."""
        self.source = source
        return self


class ImageError(NsfwlabError, ValueError):
    """An input could not be turned into an image the model may see."""

    code = "image_error"


class EmptyImageError(ImageError):
    """The input holds no bytes at all."""

    code = "empty"


class UnsupportedFormatError(ImageError):
    """The bytes are not one of the allowed image formats (checked by content, not by name)."""

    code = "unsupported_format"


class CorruptImageError(ImageError):
    """The file claims to be an allowed format but its data cannot be decoded."""

    code = "corrupt"


class TruncatedImageError(CorruptImageError):
    """The file ends before the image data does."""

    code = "truncated"


class ImageTooLargeError(ImageError):
    """The input exceeds a byte or pixel cap (decompression bombs are refused from the header)."""

    code = "too_large"


class MediaTooLongError(ImageTooLargeError):
    """A video or animation exceeds a duration, frame-count or decoding-time cap."""

    code = "too_long"


class ModelError(NsfwlabError, RuntimeError):
    """The model could not be loaded or run."""

    code = "model_error"


class WeightsError(ModelError):
    """The weight file is missing, or its sha256 is not the one expected."""

    code = "weights_error"


class BackendUnavailableError(ModelError):
    """The requested backend or device is not available on this machine."""

    code = "backend_unavailable"


class ConfigError(NsfwlabError, ValueError):
    """A configuration value or an argument is invalid."""

    code = "config_error"
