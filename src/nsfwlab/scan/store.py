"""The results store: one SQLite file in WAL mode, one row per (file, model version, preprocessing version).

Rules the scanner relies on:

- The schema is declared once, in :mod:`nsfwlab.scan.schema`; rows are read by column name.
- A row is keyed by ``(path, model_version, preprocess_version)``: results of another model or
  preprocessing never overwrite older ones, they live next to them.
- A row keeps the model's raw output; its score, label and match are derived by
  :mod:`nsfwlab.verdict` under the ``policy`` it records, and derived again (never re-scored) when
  a scan brings another policy (:attr:`ScanAction.REDERIVE`).
- ``sha256`` is indexed per version, so identical content is scored once (:meth:`ResultStore.cached_score`).
- Each batch of results is one transaction (:meth:`ResultStore.write`): ``kill -9`` at any moment
  loses at most the batch being written, and WAL keeps the file consistent.
- A file that fails is stored with ``status='error'``, its error code and message, and an attempt
  count; :meth:`ResultStore.decide` stops retrying it after ``max_attempts`` unless it changes.
- A file deleted since it was scanned keeps its row, marked ``status='missing'`` by a re-scan of
  its root (:meth:`ResultStore.mark_missing`); it is never deleted.
- A file that is not an nsfwlab store (another application's SQLite database) is refused before
  anything is written to it; a store of an older schema is migrated in one transaction.

Only the edges open a store on a user-given path; the library functions take a store object.
"""

from __future__ import annotations

import codecs
import os
import sqlite3
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..sqlitefiles import DatabaseKind, application_id, open_database
from .schema import (
    COLUMNS,
    FRAME_COLUMNS,
    KEY,
    RESULT_COLUMNS,
    SCHEMA_VERSION,
    WRITTEN,
    migration_script,
    results_ddl,
    upsert_sql,
)

__all__ = [
    "COLUMNS",
    "FRAME_COLUMNS",
    "SCHEMA_VERSION",
    "FileRecord",
    "ResultStore",
    "ScanAction",
    "Status",
    "StoreError",
    "StoreWriteError",
    "StoredRaw",
]

#: Columns of schema 1, which every store has (what tells an nsfwlab store from a foreign file).
_V1_COLUMNS = tuple(c.name for c in RESULT_COLUMNS if c.since == 1)
#: How :func:`open_database` tells a results store (also one written before it set ``application_id``).
_KIND = DatabaseKind("results store", application_id("NsfS"), frozenset({"meta", "results", "runs"}),
                     {"results": frozenset(_V1_COLUMNS)})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
""" + results_ddl() + """
CREATE INDEX IF NOT EXISTS results_content
    ON results (sha256, model_version, preprocess_version) WHERE status = 'ok';
