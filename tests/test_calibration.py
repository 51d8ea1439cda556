"""Score calibration: fitting (isotonic, Platt) with cross-validated Brier scores, the file format and
its errors, `Detector(calibration=...)`, and `evaluate --calibrate` -> `score --calibration` end to end
with the real model on real photos."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from nsfwlab import Detector, Thresholds
from nsfwlab.calibration import Calibration, CalibrationMethod, load_calibration
from nsfwlab.cli import app
from nsfwlab.errors import ConfigError
from synthetic import RedFraction, shapes_image

pytest.importorskip("sklearn")
from nsfwlab.evaluate.calibrate import brier_score, fit_calibration

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _miscalibrated(n: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Scores that rank well but are far too confident (the true rate at score s is about s ** 4)."""
    rng = np.random.default_rng(0)
    s = rng.uniform(0, 1, n)
    return (rng.uniform(0, 1, n) < s**4).astype(int), s


@pytest.mark.parametrize("method", list(CalibrationMethod))
def test_fit_is_monotone_and_improves_brier(method: CalibrationMethod) -> None:
    y, s = _miscalibrated()
    fit = fit_calibration(y, s, method, model_version="m", preprocess_version="p", folds=5, seed=1)
    assert fit.brier_before == pytest.approx(brier_score(y, s))
    assert fit.brier_after < fit.brier_before  # cross-validated, so not just memorised
    grid = np.linspace(0, 1, 1001)
    out = fit.calibration.apply_array(grid)
    assert np.all(np.diff(out) >= -1e-12) and out.min() >= 0 and out.max() <= 1
    again = Calibration.loads(fit.calibration.dumps())
    assert again == fit.calibration and np.array_equal(again.apply_array(grid), out)
    assert fit.calibration.fitted_on["brier_after_cv"] == fit.brier_after


def test_fit_needs_both_classes() -> None:
    with pytest.raises(ConfigError, match="at least 2 images of each class"):
        fit_calibration([0, 0, 0, 1], [0.1, 0.2, 0.3, 0.9], "platt", model_version="m", preprocess_version="p")


def test_platt_never_decreases() -> None:
    """Labels that fall as the score rises: the fit is clamped to a constant, never a decreasing map."""
    s = np.linspace(0.01, 0.99, 50)
    y = (s < 0.5).astype(int)
    cal = fit_calibration(y, s, "platt", model_version="m", preprocess_version="p").calibration
    assert cal.params["a"] == 0.0 and np.all(np.diff(cal.apply_array(s)) >= 0)


def test_bad_files_are_one_line_config_errors(tmp_path: Path) -> None:
    cases = {
        "broken.json": "{not json",
        "other.json": json.dumps({"hello": 1}),
        "method.json": json.dumps({"format": "nsfwlab-calibration/1", "method": "magic", "model_version": "m",
                                   "preprocess_version": "p", "params": {}}),
        "params.json": json.dumps({"format": "nsfwlab-calibration/1", "method": "isotonic", "model_version": "m",
                                   "preprocess_version": "p", "params": {"x": [0, 1], "y": [1, 0]}}),
        "platt.json": json.dumps({"format": "nsfwlab-calibration/1", "method": "platt", "model_version": "m",
                                  "preprocess_version": "p", "params": {"a": -1, "b": 0}}),
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError) as info:
            load_calibration(tmp_path / name)
        assert "\n" not in str(info.value) and name in str(info.value), name
    with pytest.raises(ConfigError, match="cannot read"):
        load_calibration(tmp_path / "missing.json")
    res = runner.invoke(app, ["score", "--calibration", str(tmp_path / "broken.json"), str(tmp_path / "x.png")])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "not valid JSON" in res.output


def test_detector_applies_a_calibration() -> None:
    plain = Detector(RedFraction(), thresholds=Thresholds(0.3, 0.6))
    cal = Calibration("platt", plain.model_version, plain.preprocess_version, {"a": 1.0, "b": 2.0})
    det = Detector(RedFraction(), thresholds=Thresholds(0.3, 0.6), calibration=cal)
    images = [shapes_image(c, i) for c in (0, 1) for i in range(3)]
    red = np.zeros((64, 64, 3), np.uint8)
    red[:20, :, 0] = 255
    images.append(red)
    for got, raw in zip(det.score_many(images), plain.score_many(images), strict=True):
        assert got.raw_score == raw.score and raw.raw_score is None
        assert got.score == pytest.approx(cal.apply(raw.score)) and got.label == det.label(got.score)
        assert got.to_dict()["raw_score"] == raw.score and "raw_score" not in raw.to_dict()
    assert det.nsfw_score(red) == pytest.approx(cal.apply(plain.nsfw_score(red)))
    assert det.classify(red).model_score == plain.nsfw_score(red)
    assert det.describe()["calibration"] == "platt" and "calibration" not in plain.describe()


