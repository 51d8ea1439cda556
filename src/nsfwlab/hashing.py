"""Content hashes: the one streamed sha256 of a file (``hashlib.file_digest``, chunked, constant memory)."""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

__all__ = ["file_sha256", "model_file_sha256"]


def file_sha256(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes, read in chunks (never the whole file at once)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@lru_cache(maxsize=16)
def _stat_keyed_sha256(path: str, size: int, mtime_ns: int, inode: int) -> str:
    return file_sha256(path)


def model_file_sha256(path: str | os.PathLike) -> str:
    """:func:`file_sha256` of a model file, computed once per process for the same file (keyed by
    its resolved path, size, mtime and inode): verifying the weights, naming a checkpoint's
    version and naming the cached int8 graph after it read the file once, not two or three times."""
    p = Path(path).resolve()
    st = p.stat()
    return _stat_keyed_sha256(str(p), st.st_size, st.st_mtime_ns, st.st_ino)
