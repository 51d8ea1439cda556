"""The one worker driver of every engine: chunks of planned files go to a worker pool (threads,
processes or Ray tasks, all running :func:`~nsfwlab.scan.worker.prepare_chunk`), at most
``ScanConfig.window`` files in flight; results come back in order into the :class:`~nsfwlab.scan.sink.Sink`,
and new content goes on to the engine's :class:`Scorer` (the model). Memory is bounded by the window,
never by the tree; the model runs in the driving thread while the workers read and decode ahead.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice
from typing import Any, Protocol

from ..errors import ModelError
from ..preprocess import stack_batch, unpack_array
from .config import Executor, ScanConfig, ScanModel
from .sink import ScanSummary, Sink
from .store import ResultStore
from .walk import WalkedFile
from .worker import Prepared, WorkerContext, prepare_chunk, watch_parent, worker_died

__all__ = ["ArrayScorer", "Pool", "Scorer", "Workers", "drive", "run", "worker_context"]

class Pool(Protocol):
    """Runs :func:`prepare_chunk` on chunks of files: ``submit`` starts one and returns a handle
    (a future, a Ray object ref), ``collect`` waits for it."""

    def submit(self, files: list[WalkedFile]) -> Any: ...
    def collect(self, files: list[WalkedFile], handle: Any) -> list[Prepared]: ...
    def shutdown(self) -> None: ...


class Scorer(Protocol):
    """Scores the new contents the sink hands over (``add``), reporting to the sink in batches."""

    def add(self, p: Prepared) -> None: ...
    def flush(self) -> None: ...


def worker_context(store: ResultStore, model: ScanModel, config: ScanConfig, *, pack: bool | None = None,
                   gpu_route: bool = False, lookup: bool = True) -> WorkerContext:
    """``pack`` (send uint8 pixels) defaults to whether the workers are processes; ``lookup``: the
    workers look hashes up in the store (read-only) and skip decoding content that has a score."""
    if pack is None:
        pack = config.executor_kind is Executor.PROCESS
    return WorkerContext(model.preprocess, config.limits, str(store.path.resolve()) if lookup else None,
                         model.model_version, model.preprocess_version, pack=pack, gpu_route=gpu_route,
                         frames=config.frames, pdq=config.bank is not None, pixels=model.zoo is not None)


def _mp_context() -> Any:
    methods = multiprocessing.get_all_start_methods()
    # Never fork a process that holds onnxruntime/torch thread pools.
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


class Workers:
    """The local pool: worker processes (rebuilt when one dies) or threads.

    Processes: a chunk whose worker died (a decoder crash, the OOM killer) is retried one file at
    a time in a fresh pool, so only the file that kills a worker is recorded as ``worker_died``
    (and retried on a later run, up to ``max_attempts``). Pools that keep dying before finishing
    any file mean the workers cannot start at all: that stops the scan with a clear error.
    Threads share the process, so a decoder crash would end the scan (committed batches stay).
    """

    MAX_BARREN_RESTARTS = 3

    def __init__(self, n: int, ctx: WorkerContext, kind: Executor) -> None:
        self.n, self.ctx, self.kind = n, ctx, kind
        self.pool = self._make()
        self.barren_restarts = 0

    def _make(self) -> ProcessPoolExecutor | ThreadPoolExecutor:
        if self.kind is Executor.THREAD:
            return ThreadPoolExecutor(self.n, thread_name_prefix="nsfwlab-scan")
        # Each worker exits when this process is gone (killed: no cleanup runs), see watch_parent.
        return ProcessPoolExecutor(self.n, mp_context=_mp_context(), initializer=watch_parent,
                                   initargs=(os.getpid(),))

    def _restart(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.barren_restarts += 1
        if self.barren_restarts > self.MAX_BARREN_RESTARTS:
            raise ModelError(
                "decoding worker processes keep dying before finishing any file; if you call "
                "nsfwlab.scan.scan from a script, put the call under `if __name__ == '__main__':`"
            )
        self.pool = self._make()

    def submit(self, files: list[WalkedFile]) -> Future[list[Prepared]]:
        try:
            return self.pool.submit(prepare_chunk, files, self.ctx)
        except BrokenProcessPool:
            self._restart()
            return self.pool.submit(prepare_chunk, files, self.ctx)

    def collect(self, files: list[WalkedFile], handle: Future[list[Prepared]]) -> list[Prepared]:
        try:
            results = handle.result()
            self.barren_restarts = 0
            return results
        except BrokenProcessPool:
            pass
        out: list[Prepared] = []
        for f in files:
            try:
                out.extend(self.submit([f]).result())
                self.barren_restarts = 0
            except BrokenProcessPool:
                out.append(worker_died(f))
                self._restart()
        return out

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class ArrayScorer:
    """Scores preprocessed arrays with the model's backend in the driving thread, ``batch_size`` at a
    time (a zoo model: decoded pixels, which it prepares itself)."""

    def __init__(self, sink: Sink, model: ScanModel, batch_size: int) -> None:
        self.sink, self.model, self.batch_size = sink, model, batch_size
        self.shas: list[str] = []
        self.arrays: list[Any] = []

    def add(self, p: Prepared) -> None:
        assert p.array is not None  # the sink hands over new content only, which has its array
        self.shas.append(p.sha256 or "")
        zoo = self.model.zoo is not None
        self.arrays.append(p.array if zoo else unpack_array(p.array, self.model.preprocess.mean_bgr))
        if len(self.arrays) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if self.arrays:
            zoo = self.model.zoo
            scores = (zoo.nsfw_scores(zoo.predict_images(self.arrays)).tolist() if zoo is not None
                      else self.model.backend.predict(stack_batch(self.arrays))[:, 1].tolist())
            shas, self.shas, self.arrays = self.shas, [], []
            self.sink.scored(shas, scores)


def _chunks(files: Iterable[WalkedFile], size: int) -> Iterator[list[WalkedFile]]:
    it = iter(files)
    return iter(lambda: list(islice(it, size)), [])


def _results(pool: Pool, chunks: Iterator[list[WalkedFile]], depth: int) -> Iterator[Prepared]:
    """Each chunk's results in order, with at most ``depth`` chunks submitted ahead."""
    window: deque[tuple[list[WalkedFile], Any]] = deque()
    for files in chunks:
        window.append((files, pool.submit(files)))
        if len(window) >= depth:
            yield from pool.collect(*window.popleft())
    while window:
        yield from pool.collect(*window.popleft())


def drive(planned: Iterable[WalkedFile], pool: Pool, sink: Sink, scorer: Scorer, config: ScanConfig) -> None:
    """Feed ``planned`` files to ``pool``; each result to ``sink``, new contents on to ``scorer``."""
    depth = max(1, config.window // config.chunk)
    for p in _results(pool, _chunks(planned, config.chunk), depth):
        if sink.add(p):
            for item in sink.model_inputs(p):  # a video's frames join the batches one by one
                scorer.add(item)
    scorer.flush()


def run(roots: list[str], sink: Sink, pool: Pool, scorer: Scorer, config: ScanConfig) -> ScanSummary:
    """A whole scan: the run's record, the walk, the workers, the model, the store."""
    run_id = sink.start(roots)
    start = time.perf_counter()
    try:
        drive(sink.planned(roots), pool, sink, scorer, config)
    finally:
        pool.shutdown()
        sink.close()
        sink.summary.seconds = time.perf_counter() - start
    return sink.finish(run_id)
