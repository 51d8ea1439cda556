"""Content hashes: the one streamed sha256 of a file (``hashlib.file_digest``, chunked, constant memory)."""

from __future__ import annotations

import hashlib
import os

__all__ = ["file_sha256"]


def file_sha256(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes, read in chunks (never the whole file at once)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
