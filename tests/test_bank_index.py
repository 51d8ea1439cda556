"""Both hash indexes give the answer of a plain Python loop over every hash (seeded random data with
near-duplicates planted at every distance around the match radius)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nsfwlab.bank.index import IndexKind, LinearIndex, MultiIndex, create_index


def _brute(ints: list[int], query: int, max_distance: int) -> tuple[int, int] | None:
    best: tuple[int, int] | None = None
    for pos, h in enumerate(ints):
        d = (h ^ query).bit_count()
        if d <= max_distance and (best is None or d < best[1]):
            best = (pos, d)
    return best


def _to_words(ints: list[int]) -> np.ndarray:
    raw = b"".join(h.to_bytes(32, "big") for h in ints)
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(-1, 4)


def _flip(rng: np.random.Generator, h: int, n: int) -> int:
    for b in rng.choice(256, size=n, replace=False):
        h ^= 1 << int(b)
    return h


@pytest.mark.parametrize("n", [0, 1, 700, 5000])
def test_indexes_equal_brute_force(n: int) -> None:
    rng = np.random.default_rng(n)
    ints = [int.from_bytes(rng.bytes(32), "big") for _ in range(n)]
    queries = [int.from_bytes(rng.bytes(32), "big") for _ in range(20)]
    if ints:
        queries += [_flip(rng, ints[int(rng.integers(n))], d) for d in range(0, 41) for _ in range(2)]
    for index in (LinearIndex(), MultiIndex()):
        index.add(_to_words(ints)) if ints else None
        for q in queries:
            for radius in (0, 8, 31, 40):
                assert index.nearest(_to_words([q])[0], radius) == _brute(ints, q, radius), (index.kind, radius)


def test_tail_and_rebuild_stay_exact() -> None:
    """Hashes added one at a time after a build (the linear tail, then rebuilt tables) are found."""
    rng = np.random.default_rng(7)
    ints = [int.from_bytes(rng.bytes(32), "big") for _ in range(3000)]
    index = MultiIndex()
    index.add(_to_words(ints[:2000]))
    for h in ints[2000:]:
        index.add(_to_words([h]))
    assert len(index) == 3000
    for pos in (0, 1999, 2000, 2500, 2999):
        q = _flip(rng, ints[pos], 20)
        assert index.nearest(_to_words([q])[0], 31) == _brute(ints, q, 31)


def test_ties_go_to_the_earliest_hash() -> None:
    h = int.from_bytes(np.random.default_rng(1).bytes(32), "big")
    ints = [h ^ 1, h ^ 2, h ^ 4]  # all at distance 1 from h
    for kind in IndexKind:
        index = create_index(kind)
        index.add(_to_words(ints))
        assert index.nearest(_to_words([h])[0], 31) == (0, 1)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 2**256 - 1), min_size=1, max_size=40), st.integers(0, 2**256 - 1),
       st.integers(0, 64))
def test_property_multi_index_matches_brute_force(ints: list[int], query: int, radius: int) -> None:
    index = MultiIndex()
    index.add(_to_words(ints))
    index.build()  # force the chunk tables even for a small set
    assert index.nearest(_to_words([query])[0], radius) == _brute(ints, query, radius)
    near = ints[0] ^ (query & ((1 << 24) - 1))  # within 24 bits of ints[0]
    assert index.nearest(_to_words([near])[0], radius) == _brute(ints, near, radius)
