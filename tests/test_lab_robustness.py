"""The robustness report: perturbation scores that equal doing it by hand, verified flipping budgets, AUC with
labels, the CLI's files. Public safe photos only."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from nsfwlab.cli import app
from nsfwlab.config import Thresholds
from nsfwlab.errors import ConfigError
from nsfwlab.lab import GoalKind, RobustnessConfig, parse_transform, parse_transforms, robustness
from nsfwlab.lab.robust import MIN_PER_CLASS, auc_interval, boundary_goal, load_labels
from nsfwlab.lab.robust_report import plot_jpeg_curve, plot_min_eps, render_html

runner = CliRunner()


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory: pytest.TempPathFactory, photos: dict[str, np.ndarray]) -> Path:
    d = tmp_path_factory.mktemp("small")
    for name in ("chelsea", "coffee"):
        Image.fromarray(photos[name]).resize((192, 128), Image.Resampling.BILINEAR).save(d / f"{name}.png")
    return d


def test_parse_transforms() -> None:
    assert [t.spec for t in parse_transforms("jpeg:50, flip,grayscale,jpeg:50")] == ["jpeg:50", "flip", "grayscale"]
    assert parse_transform("scale:0.5").aligned is False and parse_transform("bits:4").aligned
    for bad in ("jpeg", "jpeg:0", "jpeg:abc", "median:4", "warp:2", "bits:9", "flip:2"):
        with pytest.raises(ConfigError):
            parse_transform(bad)
    with pytest.raises(ConfigError):
        parse_transforms(" , ")


def test_transforms_do_what_they_say() -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    assert parse_transform("scale:0.5")(arr).shape == (20, 30, 3)
    assert parse_transform("crop:0.5")(arr).shape == (20, 30, 3)
    np.testing.assert_array_equal(parse_transform("flip")(arr), arr[:, ::-1])
    g = parse_transform("grayscale")(arr)
    assert (g[..., 0] == g[..., 1]).all()
    assert set(np.unique(parse_transform("bits:1")(arr))) <= {64, 192}
    n1, n2 = parse_transform("noise:4", seed=3)(arr), parse_transform("noise:4", seed=3)(arr)
    np.testing.assert_array_equal(n1, n2)
    assert 2 < np.abs(n1.astype(int) - arr).mean() < 5


def test_boundary_goal() -> None:
    t = Thresholds()
    assert boundary_goal(0.05, t).kind is GoalKind.AT_LEAST and boundary_goal(0.05, t).value == 0.2
    assert boundary_goal(0.95, t).kind is GoalKind.AT_MOST and boundary_goal(0.95, t).value == 0.8
    g = boundary_goal(0.3, t)
    assert g.kind is GoalKind.AT_MOST and g.value < 0.2 and not g.met(0.2)
    g = boundary_goal(0.7, t)
    assert g.kind is GoalKind.AT_LEAST and g.value > 0.8 and not g.met(0.8)


def test_perturbation_scores_equal_doing_it_by_hand(small_dir: Path, detector) -> None:
    path = small_dir / "chelsea.png"
    rep = robustness([str(path)], detector, RobustnessConfig(perturbations=("jpeg:50", "flip", "noise:4"),
                                                             attack=False))
    (im,) = rep.images
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, format="JPEG", quality=50)
    assert im.perturbations["jpeg:50"] == detector.nsfw_score(buf.getvalue())
    assert im.perturbations["flip"] == detector.nsfw_score(np.asarray(Image.open(path).convert("RGB"))[:, ::-1].copy())
    assert im.score == detector.nsfw_score(path) and im.min_eps is None


def test_bad_file_is_reported_and_the_rest_go_on(small_dir: Path, tmp_path: Path, detector) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    rep = robustness([str(bad), str(small_dir / "coffee.png")], detector, perturbations=("jpeg:50",), attack=False)
    assert rep.images[0].error and "bad.jpg" in rep.images[0].error
    assert rep.images[1].error is None and rep.summary["errors"] == 1


def test_labels_give_auc(small_dir: Path, tmp_path: Path, detector) -> None:
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(f"path,label\n{small_dir / 'chelsea.png'},safe\n{small_dir / 'coffee.png'},nsfw\n")
    labels = load_labels(csv_path)
    assert sorted(labels.values()) == [0, 1]
    rep = robustness(sorted(labels), detector, perturbations=("jpeg:50", "blur:2"), attack=False, labels=labels)
    auc = rep.summary["auc"]
    assert set(auc) == {"none", "jpeg:50", "blur:2"} and all(v["value"] in (0.0, 1.0) for v in auc.values())
    # one image per class: the figure carries its interval and a warning, and the page shows both
    assert all(v["positives"] == v["negatives"] == 1 for v in auc.values())
    assert all(v["ci95"][1] - v["ci95"][0] > 0.5 for v in auc.values())
    assert any("AUC rests on 1 NSFW and 1 safe" in w for w in rep.summary["warnings"])
    page = render_html(rep, {})
    assert "AUC rests on 1 NSFW and 1 safe" in page and "95% interval" in page
    with pytest.raises(ConfigError):
        bad = tmp_path / "bad.csv"
        bad.write_text("a.jpg,maybe\n")
        load_labels(bad)


@pytest.mark.slow
def test_min_eps_is_verified_and_beats_defences(small_dir: Path, detector) -> None:
    """Every image gets a verified smallest flipping budget; re-running the attack's result through the
    Detector gives the reported score; the adaptive attack gets through a defence."""
    cfg = RobustnessConfig(perturbations=("jpeg:50", "jpeg:90"), max_eps=4, steps=8, defences=("bits:5",),
                           device="cpu", jpeg="straight-through")
    rep = robustness([str(small_dir / "chelsea.png")], config=cfg, detector=detector)
    (im,) = rep.images
    assert im.min_eps is not None and im.min_eps["verified"] and 1 <= im.min_eps["value"] <= 4
    assert im.min_eps["score"] >= 0.2  # chelsea is safe: the nearer boundary is 0.2
    row = im.defences["bits:5"]
    assert row["min_eps"]["verified"] and row["min_eps"]["score"] >= 0.2
    assert rep.summary["min_eps"]["flipped"] == 1
    page = render_html(rep, {"jpeg": plot_jpeg_curve(rep), "eps": plot_min_eps(rep)})
    assert "filter:blur" in page and page.count("data:image/png;base64,") == 2
    pixels = im.min_eps["pixels"]
    assert 0 < pixels <= im.min_eps["pixels_total"] and im.min_eps["l2"] > 0
    assert rep.summary["min_eps"]["median_pixels"] == pixels


@pytest.mark.slow
def test_cli_robustness_writes_report(small_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "rob"
    res = runner.invoke(app, ["robustness", str(small_dir), "--out", str(out), "--perturb", "jpeg:50,jpeg:90,flip",
                              "--max-eps", "4", "--steps", "8", "--defences", "none", "--device", "cpu",
                              "--jpeg", "straight-through", "--no-protocol"],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    data = json.loads((out / "robustness.json").read_text())
    assert len(data["images"]) == 2
    for im in data["images"]:
        assert set(im["perturbations"]) == {"jpeg:50", "jpeg:90", "flip"}
        assert im["min_eps"]["verified"] is True and im["min_eps"]["value"] >= 1
    for name in ("jpeg_curve.png", "min_eps.png"):
        assert Image.open(out / name).format == "PNG"
    page = (out / "report.html").read_text()
    assert "<table" in page and "Robustness report" in page


def test_cli_robustness_usage_errors(small_dir: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["robustness", str(small_dir), "--out", str(tmp_path / "o"), "--perturb", "warp:3"])
    assert res.exit_code == 2 and "unknown perturbation" in res.output
    res = runner.invoke(app, ["robustness", str(small_dir), "--out", str(tmp_path / "o"), "--defences", "flip"])
    assert res.exit_code == 2


def test_auc_interval_is_wide_on_few_examples_and_narrows_with_more() -> None:
    lo, hi = auc_interval(1.0, 2, 2)
    assert hi == 1.0 and 0.3 < lo < 0.4  # 2 + 2 perfectly separated: far from proof of a perfect classifier
    lo2, hi2 = auc_interval(0.9, 500, 400)
    assert 0.85 < lo2 < 0.9 < hi2 < 0.95
    assert auc_interval(0.9, 500, 3) == auc_interval(0.9, 3, 500)  # the smaller class sets the width


def test_report_page_reads_as_a_report_not_a_json_dump(small_dir: Path, detector) -> None:
    rep = robustness([str(small_dir / "chelsea.png"), str(small_dir / "coffee.png")], detector,
                     perturbations=("jpeg:50", "flip"), attack=False)
    assert any(f"rest on 2 image(s); fewer than {MIN_PER_CLASS}" in w for w in rep.summary["warnings"])
    page = render_html(rep, {}, thumbnails=True)
    assert "<pre>" not in page and '"mean_abs_change"' not in page
    assert page.index("2 image(s) measured") < page.index("Everyday perturbations") < page.index("<h2>Images")
    assert page.count('class="t"') == 2 and "filter:blur" in page  # thumbnails start blurred


def test_library_errors_name_parameters_not_flags() -> None:
    for kwargs in ({"max_eps": 0.5}, {"steps": 0}, {"defences": ("flip",)}, {"max_work_side": 1}):
        with pytest.raises(ConfigError) as info:
            RobustnessConfig(**kwargs)
        assert info.value.param == next(iter(kwargs)) and "--" not in str(info.value)
    with pytest.raises(ConfigError, match="unknown RobustnessConfig field"):
        robustness([], None, stepz=3)
