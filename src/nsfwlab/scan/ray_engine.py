"""``--engine ray``: the same scan on a Ray cluster, into the same results store.

The driver (this process) walks the tree, decides what to skip and owns the SQLite store, exactly
as the local engine does, with the same driver and sink (:mod:`.driver`, :mod:`.sink`). Only the
pool and the scorer differ:

- the workers are Ray tasks running the local workers' task (:func:`~nsfwlab.scan.worker.prepare_chunk`:
  read each file once, hash, decode and preprocess with the core), at most ``ScanConfig.window``
  files in flight, results back as uint8 pixels. They do not open the store (SQLite must not be
  shared across hosts): the driver's sink finds content already scored, before the model runs;
- the model runs in replicas (actors: one per GPU where the cluster has GPUs, else one per four
  CPUs), each built from the scan config exactly as the local engine builds it
  (:func:`~nsfwlab.scan.config.build_scan_model`), a batch in flight per replica.

So scores, deduplication and the store's rows are the local engine's. Ray is imported only here.

A worker node may die mid-scan (the store is on the driver, whose node must live): Ray re-runs its
decoding tasks, rebuilds their results lost with it, and restarts its replicas elsewhere, retrying
their batches, all a bounded number of times (:data:`TASK_RETRIES`, :data:`REPLICA_RESTARTS`).
Past that a file is reported ``worker_died`` (retried on the next run), a replica's batch goes to
another replica, and a cluster that keeps losing workers stops the scan with a one-line
:class:`~nsfwlab.errors.ModelError`; what was written stays.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import numpy as np

from ..backends import Backend
from ..errors import ConfigError, ModelError
from ..preprocess import stack_batch, unpack_array
from .config import Engine, ScanConfig, ScanModel, build_scan_model
from .driver import run, worker_context
from .sink import ProgressFn, ScanSummary, Sink
from .store import ResultStore
from .walk import WalkedFile
from .worker import Prepared, prepare_chunk, worker_died

__all__ = ["MAX_LOST_IN_A_ROW", "REPLICA_RESTARTS", "TASK_RETRIES", "RayPool", "RayScorer", "scan_ray"]

logger = logging.getLogger(__name__)


#: Retries of a decoding task whose worker or node died, or whose results were lost with a node
#: (Ray re-runs the task to rebuild them). Then its files are tried one at a time.
TASK_RETRIES = 3
#: Restarts of a model replica whose worker or node died; its calls in flight are retried on the
#: restarted replica. A replica past its restarts is dropped and its batch goes to another one.
#: A call is retried only while its replica restarts, so this bounds the calls' retries too.
REPLICA_RESTARTS = 3
#: Files in a row whose task failed even alone: the cluster has lost its workers, the scan stops.
MAX_LOST_IN_A_ROW = 4


class RayPool:
    """The workers as Ray tasks (retried by Ray when a worker or node dies); a chunk whose task
    still fails is retried one file at a time, and a file that fails alone is reported
    ``worker_died`` (retried on the next run). Files failing alone in a row stop the scan."""

    def __init__(self, ray: Any, ctx: Any) -> None:
        self.ray = ray
        self.task = ray.remote(prepare_chunk).options(max_retries=TASK_RETRIES)
        self.ctx = ray.put(ctx)
        self.lost_in_a_row = 0

    def submit(self, files: list[WalkedFile]) -> Any:
        return self.task.remote(files, self.ctx)

    def _get(self, handle: Any) -> list[Prepared] | None:
        """The task's results, or None if its worker or node was lost (a bug in the task raises)."""
        try:
            return list(self.ray.get(handle))
        except self.ray.exceptions.RayTaskError:
            raise
        except self.ray.exceptions.RayError:
            return None

    def collect(self, files: list[WalkedFile], handle: Any) -> list[Prepared]:
        results = self._get(handle)
        if results is not None:
            return results
        out: list[Prepared] = []
        for f in files:
            alone = self._get(self.submit([f]))
            self.lost_in_a_row = 0 if alone is not None else self.lost_in_a_row + 1
            if self.lost_in_a_row >= MAX_LOST_IN_A_ROW:
                raise ModelError(f"Ray decoding tasks keep dying ({self.lost_in_a_row} files in a row, each "
                                 f"retried {TASK_RETRIES} times): the cluster is losing its workers; the results "
                                 "so far are in the store, run the scan again to go on")
            out.extend(alone if alone is not None else [worker_died(f)])
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


