"""Benchmark: ART's Square and HopSkipJump against a live ``nsfwlab serve`` (open_nsfw), with and
without ``--detect-attacks --on-attack block``.

Each attack runs through :class:`nsfwlab.lab.remote.ServiceOracle` (one PNG upload per query) on
scikit-image photos downscaled to a longer side of 256 (the robustness protocol's working copy),
each run under its own API key (a flag lasts an hour and is per key). The photos are safe; the
attack moves each out of the server's safe band: to a score of at least 0.2, the ``safe_below``
boundary, which is also the only boundary a labels-only server reveals.

- **Square** (score-based, ``--answer score``): linf, ``--eps`` levels of 1/255, ``--budget`` queries.
- **HopSkipJump** (label-only, ``--answer label``): l2 (RMS), ``--budget`` queries; success = an
  adversarial within ``--hsj-eps`` RMS levels. It starts from an image of the other class: the
  attacker's, prepared offline on a local copy of the public model (no query): the highest-scoring
  of 200 colour-shifted crops of scikit-image photos and synthetic images (those of
  ``bench_sentinel.py``'s album), resized to the photo's size (the best of the 40 best), scoring at least 0.25.

Counted with detection: queries answered before the first 403 ``query_attack``; without
detection: queries to success (the budget when none).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_query_attacks.py [--photos 5] [--budget 1000]

Writes a markdown summary to stdout and JSON to benchmarks/out/bench_query_attacks.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera")


def photo(name: str, side: int = 256) -> np.ndarray:
    import skimage.data

    arr = np.asarray(getattr(skimage.data, name)())
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, -1)
    img = Image.fromarray(arr[..., :3])
    scale = side / max(img.size)
    if scale < 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BILINEAR)
    return np.asarray(img, np.uint8)


def starts(det, shapes: dict[str, tuple[int, ...]], n: int = 200, at_least: float = 0.25) -> dict:  # type: ignore[no-untyped-def]
    """Per photo, the attacker's image of the other class (see the module docstring) and its score."""
    import bench_sentinel

    from nsfwlab.lab.differentiable import exact_score

    rng = np.random.default_rng(0)
    names = ("astronaut", "chelsea", "coffee", "rocket", "camera", "immunohistochemistry", "retina",
             "hubble_deep_field")
    photos = [bench_sentinel.photo(name, 512) for name in names]
    pool = [bench_sentinel._source(rng, photos).convert("RGB") for _ in range(n)]
    ranked = sorted(pool, key=lambda im: -exact_score(det, np.asarray(im.resize((256, 256)))))
    out = {}
    for key, shape in shapes.items():
        sized = [np.asarray(im.resize((shape[1], shape[0]), Image.Resampling.BILINEAR), np.uint8)
                 for im in ranked[:40]]
        score, arr = max(((exact_score(det, a), a) for a in sized), key=lambda t: t[0])
        if score < at_least:
            raise RuntimeError(f"no start image for {key} scores {at_least} or more (best {score:.3f})")
        out[key] = (arr, score)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(keys: list[str], *args: str) -> Iterator[str]:
    """``nsfwlab serve ARGS`` as a subprocess on a free port, with ``keys``; yields its URL once ready."""
    import httpx

    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        key_file = Path(tmp) / "keys.txt"
        key_file.write_text("\n".join(keys) + "\n")
        log = Path(tmp) / "serve.log"
        cmd = [sys.executable, "-c", "from nsfwlab.cli import main; main()", "serve", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning", "--api-key-file", str(key_file), *args]
        with log.open("wb") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=dict(os.environ))
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"serve exited with {proc.returncode}: {log.read_text()}")
                try:
                    if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"serve not ready: {log.read_text()}")
                time.sleep(0.2)
            yield url
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


class Recorder:
    """An oracle passing queries through, recording after which query the best adversarial so far
    came within each of ``levels`` (the perturbation in /255 units, ``norm``)."""

    def __init__(self, oracle, image: np.ndarray, norm: str, levels: tuple[float, ...]) -> None:  # type: ignore[no-untyped-def]
        self.oracle, self.image, self.norm, self.levels = oracle, image, norm, levels
        self.name, self.labels_only, self.threshold = oracle.name, oracle.labels_only, oracle.threshold
        self.first: dict[float, int] = {}
        self.best: list[tuple[int, float]] = []  # (query, norm) each time the smallest adversarial shrank

    @property
    def queries(self) -> int:
        return int(self.oracle.queries)

    def scores(self, images: np.ndarray) -> np.ndarray:
        before = self.oracle.queries
        try:
            got = self.oracle.scores(images)
        except Exception as exc:
            answered = getattr(exc, "answered", None)
            self._note(images, answered if answered is not None else np.zeros(0), before)
            raise
        self._note(images, got, before)
        return got

    def _note(self, images: np.ndarray, got: np.ndarray, before: int) -> None:
        from nsfwlab.lab.blackbox import perturbation_norm

        for i, answer in enumerate(got):
            if answer >= self.threshold:
                dist = perturbation_norm(images[i], self.image, self.norm)
                if not self.best or dist < self.best[-1][1]:
                    self.best.append((before + i + 1, round(dist, 2)))
                for level in self.levels:
                    if dist <= level + 1e-9 and level not in self.first:
                        self.first[level] = before + i + 1


