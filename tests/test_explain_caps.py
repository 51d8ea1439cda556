"""Explain and censor caps: extreme shapes are refused or worked on at a bounded size.

Memory is measured with tracemalloc (numpy arrays are traced; Pillow's own image buffers are not),
on small-but-extreme synthetic images and a fake backend whose score is the fraction of red pixels.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from nsfwlab import ConfigError, DecodeLimits, Detector, ImageTooLargeError, PreprocessConfig
from nsfwlab.explain import Censor, ExplainCaps, GradCAM, Occlusion, SlidingWindow
from nsfwlab.explain.caps import fit_side, working_copy
from synthetic import RedFraction

NOJPEG = PreprocessConfig(jpeg_roundtrip=False)
RED, GREY = (230, 20, 20), (128, 128, 128)
MB = 1 << 20
#: Raised far enough that 1-pixel-high strips are worked on rather than refused.
LONG = ExplainCaps(max_aspect=1e9)


def traced_peak(fn: Callable[[], Any]) -> tuple[Any, int]:
    """``fn()`` and the peak of the memory tracemalloc saw while it ran, in bytes."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        out = fn()
        return out, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def work_bound(height: int, width: int, caps: ExplainCaps = ExplainCaps()) -> int:
    """The stated bound of a window explainer's traced memory: 40 bytes per working-copy pixel
    (three float64 accumulators and the float32 map) plus 32 MB (the scoring pipeline's
    read-ahead: about 3 batches of 224x224x3 float32 inputs, 24 MB with batches of 8)."""
    h, w = fit_side(height, width, caps.max_work_side)
    return 40 * h * w + 32 * MB


@pytest.fixture(scope="module")
def big_png(tmp_path_factory) -> Path:
    """6000x6000 grey PNG with a 1500-pixel red square (a few hundred KB on disk)."""
    img = Image.new("RGB", (6000, 6000), GREY)
    img.paste(Image.new("RGB", (1500, 1500), RED), (2250, 2250))
    path = tmp_path_factory.mktemp("caps") / "big.png"
    img.save(path)
    return path


@pytest.fixture(scope="module")
def strip_png(tmp_path_factory) -> Path:
    """1x200,000 strip, the middle tenth red."""
    arr = np.full((1, 200_000, 3), GREY, np.uint8)
    arr[:, 90_000:110_000] = RED
    path = tmp_path_factory.mktemp("caps") / "strip.png"
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def fake():
    # The core reads a file with one read(max_bytes + 1) call, which tracemalloc counts as a
    # max_bytes allocation (64 MB by default, untouched pages): a small cap keeps it out of the way.
    det = Detector(RedFraction(), preprocess=NOJPEG, batch_size=8, workers=2, limits=DecodeLimits(max_bytes=4 * MB))
    yield det
    det.close()


# -- the probe's shapes ------------------------------------------------------------------------------
def test_extreme_aspect_ratios_are_refused_before_any_work(tmp_path, fake):
    path = tmp_path / "line.png"
    Image.new("RGB", (5_000_000, 1), GREY).save(path)  # ~20 KB on disk, 15 MB decoded
    assert path.stat().st_size < 40_000
    for explainer in (Occlusion(fake), SlidingWindow(fake)):
        with pytest.raises(ImageTooLargeError, match=r"5000000x1: aspect ratio 5e\+06:1 is over .* 20:1"):
            explainer.explain(path)
    with pytest.raises(ImageTooLargeError, match="raise max_aspect"):
        Censor(fake).censor(path)
    with pytest.raises(ImageTooLargeError):
        GradCAM(TinyCam()).explain(path)
    assert Occlusion(fake).count(20, 400) > 0  # 20:1 itself is allowed
    with pytest.raises(ImageTooLargeError):
        Occlusion(fake).count(20, 401)


def test_occlusion_of_a_long_strip_plans_at_most_max_windows(fake):
    # Before: 49,998 windows for a 1x100,000 image (box 8, stride 2 along 100,000 pixels).
    assert Occlusion(fake, caps=LONG).count(1, 100_000) <= LONG.max_windows
    assert Occlusion(fake, caps=LONG).count(1, 50_000_000) <= LONG.max_windows
    small = ExplainCaps(max_aspect=1e9, max_windows=100)
    assert 50 < Occlusion(fake, caps=small).count(1, 100_000) <= 100  # default grid coarsened to fit
    assert SlidingWindow(fake, caps=small).count(1, 100_000) <= 100
    assert Occlusion(fake, caps=small).count(3000, 3000) <= 100
    with pytest.raises(ConfigError, match=r"over the cap of 100.*raise max_windows"):
        Occlusion(fake, box=8, stride=2, caps=small).count(1, 100_000)  # an explicit grid is refused
    with pytest.raises(ConfigError, match="raise max_windows"):
        SlidingWindow(fake, window=16, caps=small).count(600, 600)


