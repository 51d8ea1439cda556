"""The hash bank: human decisions keyed by PDQ hash, in one SQLite file, with an in-memory index.

SQLite holds the truth (one row per distinct hash; a later decision for the same hash replaces
the earlier one). The index (:mod:`.index`) is built from it on open and extended on every add and
before every match with rows that other processes wrote since (``id > last seen``), so several
services can share one bank file (WAL mode). Decisions are read from SQLite when a hash matches,
so a corrected decision is seen at once.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DecodeLimits
from ..errors import ConfigError
from ..imageio import ImageInput
from ..sqlitefiles import DatabaseKind, application_id, open_database
from .index import HashIndex, IndexKind, create_index
from .pdq import HASH_HEX_LEN, QUALITY_FLOOR, PdqHash, hash_words, parse_hash, pdq_hash

__all__ = ["DEFAULT_MAX_DISTANCE", "Bank", "BankEntry", "BankStats", "BankWriteError", "Decision", "Lookup", "Match",
           "check_source"]

#: Meta's suggested PDQ match threshold (out of 256 bits).
DEFAULT_MAX_DISTANCE = 31
_PAGE = 100_000  # rows read from SQLite at a time while indexing
_SCHEMA_VERSION = "1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hashes (
    id INTEGER PRIMARY KEY,
    pdq TEXT NOT NULL UNIQUE CHECK (length(pdq) = 64),
    decision TEXT NOT NULL CHECK (decision IN ('nsfw', 'safe')),
    source TEXT NOT NULL,
    reviewer TEXT,
    quality INTEGER,
    added_at REAL NOT NULL
);
"""
#: How :func:`open_database` tells a bank (also one written before it set ``application_id``).
_KIND = DatabaseKind("hash bank", application_id("NsfB"), frozenset({"meta", "hashes"}),
                     {"hashes": frozenset({"pdq", "decision", "source"})})
_UPSERT = """
INSERT INTO hashes (pdq, decision, source, reviewer, quality, added_at) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (pdq) DO UPDATE SET decision = excluded.decision, source = excluded.source,
    reviewer = excluded.reviewer, quality = excluded.quality, added_at = excluded.added_at
"""


class Decision(StrEnum):
    NSFW = "nsfw"
    SAFE = "safe"


class BankWriteError(ConfigError):
    """Decisions could not be written (a full disk, an I/O error): what was committed before is kept."""

    code = "bank_write"


def _decision(value: Decision | str) -> Decision:
    try:
        return Decision(str(value.value if isinstance(value, Decision) else value).strip().lower())
    except ValueError:
        raise ConfigError(f"decision must be 'nsfw' or 'safe', got {value!r}") from None


def check_source(source: str) -> str:
    """A source is ``review:<id>`` or ``list:<name>``; anything else is a ConfigError."""
    kind, sep, rest = source.strip().partition(":")
    if not sep or kind not in ("review", "list") or not rest.strip():
        raise ConfigError(f"source must be 'review:<id>' or 'list:<name>', got {source!r}")
    return f"{kind}:{rest.strip()}"


def _low_quality(h: PdqHash) -> str:
    return f"PDQ quality {h.quality} is below the floor {QUALITY_FLOOR}: too featureless to match"


@dataclass(frozen=True)
class Match:
    """A banked decision for an image within ``distance`` bits of a banked hash."""

    decision: Decision
    distance: int
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"decision": self.decision.value, "distance": self.distance, "source": self.source}


@dataclass(frozen=True)
class Lookup:
    """What a lookup found: the image's hash, the match if any, and why it was not tried (``skipped``)."""

    hash: PdqHash
    match: Match | None = None
    skipped: str | None = None


