"""`nsfwlab attack` in-process: outputs, report, exit codes, bad inputs. Public safe photos only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from nsfwlab.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, photos: dict[str, np.ndarray]) -> Path:
    d = tmp_path_factory.mktemp("att")
    Image.fromarray(photos["chelsea"]).resize((160, 120), Image.Resampling.BILINEAR).save(d / "chelsea.png")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    return d


def _run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.mark.slow
def test_attack_one_image_to_png_with_report(images: Path, tmp_path: Path, detector) -> None:
    out, rep = tmp_path / "up.png", tmp_path / "r.json"
    res = _run("attack", str(images / "chelsea.png"), "--to", "0.5", "--tolerance", "0.02", "--out", str(out),
               "--report", str(rep), "--device", "cpu", "--steps", "10")
    assert res.exit_code == 0, res.output
    data = json.loads(rep.read_text())
    (row,) = data["results"]
    assert row["success"] and row["out"] == str(out)
    assert detector.nsfw_score(out) == row["score_after"] and abs(row["score_after"] - 0.5) <= 0.02
    assert Image.open(out).size == (160, 120)
    assert "chelsea" in res.stdout and "PSNR" in res.stdout


@pytest.mark.slow
def test_attack_many_goes_past_bad_files_and_flags_misses(images: Path, tmp_path: Path) -> None:
    out, rep = tmp_path / "many", tmp_path / "r.json"
    res = _run("attack", str(images / "broken.jpg"), str(images / "chelsea.png"), "--to", "0.999", "--max-eps", "1",
               "--steps", "1", "--out", str(out), "--report", str(rep), "--device", "cpu")
    assert res.exit_code == 1
    assert "broken.jpg" in res.output and "Traceback" not in res.output
    rows = json.loads(rep.read_text())["results"]
    assert "error" in rows[0] and rows[1]["success"] is False
    assert (out / "chelsea.png").exists()  # the best attempt is still written


@pytest.mark.parametrize("args", [["--norm", "l7"], ["--jpeg", "nope"], ["--space", "both"], ["--to", "2"]])
def test_attack_usage_errors(images: Path, tmp_path: Path, args: list[str]) -> None:
    base = ["attack", str(images / "chelsea.png"), "--out", str(tmp_path / "x.png")]
    if "--to" not in args:
        base += ["--to", "0.9"]
    res = runner.invoke(app, base + args)
    assert res.exit_code == 2, res.output


def test_attack_many_images_need_a_folder(images: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["attack", str(images / "chelsea.png"), str(images / "chelsea.png"), "--to", "0.9",
                              "--out", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "folder" in res.output


def test_attack_errors_show_the_flag_for_the_parameter(images: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["attack", str(images / "chelsea.png"), "--to", "0.9", "--survive-jpeg", "95-70",
                              "--out", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "--survive-jpeg range '95-70' runs backwards" in res.output