CREATE TABLE IF NOT EXISTS frames (
    result_id INTEGER NOT NULL REFERENCES results (id),
    t REAL NOT NULL,
    duration REAL NOT NULL,
    raw_score REAL NOT NULL,
    score REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS frames_result ON frames (result_id);
CREATE TABLE IF NOT EXISTS segments (
    result_id INTEGER NOT NULL REFERENCES results (id),
    start REAL NOT NULL,
    end REAL NOT NULL,
    max_score REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS segments_result ON segments (result_id);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    started REAL NOT NULL,
    finished REAL,
    model_version TEXT NOT NULL,
    preprocess_version TEXT NOT NULL,
    mode TEXT NOT NULL,
    engine TEXT NOT NULL,
    roots TEXT NOT NULL,
    scored INTEGER,
    reused INTEGER,
    skipped INTEGER,
    errors INTEGER
);
"""


_UPSERT = upsert_sql()


def _text(value: str) -> str:
    """``value`` as storable UTF-8 text.

    File names are bytes on POSIX; a name that is not valid UTF-8 arrives from ``os.scandir`` with
    surrogate escapes, which SQLite cannot store. Such bytes are written as ``\\xNN`` escapes
    (the same spelling for the same name, so lookups and updates agree); every valid name is
    stored unchanged.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(value).decode("utf-8", "backslashreplace")
    return value


def _spellings(stored: str) -> list[str]:
    """The file names a stored path may stand for: itself, and the name :func:`_text` escaped."""
    out = [stored]
    if "\\x" in stored:
        try:
            out.append(os.fsdecode(codecs.escape_decode(stored.encode("utf-8"))[0]))
        except ValueError:
            pass
    return out


def _gone(stored: str) -> bool:
    """Whether the file of a stored path no longer exists (a permission error does not tell)."""
    for name in _spellings(stored):
        try:
            os.lstat(name)
            return False
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            return False
    return True


def _opt_text(value: str | None) -> str | None:
    return None if value is None else _text(value)


class StoreError(ConfigError):
    """The results database cannot be opened or is not an nsfwlab results store."""

    code = "store_error"


class StoreWriteError(StoreError):
    """Results could not be written (a full disk, an I/O error): what was committed before is kept."""

    code = "store_write"


class Status(StrEnum):
    OK = "ok"
    ERROR = "error"
    MISSING = "missing"  # the file was deleted after it was scanned


class ScanAction(StrEnum):
    """What the scanner does with one walked file."""

    SKIP = "skip"  # already scored (or given up on) with this version and policy, and unchanged
    SCAN = "scan"  # new, changed, or a failed file with attempts left
    REDERIVE = "rederive"  # scored and unchanged, but under another policy: derive its answer again


def __getattr__(name: str) -> object:
    if name == "Decision":
        warnings.warn("nsfwlab.scan.store.Decision is deprecated: it is ScanAction (nsfwlab.bank.Decision "
                      "is a reviewer's decision)", DeprecationWarning, stacklevel=2)
        return ScanAction
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class StoredRaw:
    """What a row keeps of the model's output, from which its answer is derived: the raw score,
    and for a video or animation its frames' times, durations and raw scores; the still image's
    PDQ hash (when a bank was used) and the policy the row follows now."""

    sha256: str | None
    kind: str
    raw_score: float
    reused: bool
    times: list[float]
    durations: list[float]
    raws: list[float]
    pdq: str | None
    pdq_quality: int | None
    policy: str | None


@dataclass(frozen=True)
class FileRecord:
    """One result to write: a score or an error for one file under one model/preprocess version."""

    path: str
    size: int
    mtime_ns: int
    sha256: str | None
    status: Status
    model_version: str
    preprocess_version: str
    mode: str
    score: float | None = None
    label: str | None = None
    error_code: str | None = None
    error: str | None = None
    reused: bool = False
    kind: str | None = None  # image, animation or video
    frames: tuple[tuple[float, float, float, float], ...] | None = None  # (t, duration, raw, score) per frame
    segments: tuple[tuple[float, float, float], ...] | None = None  # (start, end, max score)
    raw_score: float | None = None  # the model's score (``score`` is derived from it)
    match_decision: str | None = None  # a hash bank's human decision (then also ``label``)
    match_distance: int | None = None
    match_source: str | None = None
    model: str = "open_nsfw"
    match_skipped: str | None = None
    pdq: str | None = None
    pdq_quality: int | None = None
    policy: str | None = None

    def values(self, now: float) -> tuple[Any, ...]:
        """The row's values in :data:`~nsfwlab.scan.schema.WRITTEN` order."""
        v = {"path": _text(self.path), "status": self.status.value, "error": _opt_text(self.error),
             "reused": int(self.reused), "first_seen": now, "scored_at": now,
             "frames": None if self.frames is None else len(self.frames)}
        return tuple(v[c] if c in v else getattr(self, c) for c in WRITTEN)


class ResultStore:
    """A SQLite results database (WAL). Use as a context manager; not shared between processes.

    ``timeout`` is how long to wait for another writer's lock (another scan on the same file).
    """

    def __init__(self, path: str | os.PathLike, *, timeout: float = 30.0, readonly: bool = False) -> None:
        self.path = Path(path)
        self._has_frames = False  # whether any row has frames (else a rewrite has none to drop)
        if readonly and not self.path.is_file():
            raise StoreError(f"results database {self.path} does not exist (run `nsfwlab scan` first)")
        if not readonly and self.path.parent and not self.path.parent.exists():
            raise StoreError(f"directory {self.path.parent} of the results database does not exist")
        self._conn = open_database(self.path, _KIND, readonly=readonly, timeout=timeout, error=StoreError,
                                   param="path")
        try:
            version = self._inspect()
            if not readonly:
                self._open_for_writing(version)
                self._has_frames = self._conn.execute("SELECT 1 FROM frames LIMIT 1").fetchone() is not None
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise self._readonly(exc) or StoreError(
                f"{self.path} is not a usable SQLite results database: {exc}") from None
        except BaseException:
            self._conn.close()
            raise

    def _inspect(self) -> int | None:
        """The schema version of the store (``None``: a new or empty file). :func:`open_database` has
        refused another application's database before anything was written to it."""
        if self._conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None:
            return None
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row is not None else 1
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} has results schema {version}, written by a newer nsfwlab; "
                             f"this one reads up to {SCHEMA_VERSION}")
        return version

    def _open_for_writing(self, version: int | None) -> None:
        mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"{self.path}: SQLite refused WAL mode (got {mode}); use a local disk")
        # NORMAL is durable against process crashes (kill -9) in WAL mode; only an OS crash
        # or power loss may drop the last transactions, never corrupt the file.
        self._conn.execute("PRAGMA synchronous = NORMAL")
        if version is not None and version < SCHEMA_VERSION:
            self._migrate(version)
        self._conn.executescript(_SCHEMA)
        self._check_schema()

    def _readonly(self, exc: sqlite3.Error) -> StoreError | None:
        if "readonly" in str(exc) or "read-only" in str(exc):
            return StoreError(f"path {self.path} is read-only (file permissions or a read-only file system): "
                              "make it writable or give another one", param="path")
        return None

    def _migrate(self, version: int) -> None:
        """Bring an older store up to :data:`SCHEMA_VERSION` in one transaction (rows kept)."""
        script = migration_script(version)
        try:
            self._conn.executescript(f"BEGIN IMMEDIATE;\n{script}\n"
                                     f"UPDATE meta SET value = '{SCHEMA_VERSION}' WHERE key = 'schema_version';\n"
                                     "COMMIT;")
        except sqlite3.Error:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    def _check_schema(self) -> None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            self._conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise StoreError(f"{self.path} has results schema {row[0]}, this nsfwlab writes {SCHEMA_VERSION}")

    # -- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- decisions -----------------------------------------------------------------------------
    def _rows(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
        """A query whose rows are read by column name."""
        cur = self._conn.cursor()
        cur.row_factory = sqlite3.Row
        return cur.execute(sql, args)

    def decide(self, path: str, size: int, mtime_ns: int, model_version: str, preprocess_version: str,
               *, max_attempts: int, policy: str | None = None) -> ScanAction:
        """Skip a file already scored (or failed ``max_attempts`` times) with this version, unchanged;
        re-derive a scored one whose row follows another ``policy`` (when one is given).

        A changed file (size or mtime) is scanned again; its content hash then decides whether
        the model runs (:meth:`cached_score`).
        """
        row = self._rows(
            "SELECT size, mtime_ns, status, attempts, policy FROM results "
            "WHERE path = ? AND model_version = ? AND preprocess_version = ?",
            (_text(path), model_version, preprocess_version),
        ).fetchone()
        if row is None or row["size"] != size or row["mtime_ns"] != mtime_ns or row["status"] == Status.MISSING.value:
            return ScanAction.SCAN  # new, changed, or back after it was missing
        if row["status"] == Status.OK.value:
            return ScanAction.REDERIVE if policy is not None and row["policy"] != policy else ScanAction.SKIP
        return ScanAction.SKIP if row["attempts"] >= max_attempts else ScanAction.SCAN

    def cached_score(self, sha256: str, model_version: str, preprocess_version: str) -> float | None:
        """The model's raw score of identical content already scored with this version, if any."""
        row = self._rows(
            "SELECT COALESCE(raw_score, score) AS raw FROM results "
            "WHERE sha256 = ? AND model_version = ? AND preprocess_version = ? "
            "AND status = 'ok' LIMIT 1",
            (sha256, model_version, preprocess_version),
        ).fetchone()
        return None if row is None else float(row["raw"])

    def cached_frames(self, sha256: str, model_version: str, preprocess_version: str
                      ) -> tuple[str, list[float], list[float], list[float]] | None:
        """``(kind, times, durations, raw scores)`` of identical content already scored over its frames
        with this version (a video or animation), if any."""
        row = self._rows(
            "SELECT id, kind FROM results WHERE sha256 = ? AND model_version = ? AND preprocess_version = ? "
            "AND status = 'ok' AND frames IS NOT NULL LIMIT 1", (sha256, model_version, preprocess_version),
        ).fetchone()
        if row is None:
            return None
        times, durations, raws = self._raw_frames(int(row["id"]))
        return str(row["kind"]), times, durations, raws

    def _raw_frames(self, rid: int) -> tuple[list[float], list[float], list[float]]:
        frames = self._rows("SELECT t, duration, raw_score FROM frames WHERE result_id = ? ORDER BY rowid",
                            (rid,)).fetchall()
        return [f["t"] for f in frames], [f["duration"] for f in frames], [f["raw_score"] for f in frames]

    def stored_raw(self, path: str, model_version: str, preprocess_version: str) -> StoredRaw | None:
        """What a scored row keeps of the model's output (see :class:`StoredRaw`), if it is scored."""
        row = self._rows(
            "SELECT id, sha256, kind, frames, COALESCE(raw_score, score) AS raw, reused, pdq, pdq_quality, policy "
            "FROM results WHERE path = ? AND model_version = ? AND preprocess_version = ? AND status = 'ok'",
            (_text(path), model_version, preprocess_version)).fetchone()
        if row is None or row["raw"] is None:
            return None
        times, durations, raws = self._raw_frames(int(row["id"])) if row["frames"] is not None else ([], [], [])
        return StoredRaw(row["sha256"], row["kind"] or "image", float(row["raw"]), bool(row["reused"]), times,
                         durations, raws, row["pdq"], row["pdq_quality"], row["policy"])

    # -- writing -------------------------------------------------------------------------------
    def write(self, records: Sequence[FileRecord]) -> None:
        """Write a batch of records in one transaction (insert, or update the same path+version).

        An error row's ``attempts`` grows by one per failed attempt on unchanged content and
        restarts at 1 when the file changed; a success keeps the attempt count that led to it.
        """
        if not records:
            return
        now = time.time()
        rows = [r.values(now) for r in records]
        key_at = [WRITTEN.index(k) for k in KEY]
        with self._writing():
            if self._has_frames:  # a row that had frames (a video rewritten, now an error) loses them
                keys = [tuple(row[i] for i in key_at) for row in rows]
                for table in ("frames", "segments"):
                    self._conn.executemany(
                        f"DELETE FROM {table} WHERE result_id IN (SELECT id FROM results WHERE path = ? "
                        "AND model_version = ? AND preprocess_version = ? AND frames IS NOT NULL)", keys)
            self._conn.executemany(_UPSERT, [row for row, r in zip(rows, records, strict=True) if r.frames is None])
            for row, r in zip(rows, records, strict=True):
                if r.frames is not None:
                    ((rid,),) = self._conn.execute(_UPSERT + " RETURNING id", row).fetchall()
                    self._conn.executemany("INSERT INTO frames VALUES (?, ?, ?, ?, ?)",
                                           [(rid, *f) for f in r.frames])
                    self._conn.executemany("INSERT INTO segments VALUES (?, ?, ?, ?)",
                                           [(rid, *g) for g in r.segments or ()])
                    self._has_frames = True

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One write transaction. A failure (a full disk, an I/O error) rolls it back, when SQLite has
        not already done so, and becomes a :class:`StoreWriteError`: every earlier commit is kept."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._readonly(exc) or StoreWriteError(f"cannot write to the results database {self.path}: {exc}; "
                                  "everything committed before is kept (free space, then run again to resume)"
                                  ) from None

    def start_run(self, *, model_version: str, preprocess_version: str, mode: str, engine: str,
                  roots: Iterable[str]) -> int:
        with self._writing():
            cur = self._conn.execute(
                "INSERT INTO runs (started, model_version, preprocess_version, mode, engine, roots) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (time.time(), model_version, preprocess_version, mode, engine, "\n".join(map(_text, roots))),
            )
        return int(cur.lastrowid or 0)

    def finish_run(self, run_id: int, *, scored: int, reused: int, skipped: int, errors: int) -> None:
        with self._writing():
            self._conn.execute(
                "UPDATE runs SET finished = ?, scored = ?, reused = ?, skipped = ?, errors = ? WHERE id = ?",
                (time.time(), scored, reused, skipped, errors, run_id),
            )

    def mark_missing(self, roots: Iterable[str]) -> int:
        """Mark ``status='missing'`` the rows (of any version) under ``roots`` whose file no longer
        exists; return how many. Rows are never deleted; a file that comes back is scanned again.
        A path whose existence cannot be told (a folder without permission) is left as it is."""
        gone: list[int] = []
        for root in roots:
            prefix = os.path.join(_text(root), "")
            # [prefix, prefix with its '/' raised to '0') is every path under the folder (index range).
            rows = self._conn.execute(
                "SELECT id, path FROM results WHERE status != 'missing' AND (path = ? OR (path >= ? AND path < ?))",
                (_text(root), prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)),
            ).fetchall()
            gone += [int(i) for i, path in rows if _gone(str(path))]
        for start in range(0, len(gone), 500):
            with self._writing():
                self._conn.executemany("UPDATE results SET status = 'missing' WHERE id = ?",
                                       [(i,) for i in gone[start : start + 500]])
        return len(gone)

    # -- reading -------------------------------------------------------------------------------
    def count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])

    def versions(self) -> list[tuple[str, str, int]]:
        """(model_version, preprocess_version, rows) present in the store."""
        return [(str(a), str(b), int(c)) for a, b, c in self._conn.execute(
            "SELECT model_version, preprocess_version, COUNT(*) FROM results GROUP BY 1, 2 ORDER BY 1, 2")]

    def latest_version(self) -> tuple[str, str] | None:
        """The (model_version, preprocess_version) written last, if the store has rows."""
        row = self._rows("SELECT model_version, preprocess_version FROM results GROUP BY 1, 2 "
                         "ORDER BY MAX(scored_at) DESC LIMIT 1").fetchone()
        return None if row is None else (str(row["model_version"]), str(row["preprocess_version"]))

    def integrity_check(self) -> str:
        return str(self._conn.execute("PRAGMA integrity_check").fetchone()[0])

    def iter_rows(self, *, label: str | None = None, status: str | None = None, min_score: float | None = None,
                  max_score: float | None = None, model_version: str | None = None,
                  preprocess_version: str | None = None, with_frames: bool = False) -> Iterator[dict[str, Any]]:
        """Stream result rows (as dicts with :data:`COLUMNS`, and :data:`FRAME_COLUMNS` when
        ``with_frames``), filtered, ordered by path."""
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("label", label), ("status", status), ("model_version", model_version),
                              ("preprocess_version", preprocess_version)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if min_score is not None:
            where.append("score >= ?")
            args.append(min_score)
        if max_score is not None:
            where.append("score <= ?")
            args.append(max_score)
        present = {str(r["name"]) for r in self._rows("PRAGMA table_info(results)")}
        # An older store (opened read-only, not migrated) lacks the newer columns: NULL.
        sql = "SELECT id, " + ", ".join(c if c in present else f"NULL AS {c}" for c in COLUMNS) + " FROM results"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY path, model_version, preprocess_version"
        try:
            for row in self._rows(sql, args):
                record = {c: row[c] for c in COLUMNS}
                if with_frames:
                    record.update(self._frames_of(int(row["id"]), record["frames"]))
                yield record
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot read results: {exc}") from None

    def _frames_of(self, rid: int, count: int | None) -> dict[str, Any]:
        """A row's ``frame_scores`` ``[[t, score], ...]`` and ``segments`` ``[[start, end, max], ...]``
        (``None`` for a still image)."""
        if count is None:
            return dict.fromkeys(FRAME_COLUMNS)
        frames = self._conn.execute("SELECT t, score FROM frames WHERE result_id = ? ORDER BY rowid", (rid,))
        spans = self._conn.execute("SELECT start, end, max_score FROM segments WHERE result_id = ? ORDER BY rowid",
                                   (rid,))
        return {"frame_scores": [list(f) for f in frames], "segments": [list(g) for g in spans]}
