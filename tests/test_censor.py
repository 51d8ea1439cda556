"""Censor: unit tests on a fake backend whose score is known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from nsfwlab import ConfigError, Detector, PreprocessConfig
from nsfwlab.explain import Censor, Occlusion, hide
from synthetic import RedFraction

NOJPEG = PreprocessConfig(jpeg_roundtrip=False)


class Constant:
    name = "fake-constant"
    device = "cpu"
    model_version = "fake"

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.tile(np.array([[0.1, 0.9]], np.float32), (len(batch), 1))


def red_image() -> np.ndarray:
    img = np.full((256, 256, 3), 128, np.uint8)
    img[100:164, 40:104] = (230, 20, 20)  # 64x64 red square: 4096 / 224^2 = 0.0816
    return img


@pytest.fixture
def red_detector():
    det = Detector(RedFraction(), preprocess=NOJPEG, batch_size=8)
    yield det
    det.close()


def test_hide_styles():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    assert hide(img, "box").max() == 0
    pix = hide(img, "pixelate", 10)
    assert pix.shape == img.shape
    assert (pix[:10, :10] == pix[0, 0]).all() and (pix[30:40, 50:60] == pix[30, 50]).all()
    blur = hide(img, "blur", 5)
    assert blur.shape == img.shape and blur.astype(float).std() < img.astype(float).std() / 3


def test_censor_hides_the_red_square(red_detector):
    img = red_image()
    before = img.copy()
    occ = Occlusion(red_detector, box=32, stride=16)
    result = Censor(red_detector, explainer=occ, style="box").censor(img, target=0.01)
    assert result.score_before == pytest.approx(64 * 64 / 224**2, abs=1e-6)
    assert result.reached and result.score_after < 0.01
    assert result.score_after == pytest.approx(red_detector.nsfw_score(result.image), abs=1e-6)
    # What got hidden is the square (plus a margin), not the grey background.
    assert result.mask[100:164, 40:104].mean() > 0.85
    assert result.hidden_fraction < 0.12
    assert result.image.shape == img.shape and result.image.dtype == np.uint8
    np.testing.assert_array_equal(result.image[~result.mask], img[~result.mask])  # rest untouched
    np.testing.assert_array_equal(img, before)  # the input is not modified
    assert len(result.steps) >= 1 and result.steps[-1].score == result.score_after


@pytest.mark.parametrize("style", ["blur", "pixelate"])
def test_blur_and_pixelate_keep_colour_so_a_colour_score_is_not_reached(red_detector, style):
    # Blurring or pixelating the inside of a uniform red square leaves it red: a score driven by
    # colour alone cannot be hidden that way, and the result says so instead of pretending.
    occ = Occlusion(red_detector, box=64, stride=32)
    result = Censor(red_detector, explainer=occ, style=style, max_steps=2).censor(red_image(), target=0.01)
    assert not result.reached
    assert result.score_after < result.score_before  # the square's edges did blend away
    assert len(result.steps) == 2


def test_censor_goes_step_by_step(red_detector):
    # Increments of 1% only: the 6.25%-of-area square takes several steps, each lowering the score.
    occ = Occlusion(red_detector, box=32, stride=16)
    result = Censor(red_detector, explainer=occ, style="box", increments=(0.01,), max_steps=20).censor(
        red_image(), target=0.005)
    assert result.reached
    assert len(result.steps) >= 4
    scores = [s.score for s in result.steps]
    assert scores == sorted(scores, reverse=True)
    fractions = [s.hidden_fraction for s in result.steps]
    assert fractions == sorted(fractions)


def test_censor_already_below_target(red_detector):
    img = np.full((64, 64, 3), 128, np.uint8)
    result = Censor(red_detector, style="box").censor(img, target=0.2)
    assert result.reached and result.steps == () and not result.mask.any()
    np.testing.assert_array_equal(result.image, img)


def test_censor_reports_an_unreachable_target():
    det = Detector(Constant(), preprocess=NOJPEG, batch_size=8)
    img = np.full((64, 64, 3), 128, np.uint8)
    result = Censor(det, style="box", max_steps=3).censor(img, target=0.5)
    assert not result.reached
    assert result.score_after == pytest.approx(0.9)
    assert len(result.steps) == 3


def test_censor_errors(red_detector):
    with pytest.raises(ConfigError, match="unknown style 'smudge'; choose one of: blur, pixelate, box"):
        Censor(red_detector, style="smudge")
    with pytest.raises(ConfigError, match="max_steps"):
        Censor(red_detector, max_steps=0)
    with pytest.raises(ConfigError, match="increments"):
        Censor(red_detector, increments=(0.0,))
    with pytest.raises(ConfigError, match="strength"):
        Censor(red_detector, strength=0)
    with pytest.raises(ConfigError, match="target must lie"):
        Censor(red_detector).censor(red_image(), target=0.0)


class BlackRaises:
    """A fake backend whose score rises with the black the network sees: hiding with a black box
    only ever makes it worse."""

    name = "fake-black"
    device = "cpu"
    model_version = "fake"

    def predict(self, batch: np.ndarray) -> np.ndarray:
        rgb = batch[..., ::-1] + np.array((123, 117, 104), dtype=np.float32)
        p = 0.2 + 0.5 * (rgb.max(axis=-1) < 10).reshape(len(batch), -1).mean(axis=1)
        return np.stack([1 - p, p], axis=1).astype(np.float32)


def test_censor_never_returns_a_result_scoring_higher_than_the_input():
    det = Detector(BlackRaises(), preprocess=NOJPEG, batch_size=8)
    img = np.full((256, 256, 3), 128, np.uint8)
    occ = Occlusion(det, box=32, stride=16)
    result = Censor(det, explainer=occ, style="box", max_steps=3).censor(img, target=0.05)
    assert len(result.steps) == 3 and all(st.score > 0.2 for st in result.steps)  # every step was worse
    assert result.kept_input and result.best_step is None and not result.reached
    assert result.score_after == pytest.approx(0.2, abs=1e-6) == result.score_before
    assert result.score_after == pytest.approx(det.nsfw_score(result.image), abs=1e-6)
    np.testing.assert_array_equal(result.image, img)
    assert not result.mask.any()


def test_censor_keeps_the_best_step_not_the_last(red_detector):
    # an unreachable target runs every step; the result is the lowest-scoring one, with its exact score
    occ = Occlusion(red_detector, box=32, stride=16)
    result = Censor(red_detector, explainer=occ, style="box", increments=(0.01,), max_steps=3).censor(
        red_image(), target=1e-9)
    best = min(range(len(result.steps)), key=lambda i: result.steps[i].score)
    assert result.best_step == best
    exact = red_detector.nsfw_score(result.image)
    assert result.score_after == result.steps[best].score == pytest.approx(exact, abs=1e-6)
