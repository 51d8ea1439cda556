"""The human-review store: SQLite for items and labels, a content-addressed image store on disk.

Layout of a data directory::

    DIR/review.sqlite3              items (one per distinct image) and every label decision
    DIR/images/ab/ab12...ef.jpg     the uploaded bytes, named by their sha256 (stored once)
    DIR/thumbs/ab/ab12...ef.jpg     a 256-pixel JPEG thumbnail for the review page

Images enter the store when their score falls in the review band, or as a random audit sample
of confident decisions. A reviewer labels an item ``safe``, ``nsfw`` or ``skip``; each decision
is kept (time, reviewer) and the latest one is the item's status. Nothing here imports FastAPI:
``nsfwlab review export`` uses the store without the web stack.
"""

from __future__ import annotations

import hashlib
import io
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from ..config import DecodeLimits
from ..errors import ConfigError
from ..imageio import load_image
from .errors import BadRequestError, NotFoundError

__all__ = [
    "FORMAT_EXTENSIONS",
    "LabelRecord",
    "NotFoundError",
    "QueueReason",
    "ReviewItem",
    "ReviewLabel",
    "ReviewStatus",
    "ReviewStore",
]

#: File extension of each allowed format in the image store and in exports.
FORMAT_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "BMP": "bmp", "TIFF": "tif"}

THUMBNAIL_SIZE = 256


class ReviewLabel(str, Enum):
    """A reviewer's decision."""

    SAFE = "safe"
    NSFW = "nsfw"
    SKIP = "skip"


class ReviewStatus(str, Enum):
    """Where an item stands: not yet decided, or its latest decision."""

    PENDING = "pending"
    SAFE = "safe"
    NSFW = "nsfw"
    SKIP = "skip"


class QueueReason(str, Enum):
    """Why an image was queued: its score is in the review band, or it is a random audit sample."""

    BAND = "band"
    AUDIT = "audit"


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
"""

_COLUMNS = "sha256, ext, filename, score, model_label, reason, model_version, created_at, status, reviewer, labelled_at"


def _item(row: tuple[Any, ...]) -> ReviewItem:
    return ReviewItem(row[0], row[1], row[2], float(row[3]), row[4], QueueReason(row[5]), row[6],
                      float(row[7]), ReviewStatus(row[8]), row[9], row[10])


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


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
            self._db = sqlite3.connect(db, check_same_thread=False, isolation_level=None, timeout=30.0)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot open the review store in {self.root}: {exc}") from None
        self._lock = threading.Lock()
        try:
            with self._lock:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:  # e.g. review.sqlite3 is not a database
            self._db.close()
            raise ConfigError(f"cannot open the review store {db}: {exc}") from None

    # -- paths ----------------------------------------------------------------------------------
    def image_path(self, item: ReviewItem) -> Path:
        return self.root / "images" / item.sha256[:2] / f"{item.sha256}.{item.ext}"

    def thumbnail_path(self, sha256: str) -> Path:
        return self.root / "thumbs" / sha256[:2] / f"{sha256}.jpg"

    # -- writing --------------------------------------------------------------------------------
    def add(self, data: bytes, fmt: str, *, score: float, model_label: str, reason: QueueReason,
            model_version: str, filename: str = "", limits: DecodeLimits | None = None,
            now: float | None = None) -> ReviewItem:
        """Keep an image for review (once per distinct content) and return its item.

        The image bytes and a thumbnail are written before the row, so a crash never leaves a row
        without its image. Adding the same bytes again returns the existing item unchanged.
        """
        sha = hashlib.sha256(data).hexdigest()
        existing = self.get(sha)
        if existing is not None:
            return existing
        ext = FORMAT_EXTENSIONS.get(fmt.upper())
        if ext is None:
            raise ConfigError(f"unknown image format {fmt!r}")
        thumb = load_image(data, limits).copy()
        thumb.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        buf = io.BytesIO()
        thumb.save(buf, format="JPEG", quality=85)
        img_path = self.root / "images" / sha[:2] / f"{sha}.{ext}"
        if not img_path.is_file():
            _write_atomic(img_path, data)
        _write_atomic(self.thumbnail_path(sha), buf.getvalue())
        created = time.time() if now is None else now
        name = os.path.basename(filename or "")[:255]
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
                  now: float | None = None) -> ReviewItem:
        """Record a decision (kept in the history) and make it the item's status."""
        label = ReviewLabel(label)
        who = _clean_reviewer(reviewer)
        when = time.time() if now is None else now
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cur = self._db.execute(
                    "UPDATE items SET status = ?, reviewer = ?, labelled_at = ? WHERE sha256 = ?",
                    (label.value, who, when, sha256),
                )
                if cur.rowcount == 0:
                    self._db.execute("ROLLBACK")
                    raise NotFoundError(f"no review item {sha256!r}")
                self._db.execute("INSERT INTO labels (sha256, label, reviewer, labelled_at) VALUES (?, ?, ?, ?)",
                                 (sha256, label.value, who, when))
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
        limit = max(0, min(int(limit), 1000))
        with self._lock:
            if status is None:
                rows = self._db.execute(f"SELECT {_COLUMNS} FROM items ORDER BY created_at, sha256 LIMIT ? OFFSET ?",
                                        (limit, max(0, offset))).fetchall()
            else:
                rows = self._db.execute(
                    f"SELECT {_COLUMNS} FROM items WHERE status = ? ORDER BY created_at, sha256 LIMIT ? OFFSET ?",
                    (ReviewStatus(status).value, limit, max(0, offset)),
                ).fetchall()
        return [_item(r) for r in rows]

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