@dataclass(frozen=True)
class BankEntry:
    pdq: str
    decision: Decision
    source: str
    reviewer: str | None = None
    quality: int | None = None
    added_at: float | None = None

    @classmethod
    def make(cls, pdq: str, decision: Decision | str, source: str, *, reviewer: str | None = None,
             quality: int | None = None, added_at: float | None = None) -> BankEntry:
        """A checked entry: ConfigError for a malformed hash, decision or source, or a quality below the floor."""
        if quality is not None and not PdqHash("", quality).usable:
            raise ConfigError(f"{_low_quality(PdqHash('', quality))}; not banked")
        return cls(parse_hash(pdq), _decision(decision), check_source(source), reviewer or None, quality,
                   time.time() if added_at is None else added_at)


@dataclass(frozen=True)
class BankStats:
    """Counts by decision, and by source (all reviews together; the 50 largest lists)."""

    total: int
    decisions: dict[str, int]
    sources: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "decisions": self.decisions, "sources": self.sources}


class Bank:
    """A bank of PDQ hashes with human decisions, in the SQLite file ``path`` (created if missing).

    Thread-safe (one connection behind a lock). ``limits`` caps the decoding of images given to
    :meth:`add_image` and :meth:`match`.
    """

    def __init__(self, path: str | os.PathLike, *, limits: DecodeLimits | None = None,
                 index: IndexKind | str = IndexKind.MULTI) -> None:
        self.path = Path(path)
        self.limits = limits or DecodeLimits()
        self._lock = threading.Lock()
        self._db = self._connect(self.path)
        self._index: HashIndex = create_index(index)
        self._ids = np.zeros(0, dtype=np.int64)  # index position -> row id
        self._last_id = 0
        with self._lock:
            self._catch_up()

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        try:
            db = open_database(path, _KIND, check_same_thread=False)  # refuses another application's file
        except ConfigError as exc:
            raise ConfigError(f"cannot open bank {path}: {exc.message}") from None
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (_SCHEMA_VERSION,))
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except sqlite3.DatabaseError as exc:
            db.close()
            raise ConfigError(f"cannot open bank {path}: {exc}") from None
        if row is None or row[0] != _SCHEMA_VERSION:
            db.close()
            raise ConfigError(f"bank {path} has schema {row[0] if row else None!r}; this nsfwlab reads "
                              f"{_SCHEMA_VERSION!r}")
        return db

    # -- index ------------------------------------------------------------------------------
    def _catch_up(self) -> None:
        """Index the rows added since the last look (by this process or any other). Lock held.

        Read in pages (bounded memory however large the bank), indexed in one step (one build).
        """
        words: list[np.ndarray] = []
        ids: list[np.ndarray] = []
        last = self._last_id
        while True:
            rows = self._db.execute("SELECT id, pdq FROM hashes WHERE id > ? ORDER BY id LIMIT ?",
                                    (last, _PAGE)).fetchall()
            if not rows:
                break
            page_ids, hexes = zip(*rows, strict=True)
            words.append(hash_words(list(hexes)))
            ids.append(np.asarray(page_ids, dtype=np.int64))
            last = int(page_ids[-1])
        if words:
            self._index.add(np.concatenate(words))
            self._ids = np.concatenate([self._ids, *ids])
            self._last_id = last

    def __len__(self) -> int:
        with self._lock:
            self._catch_up()
            return len(self._index)

    # -- adding -----------------------------------------------------------------------------
    def add(self, pdq: str, decision: Decision | str, source: str, *, reviewer: str | None = None,
            quality: int | None = None, added_at: float | None = None) -> BankEntry:
        """Bank a decision for a hash (replacing an earlier one for the same hash).

        Raises ConfigError for a malformed hash, decision or source, and for a quality below
        :data:`~nsfwlab.bank.pdq.QUALITY_FLOOR`.
        """
        entry = BankEntry.make(pdq, decision, source, reviewer=reviewer, quality=quality, added_at=added_at)
        self.add_many([entry])
        return entry

    def add_many(self, entries: Iterable[BankEntry]) -> int:
        """Bank many checked entries in one transaction (see :meth:`add`); returns how many."""
        rows = [(e.pdq, e.decision.value, e.source, e.reviewer, e.quality, e.added_at) for e in entries]
        with self._lock:
            try:
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    self._db.executemany(_UPSERT, rows)
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:  # a full disk, an I/O error, a lock held too long
                raise BankWriteError(f"cannot write to bank {self.path}: {exc}; everything committed before is "
                                     "kept") from None
            self._catch_up()
        return len(rows)

    def add_image(self, image: ImageInput, decision: Decision | str, source: str, *,
                  reviewer: str | None = None) -> Lookup:
        """Hash an image (through the safe decoder) and bank it, unless its quality is below the floor.

        Returns the hash; ``skipped`` says why it was not banked. Raises ImageError on bad input.
        """
        h = pdq_hash(image, self.limits)
        if not h.usable:
            return Lookup(h, skipped=_low_quality(h) + "; not banked")
        self.add(h.hex, decision, source, reviewer=reviewer, quality=h.quality)
        return Lookup(h)

    # -- matching ---------------------------------------------------------------------------
    def lookup(self, image_or_hash: ImageInput | PdqHash,
               max_distance: int = DEFAULT_MAX_DISTANCE) -> Lookup:
        """Hash an image (or take a hash: a :class:`PdqHash` or 64 hex digits) and find the nearest banked
        hash within ``max_distance`` bits. Images below the quality floor are not matched (``skipped``)."""
        if not 0 <= max_distance <= 256:
            raise ConfigError(f"max_distance must be between 0 and 256, got {max_distance}")
        h = self._as_hash(image_or_hash)
        if not h.usable:
            return Lookup(h, skipped=_low_quality(h))
        with self._lock:
            self._catch_up()
            hit = self._index.nearest(h.words(), max_distance)
            if hit is None:
                return Lookup(h)
            row = self._db.execute("SELECT decision, source FROM hashes WHERE id = ?",
                                   (int(self._ids[hit[0]]),)).fetchone()
        return Lookup(h, Match(Decision(row[0]), hit[1], row[1]))

    def match(self, image_or_hash: ImageInput | PdqHash, max_distance: int = DEFAULT_MAX_DISTANCE) -> Match | None:
        """The banked decision for an image or hash, or None (see :meth:`lookup` for the reason)."""
        return self.lookup(image_or_hash, max_distance).match

    def _as_hash(self, value: ImageInput | PdqHash) -> PdqHash:
        if isinstance(value, PdqHash):
            return PdqHash(parse_hash(value.hex), value.quality)
        if isinstance(value, str) and len(value.strip()) == HASH_HEX_LEN and not os.path.exists(value):
            try:
                return PdqHash(parse_hash(value))
            except ConfigError:
                pass  # not hex: a file name
        return pdq_hash(value, self.limits)

    # -- reading ----------------------------------------------------------------------------
    def entries(self) -> Iterator[BankEntry]:
        """Every banked entry, oldest first (streamed in pages: constant memory)."""
        last = 0
        while True:
            with self._lock:
                rows = self._db.execute("SELECT id, pdq, decision, source, reviewer, quality, added_at FROM hashes "
                                        "WHERE id > ? ORDER BY id LIMIT 5000", (last,)).fetchall()
            if not rows:
                return
            for r in rows:
                yield BankEntry(r[1], Decision(r[2]), r[3], r[4], r[5], r[6])
            last = rows[-1][0]

    def stats(self) -> BankStats:
        with self._lock:
            decisions = dict(self._db.execute("SELECT decision, count(*) FROM hashes GROUP BY decision").fetchall())
            sources = dict(self._db.execute(
                "SELECT CASE WHEN source LIKE 'review:%' THEN 'review' ELSE source END AS s, count(*) FROM hashes "
                "GROUP BY s ORDER BY count(*) DESC, s LIMIT 50").fetchall())
        return BankStats(sum(decisions.values()), {d.value: int(decisions.get(d.value, 0)) for d in Decision},
                         {str(k): int(v) for k, v in sources.items()})

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Bank:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
