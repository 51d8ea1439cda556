"""Everyday evasions (nsfwlab.lab.evasions): each one's geometry and determinism, AugLy's assets
offline, and the evasion table on public safe photos with open_nsfw and on a synthetic case (a
fake backend that scores the share of red pixels). No explicit material anywhere."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from nsfwlab import Detector
from nsfwlab.errors import ConfigError, ImageError
from nsfwlab.lab.evasions import DEFAULT_EVASIONS, EVASIONS, TEXT_FONT, apply_evasion, evasion_table
from nsfwlab.tiles import TileLayout
from synthetic import RED, RedFraction


@pytest.fixture(scope="module")
def small(photos: dict[str, np.ndarray]) -> np.ndarray:
    """astronaut at 128 x 96 (wider than tall, so that geometry bugs show)."""
    return np.asarray(Image.fromarray(photos["astronaut"]).resize((128, 96)))


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


@pytest.mark.parametrize("name", DEFAULT_EVASIONS)
def test_every_evasion_is_deterministic_and_changes_the_image(name: str, small: np.ndarray) -> None:
    a, b = apply_evasion(name, small, seed=3), apply_evasion(name, small, seed=3)
    if EVASIONS[name].animation:
        assert isinstance(a, bytes) and a == b
        return
    assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    assert np.array_equal(a, b)
    assert a.shape != small.shape or not np.array_equal(a, small)


def test_geometry(small: np.ndarray) -> None:
    h, w = small.shape[:2]
    assert np.array_equal(apply_evasion("mirror", small), small[:, ::-1])
    assert np.array_equal(apply_evasion("invert", small), 255 - small)
    bordered = apply_evasion("border", small)
    assert bordered.shape[:2] == (h + 2 * int(0.2 * h), w + 2 * int(0.2 * w))  # AugLy pad: int(share * side)
    edge = bordered[0, 0]
    assert (bordered[0] == edge).all() and tuple(edge) in {(0, 0, 0), (255, 255, 255)}
    framed = apply_evasion("frame", small)
    pad = (framed.shape[0] - h) // 2
    assert framed.shape[:2] == (h + 2 * pad, w + 2 * pad) and pad > 0
    assert np.array_equal(framed[pad : pad + h, pad : pad + w], small)  # the picture keeps its pixels
    meme = apply_evasion("meme", small)
    assert meme.shape[1] == w and meme.shape[0] == h + round(0.25 * h)
    assert np.array_equal(meme[-h:], small) and (meme[0] == 255).all()
    for name in ("rotate5", "rotate15"):
        rotated = apply_evasion(name, small)
        assert rotated.shape[0] < h and rotated.shape[1] < w
    hue = apply_evasion("hue90", small).astype(int)
    assert hue.shape == small.shape and np.abs(hue - small).mean() > 10
    shot = apply_evasion("screenshot", small)
    assert shot.shape[0] > h and shot.shape[1] > w  # AugLy's template, the picture inside


@pytest.mark.parametrize("n", [2, 3])
def test_grid_puts_the_image_in_one_cell(n: int, small: np.ndarray) -> None:
    h, w = small.shape[:2]
    cells = set()
    for seed in range(6):
        out = apply_evasion(f"grid{n}", small, seed=seed)
        assert out.shape == small.shape
        xs, ys = [round(i * w / n) for i in range(n + 1)], [round(j * h / n) for j in range(n + 1)]
        found = []
        for r in range(n):
            for c in range(n):
                cell = out[ys[r] : ys[r + 1], xs[c] : xs[c + 1]]
                shrunk = np.asarray(Image.fromarray(small).resize(cell.shape[1::-1], Image.Resampling.LANCZOS))
                if np.array_equal(cell, shrunk):
                    found.append((r, c))
        assert len(found) == 1
        cells.add(found[0])
    assert len(cells) > 1  # the seed moves the picture


def test_gif_hides_the_image_as_one_frame(small: np.ndarray) -> None:
    gif = apply_evasion("gif_frame", small, seed=0)
    with Image.open(io.BytesIO(gif)) as im:
        assert im.format == "GIF" and im.n_frames == 24 and im.size == (128, 96)
        diffs = []
        for i in range(im.n_frames):
            im.seek(i)
            diffs.append(np.abs(np.asarray(im.convert("RGB"), dtype=int) - small).mean())
    assert sum(d < 8 for d in diffs) == 1  # one frame is the picture (palette-quantised), the rest are not


def test_bad_names_and_images(small: np.ndarray) -> None:
    with pytest.raises(ConfigError) as err:
        apply_evasion("sepia", small)
    assert err.value.param == "evasions"
    with pytest.raises(ImageError):
        apply_evasion("mirror", small[..., 0])
    with pytest.raises(ConfigError):
        evasion_table([small], {})


def test_augly_assets_are_bundled() -> None:
    import augly.utils as autils

    for path in (autils.TEMPLATE_PATH, os.path.join(autils.SCREENSHOT_TEMPLATES_DIR, "mobile.png"),
                 autils.MEME_DEFAULT_FONT, os.path.join(autils.FONTS_DIR, TEXT_FONT)):
        assert os.path.isfile(path), path
    with open(os.path.join(autils.FONTS_DIR, TEXT_FONT.replace(".ttf", ".pkl")), "rb") as fh:
        chars = pickle.load(fh)  # AugLy's own asset: the text overlay's characters are indices into it
    assert [chr(c) for c in chars[:95]] == [chr(c) for c in range(32, 127)]


def test_table_on_photos_with_open_nsfw(photos: dict[str, np.ndarray], detector: Detector) -> None:
    names = ["border", "grid3", "mirror", "gif_frame"]
    sources = [photos["astronaut"], photos["coffee"], b"not an image"]
    layout = TileLayout(strategy="grid", grids=(3,), overlap=0.0, centre=None, min_side=16)
    report = evasion_table(sources, {"open_nsfw": detector}, names, tiles=True, work_side=96, layout=layout)
    out = report.to_dict()
    assert set(out) >= {"evasions", "evasions_detail", "tiles", "warnings"}
    assert list(out["evasions"]) == names
    assert len(out["evasion_errors"]) == 1 and out["evasion_errors"][0]["code"] == "unsupported_format"
    assert any("under 20" in w for w in out["warnings"])
    images = out["evasion_images"]
    assert len(images) == 2
    for name in names:
        d = out["evasions_detail"][name]["open_nsfw"]
        assert d["n"] == 2
        change = np.mean([im["evaded"][name]["open_nsfw"] - im["clean"]["open_nsfw"] for im in images])
        assert d["mean_change"] == pytest.approx(change, abs=1e-5) == out["evasions"][name]["open_nsfw"]
        assert d["ci95"][0] <= d["mean_change"] <= d["ci95"][1]
        assert (d["tiled_mean_change"] is None) == (name not in ("border", "grid3"))
    # the scores are those of the evaded images as uploaded: a still as PNG, the GIF over its frames
    work = np.asarray(Image.fromarray(photos["coffee"]).resize((96, 64), Image.Resampling.LANCZOS))
    mirrored = apply_evasion("mirror", work, seed=1)
    assert images[1]["evaded"]["mirror"]["open_nsfw"] == pytest.approx(detector.nsfw_score(_png(mirrored)), abs=1e-5)
    gif = apply_evasion("gif_frame", work, seed=1)
    assert images[1]["evaded"]["gif_frame"]["open_nsfw"] == pytest.approx(detector.score_frames(gif).score, abs=1e-5)
    tiles = out["tiles"]["open_nsfw"]
    assert tiles["cost"] == 10.0 and set(tiles["recovered"]) == {"border", "grid3"}
    assert tiles["seconds_per_image"]["tiled"] > 0


def test_table_synthetic_grid_flips_and_tiles_recover() -> None:
    reds = [np.full((120 + 8 * i, 120, 3), RED, np.uint8) for i in range(3)]
    with Detector(backend=RedFraction()) as fake:
        out = evasion_table(reds, {"red": fake}, ["grid2", "grid3", "mirror"], tiles=True, seed=5).to_dict()
    for name in ("grid2", "grid3"):
        d = out["evasions_detail"][name]["red"]
        assert d["clean_mean"] == pytest.approx(1.0) and d["mean_change"] < -0.6
        assert d["flips"] == d["to_safe"] == 3 and d["tiled_to_safe"] == 0
        assert out["tiles"]["red"]["recovered"][name] > 0.95
    assert out["evasions"]["mirror"]["red"] == pytest.approx(0.0)
    assert out["evasions_detail"]["mirror"]["red"]["ci95"] == [0.0, 0.0]
    assert 1.0 < out["tiles"]["red"]["cost"] < 36.0 and out["tiles"]["red"]["clean_to_nsfw"] == 0


def test_tiles_on_an_animation_only_table(small: np.ndarray) -> None:
    with Detector(backend=RedFraction()) as fake:
        out = evasion_table([small], {"red": fake}, ["gif_frame"], tiles=True).to_dict()
    assert out["tiles"]["red"]["recovered"] == {} and out["tiles"]["red"]["n"] == 1
    assert out["evasions_detail"]["gif_frame"]["red"]["tiled_mean_change"] is None
