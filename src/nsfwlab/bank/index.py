"""Nearest-neighbour search over 256-bit hashes by Hamming distance.

Two indexes with one interface; positions are the order in which hashes were added.

- :class:`LinearIndex`: XOR and ``numpy.bitwise_count`` over all packed words (4 uint64 per hash).
- :class:`MultiIndex`: multi-index hashing (Norouzi et al.). The 256 bits are cut into 16 chunks of
  16 bits. Two hashes within distance 31 differ by at most one bit in at least one chunk (16 chunks
  with two or more differing bits would make 32), so the candidates are the hashes whose chunk
  equals one of the query's 17 chunk values at radius 1, in one of the 16 chunks: 272 bucket
  lookups into sorted per-chunk tables, then exact distances for the candidates only. Hashes
  added after the last build sit in a small tail that is scanned linearly; the tables are rebuilt
  when the tail grows past 1/16 of the indexed hashes. Radii above 31 fall back to the scan.

Both return the same answer: the smallest distance within ``max_distance``, ties to the earliest
position (``tests/test_bank_index.py`` checks them against a plain Python loop).
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np

__all__ = ["HashIndex", "IndexKind", "LinearIndex", "MultiIndex", "create_index"]

_CHUNKS = 16
_CHUNK_BITS = 16
#: The largest radius the chunk lookup answers exactly (pigeonhole with radius 1 per chunk).
MIH_MAX_DISTANCE = _CHUNKS * 2 - 1
_FLIPS = np.concatenate([[0], 1 << np.arange(_CHUNK_BITS)]).astype(np.uint32)


class IndexKind(StrEnum):
    LINEAR = "linear"
    MULTI = "multi"


def _distances(words: np.ndarray, query: np.ndarray) -> np.ndarray:
    c = np.bitwise_count(words ^ query).astype(np.int16)  # (n, 4) popcounts; column adds beat .sum(axis=1)
    return c[:, 0] + c[:, 1] + c[:, 2] + c[:, 3]


def _best(positions: np.ndarray, distances: np.ndarray, max_distance: int) -> tuple[int, int] | None:
    """The (position, distance) with the smallest distance <= max_distance, ties to the lowest position."""
    ok = distances <= max_distance
    if not ok.any():
        return None
    pos, dist = positions[ok], distances[ok]
    best = np.lexsort((pos, dist))[0]
    return int(pos[best]), int(dist[best])


class HashIndex:
    """Packed hashes in a growable ``(n, 4)`` uint64 array; subclasses answer :meth:`nearest`."""

    kind: IndexKind

    def __init__(self) -> None:
        self._words = np.zeros((1024, 4), dtype=np.uint64)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    @property
    def words(self) -> np.ndarray:
        return self._words[: self._n]

    def add(self, words: np.ndarray) -> None:
        """Append ``(m, 4)`` uint64 hashes (positions ``len(self)`` onwards)."""
        words = np.asarray(words, dtype=np.uint64).reshape(-1, 4)
        need = self._n + len(words)
        if need > len(self._words):
            grown = np.zeros((max(need, 2 * len(self._words)), 4), dtype=np.uint64)
            grown[: self._n] = self._words[: self._n]
            self._words = grown
        self._words[self._n : need] = words
        self._n = need

    def nearest(self, query: np.ndarray, max_distance: int) -> tuple[int, int] | None:
        """(position, distance) of the closest hash within ``max_distance``, or None."""
        raise NotImplementedError

    def _scan(self, query: np.ndarray, max_distance: int, start: int = 0) -> tuple[int, int] | None:
        if start >= self._n:
            return None
        d = _distances(self._words[start : self._n], query)
        near = np.flatnonzero(d <= max_distance)
        return _best(near + start, d[near], max_distance) if near.size else None


class LinearIndex(HashIndex):
    """Every hash, every query: a vectorised XOR and popcount."""

    kind = IndexKind.LINEAR

    def nearest(self, query: np.ndarray, max_distance: int) -> tuple[int, int] | None:
        return self._scan(np.asarray(query, dtype=np.uint64), max_distance)


class MultiIndex(HashIndex):
    """Multi-index hashing over 16 chunks of 16 bits (see the module docstring)."""

    kind = IndexKind.MULTI

    def __init__(self) -> None:
        super().__init__()
        self._built = 0
        self._order = np.zeros((_CHUNKS, 0), dtype=np.int32)  # positions sorted by chunk value, per chunk
        self._starts = np.zeros((_CHUNKS, (1 << _CHUNK_BITS) + 1), dtype=np.int64)

    def _chunks(self, words: np.ndarray) -> np.ndarray:
        """``(n, 16)`` chunk values: the big-endian uint16 pieces of each hash."""
        return words.astype(">u8").view(">u2").astype(np.uint16).reshape(-1, _CHUNKS)

    def build(self) -> None:
        """(Re)build the per-chunk tables over every hash (a radix sort per chunk)."""
        chunks = np.ascontiguousarray(self._chunks(self.words).T)
        self._order = np.argsort(chunks, axis=1, kind="stable").astype(np.int32)
        for j in range(_CHUNKS):
            counts = np.bincount(chunks[j], minlength=1 << _CHUNK_BITS)
            self._starts[j, 1:] = np.cumsum(counts)
        self._built = self._n

    def add(self, words: np.ndarray) -> None:
        super().add(words)
        if self._n - self._built > max(1024, self._built // 16):
            self.build()

    def _candidates(self, query: np.ndarray) -> np.ndarray:
        values = self._chunks(query.reshape(1, 4))[0].astype(np.int64)      # (16,)
        probes = values[:, None] ^ _FLIPS[None, :].astype(np.int64)        # (16, 17)
        rows = np.arange(_CHUNKS)[:, None]
        begin = self._starts[rows, probes].ravel()
        end = self._starts[rows, probes + 1].ravel()
        lengths = end - begin
        total = int(lengths.sum())
        if total == 0:
            return np.zeros(0, dtype=np.int64)
        flat_begin = begin + np.repeat(np.arange(_CHUNKS) * self._built, _FLIPS.size)
        offsets = np.cumsum(lengths) - lengths
        idx = np.repeat(flat_begin - offsets, lengths) + np.arange(total)
        return np.sort(self._order.ravel()[idx])  # duplicates are harmless; sorted reads are cache-friendlier

    def nearest(self, query: np.ndarray, max_distance: int) -> tuple[int, int] | None:
        query = np.asarray(query, dtype=np.uint64)
        if max_distance > MIH_MAX_DISTANCE:
            return self._scan(query, max_distance)
        found: list[tuple[int, int]] = []
        if self._built:
            cand = self._candidates(query)
            hit = _best(cand, _distances(self._words.take(cand, axis=0), query), max_distance) if cand.size else None
            if hit is not None:
                found.append(hit)
        tail = self._scan(query, max_distance, self._built)
        if tail is not None:
            found.append(tail)
        return min(found, key=lambda pd: (pd[1], pd[0])) if found else None


def create_index(kind: IndexKind | str = IndexKind.MULTI) -> HashIndex:
    return MultiIndex() if IndexKind(kind) is IndexKind.MULTI else LinearIndex()
