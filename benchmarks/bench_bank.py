"""Benchmark: hash-bank lookups (nearest PDQ hash within 31 bits) at 10^4, 10^5 and 10^6 random hashes,
half the queries planted near-duplicates of a banked hash (1-31 bits flipped), half random.

Compares the multi-index hashing index (the bank's default), the vectorised numpy scan (XOR +
``bitwise_count`` over the packed words) and a plain Python loop over ints (``bit_count``), and
checks that all three give the same answers. Also: opening a bank (index built from SQLite) and
PDQ hashing of a photo.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_bank.py [--sizes 10000 100000 1000000]

Writes a markdown table to stdout and JSON to benchmarks/out/bench_bank.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from corpus import cpu_name  # noqa: E402

RADIUS = 31


def _hashes(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.frombuffer(rng.bytes(32 * n), dtype=">u8").astype(np.uint64).reshape(n, 4)


def _queries(rng: np.random.Generator, words: np.ndarray, n: int) -> np.ndarray:
    out = _hashes(rng, n)
    for i in range(n // 2):  # planted: a banked hash with 1..31 bits flipped
        q = words[int(rng.integers(len(words)))].copy()
        for b in rng.choice(256, size=int(rng.integers(1, RADIUS + 1)), replace=False):
            q[b // 64] ^= np.uint64(1) << np.uint64(63 - b % 64)
        out[i] = q
    return out


def _rate(fn, queries) -> tuple[float, list]:
    t = time.perf_counter()
    answers = [fn(q) for q in queries]
    return len(queries) / (time.perf_counter() - t), answers


def _as_ints(words: np.ndarray) -> list[int]:
    raw = words.astype(">u8").tobytes()
    return [int.from_bytes(raw[i : i + 32], "big") for i in range(0, len(raw), 32)]


def brute_force(ints: list[int], query: int) -> tuple[int, int] | None:
    best = None
    for pos, h in enumerate(ints):
        d = (h ^ query).bit_count()
        if d <= RADIUS and (best is None or d < best[1]):
            best = (pos, d)
    return best


def bench_size(n: int, n_queries: int, seed: int) -> dict:
    from nsfwlab.bank.index import LinearIndex, MultiIndex

    rng = np.random.default_rng(seed)
    words = _hashes(rng, n)
    queries = _queries(rng, words, n_queries)
    row: dict = {"hashes": n, "queries": n_queries}
    t = time.perf_counter()
    multi = MultiIndex()
    multi.add(words)
    row["multi_build_s"] = time.perf_counter() - t
    linear = LinearIndex()
    linear.add(words)
    row["multi_per_s"], a_multi = _rate(lambda q: multi.nearest(q, RADIUS), queries)
    row["numpy_scan_per_s"], a_lin = _rate(lambda q: linear.nearest(q, RADIUS), queries)
    ints, q_ints = _as_ints(words), _as_ints(queries)
    few = max(4, min(n_queries, 2_000_000 // n))  # the Python loop is slow: fewer queries
    row["python_loop_per_s"], a_py = _rate(lambda q: brute_force(ints, q), q_ints[:few])
    row["python_loop_queries"] = few
    assert a_multi == a_lin and a_multi[:few] == a_py, "indexes disagree"
    row["matched"] = sum(a is not None for a in a_multi)
    return row


def bench_open(n: int, seed: int) -> dict:
    from nsfwlab.bank import Bank, BankEntry

    rng = np.random.default_rng(seed)
    hexes = [h.tobytes().hex() for h in _hashes(rng, n).astype(">u8")]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bank.sqlite3"
        t = time.perf_counter()
        with Bank(path) as bank:
            for i in range(0, n, 50_000):
                bank.add_many(BankEntry.make(h, "nsfw", "list:bench", added_at=0.0) for h in hexes[i : i + 50_000])
        insert_s = time.perf_counter() - t
        t = time.perf_counter()
        with Bank(path) as bank:
            open_s = time.perf_counter() - t
            q = hexes[n // 2]
            rate, _ = _rate(lambda _: bank.match(q), range(200))
        size = path.stat().st_size
    return {"hashes": n, "import_s": insert_s, "open_s": open_s, "match_hash_per_s": rate, "file_mb": size / 1e6}


def bench_pdq() -> dict:
    import io

    import skimage.data
    from PIL import Image

    from nsfwlab.bank import pdq_hash

    img = Image.fromarray(skimage.data.astronaut()).resize((1200, 800))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    data = buf.getvalue()
    pdq_hash(data)
    t = time.perf_counter()
    for _ in range(20):
        pdq_hash(data)
    return {"image": "1200x800 JPEG", "pdq_ms": (time.perf_counter() - t) / 20 * 1000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--queries", type=int, default=400)
    ap.add_argument("--open-size", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rows = [bench_size(n, args.queries, args.seed) for n in args.sizes]
    opened = bench_open(args.open_size, args.seed)
    pdq = bench_pdq()
    print(f"{cpu_name()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; radius {RADIUS}, half the queries planted\n")
    print("| hashes | multi-index lookups/s | numpy scan lookups/s | Python loop lookups/s | multi-index build |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['hashes']:,} | {r['multi_per_s']:,.0f} | {r['numpy_scan_per_s']:,.0f} | "
              f"{r['python_loop_per_s']:,.1f} | {r['multi_build_s']:.2f} s |")
    print(f"\nbank of {opened['hashes']:,} hashes: import {opened['import_s']:.1f} s, open (index from SQLite) "
          f"{opened['open_s']:.2f} s, match by hash {opened['match_hash_per_s']:,.0f}/s, "
          f"file {opened['file_mb']:.0f} MB")
    print(f"PDQ hash of a {pdq['image']}: {pdq['pdq_ms']:.1f} ms (decode included)")
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    (out / "bench_bank.json").write_text(json.dumps({"cpu": cpu_name(), "date": datetime.now(UTC).isoformat(),
                                                     "lookups": rows, "open": opened, "pdq": pdq}, indent=2))


if __name__ == "__main__":
    main()
