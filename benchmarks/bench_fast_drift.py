"""Fast mode's score drift against exact, on a varied offline corpus, and what its guard costs.

The corpus (written to ``out``, deterministic): every photo scikit-image bundles, in full; crops of
them at many sizes, small ones included (224 to 512 px, 253x253 among them); web-size views
(640x480 to 1920x1080, upscaled); painting-like renderings of the web-size views
(:func:`corpus.paintings`). JPEGs at quality 75 to 95, some PNGs.

Each file is scored the exact way (``PreprocessConfig()``, the fp32 graph) and the fast way
(DCT-scaled decoding, the int8 graph: ``nsfwlab scan --mode fast`` on a CPU). The script prints
percentiles (50/90/99/99.9) and the maximum of ``|fast - exact|``, the labels fast mode alone would
change at 0.2/0.8, and for several margins the share of images the guard re-scores (fast score
within the margin of a band boundary) with the labels that would still change. Run::

    PYTHONPATH=src python benchmarks/bench_fast_drift.py /tmp/drift-corpus
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import _variant, cpu_name, paintings

#: scikit-image's bundled photos (and photo-like images) that load offline.
PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "coins", "grass", "gravel", "brick", "hubble_deep_field",
          "immunohistochemistry", "moon", "motorcycle_left", "motorcycle_right", "page", "retina", "rocket",
          "text", "clock", "horse")
CROPS = ((253, 253), (224, 224), (240, 320), (256, 256), (300, 300), (320, 240), (333, 250), (400, 400),
         (480, 360), (512, 512))
WEB = ((640, 480), (800, 600), (1024, 768), (1200, 800), (1920, 1080))
BOUNDARIES = (0.2, 0.8)
MARGINS = (0.05, 0.1, 0.15, 0.175, 0.18, 0.19, 0.2)


def _photos() -> list[tuple[str, Image.Image]]:
    import skimage.data

    out = []
    for name in PHOTOS:
        try:
            arr = np.asarray(getattr(skimage.data, name)())
        except Exception:  # a photo this scikit-image lacks, or one it would download
            continue
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        out.append((name, Image.fromarray(arr).convert("RGB")))
    return out


def _save(img: Image.Image, path: Path, rng: np.random.Generator) -> Path:
    if rng.random() < 0.15:
        path = path.with_suffix(".png")
        img.save(path)
    else:
        img.save(path, quality=int(rng.integers(75, 96)))
    return path


def build_corpus(out: Path, seed: int = 0) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files: list[Path] = []
    web: list[Path] = []
    for name, img in _photos():
        files.append(_save(img, out / f"{name}_full.jpg", rng))
        for w, h in CROPS:
            if img.width < w or img.height < h:
                img_src = img.resize((max(w, img.width), max(h, img.height)), Image.Resampling.BICUBIC)
            else:
                img_src = img
            for k in range(2):
                left = int(rng.integers(0, img_src.width - w + 1))
                top = int(rng.integers(0, img_src.height - h + 1))
                crop = img_src.crop((left, top, left + w, top + h))
                files.append(_save(crop, out / f"{name}_crop{w}x{h}_{k}.jpg", rng))
        for w, h in WEB:
            view = _variant(img, w, h, rng) if rng.random() < 0.7 else _variant(img, h, w, rng)
            p = out / f"{name}_web{w}x{h}.jpg"
            view.save(p, quality=int(rng.integers(75, 96)))
            web.append(p)
    files += web
    files += paintings(web, out / "paintings")
    return files


def _score(paths: list[Path], backend: object, config: object, batch: int = 8) -> tuple[np.ndarray, float]:
    from nsfwlab.config import DecodeLimits
    from nsfwlab.preprocess import preprocess, stack_batch

    limits = DecodeLimits()
    scores: list[float] = []
    start = time.perf_counter()
    for i in range(0, len(paths), batch):
        arrays = [preprocess(p.read_bytes(), config, limits) for p in paths[i:i + batch]]  # type: ignore[arg-type]
        scores += backend.predict(stack_batch(arrays))[:, 1].tolist()  # type: ignore[attr-defined]
    return np.asarray(scores), time.perf_counter() - start


def _label(x: np.ndarray) -> np.ndarray:
    return np.digitize(x, BOUNDARIES, right=True)  # 0 safe (< 0.2), 1 review, 2 nsfw (> 0.8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="folder for the generated corpus")
    ap.add_argument("--cache-dir", type=Path, default=None, help="int8 model cache (default ~/.cache/nsfwlab)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--scans", type=int, default=0, help="also time whole scans, this many interleaved rounds")
    args = ap.parse_args()

    from nsfwlab.backends import OnnxRuntimeBackend
    from nsfwlab.config import PreprocessConfig
    from nsfwlab.scan.modes import fast_preprocess, quantize_int8

    files = sorted(build_corpus(args.out))
    exact_backend = OnnxRuntimeBackend(threads=args.threads)
    fast_backend = OnnxRuntimeBackend(quantize_int8(None, cache_dir=args.cache_dir), verify=False,
                                      threads=args.threads)
    exact, t_exact = _score(files, exact_backend, PreprocessConfig())
    fast, t_fast = _score(files, fast_backend, fast_preprocess(PreprocessConfig()))
    with open(args.out / "scores.csv", "w") as fh:
        fh.write("file,exact,fast\n")
        for f, e, q in zip(files, exact, fast, strict=True):
            fh.write(f"{f.relative_to(args.out)},{e:.6f},{q:.6f}\n")
    drift = np.abs(fast - exact)
    n = len(files)
    print(f"# {n} files, {cpu_name()}, {datetime.date.today()}, {args.threads} thread(s)")
    print(f"exact {1000 * t_exact / n:.1f} ms/img, fast {1000 * t_fast / n:.1f} ms/img (decode+preprocess+model)")
    pct = {q: float(np.percentile(drift, q)) for q in (50, 90, 99, 99.9)}
    print("drift |fast - exact|: " + ", ".join(f"p{q:g} {v:.4f}" for q, v in pct.items())
          + f", max {drift.max():.4f}")
    for q in np.argsort(drift)[::-1][:5]:
        print(f"  {drift[q]:.4f}  exact {exact[q]:.4f} fast {fast[q]:.4f}  {files[q].relative_to(args.out)}")
    changed = _label(fast) != _label(exact)
    print(f"labels changed without a guard: {int(changed.sum())} of {n}")
    painted = np.array(["painting" in f.name for f in files])
    for name, sel in (("photos and crops", ~painted), ("paintings", painted)):
        if sel.any():
            print(f"  {name}: n {int(sel.sum())}, p99 {np.percentile(drift[sel], 99):.4f}, max {drift[sel].max():.4f}")
    print("margin  re-scored  labels still changed")
    for m in MARGINS:
        near = np.zeros(n, bool)
        for b in BOUNDARIES:
            near |= np.abs(fast - b) <= m
        guarded = np.where(near, exact, fast)
        still = int((_label(guarded) != _label(exact)).sum())
        print(f"{m:<7g} {100 * near.mean():6.2f}%   {still}")
    print(f"re-scoring one image exactly costs ~{1000 * t_exact / n:.1f} ms here (on top of its fast score)")
    if args.scans:
        _time_scans(args.out, args.scans, args.cache_dir)


def _time_scans(root: Path, rounds: int, cache_dir: Path | None) -> None:
    """Whole scans of the corpus (the library's scan(), default workers and threads), interleaved:
    exact, fast without the guard, fast with the default guard (and the share it re-scored)."""
    import tempfile

    from nsfwlab.scan import ResultStore, ScanConfig, ScanMode, build_scan_model, scan
    from nsfwlab.scan.modes import FAST_GUARD_MARGIN

    cache = str(cache_dir) if cache_dir else None
    variants = {"exact": ScanConfig(),
                "fast, no guard": ScanConfig(mode=ScanMode.FAST, cache_dir=cache, guard_margin=0),
                f"fast, guard {FAST_GUARD_MARGIN}": ScanConfig(mode=ScanMode.FAST, cache_dir=cache)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, config in variants.items():
            model = build_scan_model(config)
            with tempfile.TemporaryDirectory() as tmp, ResultStore(Path(tmp) / "r.db") as store:
                start = time.perf_counter()
                summary = scan([root], store, config, model=model)
                times[name].append(time.perf_counter() - start)
            if model.guard is not None:
                share = model.guard.rescored / max(1, model.guard.checked)
                print(f"  {name}: re-scored {model.guard.rescored} of {model.guard.checked} ({100 * share:.1f}%)")
    for name, ts in times.items():
        print(f"scan {name}: {summary.scored / min(ts):.1f} img/s (best of {rounds}: {min(ts):.1f} s)")


if __name__ == "__main__":
    main()
