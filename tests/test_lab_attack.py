"""The lab's attack on the exact pipeline, on public safe photos (scikit-image): images driven to high scores
are made here at test time and never written outside pytest's tmp folders."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from nsfwlab.errors import ConfigError
from nsfwlab.lab import AttackConfig, Attacker, Goal, GoalKind, attack
from nsfwlab.lab.attacks import image_metrics
from nsfwlab.preprocess import preprocess_rgb
from nsfwlab.preprocess.differentiable import network_input, straight_through_jpeg
from nsfwlab.preprocess.resize import resize_exact


def _square(arr: np.ndarray, size: int = 256) -> np.ndarray:
    return np.asarray(Image.fromarray(arr).resize((size, size), Image.Resampling.BILINEAR))


def _png_score(detector, image: Image.Image) -> float:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return detector.nsfw_score(buf.getvalue())


class _Run:
    """``run(image, to)``: the attack with this module's config and the session's detector."""

    def __init__(self, detector) -> None:
        self.detector = detector
        self.config = AttackConfig(device="cpu", steps=30)

    def run(self, image, to: float):
        return attack(image, self.detector, self.config, to=to)


@pytest.fixture(scope="module")
def attacker(detector) -> _Run:
    return _Run(detector)


def test_goal_from_target() -> None:
    assert Goal.from_target(0.983, 0.01, 0.01).kind is GoalKind.AT_LEAST
    assert Goal.from_target(0.03, 0.95, 0.01).kind is GoalKind.AT_MOST
    assert Goal.from_target(0.5, 0.01, 0.01).kind is GoalKind.WITHIN
    assert Goal.from_target(0.97, 0.99, 0.01).kind is GoalKind.WITHIN  # below the score: reach it, not "at least"
    g = Goal(GoalKind.WITHIN, 0.5, 0.02)
    assert g.met(0.515) and not g.met(0.53)
    assert g.crossed(0.7, up=True) and not g.crossed(0.3, up=True)


@pytest.mark.parametrize("kwargs", [{"max_eps": 0.5}, {"norm": "l3"}, {"jpeg": "magic"}, {"space": "both"},
                                    {"steps": 0}, {"tolerance": 0.7}, {"survive_jpeg": 101}, {"device": "tpu"},
                                    {"to": 1.5}, {"survive_resize": (0,)}, {"max_work_side": 4},
                                    {"survive_jpeg": "95-70"}])
def test_config_rejects_bad_values_naming_the_parameter(kwargs: dict) -> None:
    with pytest.raises(ConfigError) as info:
        AttackConfig(**kwargs)
    assert info.value.param == next(iter(kwargs))
    assert "--" not in str(info.value)


def test_target_out_of_range(attacker: _Run, photos: dict[str, np.ndarray]) -> None:
    with pytest.raises(ConfigError):
        attacker.run(_square(photos["chelsea"], 64), 1.5)


def test_metrics() -> None:
    a = np.full((16, 16, 3), 100, np.uint8)
    b = a.copy()
    b[0, 0, 0] = 103
    m = image_metrics(a, b)
    assert m["linf"] == 3 and m["l2"] == 3
    assert math.isclose(m["psnr"], 10 * math.log10(255**2 / (9 / a.size)))
    assert image_metrics(a, a)["psnr"] == math.inf


def test_forward_is_the_exact_pipeline(photos: dict[str, np.ndarray], detector, torch_model) -> None:
    """Full-resolution image -> exact resize -> straight-through JPEG -> network input equals Pillow's pipeline
    bit for bit, and the score matches the Detector's."""
    arr = photos["coffee"]
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None].float()
    ours = network_input(straight_through_jpeg(resize_exact(x), 75))[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(ours, preprocess_rgb(Image.fromarray(arr)))
    with torch.no_grad():
        p = torch.softmax(torch_model(network_input(straight_through_jpeg(resize_exact(x), 75))), 1)[0, 1]
    assert abs(float(p) - detector.nsfw_score(arr)) < 1e-4


def test_gradient_reaches_full_resolution(attacker: _Run, photos: dict[str, np.ndarray]) -> None:
    from nsfwlab.lab.pgd import Engine, Search

    arr = photos["chelsea"][:150, :200]
    prob = Search(Engine(attacker.config, attacker.detector), arr, [None], None)
    d = torch.zeros_like(prob.orig, requires_grad=True)
    m, exact = prob.margins(prob.orig + d)
    (g,) = torch.autograd.grad(m.sum(), d)
    assert g.shape == (1, 3, 150, 200) and float(g.abs().sum()) > 0
    assert exact.shape == (1,)


def test_already_met_returns_the_image_unchanged(attacker: _Run, photos: dict[str, np.ndarray],
                                                detector) -> None:
    arr = _square(photos["chelsea"], 96)
    before = detector.nsfw_score(arr)
    res = attacker.run(arr, min(before + 0.005, 1.0))
    assert res.success and res.linf == 0 and res.steps == 0 and res.score_after == before
    np.testing.assert_array_equal(np.asarray(res.image), arr)


@pytest.mark.slow
def test_up_then_down_verified_by_the_detector(attacker: _Run, photos: dict[str, np.ndarray], detector) -> None:
    """Up to 0.983 at L-inf <= 2/255 on a 256x256 photo, then the made image down below 0.03: both verified by
    ``Detector.score`` of the saved PNG."""
    arr = _square(photos["astronaut"])
    up = attacker.run(arr, 0.983)
    assert up.success and up.image.size == (256, 256) and up.image.mode == "RGB"
    assert up.score_before < 0.1
    assert _png_score(detector, up.image) == up.score_after >= 0.983
    assert up.linf <= 2 and up.psnr > 40
    down = attacker.run(up.image, 0.03)
    assert down.success and _png_score(detector, down.image) == down.score_after < 0.03
    assert down.linf <= 3
    assert all("estimate" in h or "phase" in h for h in up.history)


@pytest.mark.slow
def test_mid_target_lands_within_tolerance(attacker: _Run, photos: dict[str, np.ndarray], detector) -> None:
    res = attacker.run(_square(photos["coffee"]), 0.5)
    assert res.goal.kind is GoalKind.WITHIN
    assert res.success and abs(_png_score(detector, res.image) - 0.5) <= 0.01


@pytest.mark.slow
def test_full_resolution_and_survive_jpeg(photos: dict[str, np.ndarray], detector) -> None:
    """The perturbation lives at the image's own size; the result still meets the target after JPEG re-saves at
    every quality of the set and after a resize (each verified on the saved file), not at q90 alone."""
    arr = photos["chelsea"][:240, :320]
    res = attack(arr, detector, to=0.983, survive_jpeg=(75, 85, 90), survive_resize=(0.5,), device="cpu",
                 steps=15, jpeg="straight-through")
    assert res.image.size == (320, 240)
    assert res.success and res.linf <= 8
    assert set(res.views) == {"image", "jpeg:75", "jpeg:85", "jpeg:90", "scale:0.5"}
    assert res.to_dict()["verified_against"] == list(res.views)
    for q in (75, 85, 90):
        buf = io.BytesIO()
        res.image.save(buf, format="JPEG", quality=q)
        assert detector.nsfw_score(buf.getvalue()) == pytest.approx(res.views[f"jpeg:{q}"])
        assert res.views[f"jpeg:{q}"] >= 0.983
    half = res.image.resize((160, 120), Image.Resampling.BILINEAR)
    assert detector.nsfw_score(half) == pytest.approx(res.views["scale:0.5"]) and res.views["scale:0.5"] >= 0.983
    assert _png_score(detector, res.image) == res.score_after >= 0.983


@pytest.mark.slow
@pytest.mark.parametrize("kwargs", [{"space": "resized"}, {"jpeg": "differentiable"}, {"jpeg": "eot"},
                                    {"norm": "l2", "max_eps": 1}])
def test_resized_space_and_other_jpeg_modes(kwargs: dict, photos: dict[str, np.ndarray], detector) -> None:
    arr = photos["coffee"][:200, :300]
    res = attack(arr, detector, to=0.3, device="cpu", steps=5, tolerance=0.02, **{"max_eps": 2, **kwargs})
    assert res.image.size == ((256, 256) if kwargs.get("space") == "resized" else (300, 200))
    assert res.success and abs(_png_score(detector, res.image) - 0.3) <= 0.02
    assert res.score_after == _png_score(detector, res.image)


def test_unreachable_budget_reports_failure(photos: dict[str, np.ndarray], detector) -> None:
    """One step at the smallest budget cannot reach 0.999: the best attempt comes back, flagged, still verified."""
    arr = _square(photos["rocket"], 64)
    res = attack(arr, detector, to=0.999, max_eps=1, steps=1, device="cpu")
    assert not res.success
    assert res.score_after == _png_score(detector, res.image) < 0.999
    assert res.linf <= 1


def test_public_names() -> None:
    import nsfwlab.lab as lab

    mine = {"AttackConfig", "AttackResult", "Attacker", "Goal", "GoalKind", "JpegMode", "Norm", "Space", "attack",
            "RobustnessConfig", "RobustnessReport", "robustness", "Transform", "parse_transform", "parse_transforms"}
    assert mine <= set(lab.__all__)
    assert all(hasattr(lab, name) for name in lab.__all__)


def test_survive_jpeg_quality_sets() -> None:
    assert AttackConfig(survive_jpeg=90).survive_jpeg == (90, 95)
    assert AttackConfig(survive_jpeg="70-90").survive_jpeg == (70, 75, 80, 85, 90)
    assert AttackConfig(survive_jpeg=(90, 75, 90)).survive_jpeg == (75, 90)
    assert AttackConfig(survive_resize=0.5).survive_resize == (0.5,)


def test_deprecated_entry_points_warn_and_forward(photos: dict[str, np.ndarray], detector) -> None:
    arr = _square(photos["chelsea"], 64)
    before = detector.nsfw_score(arr)
    with pytest.warns(DeprecationWarning, match="attack\\(image, to"):
        old = attack(arr, min(before + 0.005, 1.0), device="cpu")  # the old form (its default detector)
    with pytest.warns(DeprecationWarning, match="Attacker"):
        runner = Attacker(AttackConfig(device="cpu"), detector=detector)
    again = runner.run(arr, min(before + 0.005, 1.0))
    assert old.success and again.success and old.score_after == again.score_after == before


@pytest.mark.slow
def test_fewest_pixels_changes_fewer_pixels_and_is_verified(photos: dict[str, np.ndarray], detector) -> None:
    from nsfwlab.lab.pgd import Engine

    arr = _square(photos["coffee"], 96)
    engine = Engine(AttackConfig(device="cpu", steps=10, jpeg="straight-through"), detector)
    goal = Goal(GoalKind.AT_LEAST, 0.2)  # what the robustness report asks: across the safe boundary
    plain = engine.run_goal(arr, goal, fewest_pixels=False)
    sparse = engine.run_goal(arr, goal, fewest_pixels=True)
    assert plain.success and sparse.success and sparse.linf == plain.linf
    assert 0 < sparse.pixels_changed < plain.pixels_changed
    assert sparse.score_after == _png_score(detector, sparse.image)
    changed = np.any(np.asarray(sparse.image) != arr, axis=-1)
    assert int(changed.sum()) == sparse.pixels_changed
