"""`nsfwlab robustness` with the protocol: its argument errors are one line and come before any work, the
service's key is read as serve reads its own, and one run writes one robustness.json (per-image study and
protocol sections), the curve plots and one report.html. Public safe photos only, tiny budgets."""

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
def two_photos(tmp_path_factory: pytest.TempPathFactory, photos: dict[str, np.ndarray]) -> Path:
    d = tmp_path_factory.mktemp("two")
    for name in ("chelsea", "coffee"):
        Image.fromarray(photos[name]).resize((96, 64), Image.Resampling.BILINEAR).save(d / f"{name}.png")
    return d


def _usage_error(args: list[str], text: str, env: dict[str, str] | None = None) -> str:
    res = runner.invoke(app, ["robustness", *args], env=env)
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], res.output
    return lines[0]


def test_bad_eps_is_one_line(two_photos: Path, tmp_path: Path) -> None:
    for bad in ("1,x", ",", "eight"):
        _usage_error([str(two_photos), "--out", str(tmp_path / "o"), "--eps", bad], "--eps takes budgets")
    assert not (tmp_path / "o").exists()  # refused before any work or output


def test_unknown_model_is_one_line(two_photos: Path, tmp_path: Path) -> None:
    _usage_error([str(two_photos), "--out", str(tmp_path / "o"), "--model", "no-such-model"],
                 "'no-such-model'; known: open_nsfw")
    _usage_error([str(two_photos), "--out", str(tmp_path / "o"), "--model", "open_nsfw", "--model", "open_nsfw"],
                 "names a model twice")


def test_target_url_needs_a_key_and_a_key_needs_a_target(two_photos: Path, tmp_path: Path) -> None:
    base = [str(two_photos), "--out", str(tmp_path / "o")]
    url = ["--target-url", "http://127.0.0.1:9"]
    _usage_error([*base, *url], "--target-url needs the service's key", env={"NSFWLAB_API_KEY": None})  # type: ignore[dict-item]
    _usage_error([*base, *url, "--api-key", "  "], "empty or blank")
    _usage_error([*base, *url], "empty or blank", env={"NSFWLAB_API_KEY": ""})
    empty = tmp_path / "keys.txt"
    empty.write_text("# no key here\n\n")
    _usage_error([*base, *url, "--api-key-file", str(empty)], "holds no key")
    _usage_error([*base, "--api-key", "k"], "an API key is for --target-url")
    _usage_error([*base, *url, "--api-key", "k", "--evasions"], "score local models")
    _usage_error([*base, *url, "--api-key", "k", "--attacks", "apgd,minimal"], "only black-box attacks run")


def test_key_in_the_environment_does_not_disturb_a_local_run(two_photos: Path, tmp_path: Path) -> None:
    """NSFWLAB_API_KEY is read for --target-url only: a local run with it set is no usage error."""
    res = runner.invoke(app, ["robustness", str(two_photos), "--out", str(tmp_path / "o"), "--no-protocol",
                              "--no-attack", "--perturb", "jpeg:50", "--no-thumbnails"],
                        env={"NSFWLAB_API_KEY": "secret"})
    assert res.exit_code == 0, res.output


def test_no_protocol_runs_the_per_image_study_alone(two_photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    res = runner.invoke(app, ["robustness", str(two_photos), "--out", str(out), "--no-protocol", "--no-attack",
                              "--perturb", "jpeg:50,flip"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "robustness.json").read_text())
    assert set(data) == {"images", "summary"} and len(data["images"]) == 2
    page = (out / "report.html").read_text()
    assert "Everyday perturbations" in page and "Threat model" not in page
    assert not list(out.glob("curves-*.png"))
