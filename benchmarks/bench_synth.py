"""Benchmark: synthesis steps per second (forward, straight-through JPEG, backward, Adam step).

    .venv/bin/python benchmarks/bench_synth.py [--steps 10] [--device cpu]

One configuration per row: parameterisation (fft, pixels), batch size, transformation robustness
on or off. The first step is a warm-up and not timed. Prints a markdown table; writes JSON to
benchmarks/out/bench_synth.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import cpu_name

from nsfwlab import Detector
from nsfwlab.lab.synthesize import Param, SynthConfig, synthesize

CASES = [(Param.FFT, 1, True), (Param.FFT, 1, False), (Param.PIXELS, 1, True), (Param.FFT, 4, True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "bench_synth.json")
    args = ap.parse_args()
    det = Detector(device=args.device)
    rows = []
    for param, batch, transforms in CASES:
        config = SynthConfig(objective="nsfw", param=param, batch=batch, transforms=transforms, steps=args.steps,
                             device=args.device)
        times: list[float] = []
        last = [time.perf_counter()]

        def tick(event: Any, times: list[float] = times, last: list[float] = last) -> None:
            now = time.perf_counter()
            if event.done > 1:
                times.append(now - last[0])
            last[0] = now

        synthesize(None, det, config, progress=tick)
        rate = len(times) / sum(times)
        rows.append({"param": param.value, "batch": batch, "transforms": transforms,
                     "steps_per_s": round(rate, 2), "images_per_s": round(rate * batch, 2)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"\n{cpu_name()}, {time.strftime('%Y-%m-%d')}, device {args.device}, {args.steps} steps per row\n")
    print("| param | batch | transforms | steps/s | image-steps/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['param']} | {r['batch']} | {'on' if r['transforms'] else 'off'} | {r['steps_per_s']} | "
              f"{r['images_per_s']} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu": cpu_name(), "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