def test_calibration_for_another_model_is_refused(tmp_path: Path) -> None:
    cal = Calibration("platt", "someone-elses-model", "yahoo-exact-v1", {"a": 1.0, "b": 0.0})
    with pytest.raises(ConfigError, match="fitted for model 'someone-elses-model'") as info:
        Detector(RedFraction(), calibration=cal)
    assert "--" not in str(info.value)  # the library names no command-line flag
    (tmp_path / "c.json").write_text(cal.dumps())
    img = tmp_path / "x.png"
    Image.fromarray(shapes_image(0, 0)).save(img)
    res = runner.invoke(app, ["score", "--calibration", str(tmp_path / "c.json"), str(img)])
    assert res.exit_code == 2 and "fitted for model" in res.output


def _labelled(root: Path, photo_dir: Path) -> Path:
    """A small labelled set for the real model: the photos and some abstract shapes (labels arbitrary
    but fixed; the calibration only has to fit them)."""
    for sub in ("safe", "nsfw"):
        (root / sub).mkdir(parents=True)
    for i, p in enumerate(sorted(photo_dir.glob("*.jpg"))):
        (root / ("nsfw" if i % 2 else "safe") / p.name).write_bytes(p.read_bytes())
    for i in range(6):
        Image.fromarray(shapes_image(i % 2, i)).save(root / ("nsfw" if i % 3 == 0 else "safe") / f"s{i}.png")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("method", ["platt"])  # isotonic needs a larger set: see the refusal test
