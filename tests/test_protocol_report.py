"""The protocol's report page, drawn from a hand-made robustness.json dict: the threat model comes first, failed
sanity checks are warnings at the top, every string from the data is escaped, thumbnails are blurred in their
pixels, and the per-image study joins the same page."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from nsfwlab.lab.protocol_report import (
    CARD_BLUR,
    curve_file,
    plot_curves,
    protocol_plots,
    protocol_sections,
    render_html,
)
from nsfwlab.lab.robust import ImageRobustness, RobustnessReport
from nsfwlab.lab.robust_report import thumbnail

EVIL = '<script>alert("x")</script>'


def _curve(values: list[float]) -> list[dict[str, Any]]:
    return [{"eps": e, "robust_accuracy": v, "n": 4, "ci95": [max(0.0, v - 0.3), min(1.0, v + 0.3)],
             "broken": round(4 * (1 - v))} for e, v in zip([1, 2, 4, 8], values, strict=True)]


def _data(image: str, *, sanity_passed: bool = True) -> dict[str, Any]:
    return {
        "threat_model": {"norm": "linf", "eps": [1, 2, 4, 8], "eps_unit": "levels of 1/255 of the working copy",
                         "work_side": 256, "threshold": 0.5, "labels": "given", "target": "local",
                         "attacks": {"apgd": {"kind": "white-box", "library": "adversarial-robustness-toolbox 1.20.1",
                                              "loss": "cross-entropy", "steps": 20, "restarts": 1},
                                     "square": {"kind": "black-box (scores)", "queries": 300}},
                         "models": ["open_nsfw", EVIL], "verification": "exact_score of the saved PNG"},
        "clean_accuracy": {"open_nsfw": {"value": 0.75, "n": 4, "ci95": [0.25, 1.0]}},
        "curves": {"open_nsfw": {"apgd": _curve([0.5, 0.25, 0.0, 0.0]), "square": _curve([0.75, 0.5, 0.25, 0.0]),
                                 "worst": _curve([0.5, 0.25, 0.0, 0.0])},
                   EVIL: {"apgd": _curve([0.75, 0.75, 0.5, 0.25]), "worst": _curve([0.75, 0.5, 0.5, 0.25])}},
        "transfer": {"open_nsfw": {EVIL: 0.5}, EVIL: {"open_nsfw": None}},
        "transfer_detail": {"open_nsfw": {EVIL: {"n": 4, "succeeded": 2, "ci95": [0.1, 0.9], "eps": 8}}},
        "queries": {"open_nsfw": {"square": {"median": 140, "max": 300, "per_image": [140, 300]}}},
        "blocked_at_query": {"open_nsfw": {"square": [12, None]}},
        "evasions": {"grid2": {"open_nsfw": -0.21, EVIL: 0.05}, EVIL: {"open_nsfw": -0.01}},
        "evasions_detail": {"grid2": {"open_nsfw": {"mean_change": -0.21, "ci95": [-0.3, -0.1], "n": 4, "flips": 1,
                                                    "tiled_mean_change": -0.02}}},
        "tiles": {"open_nsfw": {"cost": 14.0, "seconds_per_image": {"plain": 0.1, "tiled": 1.4},
                               "recovered": {"grid2": 0.8, "border": 0.6},
                               "recovered_detail": {"grid2": {"n": 4}}}},
        "sanity": [{"check": "success reaches 100% at a large budget", "passed": sanity_passed,
                    "detail": f"robust accuracy 0.25 at 64/255 {EVIL}"},
                   {"check": "white-box beats black-box", "passed": True, "detail": "ok"},
                   {"check": "a stronger APGD changes little", "passed": None, "detail": "nothing to rerun"}],
        "protocol_images": [{"path": image, "label": 1, "models": {"open_nsfw": {
            "clean_score": 0.7, "correct": True,
            "attacks": {"apgd": {"broken_at": 2, "score": 0.31, "queries": None, "saved": f"adv/{EVIL}.png"},
                        "square": {"broken_at": None, "score": 0.69, "queries": 300, "saved": None}}}}},
                            {"path": "missing.jpg", "error": f"missing.jpg: cannot read {EVIL}"}],
        "warnings": [f"curves rest on 4 image(s) {EVIL}"],
    }


@pytest.fixture()
def image(tmp_path: Path, photos: dict[str, np.ndarray]) -> str:
    path = tmp_path / "chelsea.png"
    Image.fromarray(photos["chelsea"]).save(path)
    return str(path)


def test_threat_model_comes_first_and_sections_follow_in_order(image: str) -> None:
    page = render_html(_data(image), {})
    order = ["<h2>Threat model", "warning:", "Robust accuracy against epsilon", "<h2>Transfer", "Everyday evasions",
             "Tiled scoring", "<h2>Sanity checks", "<h2>Queries", "<h2>Images under attack"]
    positions = [page.index(s) for s in order]
    assert positions == sorted(positions)
    assert "adversarial-robustness-toolbox 1.20.1" in page and "cross-entropy" in page


def test_every_string_from_the_data_is_escaped(image: str) -> None:
    page = render_html(_data(image, sanity_passed=False), {})
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_failed_sanity_check_is_a_warning_at_the_top(image: str) -> None:
    passed = render_html(_data(image), {})
    failed = render_html(_data(image, sanity_passed=False), {})
    assert "sanity check failed" not in passed and "FAILED" not in passed and "not run" in passed
    first_warning = failed.index("sanity check failed: success reaches 100% at a large budget")
    assert first_warning < failed.index("Robust accuracy against epsilon") and "FAILED" in failed


def test_tables_show_values_intervals_and_nulls(image: str) -> None:
    page = protocol_sections(_data(image), {})
    assert "0.25 [0.00, 0.55]" in page  # robust accuracy with its interval
    assert "2/4 [0.10, 0.90] at 8/255" in page  # transfer detail
    assert "-0.210" in page and "tiled -0.020" in page and "recovered: grid2" in page
    assert "seconds per image: tiled" in page and "recovered_detail" not in page
    assert "1 of 2 image(s), first at query 12" in page
    assert "not broken" in page and "clean accuracy 0.75 [0.25, 1.00] on 4 image(s)" in page
    assert "background:rgba(200,40,40,0.38)" in page  # transfer share 0.5 shaded


def test_card_thumbnails_are_blurred_in_their_pixels(image: str) -> None:
    page = protocol_sections(_data(image), {}, thumbnails=True)
    uris = re.findall(r'src="(data:image/jpeg;base64,[^"]+)"', page)
    assert len(uris) == 1 and "classList.toggle" not in page
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(uris[0].split(",", 1)[1]))), dtype=float)
    sharp = Image.open(image)
    sharp.thumbnail((160, 160))
    sharp_arr = np.asarray(sharp, dtype=float)
    assert shown.shape == sharp_arr.shape

    def detail(a: np.ndarray) -> float:  # mean absolute difference of neighbouring pixels
        return float(np.abs(np.diff(a, axis=1)).mean())

    assert detail(shown) < 0.4 * detail(sharp_arr)
    assert thumbnail(image, blur=CARD_BLUR) == uris[0]
    assert "data:image/jpeg" not in protocol_sections(_data(image), {}, thumbnails=False)


def test_plots_one_png_per_model_with_safe_file_names(image: str) -> None:
    data = _data(image)
    plots = protocol_plots(data)
    assert set(plots) == {"open_nsfw", EVIL}
    assert all(Image.open(io.BytesIO(png)).format == "PNG" for png in plots.values())
    assert curve_file("ensemble:a+b:max") == "curves-ensemble_a_b_max.png"
    assert re.fullmatch(r"curves-[A-Za-z0-9._-]+\.png", curve_file(EVIL))
    page = render_html(data, plots)
    assert page.count("data:image/png;base64,") == 2
    assert Image.open(io.BytesIO(plot_curves("m", {"apgd": _curve([1.0, 1.0, 0.5, 0.0])}))).size[0] > 100


def test_per_image_study_joins_the_page_after_the_protocol(image: str) -> None:
    study = RobustnessReport((ImageRobustness(image, 0.01, "safe", {"jpeg:50": 0.02}),),
                             {"images": 1, "errors": 0, "mean_abs_change": {"jpeg:50": 0.01},
                              "label_flips": {"jpeg:50": 0}, "warnings": []})
    page = render_html(_data(image), {}, study=study)
    assert page.index("<h2>Threat model") < page.index("Per-image study") < page.index("Everyday perturbations")
    assert page.count("<h1>") == 1
    # one page, one promise: the study's thumbnail is blurred in its pixels too, with no click to unblur
    assert page.count("data:image/jpeg;base64,") == 2 and "classList.toggle" not in page


def test_missing_sections_are_left_out() -> None:
    page = render_html({"threat_model": {"norm": "l2", "eps": [0.5]}}, {})
    assert "<h2>Threat model" in page and "Transfer" not in page and "Queries" not in page
    assert "<h2>Images" not in page and "blocked by the service" not in page
