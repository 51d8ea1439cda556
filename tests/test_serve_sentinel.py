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


# -- the service ------------------------------------------------------------------------------

import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from nsfwlab import Detector  # noqa: E402
from nsfwlab.serve import ServeConfig, create_app  # noqa: E402
from nsfwlab.serve.deps import key_id  # noqa: E402
from test_serve_api import ConstantBackend, jpeg_bytes  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_sentinel as bench  # noqa: E402

KEY = {"X-API-Key": "k1"}


def _app(det: Detector, tmp_path: Path | None = None, **kwargs: object):  # type: ignore[no-untyped-def]
    pytest.importorskip("pdqhash")
    config = ServeConfig(detect_attacks=SentinelConfig(), api_keys=("k1", "k2"),
                         data_dir=tmp_path / "data" if tmp_path else None, **kwargs)  # type: ignore[arg-type]
    return create_app(config, det)


def _flag(client: TestClient, who: str) -> None:
    """Flag ``who`` through the sentinel's own rule (a walk crowding a boundary)."""
    sentinel = client.app.state.service.sentinel  # type: ignore[attr-defined]
    rng = random.Random(9)
    source = _random_hash(rng)
    now = time.monotonic()
    for _ in range(20):
        sentinel.observe(who, _near(rng, source), 0.8 + rng.uniform(-0.05, 0.05), now)
    assert sentinel.is_flagged(who, now)


