"""Bounded read-ahead: a function applied to a stream in worker threads, results in input order,
with at most ``ahead`` results computed (or being computed) and not yet consumed, so memory stays
bounded however long the stream is and the workers keep busy while the consumer (a model) works.

The standard library's ``Executor.map`` submits every item at once; its ``buffersize`` argument,
which bounds that, arrives in Python 3.14. :func:`ordered_map` is that behaviour for 3.11+.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import TypeVar

from .errors import ConfigError

__all__ = ["ordered_map"]

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, ahead: int, workers: int = 1,
                pool: Executor | None = None, name: str = "nsfwlab-readahead") -> Generator[R, None, None]:
    """``fn(item)`` for each item, in order, computed in ``pool`` (default: ``workers`` threads
    owned by this call and shut down when the iterator ends or is closed).

    ``items`` is consumed lazily, ``ahead`` items ahead of the consumer. An exception raised by
    ``fn`` is raised by the iterator at that item's place. Closing the iterator early (``close()``,
    ``contextlib.closing``) cancels the work not yet started and waits for the running items.
    """
    if ahead < 1:
        raise ConfigError(f"ahead must be at least 1, got {ahead}")
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    if pool is not None:
        yield from _ordered(pool, fn, items, ahead)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix=name) as own:
        yield from _ordered(own, fn, items, ahead)


def _ordered(pool: Executor, fn: Callable[[T], R], items: Iterable[T], ahead: int) -> Generator[R, None, None]:
    window: deque[Future[R]] = deque()
    try:
        for item in items:
            window.append(pool.submit(fn, item))
            if len(window) >= ahead:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    finally:
        for fut in window:
            fut.cancel()
