"""Benchmark: every installed zoo model, images/s on the CPU, torch and onnxruntime, one image at a
time and in batches of 8, from decoded pixels (the model's own resize included, decoding not).

    .venv/bin/python benchmarks/bench_zoo.py [-n 48] [--threads 2]

Prints a markdown table; writes JSON to benchmarks/out/bench_zoo.json. Inputs: scikit-image's
photos (web sizes, 300x451 to 512x512), cycled. Load time (sha256 + build, and the ONNX export for
onnxruntime) is reported apart from throughput.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import cpu_name


def _photos() -> list[np.ndarray]:
    import skimage.data

    out = []
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        arr = np.asarray(getattr(skimage.data, name)())
        out.append(np.ascontiguousarray(arr[..., :3]))
    return out


def _rate(model, images: list[np.ndarray], batch: int, n: int) -> float:
    model.predict(images[:batch])  # warm-up
    start = time.perf_counter()
    done = 0
    while done < n:
        chunk = [images[(done + i) % len(images)] for i in range(batch)]
        model.predict(chunk)
        done += batch
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=48, help="images per measurement")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    args = parser.parse_args()
    import torch

    from nsfwlab import zoo

    if args.threads:
        torch.set_num_threads(args.threads)
    images = _photos()
    rows = []
    for model_id, card in zoo.all_cards().items():
        if not zoo.installed(model_id):
            print(f"skip {model_id}: not installed", file=sys.stderr)
            continue
        backends = ["onnxruntime"] if card.weights.format == "onnx" else ["torch", "onnxruntime"]
        for backend in backends:
            start = time.perf_counter()
            model = zoo.load(model_id, backend=backend, threads=args.threads, batch_size=8)
            load_s = time.perf_counter() - start
            single = _rate(model, images, 1, args.n)
            batch8 = _rate(model, images, 8, args.n)
            rows.append({"model": model_id, "backend": backend, "load_s": round(load_s, 2),
                         "img_s_single": round(single, 1), "img_s_batch8": round(batch8, 1)})
            print(rows[-1], file=sys.stderr)
    meta = {"cpu": cpu_name(), "threads": args.threads or torch.get_num_threads(),
            "date": datetime.date.today().isoformat(), "torch": torch.__version__}
    print(f"CPU: {meta['cpu']}, {meta['threads']} threads, {meta['date']}\n")
    print("| model | backend | load s | img/s (1 at a time) | img/s (batch 8) |\n|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['backend']} | {r['load_s']} | {r['img_s_single']} | {r['img_s_batch8']} |")
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    (out / "bench_zoo.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
