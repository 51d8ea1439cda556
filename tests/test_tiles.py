"""Tiled scoring with max (nsfwlab.tiles) and `nsfwlab score --tiles`: the crops' geometry, a grid
evasion recovered on a synthetic case (a fake backend that scores the share of red pixels), and
the CLI rows. No explicit material: red squares and public safe photos."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from nsfwlab import Detector
from nsfwlab.cli import app
from nsfwlab.errors import ConfigError
from nsfwlab.lab.evasions import apply_evasion
from nsfwlab.tiles import TileLayout, check_tiles, find_panels, tiled_result, tiled_score
from synthetic import GREY, RED, RedFraction

runner = CliRunner()


@pytest.fixture(scope="module")
def red_detector():
    det = Detector(backend=RedFraction())
    yield det
    det.close()


def _in_grid_cell(n: int, row: int, col: int, side: int = 288) -> np.ndarray:
    """A grey canvas with cell (row, col) of an n x n grid red."""
    img = np.full((side, side, 3), GREY, np.uint8)
    c = side // n
    img[row * c : (row + 1) * c, col * c : (col + 1) * c] = RED
    return img


def test_grid_layout_geometry() -> None:
    tiles = TileLayout(strategy="grid").tiles(300, 240)
    assert tiles[0].name == "full" and tiles[0].box == (0, 0, 300, 240)
    assert [t.name for t in tiles].count("centre") == 1
    assert [t.name for t in tiles].count("2x2") == 9 and [t.name for t in tiles].count("3x3") == 25
    assert TileLayout(strategy="grid").forwards(300, 240) == len(tiles) == 36
    for t in tiles:
        left, top, right, bottom = t.box
        assert 0 <= left < right <= 300 and 0 <= top < bottom <= 240
    boxes = {t.box for t in tiles if t.name == "3x3"}
    # every cell of an aligned 3x3 grid is a tile, and so is the window straddling two cells
    assert {(100, 80, 200, 160), (0, 0, 100, 80), (200, 160, 300, 240), (50, 40, 150, 120)} <= boxes


def test_layout_without_overlap_and_small_images() -> None:
    plain = TileLayout(grids=(3,), overlap=0.0, centre=None)
    assert [t.box for t in plain.tiles(120, 120)][1:] == [(x, y, x + 40, y + 40) for y in (0, 40, 80)
                                                          for x in (0, 40, 80)]
    # tiles under min_side pixels are skipped: a thumbnail is scored whole (and its centre crop)
    assert [t.name for t in TileLayout(strategy="grid").tiles(50, 50)] == ["full", "centre"]
    for bad in ({"grids": (1,)}, {"overlap": 1.0}, {"centre": 1.5}, {"min_side": 0}, {"strategy": "random"},
                {"most": 0}):
        with pytest.raises(ConfigError):
            TileLayout(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("strategy", ["panels", "grid"])
@pytest.mark.parametrize(("n", "row", "col"), [(3, 1, 2), (3, 0, 0), (2, 1, 0)])
def test_tiles_recover_a_grid(red_detector: Detector, strategy: str, n: int, row: int, col: int) -> None:
    img = _in_grid_cell(n, row, col)
    plain = red_detector.nsfw_score(img)
    tiled = tiled_score(red_detector, img, TileLayout(strategy=strategy))
    assert plain < 0.35  # the red cell is a quarter or a ninth of the picture
    assert tiled.score > 0.95 and tiled.full_score == pytest.approx(plain, abs=1e-6)
    assert tiled.forwards == len(tiled.scores)
    c = 288 // n
    if strategy == "grid":
        assert tiled.tile.name == f"{n}x{n}" and tiled.forwards == 36
        assert tiled.tile.xywh == [col * c, row * c, c, c]
    else:
        assert tiled.tile.name == "panel" and tiled.forwards <= 17
        assert np.allclose(tiled.tile.xywh, [col * c, row * c, c, c], atol=2)


def test_panels_found_in_composites_not_in_photos(photos: dict[str, np.ndarray]) -> None:
    for name in ("astronaut", "coffee", "chelsea"):  # (rocket's launch tower is all straight lines: 6 panels)
        assert find_panels(Image.fromarray(photos[name])) == [], name
    img = photos["coffee"]
    h, w = img.shape[:2]
    assert (0, round(0.25 * h), w, round(0.25 * h) + h) in find_panels(Image.fromarray(apply_evasion("meme", img)))
    b = int(0.2 * w), int(0.2 * h)
    bordered = Image.fromarray(apply_evasion("border", img))
    # the picture inside a plain border first (found on a copy 512 pixels wide: within 2 pixels)
    assert np.allclose(find_panels(bordered)[0], (b[0], b[1], b[0] + w, b[1] + h), atol=2)
    collage = Image.fromarray(apply_evasion("grid3", img, seed=2))
    cells = {(round(c * w / 3), round(r * h / 3), round((c + 1) * w / 3), round((r + 1) * h / 3))
             for r in range(3) for c in range(3)}
    found = find_panels(collage)
    assert all(any(max(abs(p - q) for p, q in zip(box, cell, strict=True)) <= 2 for box in found) for cell in cells)


def test_tiles_recover_the_grid_evasion_and_the_border(red_detector: Detector) -> None:
    red = np.full((240, 240, 3), RED, np.uint8)
    assert red_detector.nsfw_score(red) == pytest.approx(1.0)
    for name, most in (("grid2", 0.3), ("grid3", 0.15), ("border", 0.75), ("frame", 0.8)):
        evaded = apply_evasion(name, red, seed=1)
        before, after = red_detector.nsfw_score(evaded), tiled_score(red_detector, evaded).score
        assert before < most, name
        assert after > 0.95, name


def test_tiled_score_never_below_the_whole_image(red_detector: Detector, photos: dict[str, np.ndarray]) -> None:
    img = photos["coffee"][::4, ::4]
    for strategy in ("panels", "grid"):
        t = tiled_score(red_detector, img, TileLayout(strategy=strategy))
        assert t.score == max(t.scores) >= t.full_score == t.scores[0]


def test_bad_input_and_detector_models(red_detector: Detector) -> None:
    res, tiled = tiled_result(red_detector, "x.jpg", b"not an image at all")
    assert tiled is None and res.error is not None and res.source == "x.jpg"
    with pytest.raises(ConfigError) as err:
        check_tiles(SimpleNamespace(zoo=SimpleNamespace(is_detector=True, model_id="nudenet")))  # type: ignore[arg-type]
    assert err.value.param == "tiles"


def test_zoo_classifier_tiles(photos: dict[str, np.ndarray]) -> None:
    from nsfwlab import zoo

    if not zoo.installed("nsfwjs-mobilenetv2"):
        pytest.skip("nsfwjs-mobilenetv2 is not installed (nsfwlab models --setup)")
    with Detector(device="cpu", model="nsfwjs-mobilenetv2") as det:
        t = tiled_score(det, photos["chelsea"], TileLayout(strategy="grid", grids=(2,), overlap=0.0, centre=None))
        assert t.forwards == 5 and t.classes is not None and set(t.classes) >= {"Porn", "Neutral"}
        assert t.full_score == pytest.approx(det.nsfw_score(photos["chelsea"]), abs=1e-5)


@pytest.fixture(scope="module")
def tiles_dir(tmp_path_factory: pytest.TempPathFactory, photos: dict[str, np.ndarray]) -> Path:
    d = tmp_path_factory.mktemp("tiles")
    Image.fromarray(photos["astronaut"][::2, ::2]).save(d / "a.png")
    (d / "b.jpg").write_bytes(b"this is not an image\n")
    small = photos["coffee"][::8, ::8]
    (d / "c.gif").write_bytes(apply_evasion("gif_frame", np.ascontiguousarray(small), seed=0))
    return d


def test_cli_score_tiles_rows(tiles_dir: Path, detector: Detector) -> None:
    res = runner.invoke(app, ["score", "--tiles", "-f", "jsonl", "--device", "cpu", str(tiles_dir)],
                        catch_exceptions=False)
    assert res.exit_code == 1, res.output  # b.jpg is not an image; the others are scored
    rows = {Path(r["path"]).name: r for r in map(json.loads, res.stdout.splitlines())}
    a = rows["a.png"]
    assert set(a) == {"path", "score", "label", "tile", "tile_box"}
    assert a["score"] >= detector.nsfw_score(tiles_dir / "a.png") - 1e-6
    assert a["score"] == pytest.approx(tiled_score(detector, tiles_dir / "a.png").score, abs=1e-6)
    assert len(a["tile_box"]) == 4 and a["tile"] in {"full", "panel"}
    assert "error" in rows["b.jpg"] and "tile" not in rows["b.jpg"]
    assert rows["c.gif"]["kind"] == "animation" and rows["c.gif"]["frames"] == 24 and "tile" not in rows["c.gif"]


def test_cli_score_tiles_csv_and_table(tiles_dir: Path) -> None:
    res = runner.invoke(app, ["score", "--tiles", "-f", "csv", "--device", "cpu", str(tiles_dir / "a.png")],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert list(rows[0])[-2:] == ["tile", "tile_box"] and len(rows[0]["tile_box"].split(",")) == 4
    plain = runner.invoke(app, ["score", "-f", "csv", "--device", "cpu", str(tiles_dir / "a.png")],
                          catch_exceptions=False)
    assert "tile" not in plain.stdout.splitlines()[0]
    table = runner.invoke(app, ["score", "--tiles", "--device", "cpu", str(tiles_dir / "a.png")],
                          catch_exceptions=False)
    assert table.exit_code == 0 and "tile" in table.stdout
