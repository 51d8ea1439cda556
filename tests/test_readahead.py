"""ordered_map: input order, bounded read-ahead, errors in place, early close cancels."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from nsfwlab import ConfigError
from nsfwlab.readahead import ordered_map


class Counting:
    """A stream that records how far it has been read, and a task that records how many run."""

    def __init__(self, n: int) -> None:
        self.n, self.read, self.started = n, 0, 0
        self.lock = threading.Lock()

    def items(self):
        for i in range(self.n):
            self.read = i + 1
            yield i

    def task(self, i: int) -> int:
        with self.lock:
            self.started += 1
        return i * i


def test_results_come_in_input_order_and_reading_stays_bounded():
    stream = Counting(100)
    out = []
    for value in ordered_map(stream.task, stream.items(), ahead=5, workers=3):
        assert stream.read - len(out) <= 5  # never more than `ahead` items read and not consumed
        out.append(value)
    assert out == [i * i for i in range(100)]
    assert list(ordered_map(stream.task, [], ahead=1)) == []


def test_an_error_is_raised_at_its_place():
    def task(i: int) -> int:
        if i == 7:
            raise ValueError("seven")
        return i

    got = []
    with pytest.raises(ValueError, match="seven"):
        for v in ordered_map(task, range(20), ahead=4, workers=2):
            got.append(v)
    assert got == list(range(7))


def test_closing_early_cancels_what_has_not_started():
    gate = threading.Event()
    stream = Counting(1000)

    def task(i: int) -> int:
        if i > 0:
            gate.wait(5)
        return stream.task(i)

    with ThreadPoolExecutor(1) as pool:
        it = ordered_map(task, stream.items(), ahead=10, pool=pool)
        assert next(it) == 0
        it.close()
        gate.set()
    assert stream.read <= 11 and stream.started <= 3  # the rest was cancelled, not run


def test_bad_settings():
    with pytest.raises(ConfigError, match="ahead"):
        list(ordered_map(abs, [1], ahead=0))
    with pytest.raises(ConfigError, match="workers"):
        list(ordered_map(abs, [1], ahead=1, workers=0))
