"""Benchmark: occlusion and sliding-window throughput (windows per second) on a web-size photo,
against the seed's one-at-a-time loop and captum's Occlusion, in the same run.

    .venv/bin/python benchmarks/bench_explain.py

- nsfwlab Occlusion / SlidingWindow: every window through the exact preprocessing (Pillow resize
  of the full-resolution occluded image, JPEG round trip, crop) and onnxruntime, batched, with
  preprocessing in 2 threads.
- the seed's loop: occlude, then ``Detector.score`` one image at a time (no batching).
- captum ``Occlusion`` on the PyTorch model, occluding the preprocessed 224x224 network input
  (no per-window preprocessing: cheaper, but not the exact pipeline's answer), 16 per call.

Prints a markdown table; writes JSON to benchmarks/out/bench_explain.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import web_photos


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--naive", type=int, default=48, help="windows timed for the one-at-a-time loop")
    args = ap.parse_args()

    import torch

    from nsfwlab import Detector
    from nsfwlab.explain import Occlusion, SlidingWindow
    from nsfwlab.explain._windows import window_grid
    from nsfwlab.explain.occlusion import mean_rgb
    from nsfwlab.model import load_open_nsfw
    from nsfwlab.preprocess import preprocess_rgb

    with tempfile.TemporaryDirectory() as tmp:
        path = web_photos(2, Path(tmp))[1]  # 1200x800
        img = Image.open(path).convert("RGB")
    w, h = img.size
    det = Detector(device="cpu", batch_size=4, workers=2)  # the CLI's CPU default
    det32 = Detector(device="cpu", batch_size=32, workers=2)
    det.nsfw_score(img)
    det32.nsfw_score(img)
    rows = []

    occ = Occlusion(det, box=100, stride=50)
    n_occ = occ.count(h, w) + 1
    t = _timed(lambda: occ.explain(img), args.repeats)
    rows.append(("nsfwlab Occlusion (box 100, stride 50), batch 4, 2 threads", n_occ, n_occ / t))
    t = _timed(lambda: Occlusion(det32, box=100, stride=50).explain(img), args.repeats)
    rows.append(("same, batch 32", n_occ, n_occ / t))

    sw = SlidingWindow(det, window=267, stride=67)
    n_sw = sw.count(h, w)
    t = _timed(lambda: sw.explain(img), args.repeats)
    rows.append(("nsfwlab SlidingWindow (window 267, stride 67)", n_sw, n_sw / t))

    base = np.asarray(img)
    boxes = window_grid(h, w, 100, 50)[: args.naive]
    fill = mean_rgb(det.preprocess_config)  # what Occlusion's default fill uses

    def naive() -> None:
        for t_, l_, b_, r_ in boxes:
            arr = base.copy()
            arr[t_:b_, l_:r_] = fill
            det.nsfw_score(Image.fromarray(arr))

    t = _timed(naive, 1)
    rows.append(("seed-style loop: occlude + Detector.score one at a time", len(boxes), len(boxes) / t))

    from captum.attr import Occlusion as CaptumOcclusion

    model = load_open_nsfw()
    x = torch.from_numpy(preprocess_rgb(img)).permute(2, 0, 1)[None].contiguous()
    win = round(100 * 224 / min(w, h))  # the same box relative to the image's short side
    stride = round(50 * 224 / min(w, h))
    captum_occ = CaptumOcclusion(lambda inp: torch.softmax(model(inp), dim=1))
    n_cap = ((224 - win) // stride + 1) ** 2

    def run_captum() -> None:
        with torch.no_grad():
            captum_occ.attribute(x, sliding_window_shapes=(3, win, win), strides=(3, stride, stride), target=1,
                                 perturbations_per_eval=16)

    t = _timed(run_captum, 1)
    rows.append((f"captum Occlusion on the 224 input (torch CPU, window {win}, stride {stride})", n_cap, n_cap / t))

    # Every method with its defaults (what `nsfwlab explain -m all` runs), seconds per image.
    from nsfwlab.explain import ALL_METHODS, make_explainer

    per_method = []
    for m in ALL_METHODS:
        e = make_explainer(m, det, model=model)
        per_method.append((m.value, _timed(lambda e=e: e.explain(img), 1)))

    load = os.getloadavg()
    lscpu = subprocess.run(["bash", "-c", "lscpu | grep 'Model name'"], capture_output=True, text=True).stdout.strip()
    print(f"Image {w}x{h}; {lscpu or _cpu()}, {os.cpu_count()} cores; load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print("| method | windows | windows/s | vs seed loop |")
    print("|---|---:|---:|---:|")
    naive_rate = next(r for n, _, r in rows if n.startswith("seed"))
    for name, n, rate in rows:
        print(f"| {name} | {n} | {rate:.1f} | {rate / naive_rate:.2f}x |")
    print(f"\nDefaults on the {w}x{h} photo, seconds per image:\n")
    print("| method | s/image |")
    print("|---|---:|")
    for name, sec in per_method:
        print(f"| {name} | {sec:.2f} |")
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    (out / "bench_explain.json").write_text(json.dumps(
        {"image": [w, h], "load": load, "rows": [{"name": n, "windows": k, "rate": r} for n, k, r in rows],
         "seconds_per_image": dict(per_method)}, indent=2))


if __name__ == "__main__":
    main()
