"""Scale: scan directory trees of any size into a resumable SQLite results store, and export it.

>>> from nsfwlab.scan import ResultStore, ScanConfig, scan      # doctest: +SKIP
>>> with ResultStore("results.sqlite") as store:                 # doctest: +SKIP
...     summary = scan(["/photos"], store, ScanConfig())

Heavy or optional pieces (Ray, pyarrow, torchvision) are imported only when used.
"""

from __future__ import annotations

from .export import ExportFilter, ExportFormat, iter_records, write_export
from .modes import ScanMode, quantize_int8
from .pipeline import Engine, Executor, ScanConfig, ScanModel, ScanSummary, build_scan_model, scan
from .store import COLUMNS, FileRecord, ResultStore, ScanAction, Status, StoreError
from .walk import WalkConfig, walk

__all__ = [
    "COLUMNS",
    "Engine",
    "Executor",
    "ExportFilter",
    "ExportFormat",
    "FileRecord",
    "ResultStore",
    "ScanAction",
    "ScanConfig",
    "ScanMode",
    "ScanModel",
    "ScanSummary",
    "Status",
    "StoreError",
    "WalkConfig",
    "build_scan_model",
    "iter_records",
    "quantize_int8",
    "scan",
    "walk",
    "write_export",
]


def __getattr__(name: str) -> object:
    if name == "Decision":  # deprecated: nsfwlab.bank.Decision is a reviewer's decision
        from . import store

        return store.Decision
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
