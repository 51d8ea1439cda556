"""Benchmark: everyday evasions (nsfwlab.lab.evasions) on open_nsfw and nsfwjs, and what tiled
scoring (nsfwlab.tiles) gives back, at what cost.

    .venv/bin/python benchmarks/bench_evasions.py [--typical 20] [--pool 150] [--top 12]
        [--models open_nsfw,nsfwjs-mobilenetv2] [--backend onnxruntime] [--out benchmarks/out]

Two sets, both safe (scikit-image's photos, nothing explicit):

- ``typical``: ``--typical`` photos of mixed web sizes (benchmarks/corpus.py ``mixed_photos``), every
  evasion, no tiles: how much each evasion moves the score of ordinary pictures.
- ``high``: per model, the ``--top`` images that model scores highest among a pool of ``--pool``
  crops of the same photos, zoomed and tinted warm (its false positives: a safe image the model
  scores high is the only kind of "explicit" image a benchmark here may hold). The evasions that
  tiles answer (border, frame, grid2, grid3, meme, screenshot), scored plain and tiled with the
  default layout (the panels found in the image) and the fixed grid (36 forwards): the share of the
  score lost that tiles recover, the rise on clean images, and seconds per image.

Writes ``bench_evasions.json`` to ``--out`` and prints markdown tables.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import _sources, cpu_name, mixed_photos


def warm_pool(n: int, side: int = 384, seed: int = 1) -> list[np.ndarray]:
    """``n`` crops of the corpus photos (a quarter to all of each side), ``side`` pixels square,
    tinted towards a warm tone by a random share up to 0.6. Deterministic."""
    rng = np.random.default_rng(seed)
    sources = _sources()
    out = []
    for i in range(n):
        src = sources[i % len(sources)]
        z = rng.uniform(0.25, 1.0)
        w, h = int(src.width * z), int(src.height * z)
        left, top = int(rng.integers(0, src.width - w + 1)), int(rng.integers(0, src.height - h + 1))
        arr = np.asarray(src.crop((left, top, left + w, top + h)).resize((side, side))).astype(np.float32)
        warm = rng.uniform(0.0, 0.6)
        arr = arr * (1 - warm) + warm * np.array([225, 160, 130]) * (arr.mean(-1, keepdims=True) / 128)
        out.append(np.clip(arr, 0, 255).astype(np.uint8))
    return out


def _detector(model: str, backend: str) -> Any:
    from nsfwlab import Detector

    return Detector(backend, device="cpu", model=None if model == "open_nsfw" else model)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--typical", type=int, default=20)
    ap.add_argument("--pool", type=int, default=150)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--models", default="open_nsfw,nsfwjs-mobilenetv2")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    args = ap.parse_args()

    from nsfwlab.lab.evasions import DEFAULT_EVASIONS, TILED_EVASIONS, evasion_table
    from nsfwlab.tiles import TileLayout

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    dets = {m: _detector(m, args.backend) for m in models}
    record: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu_name(),
        "cores": os.cpu_count(), "load_before": os.getloadavg(), "backend": args.backend, "models": models,
    }
    work = args.out / "evasion_corpus"
    typical = mixed_photos(args.typical, work, seed=3) if args.typical else []
    t0 = time.perf_counter()
    if typical:  # every evasion; tiles (panels) on the clean photos too, for their false-positive price
        rep = evasion_table(typical, dets, DEFAULT_EVASIONS, tiles=["border"], seed=0).to_dict()
        record["typical_tiles"] = rep["tiles"]
        record["typical"] = {k: rep[k] for k in ("evasions", "evasions_detail", "evasion_setup", "warnings")}
        record["typical"]["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"typical set: {len(typical)} photos, {record['typical']['seconds']} s", flush=True)

    pool = warm_pool(args.pool)
    record["high"] = {}
    layouts = {"panels": TileLayout(), "grid": TileLayout(strategy="grid")}
    for model, det in dets.items():
        scores = np.array([r.score for r in det.score_many(pool)])
        top = np.argsort(-scores)[: args.top]
        chosen = [pool[i] for i in top]
        entry: dict[str, Any] = {"pool": len(pool), "clean_scores": [round(float(s), 4) for s in scores[top]]}
        for name, layout in layouts.items():
            t0 = time.perf_counter()
            rep = evasion_table(chosen, {model: det}, TILED_EVASIONS, tiles=True, layout=layout, seed=0).to_dict()
            entry[name] = {"evasions_detail": rep["evasions_detail"], "tiles": rep["tiles"],
                           "warnings": rep["warnings"], "seconds": round(time.perf_counter() - t0, 1)}
            print(f"high set, {model}, layout {name}: {entry[name]['seconds']} s", flush=True)
        record["high"][model] = entry
    record["load_after"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_evasions.json").write_text(json.dumps(record, indent=1))
    print_tables(record)


def print_tables(record: dict[str, Any]) -> None:
    models = record["models"]
    if "typical" in record:
        d = record["typical"]["evasions_detail"]
        print("\n| evasion | " + " | ".join(f"{m}: mean change [95% CI], flips" for m in models) + " |")
        print("|---|" + "---|" * len(models))
        for e, per in d.items():
            cells = [f"{per[m]['mean_change']:+.3f} [{per[m]['ci95'][0]:+.3f}, {per[m]['ci95'][1]:+.3f}], "
                     f"{per[m]['flips']}" for m in models]
            print(f"| {e} | " + " | ".join(cells) + " |")
    for m, t in record.get("typical_tiles", {}).items():
        print(f"typical photos, {m}, panels: {t['cost']} forwards/image, clean +{t['clean_change']:.3f} mean, "
              f"{t['clean_to_nsfw']} of {t['n']} turned NSFW")
    for m, entry in record["high"].items():
        s = entry["clean_scores"]
        print(f"\n{m}: top {len(s)} of {entry['pool']} (clean {min(s):.3f} to {max(s):.3f})")
        print("| evasion | mean change [95% CI] | to safe | panels: recovered [95% CI] | panels: to safe "
              "| grid: recovered |")
        print("|---|---|---|---|---|---|")
        dflt, cheap = entry["panels"], entry["grid"]
        for e, per in dflt["evasions_detail"].items():
            st = per[m]
            rec = dflt["tiles"][m]["recovered_detail"][e]
            ci = rec["ci95"]
            cheap_share = cheap["tiles"][m]["recovered"][e]
            print(f"| {e} | {st['mean_change']:+.3f} [{st['ci95'][0]:+.3f}, {st['ci95'][1]:+.3f}] | {st['to_safe']} "
                  f"| {_share(rec['share'])} {f'[{ci[0]:.2f}, {ci[1]:.2f}]' if ci else ''} | {st['tiled_to_safe']} "
                  f"| {_share(cheap_share)} |")
        for name in ("panels", "grid"):
            t = entry[name]["tiles"][m]
            sp = t["seconds_per_image"]
            print(f"{name}: {t['cost']} forwards/image; {sp['plain']} s plain, {sp['tiled']} s tiled per image; "
                  f"clean images +{t['clean_change']:.3f} mean, {t['clean_to_nsfw']} turned NSFW")


def _share(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


if __name__ == "__main__":
    main()
