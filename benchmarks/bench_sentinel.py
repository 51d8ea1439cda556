"""Benchmark: how fast ``serve --detect-attacks`` notices query attacks, and whether it leaves a
benign album alone.

Against a live in-process app (FastAPI's TestClient, the real exact Detector, ``on_attack=block``):

- **score search** (Square-like, on scores): one photo, random square patches set to +-eps (an
  L-inf ball around the photo), each candidate queried, improvements kept, aiming the score at the
  0.2 boundary; counted: queries answered before the first 403 ``query_attack``.
- **boundary walk** (HopSkipJump-like, on labels only, server answering ``label``): a binary
  search on the blend between a safe photo and a flat skin-tone image the model puts in the review
  band, then rounds of random probes around the boundary point, a step along their estimated
  gradient, and a binary search back toward the photo.
- **benign album**: images from scikit-image's photos (random crops, flips, colour shifts) and
  synthetic images (gradients, shapes, noise, flat colours), with bursts of near-duplicates
  (3-8 burst shots, re-saves at other JPEG qualities, resized copies), uploaded by one key; counted:
  flags (must be 0).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sentinel.py [--album 500] [--runs 5]

Writes a markdown summary to stdout and JSON to benchmarks/out/bench_sentinel.json.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

#: One query: image bytes -> the answer's result entry, or None when the server refused (403).
Query = Callable[[bytes], dict | None]
SKIN = (230, 180, 150)  # a flat image of this colour scores ~0.25: the review band


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def photo(name: str = "astronaut", side: int = 256) -> np.ndarray:
    import skimage.data

    arr = np.asarray(getattr(skimage.data, name)())
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, -1)
    return np.asarray(Image.fromarray(arr[..., :3]).resize((side, side), Image.Resampling.BILINEAR), np.float64)


def client_query(client, **params: str) -> Query:  # type: ignore[no-untyped-def]
    def query(data: bytes) -> dict | None:
        resp = client.post("/v1/score", content=data, params=params)
        if resp.status_code == 403 and resp.json()["code"] == "query_attack":
            return None
        assert resp.status_code == 200, resp.text
        return dict(resp.json()["results"][0])

    return query


def score_search(query: Query, x0: np.ndarray, *, target: float = 0.2, eps: float = 16.0, max_queries: int = 300,
                 seed: int = 0) -> tuple[int, float]:
    """Square-like random search toward ``target``; returns (queries answered, best score) when
    the server refuses or ``max_queries`` are spent."""
    rng = np.random.default_rng(seed)
    best = x0.copy()
    answer = query(png(best))
    if answer is None:
        return 0, float("nan")
    best_score, n = float(answer["score"]), 1
    h, w, _ = x0.shape
    while n < max_queries:
        side = int(rng.integers(16, 48))
        y, x = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
        cand = best.copy()
        cand[y:y + side, x:x + side] = x0[y:y + side, x:x + side] + eps * rng.choice([-1.0, 1.0], size=(1, 1, 3))
        cand = np.clip(cand, 0, 255)
        answer = query(png(cand))
        if answer is None:
            return n, best_score
        n += 1
        if abs(float(answer["score"]) - target) < abs(best_score - target):
            best, best_score = cand, float(answer["score"])
    return n, best_score


def boundary_walk(query: Query, x0: np.ndarray, *, max_queries: int = 300, probes: int = 8, delta: float = 1.0,
                  seed: int = 0) -> tuple[int, str]:
    """HopSkipJump-like walk on labels only; returns (queries answered, how it ended)."""
    rng = np.random.default_rng(seed)
    far = np.zeros_like(x0) + np.array(SKIN, np.float64)
    n = 0

    def label(img: np.ndarray) -> str | None:
        nonlocal n
        answer = query(png(img))
        if answer is None:
            return None
        n += 1
        return str(answer["label"])

    start = label(x0)
    if start is None:
        return n, "refused"
    if label(far) in (None, start):
        return n, "refused" if n < 2 else "no adversarial start"

    def search(inside: np.ndarray, outside: np.ndarray) -> np.ndarray | None:
        lo, hi = 0.0, 1.0  # blend weight of `outside`; label(lo) == start, label(hi) != start
        for _ in range(7):
            mid = (lo + hi) / 2
            got = label((1 - mid) * inside + mid * outside)
            if got is None:
                return None
            lo, hi = (mid, hi) if got == start else (lo, mid)
        return (1 - hi) * inside + hi * outside

    adv = search(x0, far)
    while adv is not None and n < max_queries:
        grad = np.zeros_like(x0)
        for _ in range(probes):
            u = rng.normal(size=x0.shape)
            got = label(adv + delta * u)
            if got is None:
                return n, "refused"
            grad += u if got != start else -u
        direction = grad / (np.linalg.norm(grad) / np.sqrt(grad.size) + 1e-9)
        size = 8.0
        while n < max_queries:  # geometric step search: the step must stay on the far side
            step = np.clip(adv + size * direction, 0, 255)
            got = label(step)
            if got is None:
                return n, "refused"
            if got != start:
                adv = search(x0, step)
                break
            size /= 2
    return n, "refused" if adv is None else "budget spent"


def _synthetic(rng: np.random.Generator, side: int) -> np.ndarray:
    kind = int(rng.integers(4))
    yy, xx = np.mgrid[0:side, 0:side] / side
    if kind == 0:  # a two-colour gradient at a random angle
        a = rng.uniform(0, np.pi)
        t = (np.cos(a) * xx + np.sin(a) * yy)[..., None]
        return rng.uniform(0, 255, 3) * t + rng.uniform(0, 255, 3) * (1 - t)
    if kind == 1:  # rectangles on a background
        img = np.zeros((side, side, 3)) + rng.uniform(0, 255, 3)
        for _ in range(int(rng.integers(3, 9))):
            y0, x0 = rng.integers(0, side - 8, 2)
            y1, x1 = y0 + rng.integers(8, side // 2), x0 + rng.integers(8, side // 2)
            img[y0:y1, x0:x1] = rng.uniform(0, 255, 3)
        return img
    if kind == 2:  # smooth noise
        small = rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)
        return np.asarray(Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC), np.float64)
    return np.zeros((side, side, 3)) + rng.uniform(0, 255, 3)  # a flat colour


def _source(rng: np.random.Generator, photos: list[np.ndarray]) -> Image.Image:
    if rng.random() < 0.35:
        return Image.fromarray(np.clip(_synthetic(rng, int(rng.integers(200, 400))), 0, 255).astype(np.uint8))
    arr = photos[int(rng.integers(len(photos)))]
    h, w = arr.shape[:2]
    ch, cw = int(h * rng.uniform(0.4, 0.9)), int(w * rng.uniform(0.4, 0.9))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = arr[y:y + ch, x:x + cw].astype(np.float64) * rng.uniform(0.7, 1.3, 3)
    crop = crop[:, ::-1] if rng.random() < 0.5 else crop
    return Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8))


def _variants(rng: np.random.Generator, img: Image.Image) -> list[bytes]:
    """One source as a benign user uploads it: once, a burst, re-saves or resized copies."""
    kind = rng.choice(["single", "burst", "resave", "resize"], p=[0.4, 0.3, 0.15, 0.15])
    if kind == "single":
        return [jpeg(img, int(rng.integers(70, 96)))]
    if kind == "burst":  # the camera moved a little, the light changed a little
        base = np.asarray(img, np.float64)
        out = []
        for _ in range(int(rng.integers(3, 9))):
            dy, dx = rng.integers(0, 6, 2)
            shot = base[dy:, dx:] * rng.uniform(0.95, 1.05) + rng.normal(0, 2.0, base[dy:, dx:].shape)
            out.append(jpeg(Image.fromarray(np.clip(shot, 0, 255).astype(np.uint8)), 90))
        return out
    if kind == "resave":
        return [jpeg(img, int(q)) for q in rng.choice([50, 60, 70, 80, 90, 95], size=int(rng.integers(2, 5)),
                                                      replace=False)]
    sizes = rng.uniform(0.4, 1.0, size=int(rng.integers(2, 5)))
    return [jpeg(img.resize((max(32, int(img.width * s)), max(32, int(img.height * s)))), 85) for s in sizes]


def album(n: int, seed: int = 0) -> Iterator[bytes]:
    """``n`` benign uploads (see the module docstring), deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    names = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "camera",
             "retina", "motorcycle_left", "coins", "moon", "horse", "grass", "gravel", "brick", "cat", "page")
    photos = []
    for name in names:
        try:
            photos.append(photo(name, 512))
        except Exception:  # a photo that needs an optional download
            continue
    made = 0
    while made < n:
        for data in _variants(rng, _source(rng, photos))[: n - made]:
            made += 1
            yield data


