"""The worker side of every engine: read a file once, hash those bytes, look the hash up in the
store, and decode and preprocess those same bytes with the core (or, on the GPU path, hand JPEGs
that nvJPEG decodes faithfully back as raw bytes). Runs in threads, processes and Ray tasks alike."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DecodeLimits, PreprocessConfig
from ..errors import ImageError, NsfwlabError
from ..frames import FrameOptions
from ..preprocess import pack_array
from .walk import WalkedFile

__all__ = [
    "GPU_JPEG_MODES",
    "FrameArrays",
    "Prepared",
    "Route",
    "WorkerContext",
    "pdq_of",
    "prepare_bytes",
    "prepare_chunk",
    "prepare_file",
    "route",
    "watch_parent",
    "worker_died",
]


class Route(StrEnum):
    GPU = "gpu"  # raw JPEG bytes, decoded by nvJPEG
    CPU = "cpu"  # preprocessed by the core on a CPU worker


#: Pillow modes of JPEGs that nvJPEG decodes to RGB faithfully.
GPU_JPEG_MODES = frozenset({"RGB", "L"})


def route(fmt: str, mode: str) -> Route:
    """Where a file is decoded, from its sniffed format and header mode."""
    return Route.GPU if fmt == "JPEG" and mode in GPU_JPEG_MODES else Route.CPU


@dataclass
class FrameArrays:
    """The sampled frames of a video or animation: their times and display durations (seconds) and
    network inputs, in order (:func:`nsfwlab.frames.iter_frames` + the core's preprocessing)."""

    kind: str  # "video" or "animation"
    times: list[float]
    durations: list[float]
    arrays: list[np.ndarray]


@dataclass
class Prepared:
    """What a worker hands back for one file: its hash and one of its network input (``array``),
    the network inputs of its sampled frames (``frames``: a video or animation), its raw JPEG
    bytes for the GPU decoder (``data``), a cached raw score (identical content already in the
    store) or an error."""

    file: WalkedFile
    sha256: str | None = None
    array: np.ndarray | None = None
    cached: float | None = None
    error_code: str | None = None
    error: str | None = None
    data: bytes | None = None
    frames: FrameArrays | None = None
    pdq: Any = None  # the still image's nsfwlab.bank.PdqHash (when the scan matches against a bank)

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
    frames: FrameOptions | None = None  # score videos and animations over their frames (None: stills only)
    pdq: bool = False  # PDQ-hash still images, for matching against a hash bank


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
        cur = conn.cursor()
        cur.row_factory = sqlite3.Row
        row = cur.execute(
            "SELECT COALESCE(raw_score, score) AS raw FROM results "
            "WHERE sha256 = ? AND model_version = ? AND preprocess_version = ? "
            "AND status = 'ok' LIMIT 1", (sha, ctx.model_version, ctx.preprocess_version),
        ).fetchone()
    except sqlite3.Error:
        return None
    return None if row is None else float(row["raw"])


def _failure(file: WalkedFile, sha: str | None, exc: Exception) -> Prepared:
    if isinstance(exc, NsfwlabError):
        return Prepared(file, sha, error_code=exc.code, error=exc.message)
    return Prepared(file, sha, error_code=ImageError.code, error=f"unexpected {type(exc).__name__}: {exc}")


def prepare_frames(file: WalkedFile, sha: str | None, data: bytes, preprocess: PreprocessConfig,
                   limits: DecodeLimits, options: FrameOptions) -> Prepared | None:
    """The sampled frames of a video or animation, preprocessed by the core (as
    :meth:`nsfwlab.Detector.score_frames` does); ``None`` for a still image."""
    from ..frames import iter_frames
    from ..preprocess import preprocess_rgb
    from ..verdict import Kind, kind_of

    kind = kind_of(data)
    if kind is Kind.IMAGE:
        return None
    out = FrameArrays(kind.value, [], [], [])
    for frame in iter_frames(data, options, limits):
        out.arrays.append(preprocess_rgb(frame.image(), preprocess))
        out.times.append(frame.time)
        out.durations.append(frame.duration)
    return Prepared(file, sha, frames=out)


def prepare_bytes(file: WalkedFile, sha: str | None, data: bytes, preprocess: PreprocessConfig,
                  limits: DecodeLimits, *, gpu_route: bool = False, frames: FrameOptions | None = None) -> Prepared:
    """Preprocess a file's bytes with the core (a video's or animation's sampled frames when
    ``frames``), or return them for the GPU when ``gpu_route`` and :func:`route` sends them there
    (after the header check: bombs never reach the GPU)."""
    from ..imageio import open_image
    from ..preprocess import preprocess as core_preprocess

    try:
        if frames is not None and (sampled := prepare_frames(file, sha, data, preprocess, limits, frames)):
            return sampled
        if gpu_route:
            opened = open_image(data, limits)
            if route(opened.format, opened.image.mode) is Route.GPU:
                return Prepared(file, sha, data=data)
        return Prepared(file, sha, array=core_preprocess(data, preprocess, limits))
    except Exception as exc:
        return _failure(file, sha, exc)


def pdq_of(data: bytes, limits: DecodeLimits) -> Any:
    """The PDQ hash of a still image's bytes (``None`` for a video, an animation or an undecodable file)."""
    from ..bank import pdq_hash
    from ..verdict import Kind, kind_of

    try:
        return pdq_hash(data, limits) if kind_of(data) is Kind.IMAGE else None
    except NsfwlabError:
        return None


def prepare_file(file: WalkedFile, preprocess: PreprocessConfig, limits: DecodeLimits,
                 lookup: Callable[[str], float | None] | None = None, *, gpu_route: bool = False,
                 frames: FrameOptions | None = None, pdq: bool = False) -> Prepared:
    """Read a file once, hash those bytes, and preprocess them (unless ``lookup`` knows the hash);
    ``pdq``: also the PDQ hash of a still image's bytes."""
    from ..imageio import read_bytes

    try:
        data = read_bytes(file.path, limits)
    except NsfwlabError as exc:
        return _failure(file, None, exc)
    sha = hashlib.sha256(data).hexdigest()
    cached = lookup(sha) if lookup is not None else None
    p = Prepared(file, sha, cached=cached) if cached is not None else \
        prepare_bytes(file, sha, data, preprocess, limits, gpu_route=gpu_route, frames=frames)
    if pdq and p.frames is None and not p.failed:
        p.pdq = pdq_of(data, limits)
    return p


def worker_died(file: WalkedFile) -> Prepared:
    """The result of a file whose worker died (a decoder crash, the OOM killer): retried on the next run."""
    return Prepared(file, error_code="worker_died", error="the decoding worker died on this file (a decoder crash "
                                                          "or out of memory); it is retried on the next run")


def prepare_chunk(files: list[WalkedFile], ctx: WorkerContext) -> list[Prepared]:
    """The task every engine's workers run: :func:`prepare_file` on each file of a chunk."""
    out = [prepare_file(f, ctx.preprocess, ctx.limits, partial(_lookup, ctx), gpu_route=ctx.gpu_route,
                        frames=ctx.frames, pdq=ctx.pdq) for f in files]
    if ctx.pack:
        for p in out:
            if p.array is not None:
                p.array = pack_array(p.array, ctx.preprocess.mean_bgr)
            if p.frames is not None:
                p.frames.arrays = [pack_array(a, ctx.preprocess.mean_bgr) for a in p.frames.arrays]
    return out


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a killed process not yet reaped by its parent, a zombie, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): the signal answered


def _exit_when_gone(pid: int, interval: float) -> None:
    while _alive(pid):
        time.sleep(interval)
    os._exit(1)


def watch_parent(pid: int, interval: float = 0.5) -> None:
    """A worker process's initializer: exit as soon as the scan's process ``pid`` is gone.

    A scan killed with SIGKILL or SIGTERM runs no cleanup, and its worker processes (children of the
    multiprocessing fork server, not of the scan) would live on, blocked on their task queue. A daemon
    thread polls the scan's process every ``interval`` seconds and ends the worker when it is gone.
    """
    threading.Thread(target=_exit_when_gone, args=(pid, interval), name="nsfwlab-parent-watch",
                     daemon=True).start()
