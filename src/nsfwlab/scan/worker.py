"""The worker side of every engine: read a file once, hash those bytes, look the hash up in the
store, and decode and preprocess those same bytes with the core (or, on the GPU path, hand JPEGs
that nvJPEG decodes faithfully back as raw bytes). Runs in threads, processes and Ray tasks alike."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from functools import partial
from pathlib import Path

import numpy as np

from ..config import DecodeLimits, PreprocessConfig
from ..errors import ImageError, NsfwlabError
from ..preprocess import pack_array
from .walk import WalkedFile

__all__ = [
    "GPU_JPEG_MODES",
    "Prepared",
    "Route",
    "WorkerContext",
    "prepare_bytes",
    "prepare_chunk",
    "prepare_file",
    "route",
    "worker_died",
]


class Route(str, Enum):
    GPU = "gpu"  # raw JPEG bytes, decoded by nvJPEG
    CPU = "cpu"  # preprocessed by the core on a CPU worker


#: Pillow modes of JPEGs that nvJPEG decodes to RGB faithfully.
GPU_JPEG_MODES = frozenset({"RGB", "L"})


def route(fmt: str, mode: str) -> Route:
    """Where a file is decoded, from its sniffed format and header mode."""
    return Route.GPU if fmt == "JPEG" and mode in GPU_JPEG_MODES else Route.CPU


@dataclass
class Prepared:
    """What a worker hands back for one file: its hash and one of its network input (``array``),
    its raw JPEG bytes for the GPU decoder (``data``), a cached score (identical content already in
    the store) or an error."""

    file: WalkedFile
    sha256: str | None = None
    array: np.ndarray | None = None
    cached: float | None = None
    error_code: str | None = None
    error: str | None = None
    data: bytes | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None or self.error_code is not None


@dataclass(frozen=True)
class WorkerContext:
    """What a decoding worker needs, sent with each task (small; no process-wide state)."""

    preprocess: PreprocessConfig
    limits: DecodeLimits
    db_path: str | None
    model_version: str
    preprocess_version: str
    pack: bool  # send uint8 pixels (processes, Ray) or the float32 array itself (threads)
    gpu_route: bool = False  # hand GPU-decodable JPEGs back as bytes (see :func:`route`)


_LOCAL = threading.local()


def _connection(db_path: str) -> sqlite3.Connection | None:
    """A read-only connection to the store, one per worker thread or process, opened once."""
    conns: dict[str, sqlite3.Connection | None] = getattr(_LOCAL, "conns", None) or {}
    _LOCAL.conns = conns
    if db_path not in conns:
        try:
            uri = Path(db_path).as_uri() + "?mode=ro"  # percent-encodes '?', '#', '%' in the path
            conns[db_path] = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)
        except sqlite3.Error:
            conns[db_path] = None
    return conns[db_path]


def _lookup(ctx: WorkerContext, sha: str) -> float | None:
    conn = _connection(ctx.db_path) if ctx.db_path else None
    if conn is None:
        return None
    try:
        row = conn.execute(
            "SELECT score FROM results WHERE sha256 = ? AND model_version = ? AND preprocess_version = ? "
            "AND status = 'ok' LIMIT 1", (sha, ctx.model_version, ctx.preprocess_version),
        ).fetchone()
    except sqlite3.Error:
        return None
    return None if row is None else float(row[0])


def _failure(file: WalkedFile, sha: str | None, exc: Exception) -> Prepared:
    if isinstance(exc, NsfwlabError):
        return Prepared(file, sha, error_code=exc.code, error=exc.message)
    return Prepared(file, sha, error_code=ImageError.code, error=f"unexpected {type(exc).__name__}: {exc}")


def prepare_bytes(file: WalkedFile, sha: str | None, data: bytes, preprocess: PreprocessConfig,
                  limits: DecodeLimits, *, gpu_route: bool = False) -> Prepared:
    """Preprocess a file's bytes with the core, or return them for the GPU when ``gpu_route``
    and :func:`route` sends them there (after the header check: bombs never reach the GPU)."""
    from ..imageio import open_image
    from ..preprocess import preprocess as core_preprocess

    try:
        if gpu_route:
            opened = open_image(data, limits)
            if route(opened.format, opened.image.mode) is Route.GPU:
                return Prepared(file, sha, data=data)
        return Prepared(file, sha, array=core_preprocess(data, preprocess, limits))
    except Exception as exc:
        return _failure(file, sha, exc)


def prepare_file(file: WalkedFile, preprocess: PreprocessConfig, limits: DecodeLimits,
                 lookup: Callable[[str], float | None] | None = None, *, gpu_route: bool = False) -> Prepared:
    """Read a file once, hash those bytes, and preprocess them (unless ``lookup`` knows the hash)."""
    from ..imageio import read_bytes

    try:
        data = read_bytes(file.path, limits)
    except NsfwlabError as exc:
        return _failure(file, None, exc)
    sha = hashlib.sha256(data).hexdigest()
    cached = lookup(sha) if lookup is not None else None
    if cached is not None:
        return Prepared(file, sha, cached=cached)
    return prepare_bytes(file, sha, data, preprocess, limits, gpu_route=gpu_route)


def worker_died(file: WalkedFile) -> Prepared:
    """The result of a file whose worker died (a decoder crash, the OOM killer): retried on the next run."""
    return Prepared(file, error_code="worker_died", error="the decoding worker died on this file (a decoder crash "
                                                          "or out of memory); it is retried on the next run")


def prepare_chunk(files: list[WalkedFile], ctx: WorkerContext) -> list[Prepared]:
    """The task every engine's workers run: :func:`prepare_file` on each file of a chunk."""
    out = [prepare_file(f, ctx.preprocess, ctx.limits, partial(_lookup, ctx), gpu_route=ctx.gpu_route)
           for f in files]
    if ctx.pack:
        for p in out:
            if p.array is not None:
                p.array = pack_array(p.array, ctx.preprocess.mean_bgr)
    return out
