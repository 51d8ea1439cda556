"""Benchmark: the per-stage floor of a scan, in core-milliseconds per image, for each mode.

    .venv/bin/python benchmarks/bench_stages.py -n 200

Every stage runs alone on one thread over the mixed corpus (``corpus.mixed_photos``: 320x240 to
1920x1080, 15% PNG), timed with the process's CPU clock (``time.process_time``, so a busy
neighbour on this shared machine inflates it less than wall time would); each figure is the best
of ``--repeats`` passes. The model runs with one onnxruntime thread, batch 8. Start-up is a whole
`nsfwlab scan` of one file (import, argument parsing, model load, store), in CPU-seconds.
Writes a markdown table to stdout and JSON to benchmarks/out/bench_stages.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _best(fn: Callable[[Any], object], items: Sequence[Any], repeats: int) -> float:
    """Best CPU-milliseconds per item of ``fn`` over ``items``."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        for it in items:
            fn(it)
        best = min(best, (time.process_time() - t0) / max(len(items), 1))
    return best * 1000


def _startup(path: Path, mode: str, cache: Path) -> float:
    """CPU-seconds of a whole one-file ``nsfwlab scan``."""
    from bench_modes import scan_cmd, timed

    with tempfile.TemporaryDirectory() as d:
        return timed(scan_cmd(path, Path(d) / "s.sqlite", mode, cache, []))[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from corpus import cpu_name, mixed_photos

    from nsfwlab.backends import OnnxRuntimeBackend
    from nsfwlab.config import DecodeLimits, PreprocessConfig
    from nsfwlab.imageio import load_image, open_image, to_rgb
    from nsfwlab.preprocess import finish_resized, resize_image, stack_batch
    from nsfwlab.scan.modes import quantize_int8

    out_dir = HERE / "out"
    out_dir.mkdir(exist_ok=True)
    cache = out_dir / "cache"
    r = args.repeats
    draft_size = PreprocessConfig(draft=True).draft_size
    with tempfile.TemporaryDirectory() as tmp:
        paths = mixed_photos(args.n, Path(tmp) / "mixed")
        datas = [p.read_bytes() for p in paths]
        jpg = [d for p, d in zip(paths, datas, strict=True) if p.suffix == ".jpg"]
        png = [d for p, d in zip(paths, datas, strict=True) if p.suffix == ".png"]
        limits = DecodeLimits()

        def pillow(d: bytes) -> Image.Image:
            img = open_image(d, limits).image
            img.load()
            return to_rgb(img)

        def draft(d: bytes) -> Image.Image:
            return load_image(d, draft_size=draft_size)

        full_j = [pillow(d) for d in jpg]
        draft_j = [draft(d) for d in jpg]
        full_p = [load_image(d) for d in png]
        resized = [resize_image(im, 256) for im in full_j]
        x = stack_batch([finish_resized(im) for im in resized])
        batches = [x[i : i + 8] for i in range(0, len(x) - 7, 8)]
        fp32 = OnnxRuntimeBackend(threads=1)
        int8 = OnnxRuntimeBackend(quantize_int8(None, cache_dir=cache), verify=False, threads=1)
        stages = {
            "read + sha256 (per file)": _best(lambda d: hashlib.sha256(d).hexdigest(), datas, r),
            "JPEG decode, full (Pillow)": _best(pillow, jpg, r),
            f"JPEG decode, DCT-scaled (>= {draft_size})": _best(draft, jpg, r),
            "PNG decode, Pillow": _best(pillow, png, r),
            "PNG decode, libspng (what both modes use)": _best(load_image, png, r),
            "resize to 256, from full JPEG": _best(lambda im: resize_image(im, 256), full_j, r),
            "resize to 256, from DCT-scaled JPEG": _best(lambda im: resize_image(im, 256), draft_j, r),
            "resize to 256, from PNG": _best(lambda im: resize_image(im, 256), full_p, r),
            "JPEG round trip + crop + BGR/mean": _best(finish_resized, resized, r),
            "model fp32 (onnxruntime, 1 thread, batch 8)": _best(fp32.predict, batches, r) / 8,
            "model int8 (onnxruntime, 1 thread, batch 8)": _best(int8.predict, batches, r) / 8,
        }
        startup = {m: min(_startup(paths[0], m, cache) for _ in range(r)) for m in ("exact", "fast")}

    share = len(png) / len(paths)
    exact = ((1 - share) * (stages["JPEG decode, full (Pillow)"] + stages["resize to 256, from full JPEG"])
             + share * (stages["PNG decode, libspng (what both modes use)"] + stages["resize to 256, from PNG"])
             + stages["JPEG round trip + crop + BGR/mean"] + stages["model fp32 (onnxruntime, 1 thread, batch 8)"]
             + stages["read + sha256 (per file)"])
    fast = ((1 - share) * (stages[f"JPEG decode, DCT-scaled (>= {draft_size})"]
                           + stages["resize to 256, from DCT-scaled JPEG"])
            + share * (stages["PNG decode, libspng (what both modes use)"] + stages["resize to 256, from PNG"])
            + stages["JPEG round trip + crop + BGR/mean"] + stages["model int8 (onnxruntime, 1 thread, batch 8)"]
            + stages["read + sha256 (per file)"])
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average": os.getloadavg()[0], "images": len(paths), "png": len(png),
        "core_ms": stages, "startup_cpu_s": startup,
        "floor_core_ms_per_image": {"exact": exact, "fast": fast},
    }
    (out_dir / "bench_stages.json").write_text(json.dumps(result, indent=2))
    print(f"{result['machine']}; {result['date']}; load {result['load_average']:.2f}; {len(paths)} images "
          f"({len(png)} PNG)\n")
    print("| stage | core-ms per image |")
    print("|---|---:|")
    for k, v in stages.items():
        print(f"| {k} | {v:.2f} |")
    print(f"| start-up, a whole one-file `scan --mode exact` / `--mode fast` (CPU-s) | "
          f"{startup['exact']:.2f} / {startup['fast']:.2f} |")
    print(f"\nFloor per image on this corpus: exact {exact:.1f} core-ms, fast {fast:.1f} core-ms "
          f"(2 cores: {2000 / exact:.0f} and {2000 / fast:.0f} images/s at best, start-up aside)")


if __name__ == "__main__":
    main()
