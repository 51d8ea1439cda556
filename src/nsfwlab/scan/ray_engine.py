"""``--engine ray``: the same scan on a Ray cluster, into the same results store.

The driver (this process) walks the tree, decides what to skip and owns the SQLite store, exactly
as the local engine does, with the same driver and sink (:mod:`.driver`, :mod:`.sink`). Only the
pool and the scorer differ:

- the workers are Ray tasks running the local workers' task (:func:`~nsfwlab.scan.worker.prepare_chunk`:
  read each file once, hash, decode and preprocess with the core), at most ``ScanConfig.window``
  files in flight, results back as uint8 pixels. They do not open the store (SQLite must not be
  shared across hosts): the driver's sink finds content already scored, before the model runs;
- the model runs in an actor pool of replicas (one per GPU where the cluster has GPUs, else one per
  four CPUs), each built from the scan config exactly as the local engine builds it
  (:func:`~nsfwlab.scan.config.build_scan_model`), a batch in flight per replica.

So scores, deduplication and the store's rows are the local engine's. Ray is imported only here.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..backends import Backend
from ..errors import ConfigError
from ..preprocess import stack_batch, unpack_array
from .config import Engine, ScanConfig, ScanModel, build_scan_model
from .driver import run, worker_context
from .sink import ProgressFn, ScanSummary, Sink
from .store import ResultStore
from .walk import WalkedFile
from .worker import Prepared, prepare_chunk, worker_died

__all__ = ["RayPool", "RayScorer", "scan_ray"]


class RayPool:
    """The workers as Ray tasks; a chunk whose task keeps failing is retried one file at a time."""

    def __init__(self, ray: Any, ctx: Any) -> None:
        self.ray = ray
        self.task = ray.remote(prepare_chunk).options(max_retries=1)
        self.ctx = ray.put(ctx)

    def submit(self, files: list[WalkedFile]) -> Any:
        return self.task.remote(files, self.ctx)

    def collect(self, files: list[WalkedFile], handle: Any) -> list[Prepared]:
        try:
            return list(self.ray.get(handle))
        except self.ray.exceptions.RayError:
            pass
        out: list[Prepared] = []
        for f in files:
            try:
                out.extend(self.ray.get(self.submit([f])))
            except self.ray.exceptions.RayError:
                out.append(worker_died(f))
        return out

    def shutdown(self) -> None:
        return None


class _ModelReplica:
    """One model per actor: built from the scan config (or the caller's picklable backend)."""

    def __init__(self, config: ScanConfig, backend: Backend | None, mean_bgr: tuple[float, float, float]) -> None:
        self.backend = backend if backend is not None else build_scan_model(config).backend
        self.mean_bgr = mean_bgr

    def predict(self, shas: list[str], arrays: list[np.ndarray]) -> tuple[list[str], list[float]]:
        x = stack_batch([unpack_array(a, self.mean_bgr) for a in arrays])
        return shas, self.backend.predict(x)[:, 1].tolist()


class RayScorer:
    """Sends batches of network inputs to the replicas, one batch in flight per replica."""

    def __init__(self, ray: Any, sink: Sink, model: ScanModel, config: ScanConfig, backend: Backend | None,
                 replicas: int, gpus_each: float) -> None:
        from ray.util import ActorPool

        actor = ray.remote(num_gpus=gpus_each)(_ModelReplica)
        self.ray, self.sink, self.batch_size = ray, sink, config.batch_size
        self.actors = [actor.remote(config, backend, model.preprocess.mean_bgr) for _ in range(replicas)]
        self.pool = ActorPool(self.actors)
        self.shas: list[str] = []
        self.arrays: list[np.ndarray] = []

    def add(self, p: Prepared) -> None:
        assert p.array is not None  # the sink hands over new content only, which has its array
        self.shas.append(p.sha256 or "")
        self.arrays.append(p.array)
        if len(self.arrays) >= self.batch_size:
            self._submit()

    def _submit(self) -> None:
        if not self.arrays:
            return
        if not self.pool.has_free():
            self.sink.scored(*self.pool.get_next_unordered())
        batch, self.shas, self.arrays = (self.shas, self.arrays), [], []
        self.pool.submit(lambda a, b: a.predict.remote(*b), batch)

    def flush(self) -> None:
        self._submit()
        while self.pool.has_next():
            self.sink.scored(*self.pool.get_next_unordered())

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)


def _replicas(ray: Any, device: str) -> tuple[int, float]:
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if device == "cuda":
        if gpus < 1:
            raise ConfigError("--device cuda with --engine ray needs GPUs in the Ray cluster; it has none")
        return gpus, 1.0
    return max(1, int(resources.get("CPU", 1)) // 4), 0.0


def scan_ray(roots: list[str], store: ResultStore, config: ScanConfig, *, model: ScanModel,
             backend: Backend | None = None, progress: ProgressFn | None = None) -> ScanSummary:
    """Scan on Ray. ``model`` (built on the driver) defines the versions; every replica builds the
    same model from ``config``, or uses ``backend`` (which must then be picklable)."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray: pip install 'nsfwlab[scan]'") from None

    from ..backends import resolve_device

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                 logging_level=logging.WARNING)
    replicas, gpus_each = _replicas(ray, resolve_device(config.device))
    sink = Sink(store, model, config, Engine.RAY.value, progress)
    scorer = RayScorer(ray, sink, model, config, backend, replicas, gpus_each)
    pool = RayPool(ray, worker_context(store, model, config, pack=True, lookup=False))
    try:
        return run(roots, sink, pool, scorer, config)
    finally:
        scorer.close()
