"""Export the results store as CSV, JSON lines or Parquet: one record per row, streamed.

:func:`iter_records` (library) yields filtered rows; :func:`write_export` (used by the CLI edge)
writes them to a temporary file next to the destination and renames it, so a reader never sees
a half-written export. Parquet needs ``pyarrow`` (the ``scan`` extra), imported lazily.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ..config import Label
from ..errors import ConfigError
from ..outputs import atomic_output, csv_writer
from .schema import RESULT_COLUMNS
from .store import COLUMNS, FRAME_COLUMNS, ResultStore, Status

__all__ = ["ExportFilter", "ExportFormat", "iter_records", "write_export"]


class ExportFormat(StrEnum):
    CSV = "csv"
    JSONL = "jsonl"
    PARQUET = "parquet"


@dataclass(frozen=True)
class ExportFilter:
    """Row filters; ``None`` means no filter."""

    label: Label | None = None
    status: Status | None = None
    min_score: float | None = None
    max_score: float | None = None
    model_version: str | None = None
    preprocess_version: str | None = None

    def __post_init__(self) -> None:
        for name in ("min_score", "max_score"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise ConfigError(f"{name} must lie in [0, 1], got {v}")


def iter_records(store: ResultStore, filt: ExportFilter | None = None) -> Iterator[dict[str, Any]]:
    f = filt or ExportFilter()
    return store.iter_rows(
        label=f.label.value if f.label else None, status=f.status.value if f.status else None,
        min_score=f.min_score, max_score=f.max_score, model_version=f.model_version,
        preprocess_version=f.preprocess_version, with_frames=True,
    )


def _write_csv(rows: Iterator[dict[str, Any]], fh: Any) -> int:
    writer = csv_writer(fh)  # control characters escaped, formula prefixes defused (nsfwlab.outputs)
    columns = COLUMNS + FRAME_COLUMNS
    writer.writerow(columns)
    n = 0
    for row in rows:
        for k in FRAME_COLUMNS:  # nested lists: a JSON string in a CSV cell
            row[k] = None if row[k] is None else json.dumps(row[k])
        writer.writerow([row.get(k) for k in columns])
        n += 1
    return n


def _write_jsonl(rows: Iterator[dict[str, Any]], fh: Any) -> int:
    n = 0
    for row in rows:
        fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        n += 1
    return n


def _write_parquet(rows: Iterator[dict[str, Any]], fh: Any, batch: int = 65536) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("parquet export needs pyarrow: pip install 'nsfwlab[scan]'") from None
    types = {"TEXT": pa.string(), "INTEGER": pa.int64(), "REAL": pa.float64()}
    schema = pa.schema(
        [(c.name, pa.bool_() if c.name == "reused" else types[c.sql.split()[0]]) for c in RESULT_COLUMNS]
        + [(name, pa.list_(pa.list_(pa.float64()))) for name in FRAME_COLUMNS])
    n = 0
    with pq.ParquetWriter(fh, schema) as writer:
        buf: list[dict[str, Any]] = []
        for row in rows:
            row["reused"] = bool(row["reused"])
            buf.append(row)
            if len(buf) >= batch:
                writer.write_table(pa.Table.from_pylist(buf, schema=schema))
                n += len(buf)
                buf = []
        if buf or n == 0:
            writer.write_table(pa.Table.from_pylist(buf, schema=schema))
            n += len(buf)
    return n


def write_export(store: ResultStore, out: str | os.PathLike, fmt: ExportFormat,
                 filt: ExportFilter | None = None) -> int:
    """Write the filtered rows to ``out`` atomically (temporary file, then rename); return the count.
    ``out`` must be a regular file or a new name (:func:`~nsfwlab.outputs.check_output_path`)."""
    rows = iter_records(store, filt)
    with atomic_output(out, binary=fmt is ExportFormat.PARQUET, what="export") as fh:
        if fmt is ExportFormat.PARQUET:
            return _write_parquet(rows, fh)
        return _write_csv(rows, fh) if fmt is ExportFormat.CSV else _write_jsonl(rows, fh)
