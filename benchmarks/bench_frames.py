"""Benchmark: scoring videos frame by frame, nsfwlab's sampling against opennsfw2's approach.

    .venv/bin/python benchmarks/bench_frames.py --clips 3 --seconds 20

Generated clips (a slow pan over scikit-image's public photos, H.264 in MP4, 30 fps, 640x360) are
scored three ways, alternating, medians of ``--repeats``:

- ``nsfwlab 2 fps``: ``Detector.score_frames`` with its defaults (PyAV decodes every frame, two
  frames a second are converted and scored through the exact pipeline);
- ``nsfwlab keyframes``: ``FrameOptions(keyframes_only=True)`` (only key frames are decoded);
- ``OpenCV every 8th``: opennsfw2's ``predict_video_frames`` strategy, decoding every frame with
  OpenCV and scoring every 8th (its default ``frame_interval``) through the same Detector, so the
  comparison is about decoding and sampling, not about the model.

Writes a markdown table to stdout and JSON to benchmarks/out/bench_frames.json.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import cpu_name


def make_clip(path: Path, seconds: float, seed: int, fps: int = 30, size: tuple[int, int] = (640, 360)) -> None:
    import av
    import skimage.data
    from PIL import Image

    names = ["astronaut", "chelsea", "coffee", "rocket"]
    src = Image.fromarray(np.asarray(getattr(skimage.data, names[seed % len(names)])())).convert("RGB")
    src = src.resize((size[0] * 2, size[1] * 2))
    frames = int(seconds * fps)
    with av.open(str(path), mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            x = int((src.width - size[0]) * i / max(frames - 1, 1))
            crop = src.crop((x, size[1] // 2, x + size[0], size[1] // 2 + size[1]))
            for packet in stream.encode(av.VideoFrame.from_image(crop)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def opencv_every_nth(det, path: Path, every: int = 8) -> tuple[int, int]:
    """opennsfw2's strategy: decode every frame with OpenCV, score every ``every``-th."""
    import cv2
    from PIL import Image

    from nsfwlab.preprocess import preprocess_rgb, stack_batch

    cap = cv2.VideoCapture(str(path))
    decoded, arrays = 0, []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        if decoded % every == 0:
            arrays.append(preprocess_rgb(Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)), det.preprocess_config))
        decoded += 1
    cap.release()
    det.predict_arrays(stack_batch(arrays))
    return decoded, len(arrays)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clips", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from nsfwlab import Detector
    from nsfwlab.frames import FrameOptions

    det = Detector(device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        clips = [Path(tmp) / f"clip{i}.mp4" for i in range(args.clips)]
        for i, p in enumerate(clips):
            make_clip(p, args.seconds, i)
        datas = [p.read_bytes() for p in clips]
        video_s = args.seconds * len(clips)

        def ours(opts: FrameOptions | None = None) -> tuple[int, int]:
            frames = 0
            for d in datas:
                res = det.score_frames(io.BytesIO(d), opts)
                assert res.ok, res.error
                frames += res.frames
            return -1, frames

        def theirs() -> tuple[int, int]:
            dec = sc = 0
            for p in clips:
                d, s = opencv_every_nth(det, p)
                dec, sc = dec + d, sc + s
            return dec, sc

        ways = {"nsfwlab 2 fps": ours, "nsfwlab keyframes": lambda: ours(FrameOptions(keyframes_only=True)),
                "OpenCV every 8th (opennsfw2)": theirs}
        times: dict[str, list[float]] = {k: [] for k in ways}
        scored: dict[str, int] = {}
        ours()  # warm-up
        for _ in range(args.repeats):
            for name, fn in ways.items():
                t0 = time.perf_counter()
                _, scored[name] = fn()
                times[name].append(time.perf_counter() - t0)

    base = statistics.median(times["OpenCV every 8th (opennsfw2)"])
    rows = []
    print(f"# bench_frames: {len(clips)} clips x {args.seconds:g} s, 640x360 H.264 30 fps; {cpu_name()}")
    print("| way | frames scored | seconds | video s per wall s | vs OpenCV every 8th |")
    print("|---|---:|---:|---:|---:|")
    for name in ways:
        t = statistics.median(times[name])
        rows.append({"way": name, "frames_scored": scored[name], "seconds": t, "speedup": base / t})
        print(f"| {name} | {scored[name]} | {t:.2f} | {video_s / t:.1f} | {base / t:.2f}x |")
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    (out / "bench_frames.json").write_text(json.dumps(
        {"cpu": cpu_name(), "python": platform.python_version(), "clips": len(clips), "seconds": args.seconds,
         "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
