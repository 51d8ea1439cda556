"""Square and HopSkipJump (ART) on a made-up oracle: the score is a logistic function of the
image's mean brightness, so the smallest flip is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("art")

from nsfwlab.errors import ConfigError
from nsfwlab.lab.blackbox import BlackBoxResult, _ball, _pseudo_gaussian, hopskipjump, perturbation_norm, square
from nsfwlab.lab.remote import ServiceBlocked


class Brightness:
    """NSFW probability = sigmoid(steep * (mean / 255 - 0.5)); counts queries; checks it is given uint8."""

    name = "brightness"
    threshold = 0.5

    def __init__(self, *, labels_only: bool = False, block_after: int | None = None, steep: float = 40.0,
                 center: float = 0.5) -> None:
        self.center = center
        self.labels_only = labels_only
        self.block_after = block_after
        self.steep = steep
        self.queries = 0
        self.seen: list[np.ndarray] = []

    def score(self, img: np.ndarray) -> float:
        return 1.0 / (1.0 + math.exp(-self.steep * (img.astype(np.float64).mean() / 255.0 - self.center)))

    def scores(self, images: np.ndarray) -> np.ndarray:
        assert images.dtype == np.uint8 and images.ndim == 4 and images.shape[-1] == 3
        out = []
        for img in images:
            if self.block_after is not None and self.queries >= self.block_after:
                raise ServiceBlocked("blocked", at_query=self.queries, answered=np.array(out))
            self.queries += 1
            self.seen.append(img.copy())
            s = self.score(img)
            out.append(float(s >= self.threshold) if self.labels_only else s)
        return np.array(out)


def photo(mean: float, shape: tuple[int, int] = (24, 40), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(mean, 25.0, (*shape, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(("norm", "eps"), [("linf", 8.0), ("linf", 7.5)])
def test_square_flips_within_the_ball(norm: str, eps: float) -> None:
    img = photo(131.0)  # score ~0.6: a flip needs the mean ~4 levels darker
    oracle = Brightness()
    assert oracle.score(img) > 0.5
    r = square(oracle, img, 1, norm=norm, eps=eps, queries=400, seed=1)
    assert r.success and r.adversarial is not None and r.adversarial.dtype == np.uint8
    assert r.adversarial.shape == img.shape
    assert r.norm == pytest.approx(perturbation_norm(r.adversarial, img, norm))
    assert r.norm <= eps + 1e-9 and r.norm > 0
    if norm == "linf":
        assert np.abs(r.adversarial.astype(int) - img.astype(int)).max() <= math.floor(eps)
    assert oracle.score(r.adversarial) < 0.5 and r.score == pytest.approx(oracle.score(r.adversarial))
    assert r.queries == oracle.queries <= 400 and r.blocked_at_query is None
    # every image asked was within the ball: rounding never left it
    assert max(perturbation_norm(s, img, norm) for s in oracle.seen) <= eps + 1e-9


@pytest.mark.parametrize("shape", [(24, 40), (40, 24)])
def test_square_l2_keeps_to_the_ball_after_rounding(shape: tuple[int, int]) -> None:
    img = photo(131.0, shape)
    oracle = Brightness()
    r = square(oracle, img, 1, norm="l2", eps=3.0, queries=150, seed=0)
    assert r.queries == oracle.queries <= 150
    assert max(perturbation_norm(s, img, "l2") for s in oracle.seen) <= 3.0 + 1e-9
    assert max(perturbation_norm(s, img, "l2") for s in oracle.seen) > 2.0  # it does use the ball


def test_square_moves_safe_toward_nsfw_too() -> None:
    img = photo(126.0)  # score ~0.3
    r = square(Brightness(), img, 0, norm="linf", eps=8, queries=400, seed=0)
    assert r.success and Brightness().score(r.adversarial) >= 0.5  # type: ignore[arg-type]


def test_square_out_of_reach_fails_and_keeps_to_the_budget() -> None:
    img = photo(160.0)  # a flip needs 33 levels: not within 4
    oracle = Brightness()
    r = square(oracle, img, 1, norm="linf", eps=4, queries=60, seed=0)
    assert not r.success and r.adversarial is None and math.isnan(r.norm)
    assert r.queries == oracle.queries == 60
    assert r.score < oracle.score(img)  # it still moved the score the right way


def test_square_refuses_a_labels_only_oracle() -> None:
    with pytest.raises(ConfigError, match="labels only") as info:
        square(Brightness(labels_only=True), photo(133.0), 1, norm="linf", eps=8, queries=100)
    assert info.value.param == "oracle"


def test_square_is_seeded() -> None:
    img = photo(133.0)
    a = square(Brightness(), img, 1, norm="linf", eps=8, queries=200, seed=3)
    b = square(Brightness(), img, 1, norm="linf", eps=8, queries=200, seed=3)
    assert a.queries == b.queries and np.array_equal(a.adversarial, b.adversarial)  # type: ignore[arg-type]


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_hopskipjump_flips_the_label_within_the_budget(norm: str) -> None:
    img = photo(140.0)
    oracle = Brightness(labels_only=True)
    r = hopskipjump(oracle, img, 1, norm=norm, queries=300, seed=0)
    assert r.success and r.adversarial is not None and r.adversarial.dtype == np.uint8
    assert r.queries == oracle.queries <= 300
    assert Brightness().score(r.adversarial) < 0.5 and r.score == 0.0
    assert r.norm == pytest.approx(perturbation_norm(r.adversarial, img, norm))
    # the walk shrinks the perturbation below its random start's
    start = next(s for s in oracle.seen[1:] if Brightness().score(s) < 0.5)
    assert r.norm < perturbation_norm(start, img, norm)


def test_hopskipjump_with_a_start_and_eps_stops_at_the_first_success() -> None:
    img = photo(122.0)
    start = np.full_like(img, 200)  # any image of the other class
    oracle = Brightness()
    far = hopskipjump(oracle, img, 0, norm="l2", queries=400, seed=0, start=start)
    assert far.success
    eps = far.norm * 1.5
    near = hopskipjump(Brightness(), img, 0, norm="l2", queries=400, seed=0, start=start, eps=eps)
    assert near.success and near.norm <= eps and near.queries < far.queries
    miss = hopskipjump(Brightness(), img, 0, norm="l2", queries=40, seed=0, start=start, eps=0.5)
    assert not miss.success and miss.queries == 40


def test_hopskipjump_without_an_adversarial_start_fails() -> None:
    img = photo(40.0)  # safe; NSFW takes a mean over 180, and noise averages ~127
    r = hopskipjump(Brightness(center=0.7), img, 0, norm="l2", queries=50, seed=0, init_tries=20)
    assert not r.success and r.adversarial is None and r.queries == 21


def test_an_image_already_on_the_other_side_costs_one_query() -> None:
    img = photo(100.0)  # safe, "label" NSFW: a clean error
    for attack in (lambda o: square(o, img, 1, norm="linf", eps=4, queries=50),
                   lambda o: hopskipjump(o, img, 1, norm="l2", queries=50)):
        oracle = Brightness()
        r = attack(oracle)
        assert r.success and r.norm == 0.0 and np.array_equal(r.adversarial, img) and r.queries == 1


def test_a_blocked_oracle_stops_the_attack_and_keeps_the_best() -> None:
    img = photo(140.0)
    r = hopskipjump(Brightness(labels_only=True, block_after=80), img, 1, norm="l2", queries=500, seed=0)
    assert r.blocked_at_query == 80 and r.queries == 80 and r.success
    s = square(Brightness(block_after=7), photo(133.0), 1, norm="linf", eps=8, queries=500, seed=0)
    assert s.blocked_at_query == 7 and s.queries == 7
    none = square(Brightness(block_after=0), photo(133.0), 1, norm="linf", eps=8, queries=500)
    assert none.blocked_at_query == 0 and none.queries == 0 and not none.success and math.isnan(none.score)


def test_bad_arguments_are_config_errors() -> None:
    img = photo(133.0)
    cases = [dict(image=img.astype(np.float32)), dict(image=img[:4]), dict(label=2), dict(norm="l1"),
             dict(queries=0)]
    for bad in cases:
        kwargs = {"image": img, "label": 1, "norm": "linf", "queries": 10, **bad}
        with pytest.raises(ConfigError) as info:
            square(Brightness(), kwargs.pop("image"), kwargs.pop("label"), eps=4, **kwargs)
        assert info.value.param in {"image", "label", "norm", "queries"}
    with pytest.raises(ConfigError, match="start"):
        hopskipjump(Brightness(), img, 1, norm="l2", queries=10, start=img[:10])


def test_result_to_dict() -> None:
    r = BlackBoxResult(None, False, 12, 5, math.nan)
    assert r.to_dict() == {"success": False, "queries": 12, "blocked_at_query": 5, "norm": None, "score": None}


@pytest.mark.parametrize("eps", [0.7, 3.0, 12.5])
def test_the_l2_ball_holds_after_rounding(eps: float) -> None:
    rng = np.random.default_rng(0)
    img = photo(128.0)
    project = _ball(img, "l2", eps)
    for scale in (0.5, 5.0, 40.0):
        cand = np.rint(img + rng.normal(0, scale, (4, *img.shape)))
        out = project(cand)
        assert out.dtype == np.uint8
        norms = [perturbation_norm(o, img, "l2") for o in out]
        assert max(norms) <= eps + 1e-9
        if scale >= 5 * eps:  # a far candidate is pulled back to (nearly) the sphere, not to the centre
            assert min(norms) >= 0.8 * eps
    linf = _ball(img, "linf", 2.5)(np.rint(img + rng.normal(0, 9, img.shape)))
    assert np.abs(linf.astype(int) - img.astype(int)).max() == 2


def test_square_refuses_a_linf_eps_below_one_level() -> None:
    with pytest.raises(ConfigError, match="no change") as info:
        square(Brightness(), photo(131.0), 1, norm="linf", eps=0.5, queries=10)
    assert info.value.param == "eps"


def test_square_l2_window_is_a_unit_signed_pair() -> None:
    import random

    for side in (3, 5, 9, 31):
        w = _pseudo_gaussian(side, random.Random(side))
        assert w.shape == (side, side) and np.sum(w**2) == pytest.approx(1.0)
        assert abs(w.sum()) < 1e-9  # a positive and a negative half