@pytest.mark.slow
def test_a_score_search_is_blocked_within_100_queries(detector: Detector, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "nsfwlab.serve.audit"), \
            TestClient(_app(detector, tmp_path, on_attack="block"), headers=KEY) as c:
        answered, _ = bench.score_search(bench.client_query(c), bench.photo("astronaut"), max_queries=100)
        assert answered < 100  # refused before the budget was spent
        blocked = c.post("/v1/score", content=jpeg_bytes(np.zeros((64, 64, 3), np.uint8)))
        assert blocked.status_code == 403 and blocked.json()["code"] == "query_attack"
        other = c.post("/v1/score", content=jpeg_bytes(np.zeros((64, 64, 3), np.uint8)), headers={"X-API-Key": "k2"})
        assert other.status_code == 200  # another key is not touched
        m = c.app.state.service.metrics  # type: ignore[attr-defined]
        assert m.sample("nsfwlab_attack_flags_total", {"key": key_id("k1")}) == 1
        assert m.sample("nsfwlab_attack_requests_total", {"outcome": "blocked"}) == 2
        items = c.get("/v1/review/items", params={"status": "all"}).json()["items"]
    assert [i["reason"] for i in items].count("attack") == 1
    assert any(key_id("k1") in r.getMessage() and "query attack" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_a_label_only_boundary_walk_is_flagged_within_100_queries(detector: Detector) -> None:
    with TestClient(_app(detector, on_attack="block", answer="label"), headers=KEY) as c:
        answered, ended = bench.boundary_walk(bench.client_query(c), bench.photo("astronaut"), max_queries=100)
    assert ended == "refused" and answered < 100


@pytest.mark.slow
def test_a_benign_album_with_bursts_is_not_flagged(detector: Detector) -> None:
    with TestClient(_app(detector, on_attack="block"), headers=KEY) as c:
        query = bench.client_query(c)
        assert all(query(data) is not None for data in bench.album(60, seed=1))
        assert c.app.state.service.metrics.sample(  # type: ignore[attr-defined]
            "nsfwlab_attack_flags_total", {"key": key_id("k1")}) is None


def test_block_answers_403_query_attack_for_a_flagged_key_only() -> None:
    with TestClient(_app(Detector(ConstantBackend()), on_attack="block"), headers=KEY) as c:
        _flag(c, f"key:{key_id('k1')}")
        resp = c.post("/v1/score", content=jpeg_bytes(np.zeros((32, 32, 3), np.uint8)))
        assert resp.status_code == 403 and resp.json()["code"] == "query_attack"
        assert "--" not in resp.json()["error"]
        ok = c.post("/v1/score", content=jpeg_bytes(np.zeros((32, 32, 3), np.uint8)), headers={"X-API-Key": "k2"})
        assert ok.status_code == 200


def test_keyless_callers_are_tracked_by_client_address() -> None:
    pytest.importorskip("pdqhash")
    config = ServeConfig(detect_attacks=SentinelConfig(), on_attack="block")  # type: ignore[arg-type]
    with TestClient(create_app(config, Detector(ConstantBackend()))) as c:
        _flag(c, "client:testclient")
        assert c.post("/v1/score", content=jpeg_bytes(np.zeros((32, 32, 3), np.uint8))).status_code == 403


def test_slow_delays_a_flagged_caller_and_log_only_counts() -> None:
    data = jpeg_bytes(np.zeros((32, 32, 3), np.uint8))
    with TestClient(_app(Detector(ConstantBackend()), on_attack="slow", attack_delay_s=0.3), headers=KEY) as c:
        _flag(c, f"key:{key_id('k1')}")
        start = time.perf_counter()
        assert c.post("/v1/score", content=data).status_code == 200
        assert time.perf_counter() - start >= 0.3
        assert c.app.state.service.metrics.sample(  # type: ignore[attr-defined]
            "nsfwlab_attack_requests_total", {"outcome": "slowed"}) == 1
    with TestClient(_app(Detector(ConstantBackend()), on_attack="log"), headers=KEY) as c:
        _flag(c, f"key:{key_id('k1')}")
        assert c.post("/v1/score", content=data).status_code == 200
        assert c.app.state.service.metrics.sample(  # type: ignore[attr-defined]
            "nsfwlab_attack_requests_total", {"outcome": "logged"}) == 1


def test_without_detection_nothing_is_tracked() -> None:
    with TestClient(create_app(ServeConfig(), Detector(ConstantBackend()))) as c:
        assert c.post("/v1/score", content=jpeg_bytes(np.zeros((32, 32, 3), np.uint8))).status_code == 200
        assert c.app.state.service.sentinel is None  # type: ignore[attr-defined]


def test_answer_label_leaves_out_every_score() -> None:
    data = jpeg_bytes(np.zeros((32, 32, 3), np.uint8))
    with TestClient(create_app(ServeConfig(answer="label"), Detector(ConstantBackend(0.5)))) as c:  # type: ignore[arg-type]
        item = c.post("/v1/score", content=data).json()["results"][0]
    assert item["label"] == "review" and item["kind"] == "image"
    assert not {"score", "raw_score", "frame_scores", "segments"} & set(item)
    with TestClient(create_app(ServeConfig(), Detector(ConstantBackend(0.5)))) as c:
        assert c.post("/v1/score", content=data).json()["results"][0]["score"] == pytest.approx(0.5)


@pytest.mark.parametrize("kwargs", [{"on_attack": "shout"}, {"answer": "scores"}, {"attack_delay_s": 31.0},
                                    {"attack_delay_s": -1.0}])
def test_serve_config_refuses_bad_attack_options(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as err:
        ServeConfig(**kwargs)  # type: ignore[arg-type]
    assert err.value.param in kwargs


@pytest.fixture
def served_apps(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    import uvicorn

    apps: list[object] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **k: apps.append(app))
    return apps


def test_cli_passes_the_attack_options(served_apps: list[object]) -> None:
    from typer.testing import CliRunner

    from nsfwlab.cli import app as cli_app

    pytest.importorskip("pdqhash")
    result = CliRunner().invoke(cli_app, ["serve", "--port", "0", "--detect-attacks", "--on-attack", "slow",
                                          "--attack-delay", "1.5", "--answer", "label"])
    assert result.exit_code == 0, result.output
    config = served_apps[0].state.service.config  # type: ignore[attr-defined]
    assert config.detect_attacks == SentinelConfig() and config.on_attack == "slow"
    assert config.attack_delay_s == 1.5 and config.answer == "label"


def test_cli_names_the_flag_of_a_bad_attack_option(served_apps: list[object]) -> None:
    from typer.testing import CliRunner

    from nsfwlab.cli import app as cli_app

    result = CliRunner().invoke(cli_app, ["serve", "--port", "0", "--on-attack", "shout"])
    assert result.exit_code == 2 and "--on-attack" in result.output and "Traceback" not in result.output
    assert not served_apps


def test_a_slowed_request_holds_no_scoring_slot() -> None:
    import threading

    data = jpeg_bytes(np.zeros((32, 32, 3), np.uint8))
    app = _app(Detector(ConstantBackend()), on_attack="slow", attack_delay_s=1.0, max_concurrent_requests=1)
    with TestClient(app, headers=KEY) as c:
        _flag(c, f"key:{key_id('k1')}")
        slowed: list[int] = []
        waiter = threading.Thread(target=lambda: slowed.append(c.post("/v1/score", content=data).status_code))
        waiter.start()
        time.sleep(0.3)  # the flagged request is waiting out its delay now
        other = c.post("/v1/score", content=data, headers={"X-API-Key": "k2"})
        waiter.join()
    assert other.status_code == 200 and slowed == [200]
