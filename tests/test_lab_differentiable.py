"""The differentiable scorers agree with the Detector on uint8 pixels and carry gradients; the oracle counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nsfwlab import Detector, zoo
from nsfwlab.errors import ConfigError
from nsfwlab.lab.differentiable import LocalOracle, exact_score, load_scorer, to_pixels, to_tensor

MOBILENET = "nsfwjs-mobilenetv2"


def _small(photos: dict[str, np.ndarray], name: str, side: int = 96) -> np.ndarray:
    img = Image.fromarray(photos[name]).convert("RGB")
    img.thumbnail((side, side))
    return np.asarray(img).copy()


def _need(model_id: str) -> None:
    if not zoo.installed(model_id):
        pytest.skip(f"{model_id} weights are not in NSFWLAB_HOME: run setup.sh")


@pytest.fixture(scope="module")
def open_scorer(detector: Detector):
    return load_scorer("open_nsfw", detector=detector)


def test_open_nsfw_scorer_matches_the_detector(open_scorer, detector: Detector, photos) -> None:
    for name in ("astronaut", "coffee", "rocket"):
        px = _small(photos, name)
        est = float(open_scorer(to_tensor(px))[0])
        assert est == pytest.approx(exact_score(detector, px), abs=2e-4)


def test_gradients_reach_the_pixels(open_scorer, photos) -> None:
    x = to_tensor(_small(photos, "chelsea", 64)).requires_grad_(True)
    open_scorer.logits(x)[0, 1].backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert not any(p.requires_grad for p in open_scorer.parameters())


def test_nsfwjs_scorer_matches_its_detector(photos) -> None:
    _need(MOBILENET)
    scorer = load_scorer(MOBILENET)
    det = Detector(model=MOBILENET)
    px = _small(photos, "astronaut", 120)
    assert float(scorer(to_tensor(px))[0]) == pytest.approx(exact_score(det, px), abs=1e-4)
    x = to_tensor(px).requires_grad_(True)
    scorer(x).sum().backward()
    assert float(x.grad.abs().sum()) > 0


def test_ensemble_scorer_combines_its_members(photos) -> None:
    _need(MOBILENET)
    px = to_tensor(_small(photos, "coffee", 80))
    a, b = load_scorer("open_nsfw"), load_scorer(MOBILENET)
    mx = load_scorer(f"ensemble:open_nsfw+{MOBILENET}:max")
    mean = load_scorer(f"ensemble:open_nsfw+{MOBILENET}")
    sa, sb = float(a(px)[0]), float(b(px)[0])
    assert float(mx(px)[0]) == pytest.approx(max(sa, sb), abs=1e-6)
    assert float(mean(px)[0]) == pytest.approx((sa + sb) / 2, abs=1e-6)


def test_unknown_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        load_scorer("no-such-model")


def test_local_oracle_counts_queries_and_hides_scores(open_scorer, photos) -> None:
    px = np.stack([_small(photos, "coffee", 64)[:40, :40], _small(photos, "rocket", 64)[:40, :40]])
    oracle = LocalOracle(open_scorer, threshold=0.5)
    scores = oracle.scores(px)
    assert scores.shape == (2,) and oracle.queries == 2
    labels = LocalOracle(open_scorer, threshold=0.5, labels_only=True).scores(px)
    assert set(labels.tolist()) <= {0.0, 1.0}
    assert labels.tolist() == [float(s >= 0.5) for s in scores]
    with pytest.raises(ConfigError):
        oracle.scores(px.astype(np.float32))
    with pytest.raises(ConfigError):
        LocalOracle(open_scorer, threshold=1.0)


def test_pixels_round_trip() -> None:
    px = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    assert np.array_equal(to_pixels(to_tensor(px)), px)
    assert to_tensor(px[0]).shape == torch.Size([1, 3, 5, 7])


def test_a_detector_without_a_differentiable_form_is_refused() -> None:
    _need("nudenet-320n")
    with pytest.raises(ConfigError, match="differentiable"):
        load_scorer("nudenet-320n")


def test_detector_oracle_answers_exact_scores(detector: Detector, photos) -> None:
    from nsfwlab.lab.differentiable import DetectorOracle

    px = np.stack([_small(photos, "coffee", 64)[:40, :40], _small(photos, "rocket", 64)[:40, :40]])
    oracle = DetectorOracle(detector, threshold=0.3)
    scores = oracle.scores(px)
    assert oracle.queries == 2 and oracle.name == "open_nsfw"
    assert scores.tolist() == [exact_score(detector, a) for a in px]
    assert DetectorOracle(detector, 0.3, labels_only=True).scores(px).tolist() == [float(s >= 0.3) for s in scores]


def test_detector_oracle_runs_nudenet() -> None:
    _need("nudenet-320n")
    from nsfwlab.lab.differentiable import DetectorOracle

    oracle = DetectorOracle(Detector(model="nudenet-320n"))
    px = np.full((1, 64, 64, 3), 128, np.uint8)
    assert oracle.scores(px).shape == (1,) and oracle.name == "nudenet-320n"


def test_for_class_reads_one_class_of_a_zoo_classifier(photos, open_scorer) -> None:
    _need(MOBILENET)
    scorer = load_scorer(MOBILENET)
    px = to_tensor(_small(photos, "astronaut", 96))
    drawing = scorer.for_class("Drawing")
    probs = Detector(model=MOBILENET).classify(_small(photos, "astronaut", 96)).classes
    assert float(drawing(px)[0]) == pytest.approx(probs["Drawing"], abs=1e-4)
    assert float(scorer(px)[0]) != float(drawing(px)[0])
    with pytest.raises(ConfigError, match="no class"):
        scorer.for_class("Nope")
    with pytest.raises(ConfigError, match="no class probabilities"):
        open_scorer.for_class("nsfw")
