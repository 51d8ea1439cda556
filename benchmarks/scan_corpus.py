"""A score-spanning benchmark corpus for `nsfwlab scan`: web-size JPEGs whose exact scores spread
over 0..1, made offline from public safe photos and abstract generated images.

- Web photos (scikit-image, via ``corpus.web_photos``): real ~1 MP JPEGs, mostly low scores.
- Abstract high-scoring images: gradient ascent of the NSFW-minus-SFW logit of the PyTorch port,
  starting from seeded smooth noise, on a 48x48 colour field upsampled to 256x256 (low frequencies
  only, so the pattern survives resizing and the JPEG round trip). Snapshots along the ascent
  give intermediate scores. These are colour blobs, not pictures of anything.
- Blends of the two (alpha 0.2..0.8) fill the middle band.

Everything is upscaled to 1200x800 and saved as JPEG quality 85. Deterministic for a seed.
No explicit material is involved or produced.

    .venv/bin/python benchmarks/scan_corpus.py OUT_DIR -n 120
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import web_photos

WEB_SIZE = (1200, 800)


def ascent_images(n_start: int, *, steps: int = 60, snapshots: tuple[int, ...] = (10, 20, 35, 60),
                  seed: int = 0) -> list[Image.Image]:
    """``n_start`` ascents x ``len(snapshots)`` abstract 256x256 images of rising NSFW score."""
    import torch
    import torch.nn.functional as F

    from nsfwlab.model import load_open_nsfw
    from nsfwlab.preprocess.differentiable import network_input

    torch.manual_seed(seed)
    model = load_open_nsfw().requires_grad_(False)
    field = (torch.randn(n_start, 3, 48, 48) * 0.8).requires_grad_(True)
    opt = torch.optim.Adam([field], lr=0.08)
    out: list[Image.Image] = []
    for step in range(1, steps + 1):
        rgb = torch.sigmoid(F.interpolate(field, size=(256, 256), mode="bicubic", align_corners=False)) * 255
        # Random shifts make the pattern robust to the crop and resampling of the real pipeline.
        dy, dx = (int(v) for v in torch.randint(0, 33, (2,)))
        # network_input of a 224 window: BGR, minus the mean (its centre crop keeps it whole).
        logits = model(network_input(rgb[:, :, dy : dy + 224, dx : dx + 224]))
        loss = -(logits[:, 1] - logits[:, 0]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in snapshots:
            arr = rgb.detach().permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8).numpy()
            out.extend(Image.fromarray(a) for a in arr)
    return out


def scan_corpus(n: int, out: Path, *, seed: int = 0) -> list[Path]:
    """``n`` web-size JPEGs: ~40% photos, ~35% generated abstract images, ~25% blends."""
    out.mkdir(parents=True, exist_ok=True)
    n_photos = max(1, int(n * 0.4))
    photos = web_photos(n_photos, out / "photos", seed=seed)
    n_gen = n - n_photos
    n_start = max(1, -(-int(n_gen * 0.6) // 4))
    abstract = ascent_images(n_start, seed=seed)
    rng = np.random.default_rng(seed)
    gen_dir = out / "generated"
    gen_dir.mkdir(exist_ok=True)
    paths = list(photos)
    for i in range(n_gen):
        img = abstract[i % len(abstract)].resize(WEB_SIZE, Image.Resampling.BICUBIC)
        if i >= len(abstract):  # blends with a photo fill the middle of the score range
            with Image.open(photos[i % len(photos)]) as ph:
                base = ph.convert("RGB").resize(WEB_SIZE, Image.Resampling.BILINEAR)
            img = Image.blend(base, img, float(rng.uniform(0.2, 0.8)))
        p = gen_dir / f"gen_{i:05d}.jpg"
        img.save(p, quality=85)
        paths.append(p)
    return paths


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("-n", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(len(scan_corpus(args.n, args.out, seed=args.seed)), "files in", args.out)