def test_evaluate_calibrate_then_score_calibration(tmp_path: Path, photo_dir: Path, photo_paths: list[Path],
                                                   detector, method: str) -> None:
    data = _labelled(tmp_path / "data", photo_dir)
    out = tmp_path / "report"
    res = runner.invoke(app, ["evaluate", str(data), "--out", str(out), "--bootstrap", "20", "--calibrate", method,
                              "--calibration-folds", "3"])
    assert res.exit_code == 0, res.output
    assert "calibration" in res.output and "Brier" in res.output
    assert "calibration fitted on 8 safe and 5 nsfw images" in " ".join(res.output.split())  # the small-set warning
    for name in ("reliability_before.png", "reliability_after.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert f"Calibration ({method})" in html and "Brier score" in html
    assert 'id="plot-reliability_before"' in html and 'id="plot-reliability_after"' in html
    cal = load_calibration(out / "calibration.json")
    assert cal.method.value == method and cal.model_version == detector.model_version
    assert cal.fitted_on["n"] == 13 and cal.fitted_on["folds"] == 3

    res = runner.invoke(app, ["score", "-f", "jsonl", "--calibration", str(out / "calibration.json"),
                              *map(str, photo_paths)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    for row, path in zip(rows, photo_paths, strict=True):
        assert row["raw_score"] == detector.nsfw_score(path)  # the exact model score, untouched
        assert row["score"] == pytest.approx(cal.apply(row["raw_score"]), abs=1e-12)
        assert row["label"] == detector.label(row["score"]).value
    ordered = sorted(rows, key=lambda r: r["raw_score"])
    assert all(a["score"] <= b["score"] for a, b in itertools.pairwise(ordered))
    res = runner.invoke(app, ["score", "-f", "csv", "--calibration", str(out / "calibration.json"),
                              str(photo_paths[0])])
    header, line = res.stdout.splitlines()
    assert header == "path,score,label,error,raw_score" and float(line.split(",")[-1]) == pytest.approx(
        detector.nsfw_score(photo_paths[0]), abs=1e-6)


def test_evaluate_calibrate_needs_both_classes(tmp_path: Path) -> None:
    for sub, n in (("safe", 3), ("nsfw", 1)):
        (tmp_path / "d" / sub).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(shapes_image(0, i)).save(tmp_path / "d" / sub / f"{i}.png")
    res = runner.invoke(app, ["evaluate", str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--calibrate", "platt"])
    assert res.exit_code == 2 and "at least 2 images of each class" in res.output


def test_isotonic_on_a_small_set_is_refused_and_platt_warns() -> None:
    """Isotonic on 52 images used to map a raw score of 0.2027 to 1.000 (a step fitted to a few images)."""
    from nsfwlab.evaluate.calibrate import FEW_PER_CLASS, ISOTONIC_MIN_PER_CLASS

    rng = np.random.default_rng(3)
    y = np.r_[np.zeros(26), np.ones(26)].astype(int)
    s = np.r_[rng.uniform(0.0, 0.3, 26), rng.uniform(0.19, 1.0, 26)]
    with pytest.raises(ConfigError, match=f"isotonic calibration needs at least {ISOTONIC_MIN_PER_CLASS} images of "
                                          "each class, got 26 safe and 26 nsfw") as info:
        fit_calibration(y, s, "isotonic", model_version="m", preprocess_version="p")
    assert info.value.param == "method" and "use method platt" in str(info.value)
    fit = fit_calibration(y, s, "platt", model_version="m", preprocess_version="p")
    assert len(fit.warnings) == 1 and f"fewer than {FEW_PER_CLASS} in a class" in fit.warnings[0]
    assert fit.calibration.fitted_on["warnings"] == list(fit.warnings) and fit.to_dict()["warnings"]
    y_big, s_big = _miscalibrated(1000)
    assert fit_calibration(y_big, s_big, "isotonic", model_version="m", preprocess_version="p").warnings == ()


def test_evaluate_refuses_isotonic_on_a_small_set_before_scoring(tmp_path: Path) -> None:
    for sub in ("safe", "nsfw"):
        (tmp_path / "d" / sub).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "d" / sub / f"{i}.png").write_bytes(b"never decoded")
    res = runner.invoke(app, ["evaluate", str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--calibrate", "isotonic"])
    assert res.exit_code == 2, res.output
    assert "isotonic calibration needs at least 100 images of each class" in res.output
    assert "use --calibrate platt" in res.output and "unreadable" not in res.output  # nothing was scored


def test_cross_validation_keeps_each_group_in_one_fold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Near-duplicates (one group) never sit on both sides of a fold: the calibration that scores an
    image is never fitted on its twin."""
    from nsfwlab.evaluate import calibrate

    y, s = _miscalibrated(300)
    groups = [f"g{i // 3}" for i in range(300)]  # triplets
    y = np.asarray([y[3 * (i // 3)] for i in range(300)])  # one label per group
    seen: list[set[float]] = []
    real = calibrate.fit_params

    def spy(method, labels, scores):  # type: ignore[no-untyped-def]
        seen.append({float(v) for v in scores})
        return real(method, labels, scores)

    monkeypatch.setattr(calibrate, "fit_params", spy)
    fit = calibrate.fit_calibration(y, s, "platt", model_version="m", preprocess_version="p", folds=5, groups=groups)
    assert fit.folds == 5 and fit.calibration.fitted_on["grouped"] is True
    for train in seen[:-1]:  # the folds (the last fit is on the whole set)
        for g in range(100):
            inside = [float(s[3 * g + j]) in train for j in range(3)]
            assert all(inside) or not any(inside), g
    with pytest.raises(ConfigError, match="groups"):
        calibrate.fit_calibration(y, s, "platt", model_version="m", preprocess_version="p", groups=["a"])


@pytest.mark.parametrize("params, method, message", [
    ({"x": [[1]], "y": [{}]}, "isotonic", "must be a number"),
    ({"x": [0.1, "0.5"], "y": [0.1, 0.5]}, "isotonic", "must be a number"),
    ({"x": [0.1, 2.0], "y": [0.1, 0.5]}, "isotonic", "must lie in"),
    ({"a": 1e308, "b": 0}, "platt", "must lie in"),
    ({"a": 1, "b": 10**400}, "platt", "out of range"),
    ({"a": True, "b": 0}, "platt", "finite numbers"),
])
def test_hostile_calibration_values_are_one_line_errors(params, method, message) -> None:
    from nsfwlab.calibration import Calibration
    from nsfwlab.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        Calibration(method, "m", "p", params)


@pytest.mark.parametrize("text, message", [
    ("[" * 200_000, "nested too deeply"),
    ('{"format": "nsfwlab-calibration/1", "method": "platt", "params": {"a": 1, "b": Infinity}}', "Infinity"),
])
def test_hostile_calibration_json_is_a_one_line_error(text: str, message: str) -> None:
    from nsfwlab.calibration import Calibration
    from nsfwlab.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        Calibration.loads(text)
