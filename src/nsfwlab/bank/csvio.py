"""Hash lists as CSV: ``pdq,decision,source[,reviewer,quality,added_at]``.

A header row is optional (recognised by a first cell that is not a hash). A row without a source
takes ``list:<name>``. Bad rows become :class:`RowError` values with their row numbers; the
others are still returned, so an import goes on past them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from ..errors import ConfigError
from .pdq import HASH_HEX_LEN
from .store import BankEntry

__all__ = ["CSV_COLUMNS", "RowError", "export_rows", "parse_rows"]

CSV_COLUMNS = ("pdq", "decision", "source", "reviewer", "quality", "added_at")


@dataclass(frozen=True)
class RowError:
    row: int
    message: str

    def __str__(self) -> str:
        return f"row {self.row}: {self.message}"


def _is_header(cells: Sequence[str]) -> bool:
    first = cells[0].strip().lower() if cells else ""
    return len(first) != HASH_HEX_LEN and first in ("pdq", "hash", "pdq_hash", "signal")


def _optional_number(text: str, kind: type) -> float | int | None:
    text = text.strip()
    if not text:
        return None
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"not a number: {text!r}") from None


def _entry(cells: Sequence[str], columns: Sequence[str], default_source: str) -> BankEntry:
    named = dict(zip(columns, (c.strip() for c in cells), strict=False))
    if not named.get("pdq"):
        raise ConfigError("no PDQ hash")
    if not named.get("decision"):
        raise ConfigError("no decision (nsfw or safe)")
    quality = _optional_number(named.get("quality", ""), int)
    added_at = _optional_number(named.get("added_at", ""), float)
    return BankEntry.make(named["pdq"], named["decision"], named.get("source") or default_source,
                          reviewer=named.get("reviewer") or None,
                          quality=int(quality) if quality is not None else None,
                          added_at=float(added_at) if added_at is not None else None)


def parse_rows(rows: Iterable[Sequence[str]], *, default_source: str) -> Iterator[BankEntry | RowError]:
    """Checked entries (or errors) from CSV rows; row numbers count from 1, the header included."""
    columns: Sequence[str] = CSV_COLUMNS
    for number, cells in enumerate(rows, start=1):
        if not cells or all(not c.strip() for c in cells):
            continue
        if number == 1 and _is_header(cells):
            columns = [c.strip().lower() for c in cells]
            columns = ["pdq" if c in ("hash", "pdq_hash", "signal") else c for c in columns]
            continue
        if len(cells) > len(columns):
            yield RowError(number, f"{len(cells)} columns; expected at most {len(columns)} ({','.join(columns)})")
            continue
        try:
            yield _entry(cells, columns, default_source)
        except ConfigError as exc:
            yield RowError(number, exc.message)


def export_rows(entries: Iterable[BankEntry]) -> Iterator[list[str]]:
    """The header, then one row per entry (the format :func:`parse_rows` reads)."""
    yield list(CSV_COLUMNS)
    for e in entries:
        yield [e.pdq, e.decision.value, e.source, e.reviewer or "", "" if e.quality is None else str(e.quality),
               "" if e.added_at is None else repr(e.added_at)]
