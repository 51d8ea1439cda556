"""ServiceOracle against a real ``nsfwlab serve`` app on a free port (uvicorn in a thread), whose
model is a made-up backend scoring brightness through the real pipeline: scores, labels only,
429 + Retry-After, errors, and a query attack blocked by the sentinel mid-attack."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("art")

from nsfwlab import Detector
from nsfwlab.errors import ConfigError
from nsfwlab.lab.blackbox import hopskipjump, square
from nsfwlab.lab.remote import ServiceBlocked, ServiceError, ServiceOracle
from nsfwlab.serve import ServeConfig, create_app
from nsfwlab.serve.sentinel import SentinelConfig

KEY = "test-key"


class BrightnessBackend:
    """NSFW probability rises with the mean of the preprocessed (mean-subtracted BGR) pixels."""

    name = "brightness"
    device = "cpu"
    model_version = "brightness-test"

    def predict(self, batch: np.ndarray) -> np.ndarray:
        m = batch.reshape(len(batch), -1).mean(axis=1).astype(np.float64)
        p = 1.0 / (1.0 + np.exp(-m / 6.0))
        return np.stack([1.0 - p, p], axis=1).astype(np.float32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def live(config: ServeConfig) -> Iterator[str]:
    """The app behind uvicorn on 127.0.0.1 in a thread; yields its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(config, Detector(BrightnessBackend())), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if server.started:
                break
            assert thread.is_alive(), "the server thread died"
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(30)


def image(level: int, seed: int = 0, side: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.clip(rng.normal(level, 30.0, (side, side, 3)), 0, 255)
    yy = np.linspace(-20, 20, side)[:, None, None]
    return np.clip(base + yy, 0, 255).astype(np.uint8)  # a gradient: PDQ finds features


def test_scores_labels_and_counting() -> None:
    imgs = np.stack([image(60), image(200)])
    with live(ServeConfig(api_keys=(KEY,))) as url:
        with ServiceOracle(url, KEY) as oracle:
            assert not oracle.labels_only and oracle.threshold == 0.5
            got = oracle.scores(imgs)
            assert got.shape == (2,) and got[0] < 0.2 < 0.8 < got[1] and oracle.queries == 2
            assert oracle.model_info["safe_below"] == 0.2
        with pytest.raises(ConfigError) as info:
            ServiceOracle(url, "wrong-key")
        assert info.value.param == "api_key"
        with pytest.raises(ConfigError, match="no model 'nope'"):
            ServiceOracle(url, KEY, model="nope")
    with live(ServeConfig(answer="label")) as url:  # type: ignore[arg-type]
        oracle = ServiceOracle(url, None)
        assert oracle.labels_only and oracle.threshold == 0.2  # the boundary its labels reveal
        assert oracle.scores(imgs).tolist() == [0.0, 1.0]
        with pytest.raises(ConfigError, match="labels only"):
            square(oracle, imgs[0], 0, norm="linf", eps=8, queries=10)


def test_unreachable_service_is_one_line() -> None:
    with pytest.raises(ServiceError) as info:
        ServiceOracle(f"http://127.0.0.1:{free_port()}", KEY, timeout_s=2)
    assert "\n" not in str(info.value) and "did not answer" in str(info.value)


def test_429_retry_after_is_honoured_within_a_bounded_wait() -> None:
    imgs = np.stack([image(100 + i) for i in range(3)])
    with live(ServeConfig(rate_limit="1/s")) as url:  # one request a second, no burst: Retry-After 1
        impatient = ServiceOracle(url, None, max_wait_s=0.0)  # its GET /v1/models took the token
        oracle = ServiceOracle(url, None)
        t0 = time.monotonic()
        got = oracle.scores(imgs)
        assert len(got) == 3 and oracle.queries == 3
        assert oracle.rate_limited >= 3 and oracle.waited_s >= 3.0 and time.monotonic() - t0 >= 2.0
        with pytest.raises(ServiceError, match="429") as info:
            impatient.scores(imgs)
        assert "\n" not in str(info.value) and impatient.queries == 0


def test_a_blocked_query_attack_records_where_it_was_refused() -> None:
    config = ServeConfig(detect_attacks=SentinelConfig(), on_attack="block", answer="label",  # type: ignore[arg-type]
                         api_keys=(KEY, "other"))
    img = image(80)
    with live(config) as url:
        oracle = ServiceOracle(url, KEY)
        start = np.full_like(img, 170)  # the attacker's image of the other class
        r = hopskipjump(oracle, img, 0, norm="l2", queries=400, seed=0, start=start)
        assert r.blocked_at_query is not None and 16 <= r.blocked_at_query < 400
        assert r.queries == r.blocked_at_query == oracle.blocked_at_query == oracle.queries
        assert r.success  # it keeps the best adversarial it had (the start at least)
        with pytest.raises(ServiceBlocked) as info:
            oracle.scores(img[None])
        assert info.value.at_query == r.queries and info.value.code == "query_attack"
        # another key is not blocked
        assert len(ServiceOracle(url, "other").scores(img[None])) == 1


def test_client_passes_through() -> None:
    with live(ServeConfig()) as url, httpx.Client(base_url=url) as client:
        oracle = ServiceOracle("http://ignored", None, client=client)
        assert oracle.scores(image(90)[None]).shape == (1,)


@pytest.mark.parametrize("body", [b"x" * (2 << 20), b"[" * 100_000 + b"]" * 100_000, b'{"a": NaN}'])
def test_a_hostile_answer_is_one_line_not_held_or_parsed(body: bytes) -> None:
    from nsfwlab.lab.remote import ServiceError

    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body))
    with httpx.Client(base_url="http://svc", transport=transport) as client, pytest.raises(ServiceError) as err:
        ServiceOracle("http://svc", None, client=client)
    assert "\n" not in str(err.value) and len(str(err.value)) < 300
    if len(body) > 1 << 20:
        assert "bytes" in str(err.value)  # refused while reading, not read whole and then found not JSON
