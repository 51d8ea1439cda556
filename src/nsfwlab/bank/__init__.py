"""A bank of human decisions keyed by PDQ perceptual hash (Meta's PDQ, PyPI ``pdqhash``).

Images a reviewer (or a trusted hash list) has already decided get that decision back when a
near-duplicate arrives (re-encoded, resized): :meth:`Bank.match` before the model call.

- :mod:`.pdq`: hashes (64 hex digits), quality floor, distances.
- :mod:`.index`: nearest-hash search that stays fast at millions of hashes (multi-index hashing).
- :mod:`.store`: :class:`Bank`, SQLite-backed, thread- and process-safe.
- :mod:`.csvio`: hash lists as CSV (import and export).

Requires the ``bank`` extra (``pip install nsfwlab[bank]``) for hashing images; matching and
importing hashes need only numpy.
"""

from __future__ import annotations

from .csvio import CSV_COLUMNS, RowError, export_rows, parse_rows
from .index import HashIndex, IndexKind, LinearIndex, MultiIndex, create_index
from .pdq import QUALITY_FLOOR, PdqHash, hamming, parse_hash, pdq_hash
from .store import (
    DEFAULT_MAX_DISTANCE,
    Bank,
    BankEntry,
    BankStats,
    BankWriteError,
    Decision,
    Lookup,
    Match,
    check_source,
)

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_MAX_DISTANCE",
    "QUALITY_FLOOR",
    "Bank",
    "BankEntry",
    "BankStats",
    "BankWriteError",
    "Decision",
    "HashIndex",
    "IndexKind",
    "LinearIndex",
    "Lookup",
    "Match",
    "MultiIndex",
    "PdqHash",
    "RowError",
    "check_source",
    "create_index",
    "export_rows",
    "hamming",
    "parse_hash",
    "parse_rows",
    "pdq_hash",
]
