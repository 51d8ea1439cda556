"""nsfwlab's SQLite files (results store, hash bank, review store): opened only when they are ours.

A user names the file, so it may be anything: another application's database (adding our tables to
it would change a file we do not own), a text file, ``/dev/null`` (SQLite would create
``/dev/null-journal`` beside it) or a FIFO. :func:`open_database` checks, before anything is written:

- the path is a regular file or does not exist yet (then its folder must exist);
- a non-empty file starts with SQLite's header;
- the database is of the kind asked for: its ``PRAGMA application_id`` is the kind's, or (a file
  nsfwlab wrote before it set the id) the id is unset and the file holds the kind's tables, or it
  holds no table at all.

Anything else is refused with one line, and the file is left as it was. A file that passes is then
stamped with the kind's ``application_id`` (each kind has its own, so a hash bank is never taken for
a results store either).
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, NsfwlabError

__all__ = ["KNOWN_IDS", "SQLITE_HEADER", "DatabaseKind", "application_id", "check_database_path", "open_database"]

SQLITE_HEADER = b"SQLite format 3\x00"

#: SQLite's own tables, present in any database that used AUTOINCREMENT or ANALYZE.
_INTERNAL_PREFIX = "sqlite_"


@dataclass(frozen=True)
class DatabaseKind:
    """One kind of nsfwlab database: what to call it, its ``application_id`` and how to recognise a
    file of this kind written before the id was set (``tables`` all present, with ``columns``)."""

    what: str
    application_id: int
    tables: frozenset[str]
    columns: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.application_id or not -(1 << 31) <= self.application_id < (1 << 31):
            raise ValueError("application_id must be a non-zero 32-bit signed integer")


def _ascii_id(text: str) -> int:
    """A 4-letter tag as the 32-bit application_id SQLite stores (readable in a hex dump of the header)."""
    return int.from_bytes(text.encode("ascii"), "big", signed=True)


#: The application_id of each kind of nsfwlab database, by tag, so that a refusal can say what a file is.
KNOWN_IDS = {_ascii_id("NsfS"): "nsfwlab results store", _ascii_id("NsfB"): "nsfwlab hash bank",
             _ascii_id("NsfR"): "nsfwlab review store"}


def application_id(tag: str) -> int:
    """The application_id for one of :data:`KNOWN_IDS`' tags (``"NsfS"``, ``"NsfB"``, ``"NsfR"``)."""
    value = _ascii_id(tag)
    if value not in KNOWN_IDS:
        raise ValueError(f"unknown nsfwlab database tag {tag!r}")
    return value


def check_database_path(path: str | os.PathLike, what: str, *, must_exist: bool = False,
                        error: type[NsfwlabError] = ConfigError, param: str | None = None) -> bool:
    """Whether ``path`` holds data (a non-empty regular file); a one-line ``error`` for a path that is
    not a regular file (a folder, a device, a FIFO), a missing file when ``must_exist``, a missing
    folder, or a non-empty file that is not SQLite. Follows symbolic links."""
    name = os.fspath(path)
    try:
        info = os.stat(name)
    except FileNotFoundError:
        if must_exist:
            raise error(f"{what} {name} does not exist", param=param) from None
        folder = os.path.dirname(name) or "."
        if not os.path.isdir(folder):
            raise error(f"folder {folder} of the {what} {name} does not exist", param=param) from None
        return False
    except OSError as exc:
        raise error(f"cannot open {what} {name}: {exc.strerror or exc}", param=param) from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{what} {name} is a folder; give a file name", param=param)
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{what} {name} is not a regular file", param=param)
    if info.st_size == 0:
        return False
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        try:
            head = os.read(fd, len(SQLITE_HEADER))
        finally:
            os.close(fd)
    except OSError as exc:
        raise error(f"cannot read {what} {name}: {exc.strerror or exc}", param=param) from None
    if head != SQLITE_HEADER:
        raise error(f"{name} is not a usable SQLite database (nor an nsfwlab {what}); it was left untouched",
                    param=param)
    return True


def _refusal(db: sqlite3.Connection, name: str, kind: DatabaseKind, readonly: bool) -> str | None:
    """Why the open database ``db`` is not of ``kind`` (None: it is, or it is empty and may become one)."""
    app_id = int(db.execute("PRAGMA application_id").fetchone()[0])
    tables = {str(r[0]) for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    tables = {t for t in tables if not t.startswith(_INTERNAL_PREFIX)}
    if app_id and app_id != kind.application_id:
        owner = KNOWN_IDS.get(app_id, f"SQLite database of another application (application_id {app_id:#x})")
        return f"{name} is an {owner}, not an nsfwlab {kind.what}; it was left untouched"
    if not app_id and tables and not (kind.tables <= tables and all(
            cols <= {str(r[1]) for r in db.execute(f'PRAGMA table_info("{table}")')}
            for table, cols in kind.columns.items())):
        return (f"{name} is an SQLite database of another application, not an nsfwlab {kind.what}; "
                "it was left untouched")
    if readonly and not kind.tables <= tables:
        return f"{name} holds no nsfwlab {kind.what}"
    return None


def open_database(path: str | os.PathLike, kind: DatabaseKind, *, readonly: bool = False, timeout: float = 30.0,
                  check_same_thread: bool = True, error: type[NsfwlabError] = ConfigError,
                  param: str | None = None) -> sqlite3.Connection:
    """A connection (autocommit: ``isolation_level=None``) to the ``kind`` database at ``path``,
    created if missing unless ``readonly``; see the module's rules. Nothing is written to a file
    that is refused. The caller creates its tables (``CREATE TABLE IF NOT EXISTS``) after this."""
    name = os.fspath(path)
    has_data = check_database_path(name, kind.what, must_exist=readonly, error=error, param=param)
    try:
        if readonly:
            db = sqlite3.connect(Path(name).resolve().as_uri() + "?mode=ro", uri=True, timeout=timeout,
                                 isolation_level=None, check_same_thread=check_same_thread)
        else:
            db = sqlite3.connect(name, timeout=timeout, isolation_level=None, check_same_thread=check_same_thread)
    except sqlite3.Error as exc:
        raise error(f"cannot open {kind.what} {name}: {exc}", param=param) from None
    try:
        db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        shown = f"{param} {name}" if param else name  # the CLI reads the parameter as its flag
        reason = _refusal(db, shown, kind, readonly) if has_data else None
        if readonly and not has_data:
            reason = f"{shown} holds no nsfwlab {kind.what}"
        if reason is not None:
            raise error(reason, param=param)
        if not readonly and int(db.execute("PRAGMA application_id").fetchone()[0]) != kind.application_id:
            db.execute(f"PRAGMA application_id = {int(kind.application_id)}")
    except sqlite3.Error as exc:
        db.close()
        if "readonly" in str(exc) or "read-only" in str(exc):
            raise error(f"{name} is read-only (file permissions or a read-only file system): make it writable "
                        "or give another file", param=param) from None
        raise error(f"{name} is not a usable SQLite {kind.what}: {exc}", param=param) from None
    except BaseException:
        db.close()
        raise
    return db