LEVELS = (64.0, 32.0, 16.0, 8.0, 4.0)


def run_square(url: str, key: str, img: np.ndarray, args: argparse.Namespace, seed: int) -> dict:
    from nsfwlab.lab.blackbox import square
    from nsfwlab.lab.remote import ServiceOracle

    with ServiceOracle(url, key, threshold=args.threshold) as oracle:
        t0 = time.perf_counter()
        r = square(oracle, img, 0, norm="linf", eps=args.eps, queries=args.budget, seed=seed)
        took = time.perf_counter() - t0
    return {**r.to_dict(), "seconds": round(took, 1)}


def run_hsj(url: str, key: str, img: np.ndarray, start: np.ndarray, args: argparse.Namespace, seed: int) -> dict:
    from nsfwlab.lab.blackbox import hopskipjump
    from nsfwlab.lab.remote import ServiceOracle

    with ServiceOracle(url, key) as oracle:
        rec = Recorder(oracle, img, "l2", LEVELS)
        t0 = time.perf_counter()
        r = hopskipjump(rec, img, 0, norm="l2", queries=args.budget, seed=seed, eps=args.hsj_eps,  # type: ignore[arg-type]
                        start=start)
        took = time.perf_counter() - t0
    return {**r.to_dict(), "threshold": oracle.threshold, "seconds": round(took, 1),
            "queries_to_rms": {str(k): v for k, v in sorted(rec.first.items())},
            "rms_after": {str(q): next((d for at, d in reversed(rec.best) if at <= q), None)
                          for q in (2, 100, 300, 1000) if q <= args.budget}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=5)
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--eps", type=float, default=8.0, help="Square's linf ball, /255")
    parser.add_argument("--hsj-eps", type=float, default=8.0, help="HopSkipJump's success: RMS change, /255")
    parser.add_argument("--threshold", type=float, default=0.2)
    parser.add_argument("--only", choices=["detect", "nodetect", "all"], default="all")
    parser.add_argument("--attacks", default="square,hopskipjump")
    args = parser.parse_args()
    from corpus import cpu_name

    names = PHOTOS[: args.photos]
    imgs = {n: photo(n) for n in names}
    from nsfwlab import Detector
    from nsfwlab.lab.differentiable import exact_score

    det = Detector(device="cpu")
    clean = {n: round(exact_score(det, v), 5) for n, v in imgs.items()}
    begin = starts(det, {n: v.shape for n, v in imgs.items()})
    keys = [f"bench-key-{i}" for i in range(2 * len(names) + 2)]
    result: dict = {"date": datetime.now(UTC).isoformat(timespec="minutes"), "cpu": cpu_name(),
                    "cores": os.cpu_count(), "args": vars(args), "clean": clean,
                    "shapes": {n: list(v.shape) for n, v in imgs.items()},
                    "hsj_start_score": {n: round(v[1], 4) for n, v in begin.items()}}
    modes = {"detect": ["--detect-attacks", "--on-attack", "block"], "nodetect": []}
    for mode, flags in modes.items():
        if args.only not in ("all", mode):
            continue
        out: dict = {"square": {}, "hopskipjump": {}}
        if "square" in args.attacks:
            with serve(keys, *flags) as url:
                for i, n in enumerate(names):
                    out["square"][n] = run_square(url, keys[2 * i], imgs[n], args, seed=i)
                    print(mode, "square", n, out["square"][n], flush=True)
        if "hopskipjump" not in args.attacks:
            result[mode] = out
            continue
        with serve(keys, *flags, "--answer", "label") as url:
            for i, n in enumerate(names):
                out["hopskipjump"][n] = run_hsj(url, keys[2 * i + 1], imgs[n], begin[n][0], args, seed=i)
                print(mode, "hopskipjump", n, out["hopskipjump"][n], flush=True)
        result[mode] = out
    dest = HERE / "out"
    dest.mkdir(exist_ok=True)
    (dest / "bench_query_attacks.json").write_text(json.dumps(result, indent=2))
    print(f"{result['date']}, {result['cpu']}, {result['cores']} cores")
    for mode in ("detect", "nodetect"):
        for attack in ("square", "hopskipjump"):
            runs = result.get(mode, {}).get(attack, {})
            if not runs:
                continue
            if mode == "detect":
                counts = [r["blocked_at_query"] for r in runs.values()]
                print(f"| {attack} | detect | blocked at {counts} | successes before the block "
                      f"{sum(r['success'] for r in runs.values())}/{len(runs)} |")
            else:
                counts = [r["queries"] if r["success"] else None for r in runs.values()]
                print(f"| {attack} | no detection | queries to success {counts} | "
                      f"{sum(r['success'] for r in runs.values())}/{len(runs)} | "
                      f"{[r.get('queries_to_rms') for r in runs.values()]} |")


if __name__ == "__main__":
    main()
