"""The local scan pipeline: a streaming walk, decoding in worker threads or processes, batched
inference, a results store written one transaction per batch.

::

    walk (generator) -> store.decide (skip unchanged) -> workers: read, sha256, dedupe lookup,
    safe decode + core preprocessing -> main thread: batch, model, label -> store.write

Memory is bounded by the window of files in flight (``ScanConfig.window``), never by the tree.
The model runs in the main thread while the workers decode the next files, so decoding and
inference overlap. Identical content is decoded at most once per run and scored at most once
per model/preprocessing version.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..backends import Backend
from ..config import DecodeLimits, Device, Label, Precision, PreprocessConfig, Thresholds
from ..errors import ConfigError, ImageError, ModelError, NsfwlabError
from ..preprocess import pack_array, unpack_array
from .modes import QUANT_VERSION, ScanMode, fast_preprocess, quantize_int8
from .store import Decision, FileRecord, ResultStore, Status
from .walk import WalkConfig, WalkedFile, walk

__all__ = [
    "Engine",
    "Executor",
    "Prepared",
    "ScanConfig",
    "ScanModel",
    "ScanSummary",
    "WorkerContext",
    "build_scan_model",
    "check_roots",
    "pack_array",
    "prepare_file",
    "scan",
    "unpack_array",
    "worker_context",
]


class Engine(str, Enum):
    LOCAL = "local"
    RAY = "ray"


class Executor(str, Enum):
    """How the local engine decodes in parallel. ``auto``: threads on machines with up to 4 cores
    (measured faster there: no pickling, no second interpreter), processes above (no GIL
    contention, and a decoder crash only costs the file that caused it)."""

    AUTO = "auto"
    PROCESS = "process"
    THREAD = "thread"


@dataclass(frozen=True)
class ScanConfig:
    """How a scan runs. ``workers``: decoding threads or processes (see :attr:`n_workers`); ``threads``: model
    threads; ``chunk``: files per worker task; ``max_attempts``: failed files are retried on later
    runs until they failed this often (unless they change)."""

    mode: ScanMode = ScanMode.EXACT
    device: Device = Device.CPU
    engine: Engine = Engine.LOCAL
    executor: Executor = Executor.AUTO
    batch_size: int = 32
    workers: int | None = None
    threads: int | None = None
    chunk: int = 4
    max_attempts: int = 3
    thresholds: Thresholds = field(default_factory=Thresholds)
    limits: DecodeLimits = field(default_factory=DecodeLimits.from_env)
    walk: WalkConfig = field(default_factory=WalkConfig)
    model: str | None = None
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        for name in ("batch_size", "chunk", "max_attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("workers", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")

    @property
    def executor_kind(self) -> Executor:
        if self.executor is not Executor.AUTO:
            return self.executor
        return Executor.THREAD if (os.cpu_count() or 1) <= 4 else Executor.PROCESS

    @property
    def n_workers(self) -> int:
        """Default: one decoding thread per core (they share the cores with the model's threads;
        Pillow releases the GIL), or half the cores as processes, the model's threads using the
        rest (measured in BENCHMARKS.md)."""
        if self.workers:
            return self.workers
        cores = os.cpu_count() or 1
        return cores if self.executor_kind is Executor.THREAD else max(1, cores // 2)

    @property
    def window(self) -> int:
        """Files in flight at most (decoded or being decoded, not yet written)."""
        return max(2 * self.batch_size, 4 * self.n_workers * self.chunk)


@dataclass(frozen=True)
class ScanModel:
    """A ready model for a scan: the backend and the preprocessing its scores are defined by."""

    backend: Backend
    preprocess: PreprocessConfig
    mode: ScanMode

    @property
    def model_version(self) -> str:
        return self.backend.model_version

    @property
    def preprocess_version(self) -> str:
        return self.preprocess.version


def build_scan_model(config: ScanConfig) -> ScanModel:
    """Load the model a mode needs, through the core (``Detector`` / ``nsfwlab.checkpoint``)."""
    from ..backends import OnnxRuntimeBackend, resolve_device
    from ..detector import Detector
    from ..weights import MODEL_VERSION

    device = resolve_device(config.device)
    if config.mode is ScanMode.EXACT:
        # fp32 everywhere: fp16 on CUDA would drift by ~7e-4 from `nsfwlab score` on the CPU, and
        # so would TF32 convolutions (PyTorch's default on Ampere and later), so exact turns it off.
        if device == "cuda":
            import torch

            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        det = Detector(device=device, precision=Precision.FP32, threads=config.threads, model=config.model,
                       batch_size=config.batch_size)
        return ScanModel(det.backend, det.preprocess_config, ScanMode.EXACT)
    if device == "cuda":
        # fp16 channels-last on the GPU (|Δ| ~7e-4 against fp32); the GPU pipeline adds GPU decoding.
        from ..backends import TorchBackend

        if config.model is None:
            gpu_backend: Backend = TorchBackend(device="cuda", precision=Precision.FP16,
                                                model_version=f"{MODEL_VERSION}-fp16")
            return ScanModel(gpu_backend, fast_preprocess(PreprocessConfig()), ScanMode.FAST)
        # auto: fp16 for a .pt checkpoint on CUDA; an exported .onnx runs fp32 on onnxruntime.
        det = Detector(device="cuda", precision=Precision.AUTO, model=config.model)
        if isinstance(det.backend, TorchBackend):
            det.backend.model_version = f"{det.model_version}-fp16"
        return ScanModel(det.backend, fast_preprocess(det.preprocess_config), ScanMode.FAST)
    if config.model is None:
        path = quantize_int8(None, cache_dir=config.cache_dir)
        backend: Backend = OnnxRuntimeBackend(path, verify=False, threads=config.threads,
                                              model_version=f"{MODEL_VERSION}-{QUANT_VERSION}")
        return ScanModel(backend, fast_preprocess(PreprocessConfig()), ScanMode.FAST)
    det = Detector(device=device, threads=config.threads, model=config.model, batch_size=config.batch_size)
    base = det.preprocess_config
    source = getattr(det.backend, "onnx_path", None)
    if source is not None:
        path = quantize_int8(source, cache_dir=config.cache_dir)
        backend = OnnxRuntimeBackend(path, verify=False, threads=config.threads,
                                     model_version=f"{det.model_version}-{QUANT_VERSION}")
        return ScanModel(backend, fast_preprocess(base), ScanMode.FAST)
    # A .pt checkpoint: fp32 torch model, DCT-scaled decoding only (export it to .onnx for int8).
    return ScanModel(det.backend, fast_preprocess(base), ScanMode.FAST)


# -- worker side ---------------------------------------------------------------------------------

@dataclass
class Prepared:
    """What a worker hands back for one file: its hash and either its array, a cached score
    (identical content already in the store) or an error."""

    file: WalkedFile
    sha256: str | None = None
    array: np.ndarray | None = None
    cached: float | None = None
    error_code: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class WorkerContext:
    """What a decoding worker needs, sent with each task (small; no process-wide state)."""

    preprocess: PreprocessConfig
    limits: DecodeLimits
    db_path: str | None
    model_version: str
    preprocess_version: str
    pack: bool  # send uint8 pixels (processes) or the float32 array itself (threads)


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


def prepare_file(file: WalkedFile, preprocess: PreprocessConfig, limits: DecodeLimits,
                 lookup: Callable[[str], float | None] | None = None) -> Prepared:
    """Read a file once, hash it, and preprocess it with the core (unless ``lookup`` knows the hash)."""
    from ..imageio import read_bytes
    from ..preprocess import preprocess as core_preprocess

    try:
        data = read_bytes(file.path, limits)
        sha = hashlib.sha256(data).hexdigest()
    except NsfwlabError as exc:
        return Prepared(file, error_code=exc.code, error=exc.message)
    cached = lookup(sha) if lookup is not None else None
    if cached is not None:
        return Prepared(file, sha, cached=cached)
    try:
        arr = core_preprocess(data, preprocess, limits)
    except NsfwlabError as exc:
        return Prepared(file, sha, error_code=exc.code, error=exc.message)
    except Exception as exc:
        return Prepared(file, sha, error_code=ImageError.code, error=f"unexpected {type(exc).__name__}: {exc}")
    return Prepared(file, sha, array=arr)


def _prepare_chunk(files: list[WalkedFile], ctx: WorkerContext) -> list[Prepared]:
    out = [prepare_file(f, ctx.preprocess, ctx.limits, partial(_lookup, ctx)) for f in files]
    if ctx.pack:
        for p in out:
            if p.array is not None:
                p.array = pack_array(p.array, ctx.preprocess.mean_bgr)
    return out


# -- main side -----------------------------------------------------------------------------------

@dataclass
class ScanSummary:
    """What a scan did. ``scored``: files the model ran on; ``reused``: files whose identical
    content already had a score; ``skipped``: unchanged files already in the store."""

    model_version: str
    preprocess_version: str
    mode: str
    engine: str
    seen: int = 0
    skipped: int = 0
    scored: int = 0
    reused: int = 0
    errors: int = 0
    labels: dict[str, int] = field(default_factory=lambda: {label.value: 0 for label in Label})
    error_codes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def processed(self) -> int:
        return self.scored + self.reused + self.errors

    @property
    def files_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version, "preprocess_version": self.preprocess_version,
            "mode": self.mode, "engine": self.engine, "seen": self.seen, "skipped": self.skipped,
            "scored": self.scored, "reused": self.reused, "errors": self.errors, "labels": dict(self.labels),
            "error_codes": dict(self.error_codes), "seconds": round(self.seconds, 3),
            "files_per_second": round(self.files_per_second, 2),
        }


ProgressFn = Callable[[int, int], None]


def check_roots(roots: Iterable[str | os.PathLike]) -> list[str]:
    out = [os.fspath(r) for r in roots]
    if not out:
        raise ConfigError("give at least one directory or file to scan")
    for r in out:
        if not os.path.exists(r):
            raise ConfigError(f"{r}: no such file or directory")
        if not (os.path.isdir(r) or os.path.isfile(r)):
            raise ConfigError(f"{r}: not a regular file or directory (a pipe, socket or device)")
    return out


class _Writer:
    """Accumulates records and scores; writes one transaction per model batch."""

    def __init__(self, store: ResultStore, model: ScanModel, thresholds: Thresholds, batch_size: int,
                 summary: ScanSummary, progress: ProgressFn | None) -> None:
        self.store, self.model, self.thresholds = store, model, thresholds
        self.batch_size, self.summary, self.progress = batch_size, summary, progress
        self.records: list[FileRecord] = []
        self.arrays: list[np.ndarray] = []
        self.waiting: list[tuple[WalkedFile, str]] = []  # files whose array is in self.arrays
        self.twins: dict[str, list[WalkedFile]] = {}  # same content as a file waiting in this batch
        self.pending_skips = 0

    def record(self, file: WalkedFile, sha: str | None, *, score: float | None = None,
                error_code: str | None = None, error: str | None = None, reused: bool = False) -> None:
        if score is not None:
            label = self.thresholds.label(score).value
            self.summary.labels[label] += 1
            if reused:
                self.summary.reused += 1
            else:
                self.summary.scored += 1
            self.records.append(FileRecord(file.path, file.size, file.mtime_ns, sha, Status.OK,
                                           self.model.model_version, self.model.preprocess_version,
                                           self.model.mode.value, score=score, label=label, reused=reused))
        else:
            self.summary.errors += 1
            code = error_code or "error"
            self.summary.error_codes[code] = self.summary.error_codes.get(code, 0) + 1
            self.records.append(FileRecord(file.path, file.size, file.mtime_ns, sha, Status.ERROR,
                                           self.model.model_version, self.model.preprocess_version,
                                           self.model.mode.value, error_code=code, error=error))

    def skip(self) -> None:
        self.pending_skips += 1
        if self.pending_skips >= 256 and self.progress is not None:
            # Report skipped files as they go by; pending records are reported when written.
            self.progress(self.pending_skips, 0)
            self.pending_skips = 0

    def add(self, p: Prepared) -> None:
        if p.error is not None or p.error_code is not None:
            self.record(p.file, p.sha256, error_code=p.error_code, error=p.error)
        elif p.cached is not None:
            self.record(p.file, p.sha256, score=p.cached, reused=True)
        else:
            assert p.array is not None and p.sha256 is not None
            if p.sha256 in self.twins:
                self.twins[p.sha256].append(p.file)
            else:
                known = self.store.cached_score(p.sha256, self.model.model_version, self.model.preprocess_version)
                if known is not None:
                    self.record(p.file, p.sha256, score=known, reused=True)
                else:
                    self.twins[p.sha256] = []
                    self.arrays.append(unpack_array(p.array, self.model.preprocess.mean_bgr))
                    self.waiting.append((p.file, p.sha256))
        if len(self.arrays) >= self.batch_size or len(self.records) >= 4 * self.batch_size:
            self.flush()

    def flush(self) -> None:
        from ..preprocess import stack_batch

        if self.arrays:
            scores = self.model.backend.predict(stack_batch(self.arrays))[:, 1].tolist()
            for (file, sha), s in zip(self.waiting, scores, strict=True):
                self.record(file, sha, score=float(s))
                for twin in self.twins.get(sha, []):
                    self.record(twin, sha, score=float(s), reused=True)
            self.arrays, self.waiting, self.twins = [], [], {}
        done = len(self.records) + self.pending_skips
        errors = sum(1 for r in self.records if r.status is Status.ERROR)
        if self.records:
            self.store.write(self.records)
        self.records = []
        self.pending_skips = 0
        if self.progress is not None and done:
            self.progress(done, errors)


def _plan(roots: list[str], store: ResultStore, model: ScanModel, config: ScanConfig,
          writer: _Writer) -> Iterator[WalkedFile]:
    for f in walk(roots, config.walk):
        writer.summary.seen += 1
        if store.decide(f.path, f.size, f.mtime_ns, model.model_version, model.preprocess_version,
                        max_attempts=config.max_attempts) is Decision.SKIP:
            writer.summary.skipped += 1
            writer.skip()
            continue
        yield f


def _chunks(files: Iterator[WalkedFile], size: int) -> Iterator[list[WalkedFile]]:
    chunk: list[WalkedFile] = []
    for f in files:
        chunk.append(f)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _mp_context() -> Any:
    methods = multiprocessing.get_all_start_methods()
    # Never fork a process that holds onnxruntime/torch thread pools.
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


class _Workers:
    """The decoding pool: worker processes (rebuilt when one dies) or threads.

    Processes: a chunk whose worker died (a decoder crash, the OOM killer) is retried one file at
    a time in a fresh pool, so only the file that kills a worker is recorded as ``worker_died``
    (and retried on a later run, up to ``max_attempts``). Pools that keep dying before finishing
    any file mean the workers cannot start at all: that stops the scan with a clear error.
    Threads share the process, so a decoder crash would end the scan (committed batches stay).
    """

    MAX_BARREN_RESTARTS = 3

    def __init__(self, n: int, ctx: WorkerContext, kind: Executor,
                 task: Callable[[list[WalkedFile], WorkerContext], list[Any]] | None = None) -> None:
        self.n, self.ctx, self.kind = n, ctx, kind
        self.task = task or _prepare_chunk
        self.pool = self._make()
        self.barren_restarts = 0

    def _make(self) -> ProcessPoolExecutor | ThreadPoolExecutor:
        if self.kind is Executor.THREAD:
            return ThreadPoolExecutor(self.n, thread_name_prefix="nsfwlab-scan")
        return ProcessPoolExecutor(self.n, mp_context=_mp_context())

    def _restart(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.barren_restarts += 1
        if self.barren_restarts > self.MAX_BARREN_RESTARTS:
            raise ModelError(
                "decoding worker processes keep dying before finishing any file; if you call "
                "nsfwlab.scan.scan from a script, put the call under `if __name__ == '__main__':`"
            )
        self.pool = self._make()

    def submit(self, files: list[WalkedFile]) -> Future[list[Any]]:
        try:
            return self.pool.submit(self.task, files, self.ctx)
        except BrokenProcessPool:
            self._restart()
            return self.pool.submit(self.task, files, self.ctx)

    def collect(self, files: list[WalkedFile], fut: Future[list[Any]]) -> list[Any]:
        try:
            results = fut.result()
            self.barren_restarts = 0
            return results
        except BrokenProcessPool:
            pass
        out: list[Any] = []
        for f in files:
            try:
                out.extend(self.submit([f]).result())
                self.barren_restarts = 0
            except BrokenProcessPool:
                out.append(Prepared(f, error_code="worker_died",
                                    error="the decoding worker died on this file (a decoder crash or out of "
                                          "memory); it is retried on the next run"))
                self._restart()
        return out

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def worker_context(store: ResultStore, model: ScanModel, config: ScanConfig) -> WorkerContext:
    return WorkerContext(model.preprocess, config.limits, str(store.path.resolve()), model.model_version,
                         model.preprocess_version, pack=config.executor_kind is Executor.PROCESS)


def scan(roots: Iterable[str | os.PathLike], store: ResultStore, config: ScanConfig | None = None, *,
         model: ScanModel | None = None, backend: Backend | None = None,
         progress: ProgressFn | None = None) -> ScanSummary:
    """Scan ``roots`` into ``store``; return what was done.

    ``model`` is a ready :class:`ScanModel` (default: built from ``config``). ``backend`` replaces
    only the inference engine and keeps the mode's preprocessing: a seam for tests and for
    callers with their own backend. ``progress(n, errors)`` is called after each written batch.
    """
    config = config or ScanConfig()
    root_list = check_roots(roots)
    if model is None:
        if backend is not None:
            pre = fast_preprocess(PreprocessConfig()) if config.mode is ScanMode.FAST else PreprocessConfig()
            model = ScanModel(backend, pre, config.mode)
        else:
            model = build_scan_model(config)
    if config.engine is Engine.RAY:
        from .ray_engine import scan_ray

        return scan_ray(root_list, store, config, model=model, backend=backend, progress=progress)
    if config.mode is ScanMode.FAST and model.backend.device == "cuda" and backend is None:
        from .gpu import scan_gpu

        return scan_gpu(root_list, store, config, model=model, progress=progress)
    summary = ScanSummary(model.model_version, model.preprocess_version, model.mode.value, Engine.LOCAL.value)
    writer = _Writer(store, model, config.thresholds, config.batch_size, summary, progress)
    run_id = store.start_run(model_version=model.model_version, preprocess_version=model.preprocess_version,
                             mode=model.mode.value, engine=Engine.LOCAL.value, roots=root_list)
    workers = _Workers(config.n_workers, worker_context(store, model, config), config.executor_kind)
    drive_workers(_plan(root_list, store, model, config, writer), workers, config, summary,
                  sink=writer.add, flush=writer.flush)
    store.finish_run(run_id, scored=summary.scored, reused=summary.reused, skipped=summary.skipped,
                     errors=summary.errors)
    return summary


def drive_workers(planned: Iterator[WalkedFile], workers: _Workers, config: ScanConfig, summary: ScanSummary,
                  *, sink: Callable[[Any], None], flush: Callable[[], None]) -> None:
    """Feed planned files to the workers in chunks, keep at most ``config.window`` files in flight,
    hand each worker result to ``sink`` in order, then ``flush``; shared by the CPU and GPU scans."""
    start = time.perf_counter()
    max_chunks = max(1, config.window // config.chunk)
    window: deque[tuple[list[WalkedFile], Future[list[Any]]]] = deque()
    try:
        for files in _chunks(planned, config.chunk):
            window.append((files, workers.submit(files)))
            while len(window) >= max_chunks:
                for item in workers.collect(*window.popleft()):
                    sink(item)
        while window:
            for item in workers.collect(*window.popleft()):
                sink(item)
        flush()
    finally:
        workers.shutdown()
        summary.seconds = time.perf_counter() - start