def test_a_long_strip_is_explained_on_a_capped_working_copy(strip_png, fake):
    occ = Occlusion(fake, caps=LONG)
    heat, peak = traced_peak(lambda: occ.explain(strip_png))
    assert heat.shape == (1, 2048)
    assert peak < work_bound(1, 200_000) < 33 * MB
    # The red middle tenth is where hiding lowers the score.
    assert heat[0, 1000:1048].mean() > 0 and heat[0, 1000:1048].mean() > 5 * abs(heat[0, :100]).mean()


@pytest.mark.slow
def test_a_large_image_is_explained_in_bounded_memory(big_png, fake):
    occ = Occlusion(fake, box=1500, stride=750)  # geometry in original pixels: 512/256 on the copy
    assert occ.count(6000, 6000) == 49
    heat, peak = traced_peak(lambda: occ.explain(big_png))
    assert heat.shape == (2048, 2048)
    assert peak < work_bound(6000, 6000)  # 200 MB; before: float64 maps of 6000x6000 alone were 864 MB
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    assert 768 <= y < 1280 and 768 <= x < 1280  # the square, in working-copy pixels
    sw = SlidingWindow(fake, window=2000, stride=1000)
    heat, peak = traced_peak(lambda: sw.explain(big_png))
    assert heat.shape == (2048, 2048) and peak < work_bound(6000, 6000)


def test_over_the_cap_means_explaining_the_working_copy(fake):
    rng = np.random.default_rng(0)
    arr = np.full((300, 200, 3), GREY, np.uint8)
    arr[rng.random((300, 200)) < 0.2] = RED
    img = Image.fromarray(arr)
    caps = ExplainCaps(max_work_side=150)
    work = working_copy(img, caps)
    assert work.size == (100, 150)
    capped = Occlusion(fake, box=30, stride=15, caps=caps).explain(img)
    np.testing.assert_array_equal(capped, Occlusion(fake, box=15, stride=8).explain(work))
    # Under the cap nothing changes: the image itself is used.
    assert working_copy(img, ExplainCaps(max_work_side=300)) is img


def test_gradient_maps_are_capped_but_score_the_original():
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (3000, 1000, 3), dtype=np.uint8))
    model = TinyCam()
    cam = GradCAM(model, preprocess=NOJPEG, caps=ExplainCaps(max_work_side=600))
    assert cam.explain(img, target="nsfw-logit").shape == (600, 200)
    full = GradCAM(model, preprocess=NOJPEG, caps=ExplainCaps(max_work_side=3000))
    assert full.explain(img, target="nsfw-logit").shape == (3000, 1000)
    assert cam.score(img, "nsfw-logit") == full.score(img, "nsfw-logit")  # same 256x256 model input


# -- censor --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_censor_of_a_large_image_is_bounded_and_exact(big_png, fake):
    caps = ExplainCaps(max_work_side=1024)  # the default 2048 works the same, 4x slower
    censor = Censor(fake, style="box", max_steps=4, caps=caps)
    result, peak = traced_peak(lambda: censor.censor(big_png, target=0.01))
    assert result.image.shape == (6000, 6000, 3) and result.mask.shape == (6000, 6000)
    # The result (108 MB) and its mask (36 MB) plus working-copy arrays.
    assert peak < 6000 * 6000 * 4 + work_bound(6000, 6000, caps)
    assert result.score_before == pytest.approx(fake.nsfw_score(big_png), abs=1e-6)
    assert result.score_after == pytest.approx(fake.nsfw_score(result.image), abs=1e-7)  # exact, full size
    assert result.reached and 1 <= len(result.steps) <= 4
    assert result.mask[2250:3750, 2250:3750].mean() > 0.9 and result.hidden_fraction < 0.15
    original = np.asarray(Image.open(big_png))
    np.testing.assert_array_equal(result.image[~result.mask], original[~result.mask])


def test_censor_of_a_long_strip_finishes(strip_png, fake):
    censor = Censor(fake, style="box", max_steps=3, caps=LONG)
    result, peak = traced_peak(lambda: censor.censor(strip_png, target=0.01))
    assert result.image.shape == (1, 200_000, 3) and len(result.steps) <= 3
    assert result.score_after == pytest.approx(fake.nsfw_score(result.image), abs=1e-7)
    assert peak < work_bound(1, 200_000)


