"""Benchmark: the robustness protocol's attack ensemble, seconds per attack per image per model.

    .venv/bin/python benchmarks/bench_protocol.py [--images 2] [--models open_nsfw,nsfwjs-mobilenetv2]
        [--steps 10] [--restarts 1] [--queries 100] [--eps 1,2,4,8] [--work-side 256] [--threads 2]

scikit-image's public photos (astronaut, chelsea, coffee, rocket ...) as PNG files, each model's own label
(no labels given), the sanity reruns off (they are APGD runs: their cost is APGD's times the rerun's size).
Each attack's seconds are its wall time on one image (all the budgets it tried, and the exact-score
verification of each candidate); an image broken at a small budget costs less than one that survives them
all, so the table gives the median and the largest. Beside ours: Play_NSFW's published "inverse NSFW"
figure for open_nsfw (L-inf ~10/255 after 1,000-8,000 Adam iterations on the 256x256 resized image).

Prints markdown tables; writes JSON to benchmarks/out/bench_protocol.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")
PUBLISHED = "Play_NSFW 'inverse NSFW' on open_nsfw: L-inf ~10/255, 1,000-8,000 Adam iterations (256x256 resized)"


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _photos(folder: Path, n: int) -> list[Path]:
    import skimage.data

    paths = []
    for name in PHOTOS[:n]:
        arr = np.asarray(getattr(skimage.data, name)())
        paths.append(folder / f"{name}.png")
        Image.fromarray(arr).save(paths[-1])
    return paths


def _show(event: Any, t0: float) -> None:
    rec = event.item["record"]
    attacks = "" if rec is None else " ".join(
        f"{a}: {o.seconds:.0f} s (eps {o.broken_at}, q {o.queries})" for a, o in rec.attacks.items())
    print(f"  {event.done}/{event.total} {event.item['model']} {Path(event.item['source']).name} "
          f"{time.perf_counter() - t0:.0f} s  {attacks}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--models", default="open_nsfw,nsfwjs-mobilenetv2")
    ap.add_argument("--attacks", default="apgd,square,hopskipjump,minimal")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--restarts", type=int, default=1)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--eps", default="1,2,4,8")
    ap.add_argument("--work-side", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from nsfwlab import zoo
    from nsfwlab.lab.protocol import robustness_protocol

    models = [m for m in args.models.split(",") if m == "open_nsfw" or zoo.installed(m)]
    eps = tuple(float(e) for e in args.eps.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        sources = _photos(Path(tmp), args.images)
        t0 = time.perf_counter()
        report = robustness_protocol(sources, models, attacks=tuple(args.attacks.split(",")), eps=eps,
                                     steps=args.steps, restarts=args.restarts, queries=args.queries,
                                     work_side=args.work_side, sanity=False,
                                     progress=lambda e: _show(e, t0))
        wall = time.perf_counter() - t0
    out = report.to_dict()
    rows = []
    for m in models:
        per: dict[str, list[dict[str, Any]]] = {}
        for im in out["protocol_images"]:
            for a, rec in im["models"].get(m, {}).get("attacks", {}).items():
                per.setdefault(a, []).append(rec)
        for a, recs in per.items():
            secs = [r["seconds"] for r in recs]
            broken = [r["broken_at"] for r in recs if r["broken_at"] is not None]
            queries = [r["queries"] for r in recs if r["queries"] is not None]
            rows.append({"model": m, "attack": a, "images": len(recs), "median_s": float(np.median(secs)),
                         "max_s": max(secs), "broken": len(broken),
                         "median_broken_at": float(np.median(broken)) if broken else None,
                         "median_queries": float(np.median(queries)) if queries else None})
    load = os.getloadavg()
    print(f"\n{_cpu()}, {os.cpu_count()} cores, torch threads {args.threads}, load {load[0]:.1f}; "
          f"{len(sources)} images at work side {args.work_side}; steps {args.steps}, restarts {args.restarts}, "
          f"queries {args.queries}, eps {args.eps}; wall {wall:.0f} s\n")
    print("| model | attack | images | s/image median | s/image max | broken by eps max | median broken_at | "
          "median queries |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['attack']} | {r['images']} | {r['median_s']:.1f} | {r['max_s']:.1f} | "
              f"{r['broken']} | {r['median_broken_at'] if r['median_broken_at'] is not None else '-'} | "
              f"{r['median_queries'] if r['median_queries'] is not None else '-'} |")
    print("\ncurves (worst):")
    for m in models:
        worst = out["curves"][m].get("worst", [])
        print(f"  {m}: " + ", ".join(f"{p['eps']:g}: {p['robust_accuracy']:.2f} {p['ci95']}" for p in worst))
    print(f"transfer: {json.dumps(out['transfer'])}")
    print(f"published: {PUBLISHED}")
    dest = Path(__file__).parent / "out"
    dest.mkdir(exist_ok=True)
    (dest / "bench_protocol.json").write_text(json.dumps(
        {"machine": _cpu(), "cores": os.cpu_count(), "load": load[0], "args": vars(args), "wall_s": wall,
         "rows": rows, "report": {k: v for k, v in out.items() if k != "protocol_images"}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
