"""Synthetic fixtures shared by several test modules (generated clips and animations among them)
(and by benchmarks/bench_evaluate.py, which measures on the same set): abstract generated images and
a fake backend. No photos, nothing explicit."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from nsfwlab.calibration import Calibration
from nsfwlab.config import YAHOO_MEAN_BGR


def shapes_image(cls: int, i: int, size: int = 96) -> np.ndarray:
    """Class 0: six round blobs; class 1: six squares; random colours, positions and sizes.
    Deterministic in (cls, i); abstract shapes only. The stock model scores both alike."""
    rng = np.random.default_rng(1000 * cls + i)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.broadcast_to(rng.uniform(40, 220, 3), (size, size, 3)).copy()
    fg = rng.uniform(40, 220, 3)
    for _ in range(6):
        cy, cx = rng.uniform(8, size - 8, 2)
        r = rng.uniform(5, 12)
        mask = (np.hypot(yy - cy, xx - cx) < r) if cls == 0 else ((abs(yy - cy) < r) & (abs(xx - cx) < r))
        img[mask] = fg
    img += rng.normal(0, 8, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


class RedFraction:
    """A fake backend: NSFW probability = the fraction of red pixels the network sees."""

    name = "fake-red"
    device = "cpu"
    model_version = "fake"

    def predict(self, batch: np.ndarray) -> np.ndarray:
        rgb = batch[..., ::-1] + np.array(YAHOO_MEAN_BGR[::-1], dtype=np.float32)
        red = (rgb[..., 0] > 179) & (rgb[..., 1] < 74) & (rgb[..., 2] < 74)
        p = red.reshape(len(batch), -1).mean(axis=1)
        return np.stack([1 - p, p], axis=1).astype(np.float32)


#: A calibration for the fake backend's versions: calibrated = 0.5 + raw / 2 (isotonic, two knots).
HALF_UP = Calibration("isotonic", RedFraction.model_version, "yahoo-exact-v1", {"x": [0.0, 1.0], "y": [0.5, 1.0]})

RED, GREY = (230, 20, 20), (128, 128, 128)


def clip(codec: str = "libx264", fmt: str = "mp4", seconds: float = 6.0, fps: int = 10,
         red: tuple[float, float] = (2.0, 4.0), size: tuple[int, int] = (64, 48)) -> bytes:
    """A clip of grey frames, red between ``red[0]`` and ``red[1]`` seconds."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(int(seconds * fps)):
            colour = RED if red[0] <= i / fps < red[1] else GREY
            frame = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), colour, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def animation(colours: list[tuple[int, int, int]], fmt: str = "GIF", duration: int | list[int] = 200) -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in colours]
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=duration, loop=0)
    return buf.getvalue()