_Batch = tuple[list[str], list[np.ndarray]]


class RayScorer:
    """Sends batches of network inputs to the replicas, one batch in flight per replica.

    Ray restarts a replica that dies (up to :data:`REPLICA_RESTARTS` times) and retries its batch
    there; past that, the replica is dropped and its batch goes to another one. With no replica
    left the scan stops with a :class:`~nsfwlab.errors.ModelError` (written batches stay)."""

    def __init__(self, ray: Any, sink: Sink, model: ScanModel, config: ScanConfig, backend: Backend | None,
                 replicas: int, gpus_each: float) -> None:
        # A replica never holds a CPU, which the decoding tasks need (holding one can starve them:
        # a hang on a one-CPU cluster, or after a node loss). On CPUs, Ray's default: it is placed
        # on a node with a free CPU and holds none; on GPUs, it holds its GPU only.
        holds = {"num_gpus": gpus_each, "num_cpus": 0} if gpus_each else {}
        # A call is retried for as long as its replica is restarting (so bounded by the restarts):
        # until Ray has marked a lost node dead (seconds), the calls to its replica keep failing,
        # and a fixed number of retries would be spent before the restart.
        actor = ray.remote(max_restarts=REPLICA_RESTARTS, max_task_retries=-1, **holds)(_ModelReplica)
        self.ray, self.sink, self.batch_size = ray, sink, config.model_batch(model.backend.device)
        self.idle = [actor.remote(config, backend, model.preprocess.mean_bgr) for _ in range(replicas)]
        self.busy: dict[Any, tuple[Any, _Batch]] = {}  # call -> (replica, its batch)
        self.queue: deque[_Batch] = deque()
        self.shas: list[str] = []
        self.arrays: list[np.ndarray] = []

    def add(self, p: Prepared) -> None:
        assert p.array is not None  # the sink hands over new content only, which has its array
        self.shas.append(p.sha256 or "")
        self.arrays.append(p.array)
        if len(self.arrays) >= self.batch_size:
            self._pump(wait_all=False)

    def flush(self) -> None:
        self._pump(wait_all=True)

    def _pump(self, *, wait_all: bool) -> None:
        """Send the pending batch (and any batch back from a dropped replica); with ``wait_all``,
        also wait for every batch in flight."""
        if self.arrays:
            self.queue.append((self.shas, self.arrays))
            self.shas, self.arrays = [], []
        while self.queue or (wait_all and self.busy):
            if self.queue and self.idle:
                replica, batch = self.idle.pop(), self.queue.popleft()
                self.busy[replica.predict.remote(*batch)] = (replica, batch)
            else:
                self._wait_one()

    def _wait_one(self) -> None:
        if not self.busy:
            raise ModelError(f"every Ray model replica died (each restarted {REPLICA_RESTARTS} times: nodes lost "
                             "or out of memory); the results so far are in the store, run the scan again to go on")
        [call], _ = self.ray.wait(list(self.busy), num_returns=1)
        replica, batch = self.busy.pop(call)
        try:
            shas, scores = self.ray.get(call)
        except self.ray.exceptions.RayActorError:
            logger.warning("a Ray model replica died past its restarts; its batch goes to another replica")
            self.ray.kill(replica, no_restart=True)
            self.queue.appendleft(batch)
            return
        self.idle.append(replica)
        self.sink.scored(shas, scores)

    def close(self) -> None:
        for replica in [*self.idle, *(r for r, _ in self.busy.values())]:
            self.ray.kill(replica)


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
