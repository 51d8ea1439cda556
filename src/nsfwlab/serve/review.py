"""The human-review store: SQLite for items and labels, a content-addressed image store on disk.

Layout of a data directory::

    DIR/review.sqlite3              items (one per distinct image), every label decision, the audit log
    DIR/images/ab/ab12...ef.jpg     the uploaded bytes, named by their sha256 (stored once)
    DIR/thumbs/ab/ab12...ef.jpg     a 256-pixel JPEG thumbnail for the review page

Images enter the store when their score falls in the review band, or as a random audit sample
of confident decisions. A reviewer labels an item ``safe``, ``nsfw`` or ``skip``; each decision
is kept (time, reviewer) and the latest one is the item's status. Each decision is also written
to the ``audit`` table (who, when, which API key, the label and the one it replaced), which SQLite
triggers keep append-only. Nothing here imports FastAPI: ``nsfwlab review export`` uses the store
without the web stack.

Image files are written to a temporary name and renamed; a failed write (a full disk) removes its
temporary file, and opening the store removes those a crash left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from PIL import Image

from ..config import DecodeLimits
from ..errors import ConfigError
from ..imageio import load_image
from ..sqlitefiles import DatabaseKind, application_id, open_database
from .errors import BadRequestError, NotFoundError

__all__ = [
    "FORMAT_EXTENSIONS",
    "AuditEntry",
    "LabelRecord",
    "NotFoundError",
    "QueueReason",
    "ReviewItem",
    "ReviewLabel",
    "ReviewStatus",
    "ReviewStore",
    "clean_name",
]

#: File extension of each allowed format (images, then video containers) in the store and in exports.
FORMAT_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif",
                     "MP4": "mp4", "MATROSKA": "mkv"}

THUMBNAIL_SIZE = 256
#: Age in seconds after which a temporary file in the store is a crash's leftover.
STALE_TMP_S = 600.0


class ReviewLabel(StrEnum):
    """A reviewer's decision."""

    SAFE = "safe"
    NSFW = "nsfw"
    SKIP = "skip"


class ReviewStatus(StrEnum):
    """Where an item stands: not yet decided, or its latest decision."""

    PENDING = "pending"
    SAFE = "safe"
    NSFW = "nsfw"
    SKIP = "skip"


class QueueReason(StrEnum):
    """Why an image was queued: its score is in the review band, it is a random audit sample, or
    its upload flagged its caller as running a query attack."""

    BAND = "band"
    AUDIT = "audit"
    ATTACK = "attack"


@dataclass(frozen=True)
class ReviewItem:
    sha256: str
    ext: str
    filename: str
    score: float
    model_label: str
    reason: QueueReason
    model_version: str
    created_at: float
    status: ReviewStatus
    reviewer: str | None = None
    labelled_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reason"] = self.reason.value
        d["status"] = self.status.value
        return d


@dataclass(frozen=True)
class LabelRecord:
    sha256: str
    label: ReviewLabel
    reviewer: str
    labelled_at: float


@dataclass(frozen=True)
class AuditEntry:
    """One review decision as the audit log keeps it."""

    id: int
    review_id: str
    label: ReviewLabel
    previous_label: ReviewStatus
    reviewer: str
    key_id: str | None
    at: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "label": self.label.value, "previous_label": self.previous_label.value}


_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    sha256 TEXT PRIMARY KEY,
    ext TEXT NOT NULL,
    filename TEXT NOT NULL,
    score REAL NOT NULL,
    model_label TEXT NOT NULL,
    reason TEXT NOT NULL,
    model_version TEXT NOT NULL,
    created_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    reviewer TEXT,
    labelled_at REAL
);
CREATE INDEX IF NOT EXISTS items_status ON items(status, created_at);
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT NOT NULL REFERENCES items(sha256),
    label TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    labelled_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS labels_sha ON labels(sha256);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    review_id TEXT NOT NULL,
    label TEXT NOT NULL,
    previous_label TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    key_id TEXT,
    at REAL NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""

#: How :func:`open_database` tells a review store (also one written before it set ``application_id``,
#: or before the audit log).
_KIND = DatabaseKind("review store", application_id("NsfR"), frozenset({"items", "labels"}),
                     {"items": frozenset({"sha256", "ext", "filename", "score", "status"})})

# A store made before the audit log: its decisions (in ``labels``) become the first entries.
_BACKFILL = """
INSERT INTO audit (review_id, label, previous_label, reviewer, key_id, at)
SELECT sha256, label, COALESCE(LAG(label) OVER (PARTITION BY sha256 ORDER BY id), 'pending'), reviewer, NULL,
       labelled_at
FROM labels WHERE NOT EXISTS (SELECT 1 FROM audit) ORDER BY id
"""

