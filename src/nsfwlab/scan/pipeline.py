"""The scan entry point and the local engine: a streaming walk, decoding in worker threads or
processes, batched inference, a results store written one transaction per batch.

::

    walk (generator) -> store.decide (skip unchanged) -> workers: read once, sha256, dedupe lookup,
    safe decode + core preprocessing -> main thread: dedupe, batch, model, label -> store.write

The pieces are shared by every engine: :mod:`.worker` (the workers' task), :mod:`.driver` (the
bounded window of files in flight), :mod:`.sink` (dedupe, reuse, the store). The GPU engine
(:mod:`.gpu`) and the Ray engine (:mod:`.ray_engine`) differ only in their pool and their scorer.
Identical content is scored at most once per model/preprocessing version.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from ..backends import Backend
from ..config import PreprocessConfig
from ..preprocess import pack_array, unpack_array
from .config import Engine, Executor, ScanConfig, ScanModel, build_scan_model, check_roots
from .driver import ArrayScorer, Workers, run, worker_context
from .modes import ScanMode, fast_preprocess
from .sink import ProgressFn, ScanSummary, Sink
from .store import ResultStore
from .worker import Prepared, WorkerContext, prepare_file

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
    "scan_local",
    "unpack_array",
    "worker_context",
]


def scan_local(roots: list[str], store: ResultStore, config: ScanConfig, *, model: ScanModel,
               progress: ProgressFn | None = None) -> ScanSummary:
    """The local engine: worker threads or processes decode, the model runs in this thread."""
    sink = Sink(store, model, config, Engine.LOCAL.value, progress)
    pool = Workers(config.n_workers, worker_context(store, model, config), config.executor_kind)
    return run(roots, sink, pool, ArrayScorer(sink, model, config.model_batch(model.backend.device)), config)


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
    if config.calibration is not None:
        config.calibration.check(model.model_version, model.preprocess_version)
    if config.engine is Engine.RAY:
        from .ray_engine import scan_ray

        return scan_ray(root_list, store, config, model=model, backend=backend, progress=progress)
    if config.mode is ScanMode.FAST and model.backend.device == "cuda" and backend is None:
        from .gpu import scan_gpu

        return scan_gpu(root_list, store, config, model=model, progress=progress)
    return scan_local(root_list, store, config, model=model, progress=progress)
