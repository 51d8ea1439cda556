"""Files and text a command writes for a user: safe paths, atomic writes, terminal- and spreadsheet-safe cells.

Output files (:func:`check_output_path`, :func:`atomic_output`). A path the user names for an output
must be a regular file or a new name in an existing folder: a device (``/dev/full``, ``/dev/null``),
a FIFO or a folder is refused, because writing beside it and renaming would replace the device node
(as root) and SQLite would leave ``/dev/null-journal`` behind. The file is written to a temporary name
in the same folder and renamed over the destination once complete, so a reader never sees half a file
and a failed write (a full disk) leaves the old file as it was and no temporary behind.

Text (:func:`printable`, :func:`csv_cell`, :func:`csv_writer`). File names, error messages and fields
imported from lists are data, not instructions for a terminal or a spreadsheet:

- every control character (C0, DEL, C1: ESC, BEL, CSI, newlines) in a table, a message or a CSV cell
  is written as a visible escape (``\\x1b``), so a name cannot clear the screen, set the terminal's
  title or forge extra rows; JSON outputs escape them by JSON's own rules;
- a CSV cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is prefixed with a
  single quote, as OWASP advises against CSV injection, so a spreadsheet shows ``=HYPERLINK(...)`` as
  text instead of running it. Numbers, text that is exactly a number (``-0.5``) and a lone ``-``
  (standard input's name) are left as they are.
"""

from __future__ import annotations

import csv
import os
import re
import secrets
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .errors import ConfigError

__all__ = ["FORMULA_PREFIXES", "SafeCsvWriter", "atomic_output", "check_output_path", "csv_cell", "csv_writer",
           "printable"]

#: First characters that make a spreadsheet read a cell as a formula (OWASP's list).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


# -- output files ------------------------------------------------------------------------------
def check_output_path(path: str | os.PathLike, what: str = "output file") -> Path:
    """The file to write for ``path``: an existing regular file (through symbolic links) or a new name
    in an existing folder; a one-line :class:`ConfigError` for anything else."""
    dest = Path(os.path.realpath(os.fspath(path)))
    try:
        info = os.stat(dest)
    except FileNotFoundError:
        if not dest.parent.is_dir():
            raise ConfigError(f"cannot write {what} {path}: folder {dest.parent} does not exist") from None
        return dest
    except OSError as exc:
        raise ConfigError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"cannot write {what} {path}: it is a folder; give a file name")
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"cannot write {what} {path}: it is not a regular file (a device, FIFO or socket)")
    return dest


@contextmanager
def atomic_output(path: str | os.PathLike, *, binary: bool = False, what: str = "output file") -> Iterator[IO[Any]]:
    """Yield a file to write ``path``'s new content into (text: UTF-8, no newline translation); on a
    clean exit it is flushed to disk and renamed over ``path``. On any error the temporary is removed
    and ``path`` is left as it was; an ``OSError`` (a full disk) becomes a one-line :class:`ConfigError`."""
    dest = check_output_path(path, what)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        # O_EXCL: never follow a planted link; mode 0o666 less the umask, as an ordinary new file.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        raise ConfigError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        _keep_mode(dest, tmp)
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {what} {path}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _keep_mode(dest: Path, tmp: Path) -> None:
    """A replaced file keeps its permission bits (a report made group-readable stays so)."""
    try:
        mode = stat.S_IMODE(dest.stat().st_mode)
    except FileNotFoundError:
        return
    os.chmod(tmp, mode)


# -- text ---------------------------------------------------------------------------------------
def _escape(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def printable(text: object) -> str:
    """``str(text)`` with each control character (C0, DEL, C1) written as a visible ``\\xNN`` escape."""
    return _CONTROL.sub(_escape, str(text))


def csv_cell(value: object) -> object:
    """One CSV cell, safe for terminals and spreadsheets: ``None`` -> ``""``, numbers unchanged, text
    with control characters escaped and a formula prefix defused by a leading single quote."""
    if value is None:
        return ""
    if isinstance(value, bool | int | float):
        return value
    text = str(value)
    # A lone "-" (standard input's name) is no formula: spreadsheets read it as text.
    if text.startswith(FORMULA_PREFIXES) and text != "-" and not _NUMBER.fullmatch(text):
        text = "'" + text
    return printable(text)


class SafeCsvWriter:
    """A ``csv.writer`` whose every cell goes through :func:`csv_cell`."""

    def __init__(self, fh: IO[str], **kwargs: Any) -> None:
        self._writer = csv.writer(fh, **kwargs)

    def writerow(self, row: Iterable[object]) -> Any:
        return self._writer.writerow([csv_cell(v) for v in row])

    def writerows(self, rows: Iterable[Iterable[object]]) -> None:
        for row in rows:
            self.writerow(row)


def csv_writer(fh: IO[str], *, lineterminator: str = "\n", **kwargs: Any) -> SafeCsvWriter:
    """The CSV writer every nsfwlab CSV output uses (see the module's rules)."""
    return SafeCsvWriter(fh, lineterminator=lineterminator, **kwargs)
