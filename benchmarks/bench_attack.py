"""Benchmark: the lab's attack against the seed's "inverse open NSFW" results, and the three JPEG modes.

    .venv/bin/python benchmarks/bench_attack.py [--quick] [--device cpu]

The seed's images (Starry Night, The Scream, two Flickr photos) are not available; scikit-image's public photos
stand in. The two "up" cases start from safe photos; the two "down" cases start from images at ~0.95 that the
attack itself makes from other photos at run time (nothing high-scoring is written outside a temp folder).
Every "real score" is ``Detector.score`` of the PNG written to disk, as ``nsfwlab score`` prints it.

Sections:
1. the seed's four cases side by side with ours, in the seed's space (the 256x256 resized image) and at the
   image's own resolution;
2. straight-through vs differentiable (kornia) vs EOT JPEG, on the same cases;
3. the acceptance checks: up to 0.983 (256x256 inputs and full resolution), 0.95 -> 0.03, a mid target 0.5,
   and survive a JPEG q90 re-save.

Prints markdown tables; writes JSON to benchmarks/out/bench_attack.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SEED_CASES = [  # (name, direction, score before, score after, iterations, L-inf /255, PSNR dB)
    ("starry_night", "up", 0.0018, 0.9834, 8000, "~10", "37.6-38.7"),
    ("the_scream", "up", 0.0026, 0.9834, 8000, "~10", "37.6-38.7"),
    ("flickr2", "down", 0.9521, 0.0292, 2000, "2-4", "45.5-48.6"),
    ("flickr", "down", 0.9513, 0.0644, 1000, "2-4", "45.5-48.6"),
]


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _photo(name: str) -> np.ndarray:
    import skimage.data

    arr = np.asarray(getattr(skimage.data, name)())
    return np.stack([arr] * 3, axis=-1) if arr.ndim == 2 else arr


def _square(arr: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(arr).resize((256, 256), Image.Resampling.BILINEAR))


def _real_score(det: Any, image: Image.Image, tmp: Path, name: str) -> float:
    path = tmp / f"{name}.png"
    image.save(path)
    return det.nsfw_score(path)


def _run(det: Any, tmp: Path, tag: str, image: np.ndarray, to: float, **kwargs: Any) -> dict[str, Any]:
    from nsfwlab.lab import attack

    t0 = time.perf_counter()
    res = attack(image, to, detector=det, **kwargs)
    seconds = time.perf_counter() - t0
    row = {"case": tag, "size": f"{res.image.width}x{res.image.height}", "to": to,
           "before": round(res.score_before, 4), "real_score": round(_real_score(det, res.image, tmp, tag), 4),
           "success": res.success, "steps": res.steps, "linf": res.linf, "psnr": round(res.psnr, 1),
           "ssim": round(res.ssim, 4), "seconds": round(seconds, 1),
           **{k: str(v) for k, v in kwargs.items() if k not in ("steps", "device")}}
    if kwargs.get("survive_jpeg"):
        buf = io.BytesIO()
        res.image.save(buf, format="JPEG", quality=int(kwargs["survive_jpeg"]))
        row["resaved_score"] = round(det.nsfw_score(buf.getvalue()), 4)
    print(f"  {tag}: {row}", file=sys.stderr, flush=True)
    return row | {"image": res.image}


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="only section 1 in the resized space")
    args = ap.parse_args()
    import torch

    from nsfwlab import Detector

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    det = Detector(device="cpu")
    common = {"device": args.device, "steps": args.steps}
    tmp = Path(tempfile.mkdtemp(prefix="bench-attack-"))
    rows: dict[str, list[dict[str, Any]]] = {"seed": [], "jpeg_modes": [], "acceptance": []}
    # the two down cases start from images the attack pushes to >= 0.95 first (at full resolution)
    starts = {"up1": _photo("astronaut"), "up2": _photo("coffee")}
    for key, name in (("down1", "chelsea"), ("down2", "rocket")):
        made = _run(det, tmp, f"make-{key}", _photo(name), 0.96, **common)
        starts[key] = np.asarray(made["image"])
    spaces = ["resized"] if args.quick else ["resized", "original"]
    for (seed_name, direction, s0, s1, iters, linf, psnr), key in zip(SEED_CASES, ("up1", "up2", "down1", "down2"),
                                                                      strict=True):
        to = 0.983 if direction == "up" else 0.03
        rows["seed"].append({"case": f"seed: {seed_name}", "size": "256x256", "before": s0, "real_score": s1,
                             "steps": iters, "linf": linf, "psnr": psnr, "seconds": "-"})
        for space in spaces:
            r = _run(det, tmp, f"{key}-{space}", starts[key], to, space=space, **common)
            rows["seed"].append(r)
    if not args.quick:
        for key in ("up1", "up2", "down1"):
            to = 0.983 if key.startswith("up") else 0.03
            for mode in ("differentiable", "straight-through", "eot"):
                rows["jpeg_modes"].append(_run(det, tmp, f"{key}-{mode}", starts[key], to, jpeg=mode, **common))
        acc = rows["acceptance"]
        acc.append(_run(det, tmp, "up-256", _square(_photo("astronaut")), 0.983, **common))
        acc.append(_run(det, tmp, "up-256b", _square(_photo("coffee")), 0.983, **common))
        acc.append(_run(det, tmp, "up-full", _photo("astronaut"), 0.983, **common))
        acc.append(_run(det, tmp, "up-fullb", _photo("coffee"), 0.983, **common))
        made = _run(det, tmp, "make-095", _square(_photo("chelsea")), 0.95, **common)
        acc.append(_run(det, tmp, "down-256", np.asarray(made["image"]), 0.03, **common))
        acc.append(_run(det, tmp, "down-full", starts["down1"], 0.03, **common))
        acc.append(_run(det, tmp, "mid-0.5", _photo("coffee"), 0.5, tolerance=0.02, **common))
        acc.append(_run(det, tmp, "mid-0.5b", _square(_photo("rocket")), 0.5, tolerance=0.02, **common))
        acc.append(_run(det, tmp, "survive-q90", _photo("chelsea"), 0.95, survive_jpeg=90, **common))
        acc.append(_run(det, tmp, "survive-q90b", _photo("astronaut"), 0.95, survive_jpeg=90, **common))
    cols = ["case", "size", "before", "real_score", "success", "steps", "linf", "psnr", "seconds"]
    print(f"\n{_cpu()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"load {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d')}\n")
    print("### Seed cases\n" + _table(rows["seed"], ["space", *cols]))
    if not args.quick:
        print("\n### JPEG modes\n" + _table(rows["jpeg_modes"], ["jpeg", *cols]))
        print("\n### Acceptance\n" + _table(rows["acceptance"], [*cols, "tolerance", "survive_jpeg", "resaved_score"]))
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    clean = {k: [{c: v for c, v in r.items() if c != "image"} for r in rs] for k, rs in rows.items()}
    (out / "bench_attack.json").write_text(json.dumps(clean, indent=1))


if __name__ == "__main__":
    main()
