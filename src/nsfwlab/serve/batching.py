"""A micro-batcher: images from concurrent requests share model calls.

Model calls run in one worker thread, never on the event loop. Callers ``submit`` preprocessed
arrays and await their scores. The queue is bounded in images: a submission that would overflow
it is refused at once with :class:`~nsfwlab.serve.limits.OverloadedError` (HTTP 429), so overload
is answered immediately instead of by timeouts.

The worker takes the oldest waiting image, then keeps gathering until the batch holds
``max_batch`` images or ``max_wait_s`` has passed since it took the first one, and runs one model
call. With ``max_batch=1`` it is the naive one-image-one-call server.

One batcher serves one model: a server with several models has one per model, so a slow model
never holds the batches of another.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError, ModelError, NsfwlabError
from ..preprocess import stack_batch
from .errors import NotReadyError, OverloadedError

__all__ = ["BatchStats", "MicroBatcher"]


@dataclass
class _Job:
    array: np.ndarray
    future: Future[Any]


@dataclass
class BatchStats:
    """Counters since start: model calls, images scored, and the largest batch seen."""

    calls: int = 0
    images: int = 0
    largest: int = 0

    @property
    def mean_batch(self) -> float:
        return self.images / self.calls if self.calls else 0.0


class MicroBatcher:
    """Gathers single images into batched ``predict`` calls on a worker thread.

    ``predict`` maps an NHWC float32 batch to one NSFW probability per image (for example
    ``Detector.predict_arrays``). With ``stack=False`` it takes the list of the images' arrays
    instead (a zoo model's decoded images of any size) and may return any one result per image
    (a list), which each caller receives as it is. ``on_batch(size, seconds)`` is called after
    every model call (metrics).
    """

    def __init__(self, predict: Callable[[Any], Any], *, max_batch: int = 16,
                 max_wait_s: float = 0.005, max_queue: int = 128,
                 on_batch: Callable[[int, float], None] | None = None, stack: bool = True) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            raise ConfigError("max_batch and max_queue must be >= 1 and max_wait_s >= 0")
        self._predict = predict
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._stack = stack
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self.stats = BatchStats()

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._closing = False
            self._thread = threading.Thread(target=self._run, name="nsfwlab-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop taking work, finish what is queued, and join the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        with self._cond:
            self._thread = None

    @property
    def depth(self) -> int:
        """Images waiting for a model call."""
        return len(self._queue)

    # -- submission ---------------------------------------------------------------------------
    def check_capacity(self, n: int) -> None:
        """Raise ``OverloadedError`` now if ``n`` more images would not fit (a cheap early check
        before decoding; :meth:`submit_nowait` checks again atomically)."""
        if len(self._queue) + n > self.max_queue:
            raise OverloadedError(
                f"{len(self._queue)} images are waiting for the model (queue of {self.max_queue}); retry shortly"
            )

    def submit_nowait(self, arrays: Sequence[np.ndarray]) -> list[Future[Any]]:
        """Queue all ``arrays`` or none of them; raise ``OverloadedError`` if they do not fit."""
        with self._cond:
            if self._closing or self._thread is None:
                raise NotReadyError("the server is shutting down; retry on another instance")
            if len(self._queue) + len(arrays) > self.max_queue:
                raise OverloadedError(
                    f"{len(self._queue)} images are waiting for the model (queue of {self.max_queue}); retry shortly"
                )
            futures: list[Future[Any]] = []
            for arr in arrays:
                fut: Future[Any] = Future()
                self._queue.append(_Job(arr, fut))
                futures.append(fut)
            self._cond.notify()
            return futures

    async def score(self, arrays: Sequence[np.ndarray]) -> list[Any]:
        """Queue ``arrays`` and await their scores, or ``predict``'s results (in order)."""
        if not arrays:
            return []
        futures = self.submit_nowait(arrays)
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))

    # -- worker -------------------------------------------------------------------------------
    def _take_batch(self) -> list[_Job] | None:
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            batch = [self._queue.popleft()]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                if self._queue:
                    batch.append(self._queue.popleft())
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closing:
                    break
                self._cond.wait(remaining)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            live = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if not live:
                continue
            start = time.perf_counter()
            try:
                results = self._call([job.array for job in live])
            except NsfwlabError as exc:
                for job in live:
                    job.future.set_exception(exc)
                continue
            except Exception as exc:  # a failing model call must not kill the worker
                err = ModelError(f"model call failed: {type(exc).__name__}: {exc}")
                for job in live:
                    job.future.set_exception(err)
                continue
            elapsed = time.perf_counter() - start
            self.stats.calls += 1
            self.stats.images += len(live)
            self.stats.largest = max(self.stats.largest, len(live))
            for job, r in zip(live, results, strict=True):
                job.future.set_result(r)
            if self._on_batch is not None:
                self._on_batch(len(live), elapsed)

    def _call(self, arrays: list[np.ndarray]) -> list[Any]:
        """One model call: a score per image (stacked inputs) or ``predict``'s result per image."""
        if not self._stack:
            results = list(self._predict(arrays))
            if len(results) != len(arrays):
                raise ModelError(f"the model returned {len(results)} results for {len(arrays)} images")
            return results
        scores = np.asarray(self._predict(stack_batch(arrays)), dtype=np.float64)
        if scores.shape != (len(arrays),):
            raise ModelError(f"the model returned {scores.shape} scores for {len(arrays)} images")
        return [float(s) for s in scores.tolist()]
