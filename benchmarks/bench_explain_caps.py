"""Drift of explain's working copy: how much do heatmaps change when an image over
``ExplainCaps.max_work_side`` is explained on a downscaled copy instead of at full resolution?

    PYTHONPATH=src .venv/bin/python benchmarks/bench_explain_caps.py

For public photos (scikit-image) at their own size, each method runs twice with the real model:
uncapped (full resolution) and with ``max_work_side`` at 1/2 and 3/4 of the long side. The
full-resolution map is resized to the working copy's size and compared with the capped map
(Pearson r, max and mean |difference| relative to the full map's max |value|). Also printed: the
drift of the working copy's own score (occlusion's baseline); the score that explain and censor
report is the original's, exact, in both cases.

Prints a markdown table; writes JSON to benchmarks/out/bench_explain_caps.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from nsfwlab import Detector
from nsfwlab.explain import ExplainCaps, GradCAM, Occlusion, SlidingWindow
from nsfwlab.explain.caps import resize_map, working_copy

PHOTOS = ("astronaut", "coffee", "rocket", "chelsea")
FRACTIONS = (0.5, 0.75)


def _photo(name: str) -> Image.Image:
    import skimage.data

    return Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB")


def _compare(full: np.ndarray, capped: np.ndarray) -> dict[str, float]:
    ref = resize_map(full, *capped.shape)
    scale = float(np.abs(ref).max()) or 1.0
    diff = np.abs(ref - capped)
    r = float(np.corrcoef(ref.ravel(), capped.ravel())[0, 1]) if ref.std() > 0 and capped.std() > 0 else 1.0
    return {"r": r, "max_rel": float(diff.max()) / scale, "mean_rel": float(diff.mean()) / scale,
            "full_max": scale, "max_abs": float(diff.max())}


def main() -> None:
    det = Detector(batch_size=4)
    model = det.torch_model()
    rows = []
    for name in PHOTOS:
        img = _photo(name)
        full_caps = ExplainCaps(max_work_side=max(img.size))
        makers = {
            "occlusion": lambda c: Occlusion(det, caps=c),
            "sliding-window": lambda c: SlidingWindow(det, caps=c),
            "gradcam": lambda c: GradCAM(model, caps=c),
        }
        full = {m: make(full_caps).explain(img) for m, make in makers.items()}
        for frac in FRACTIONS:
            caps = ExplainCaps(max_work_side=round(max(img.size) * frac))
            work = working_copy(img, caps)
            score_drift = abs(det.nsfw_score(work) - det.nsfw_score(img))
            for m, make in makers.items():
                t = time.perf_counter()
                capped = make(caps).explain(img)
                row = {"photo": f"{name} {img.width}x{img.height}", "score": det.nsfw_score(img),
                       "work": f"{work.width}x{work.height}",
                       "method": m, "work_score_drift": score_drift, "seconds": time.perf_counter() - t,
                       **_compare(full[m], capped)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print("\n| photo (score) | working copy | method | r | max abs diff (full map's max abs) | max / mean diff "
          "relative | work-copy score drift |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['photo']} ({r['score']:.4f}) | {r['work']} | {r['method']} | {r['r']:.3f} | "
              f"{r['max_abs']:.2g} ({r['full_max']:.2g}) | {r['max_rel']:.3f} / {r['mean_rel']:.4f} | "
              f"{r['work_score_drift']:.4f} |")
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    (out / "bench_explain_caps.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
