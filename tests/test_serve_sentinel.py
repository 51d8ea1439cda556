"""The query-attack sentinel: the pure rule, and the service's handling of a flagged caller."""

from __future__ import annotations

import random

import pytest

from nsfwlab.errors import ConfigError
from nsfwlab.serve.sentinel import Sentinel, SentinelConfig, spearman


def _flip(hex_hash: str, bits: list[int]) -> str:
    value = int(hex_hash, 16)
    for b in bits:
        value ^= 1 << b
    return f"{value:064x}"


def _random_hash(rng: random.Random) -> str:
    return f"{rng.getrandbits(256):064x}"


def _near(rng: random.Random, source: str, k: int = 6) -> str:
    return _flip(source, rng.sample(range(256), k))


def test_score_search_toward_a_boundary_is_flagged() -> None:
    rng = random.Random(0)
    source = _random_hash(rng)
    s = Sentinel()
    flagged_at = None
    for i in range(60):  # scores climb from 0.02 toward the 0.2 boundary, with noise
        v = s.observe("k", _near(rng, source), 0.02 + 0.003 * i + rng.uniform(-0.004, 0.004), now=float(i))
        if v.flagged and flagged_at is None:
            flagged_at = i + 1
            assert v.new and v.trend >= 0.5
    assert flagged_at is not None and flagged_at <= 20
    assert s.is_flagged("k", 60.0) and not s.is_flagged("other", 60.0)


def test_boundary_walk_crowding_a_boundary_is_flagged() -> None:
    rng = random.Random(1)
    source = _random_hash(rng)
    s = Sentinel()
    verdicts = [s.observe("k", _near(rng, source), 0.8 + rng.uniform(-0.05, 0.05), now=float(i)) for i in range(20)]
    assert verdicts[-1].flagged and verdicts[-1].crowded >= 0.5


def test_resaves_with_one_score_are_not_flagged() -> None:
    rng = random.Random(2)
    source = _random_hash(rng)
    s = Sentinel()
    for i in range(64):  # many copies of one photo, scores equal to within 0.005
        assert not s.observe("k", _near(rng, source), 0.19 + rng.uniform(0, 0.005), now=float(i)).flagged


def test_an_album_of_distinct_images_with_bursts_is_not_flagged() -> None:
    rng = random.Random(3)
    s = Sentinel()
    t = 0.0
    for _ in range(100):
        source, base = _random_hash(rng), rng.random()
        for _ in range(rng.randint(1, 8)):
            t += 0.5
            v = s.observe("k", _near(rng, source), min(1.0, max(0.0, base + rng.uniform(-0.05, 0.05))), now=t)
            assert not v.flagged


def test_near_duplicates_spread_over_more_than_window_s_are_not_a_cluster() -> None:
    rng = random.Random(4)
    source = _random_hash(rng)
    s = Sentinel(SentinelConfig(window_s=10.0))
    for i in range(40):
        assert not s.observe("k", _near(rng, source), 0.8 + rng.uniform(-0.05, 0.05), now=i * 11.0).flagged


def test_flag_expires_after_flag_s() -> None:
    rng = random.Random(5)
    source = _random_hash(rng)
    s = Sentinel(SentinelConfig(flag_s=100.0))
    for i in range(20):
        s.observe("k", _near(rng, source), 0.8 + rng.uniform(-0.05, 0.05), now=float(i))
    assert s.is_flagged("k", 50.0) and not s.is_flagged("k", 200.0)


def test_memory_is_bounded_in_keys_and_window() -> None:
    s = Sentinel(SentinelConfig(max_keys=3, window=16, min_cluster=8))
    rng = random.Random(6)
    for i in range(10):
        for _ in range(40):
            s.observe(f"k{i}", _random_hash(rng), 0.5, now=float(i))
    assert len(s) == 3
    assert all(len(t.uploads) <= 16 for t in s._tracks.values())
    assert list(s._tracks) == ["k7", "k8", "k9"]


def test_upload_without_hash_is_not_recorded() -> None:
    s = Sentinel()
    assert not s.observe("k", None, 0.5, now=0.0).flagged
    assert len(s._tracks["k"].uploads) == 0


@pytest.mark.parametrize("kwargs", [{"window": 0}, {"min_cluster": 100, "window": 50}, {"near_distance": 300},
                                    {"margin": 2.0}, {"window_s": 0}, {"boundaries": (1.5,)}])
def test_config_refuses_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        SentinelConfig(**kwargs)  # type: ignore[arg-type]


def test_spearman() -> None:
    assert spearman([0, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(1.0)
    assert spearman([0, 1, 2, 3], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([0, 1, 2], [5, 5, 5]) == 0.0