def test_censor_box_and_stride_are_in_original_pixels(fake):
    caps = ExplainCaps(max_work_side=128)
    occ = Censor(fake, box=64, stride=32, caps=caps)._explainer(128, 64, 0.5)
    assert isinstance(occ, Occlusion) and (occ.box, occ.stride) == (32, 16) and occ.explicit
    with pytest.raises(ConfigError, match="box and stride"):
        Censor(fake, explainer=Occlusion(fake), box=8)


# -- CLI ---------------------------------------------------------------------------------------------------
runner = CliRunner()


@pytest.fixture
def cli_fake(monkeypatch):
    import nsfwlab.cli.explain as cli

    monkeypatch.setattr(cli, "_detector", lambda *a: Detector(RedFraction(), preprocess=NOJPEG, batch_size=8))
    from nsfwlab.cli import app

    return app


def test_cli_refuses_extreme_aspect_with_one_line(tmp_path, cli_fake):
    path = tmp_path / "line.png"
    Image.new("RGB", (100_000, 1), GREY).save(path)
    for cmd in ("explain", "censor"):
        res = runner.invoke(cli_fake, [cmd, str(path), "-o", str(tmp_path / "o.png"), "-m", "occlusion"])
        assert res.exit_code == 1, res.output
        assert "aspect ratio 1e+05:1 is over explain's cap of 20:1" in res.output
        assert "Traceback" not in res.output and not (tmp_path / "o.png").exists()
    res = runner.invoke(cli_fake, ["explain", str(path), "-o", str(tmp_path / "o.png"), "-m", "occlusion",
                                   "--max-aspect", "1e6", "--box", "100", "--stride", "50", "--max-windows", "100"])
    assert res.exit_code == 2 and "--max-windows" in res.output


def test_cli_overlay_is_capped_and_the_score_is_the_originals(tmp_path, cli_fake):
    img = Image.new("RGB", (3000, 1000), GREY)
    img.paste(Image.new("RGB", (500, 500), RED), (1250, 250))
    path = tmp_path / "wide.png"
    img.save(path)
    out, heat = tmp_path / "o.png", tmp_path / "h.npy"
    res = runner.invoke(cli_fake, ["explain", str(path), "-o", str(out), "-m", "occlusion", "--box", "300",
                                   "--stride", "300", "--max-work-side", "600", "--max-output-side", "900",
                                   "--save-heatmap", str(heat)])
    assert res.exit_code == 0, res.output
    score = Detector(RedFraction(), preprocess=NOJPEG).nsfw_score(img)
    assert f"3000x1000, score {score:.6f}" in res.output and "600x200 working copy" in res.output
    with Image.open(out) as pic:
        assert pic.height == 300 and 900 < pic.width < 1100  # 900x300 overlay + colour scale
    saved = np.load(heat)
    assert saved.shape == (200, 600)
    y, x = np.unravel_index(int(np.argmax(saved)), saved.shape)
    assert f"peak at x={x * 5 + 2} y={y * 5 + 2}" in res.output  # the working copy's peak, in original pixels
    assert 1250 - 300 <= x * 5 < 1750 + 300 and 250 - 300 <= y * 5 < 750 + 300


class TinyCam(nn.Module):
    """A one-conv model with forward_features/forward_head (Grad-CAM's interface)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        self.head = nn.Linear(1, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(self.conv(x), 32)

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        return self.head(f.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def test_censor_smoothing_is_the_clipped_box_mean_twice():
    from nsfwlab.explain.censor import _smooth

    heat = np.random.default_rng(2).random((9, 14))

    def box(a: np.ndarray, r: int) -> np.ndarray:
        h, w = a.shape
        return np.array([[a[max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1].mean() for j in range(w)]
                         for i in range(h)])

    np.testing.assert_allclose(_smooth(heat, 2), box(box(heat, 2), 2), rtol=0, atol=1e-14)
    np.testing.assert_allclose(_smooth(heat[:1], 3), box(box(heat[:1], 3), 3), rtol=0, atol=1e-14)


def test_sliding_window_crops_come_from_the_original(fake):
    # A red pattern finer than the working copy can hold: crops of the original see it.
    arr = np.full((400, 400, 3), GREY, np.uint8)
    arr[::2, ::2] = RED
    img = Image.fromarray(arr)
    caps = ExplainCaps(max_work_side=200)
    heat = SlidingWindow(fake, window=200, stride=100, caps=caps).explain(img)
    assert heat.shape == (200, 200)
    crop_score = fake.nsfw_score(img.crop((0, 0, 200, 200)))
    assert crop_score > 0.1 and heat[0, 0] == pytest.approx(crop_score, abs=1e-6)
    assert fake.nsfw_score(working_copy(img, caps)) == 0.0  # the downscaled copy has no red pixel left