def _app(answer: str = "score"):  # type: ignore[no-untyped-def]
    from nsfwlab import Detector
    from nsfwlab.serve import ServeConfig, create_app
    from nsfwlab.serve.sentinel import SentinelConfig

    config = ServeConfig(detect_attacks=SentinelConfig(), on_attack="block", answer=answer,  # type: ignore[arg-type]
                         api_keys=("bench-key",))
    return create_app(config, Detector(device="cpu"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--album", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    from corpus import cpu_name

    headers = {"X-API-Key": "bench-key"}
    result: dict = {"date": datetime.now(UTC).isoformat(timespec="minutes"), "cpu": cpu_name()}
    runs: dict[str, list] = {"score_search": [], "boundary_walk": []}
    for run in range(args.runs):
        name = ("astronaut", "coffee", "chelsea", "rocket", "camera")[run % 5]
        with TestClient(_app(), headers=headers) as c:
            runs["score_search"].append(score_search(client_query(c), photo(name), seed=run))
        with TestClient(_app("label"), headers=headers) as c:
            runs["boundary_walk"].append(boundary_walk(client_query(c), photo(name), seed=run))
    result.update(runs)
    with TestClient(_app(), headers=headers) as c:
        query = client_query(c)
        answers = [query(data) for data in album(args.album)]
        metrics = c.app.state.service.metrics
        result["album"] = {"images": len(answers), "refused": sum(a is None for a in answers),
                           "flags": metrics.sample("nsfwlab_attack_flags_total", {"key": _key_id("bench-key")}) or 0}
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    (out / "bench_sentinel.json").write_text(json.dumps(result, indent=2))
    print(f"{result['date']}, {result['cpu']}")
    for attack in ("score_search", "boundary_walk"):
        counts = [q for q, _ in result[attack]]
        print(f"| {attack} | queries to detection {counts} | median {int(np.median(counts))} | "
              f"ended {[e for _, e in result[attack]]} |")
    print(f"| album | {result['album']} |")


def _key_id(key: str) -> str:
    from nsfwlab.serve.deps import key_id

    return key_id(key)


if __name__ == "__main__":
    main()
