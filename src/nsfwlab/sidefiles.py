"""Side files: the small files a command reads beside its images (calibrations, API key lists, bank
lists, model sidecars, certificates), read safely.

Every side file is opened without blocking, must be a regular file (a FIFO would hang the read,
``/dev/zero`` would never end) and must fit under a size cap; JSON is parsed without NaN or
infinities and with its nesting bounded. A file that breaks any of these rules is refused with one
line naming ``what`` the file is, as an ``error`` of the caller's class (a :class:`ConfigError` by
default; a model's sidecar passes :class:`ModelError`).
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
from typing import IO, Any

from .errors import ConfigError, NsfwlabError

__all__ = ["SIDE_FILE_MAX_BYTES", "finite_number", "open_side_file", "parse_json", "read_json_file", "read_side_file",
           "read_text_file"]

#: Default cap on a side file's size: calibrations, key lists and sidecars are a few KB.
SIDE_FILE_MAX_BYTES = 1 << 20


def read_side_file(path: str | os.PathLike, what: str, *, max_bytes: int = SIDE_FILE_MAX_BYTES,
                   error: type[NsfwlabError] = ConfigError) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes`` of them, or a one-line ``error``."""
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise error(f"cannot read {what} {name}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} {name} is not a regular file")
        if info.st_size > max_bytes:
            raise error(f"{what} {name} is {info.st_size:,} bytes; the limit is {max_bytes:,}")
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:  # the file may grow after fstat: read on up to the cap, no further
            chunk = os.read(fd, min(1 << 16, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_bytes:
            raise error(f"{what} {name} is over the limit of {max_bytes:,} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise error(f"cannot read {what} {name}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


class _Capped(io.RawIOBase):
    """A raw reader of an open file descriptor that fails once more than ``max_bytes`` were read
    (a regular file may grow after it was checked)."""

    def __init__(self, fd: int, name: str, what: str, max_bytes: int, error: type[NsfwlabError]) -> None:
        self._file = io.FileIO(fd, "rb", closefd=True)
        self._name, self._what, self._max, self._error, self._read = name, what, max_bytes, error, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._file.readinto(buffer) or 0
        self._read += n
        if self._read > self._max:
            raise self._error(f"{self._what} {self._name} is over the limit of {self._max:,} bytes")
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


def open_side_file(path: str | os.PathLike, what: str, *, max_bytes: int,
                   error: type[NsfwlabError] = ConfigError) -> IO[bytes]:
    """A binary stream of the regular file ``path`` (checked as :func:`read_side_file` checks it), for a
    side file too large to hold in memory at once (a hash list); reading past ``max_bytes`` is an ``error``."""
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise error(f"cannot read {what} {name}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} {name} is not a regular file")
        if info.st_size > max_bytes:
            raise error(f"{what} {name} is {info.st_size:,} bytes; the limit is {max_bytes:,}")
    except BaseException:
        os.close(fd)
        raise
    return io.BufferedReader(_Capped(fd, name, what, max_bytes, error))


def read_text_file(path: str | os.PathLike, what: str, hint: str = "", *, max_bytes: int = SIDE_FILE_MAX_BYTES,
                   error: type[NsfwlabError] = ConfigError) -> str:
    """The UTF-8 text of a side file; for a binary file the error adds ``hint`` about the content expected."""
    data = read_side_file(path, what, max_bytes=max_bytes, error=error)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise error(f"{what} {os.fspath(path)} is not UTF-8 text{hint}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(text: str, what: str, *, error: type[NsfwlabError] = ConfigError) -> Any:
    """``json.loads`` with NaN/Infinity refused and deep nesting or huge integers as one-line errors."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except RecursionError:
        raise error(f"{what} is nested too deeply") from None
    except ValueError as exc:  # NaN/Infinity, or an integer past Python's digit limit
        raise error(f"{what} is not valid JSON: {exc}") from None


def read_json_file(path: str | os.PathLike, what: str, *, max_bytes: int = SIDE_FILE_MAX_BYTES,
                   error: type[NsfwlabError] = ConfigError) -> Any:
    """The parsed JSON of a side file (see :func:`read_side_file` and :func:`parse_json`)."""
    text = read_text_file(path, what, " (expected JSON)", max_bytes=max_bytes, error=error)
    return parse_json(text, f"{what} {os.fspath(path)}", error=error)


def finite_number(value: Any, what: str, *, lo: float = -math.inf, hi: float = math.inf, integer: bool = False,
                  error: type[NsfwlabError] = ConfigError) -> float:
    """``value`` as a float if it is a real JSON number (not a bool) within ``[lo, hi]``, else a one-line error."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise error(f"{what} must be a number, got {type(value).__name__}")
    if integer and not isinstance(value, int):
        raise error(f"{what} must be an integer, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        raise error(f"{what} is out of range") from None
    if not math.isfinite(number) or not lo <= number <= hi:
        raise error(f"{what} must lie in [{lo:g}, {hi:g}], got {value!r:.40}")
    return number