_COLUMNS = "sha256, ext, filename, score, model_label, reason, model_version, created_at, status, reviewer, labelled_at"


def _item(row: tuple[Any, ...]) -> ReviewItem:
    return ReviewItem(row[0], row[1], row[2], float(row[3]), row[4], QueueReason(row[5]), row[6],
                      float(row[7]), ReviewStatus(row[8]), row[9], row[10])


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no 0-byte temporary behind
        raise


def clean_name(name: str, fallback: str = "upload") -> str:
    """An uploaded file name safe to log and to write into CSV: its last path component, control
    and format characters (NUL, ESC, BEL, newlines, bidi overrides) replaced by U+FFFD, at most
    255 characters."""
    base = str(name).replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join("\ufffd" if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch for ch in base)
    return cleaned[:255] or fallback


def _clean_reviewer(reviewer: str) -> str:
    name = " ".join(str(reviewer).split())
    if not name or len(name) > 64:
        raise BadRequestError("reviewer must be 1 to 64 characters")
    if not name.isprintable():
        raise BadRequestError("reviewer must not contain control characters")
    return name


class ReviewStore:
    """Thread-safe access to one data directory (one SQLite connection behind a lock)."""

    def __init__(self, data_dir: str | os.PathLike, *, create: bool = True) -> None:
        self.root = Path(data_dir)
        db = self.root / "review.sqlite3"
        if not create and not db.is_file():
            raise ConfigError(f"{self.root} holds no review store (no review.sqlite3); is it the serve --data-dir?")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot open the review store in {self.root}: {exc.strerror or exc}") from None
        try:
            self._db = open_database(db, _KIND, check_same_thread=False)  # refuses another application's file
        except ConfigError as exc:
            raise ConfigError(f"cannot open the review store in {self.root}: {exc.message}") from None
        self._lock = threading.Lock()
        try:
            with self._lock:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA)
                self._db.execute(_BACKFILL)
        except sqlite3.Error as exc:  # e.g. review.sqlite3 is not a database
            self._db.close()
            raise ConfigError(f"cannot open the review store {db}: {exc}") from None
        self._remove_stale_temporaries()

    def _remove_stale_temporaries(self) -> None:
        """Remove temporary files a crash left: those older than ``STALE_TMP_S`` (a write takes
        milliseconds; a younger one may belong to a server writing now, as ``review export`` opens
        the store of a running server)."""
        cutoff = time.time() - STALE_TMP_S
        for sub in ("images", "thumbs"):
            for tmp in (self.root / sub).glob("*/.*.tmp"):
                with contextlib.suppress(OSError):
                    if tmp.stat().st_mtime < cutoff:
                        tmp.unlink()

    # -- paths ----------------------------------------------------------------------------------
    def image_path(self, item: ReviewItem) -> Path:
        return self.root / "images" / item.sha256[:2] / f"{item.sha256}.{item.ext}"

    def thumbnail_path(self, sha256: str) -> Path:
        return self.root / "thumbs" / sha256[:2] / f"{sha256}.jpg"

    # -- writing --------------------------------------------------------------------------------
    def add(self, data: bytes, fmt: str, *, score: float, model_label: str, reason: QueueReason,
            model_version: str, filename: str = "", limits: DecodeLimits | None = None,
            now: float | None = None, thumbnail: Image.Image | None = None) -> ReviewItem:
        """Keep an image (or a video) for review (once per distinct content) and return its item.

        The thumbnail is made from ``thumbnail`` when given (a video's or animation's frame), else
        from the image itself. The bytes and the thumbnail are written before the row, so a crash
        never leaves a row without its image. Adding the same bytes again returns the existing item
        unchanged.
        """
        sha = hashlib.sha256(data).hexdigest()
        existing = self.get(sha)
        if existing is not None:
            return existing
        ext = FORMAT_EXTENSIONS.get(fmt.upper())
        if ext is None:
            raise ConfigError(f"unknown image format {fmt!r}")
        thumb = (thumbnail if thumbnail is not None else load_image(data, limits)).copy()
        thumb.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        buf = io.BytesIO()
        thumb.save(buf, format="JPEG", quality=85)
        img_path = self.root / "images" / sha[:2] / f"{sha}.{ext}"
        if not img_path.is_file():
            _write_atomic(img_path, data)
        _write_atomic(self.thumbnail_path(sha), buf.getvalue())
        created = time.time() if now is None else now
        name = clean_name(filename, fallback="") if filename else ""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO items (sha256, ext, filename, score, model_label, reason, model_version, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (sha, ext, name, float(score), model_label, QueueReason(reason).value, model_version, created),
            )
        item = self.get(sha)
        assert item is not None
        return item

    def set_label(self, sha256: str, label: ReviewLabel | str, reviewer: str,
                  now: float | None = None, key_id: str | None = None) -> ReviewItem:
        """Record a decision (kept in the history and the audit log) and make it the item's status.
        ``key_id``: the id of the API key that sent it, for the audit log."""
        label = ReviewLabel(label)
        who = _clean_reviewer(reviewer)
        when = time.time() if now is None else now
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT status FROM items WHERE sha256 = ?", (sha256,)).fetchone()
                if row is None:
                    self._db.execute("ROLLBACK")
                    raise NotFoundError(f"no review item {sha256!r}")
                self._db.execute("UPDATE items SET status = ?, reviewer = ?, labelled_at = ? WHERE sha256 = ?",
                                 (label.value, who, when, sha256))
                self._db.execute("INSERT INTO labels (sha256, label, reviewer, labelled_at) VALUES (?, ?, ?, ?)",
                                 (sha256, label.value, who, when))
                self._db.execute("INSERT INTO audit (review_id, label, previous_label, reviewer, key_id, at) "
                                 "VALUES (?, ?, ?, ?, ?, ?)", (sha256, label.value, row[0], who, key_id, when))
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._db.execute("ROLLBACK")
                raise
        item = self.get(sha256)
        assert item is not None
        return item

    # -- reading --------------------------------------------------------------------------------
    def get(self, sha256: str) -> ReviewItem | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM items WHERE sha256 = ?", (sha256,)).fetchone()
        return _item(row) if row else None

    def items(self, status: ReviewStatus | str | None = ReviewStatus.PENDING, *, limit: int = 50,
              offset: int = 0) -> list[ReviewItem]:
        """Items with ``status`` (all when ``None``), oldest first."""
        limit, offset = max(0, min(int(limit), 1000)), min(max(0, int(offset)), 2**62)
        with self._lock:
            if status is None:
                rows = self._db.execute(f"SELECT {_COLUMNS} FROM items ORDER BY created_at, sha256 LIMIT ? OFFSET ?",
                                        (limit, offset)).fetchall()
            else:
                rows = self._db.execute(
                    f"SELECT {_COLUMNS} FROM items WHERE status = ? ORDER BY created_at, sha256 LIMIT ? OFFSET ?",
                    (ReviewStatus(status).value, limit, offset),
                ).fetchall()
        return [_item(r) for r in rows]

    def count(self, status: ReviewStatus | str | None = ReviewStatus.PENDING) -> int:
        """Number of items with ``status`` (all when ``None``): the total that :meth:`items` pages through."""
        with self._lock:
            if status is None:
                row = self._db.execute("SELECT COUNT(*) FROM items").fetchone()
            else:
                row = self._db.execute("SELECT COUNT(*) FROM items WHERE status = ?",
                                       (ReviewStatus(status).value,)).fetchone()
        return int(row[0])

    def audit(self, *, limit: int | None = None, offset: int = 0) -> list[AuditEntry]:
        """Audit log entries, oldest first (all of them when ``limit`` is ``None``)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, review_id, label, previous_label, reviewer, key_id, at FROM audit ORDER BY id "
                "LIMIT ? OFFSET ?", (-1 if limit is None else max(0, int(limit)), min(max(0, int(offset)), 2**62))
            ).fetchall()
        return [AuditEntry(int(r[0]), r[1], ReviewLabel(r[2]), ReviewStatus(r[3]), r[4], r[5], float(r[6]))
                for r in rows]

    def audit_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM audit").fetchone()[0])

    def counts(self) -> dict[str, int]:
        """Number of items per status (every status present, zero when none)."""
        out = {s.value: 0 for s in ReviewStatus}
        with self._lock:
            for status, n in self._db.execute("SELECT status, COUNT(*) FROM items GROUP BY status"):
                out[status] = int(n)
        return out

    def history(self, sha256: str) -> list[LabelRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT sha256, label, reviewer, labelled_at FROM labels WHERE sha256 = ? ORDER BY id", (sha256,)
            ).fetchall()
        return [LabelRecord(r[0], ReviewLabel(r[1]), r[2], float(r[3])) for r in rows]

    def labelled(self) -> Iterator[ReviewItem]:
        """Every item whose latest decision is ``safe`` or ``nsfw``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM items WHERE status IN ('safe', 'nsfw') ORDER BY created_at, sha256"
            ).fetchall()
        return iter([_item(r) for r in rows])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ReviewStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
