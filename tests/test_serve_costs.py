"""What an upload may cost the service: an animation too costly to decode is refused from its
headers, and animations and videos are decoded apart from still images, so a still's answer never
waits behind them, and only a few of them are in hand at once."""

from __future__ import annotations

import asyncio
import threading
import time
import warnings

import httpx
import numpy as np
import pytest

from nsfwlab import Detector
from nsfwlab.errors import ConfigError
from nsfwlab.serve import ServeConfig, create_app
from synthetic import GREY, RED, RedFraction, animation
from test_frames import _apng_canvas
from test_serve_api import jpeg_bytes

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class RedBlocks(RedFraction):
    """Scores by red share; a model call that sees a red frame waits for ``release``."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        out = super().predict(batch)
        if out[:, 1].max() > 0.5:
            self.entered.set()
            assert self.release.wait(30)
        return out


async def _wait_for(cond, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def test_a_still_is_answered_while_an_animation_holds_the_media_pool() -> None:
    backend = RedBlocks()
    config = ServeConfig(decode_workers=1, media_workers=1, max_concurrent_media=1)
    app = create_app(config, Detector(backend))
    moving, still = animation([GREY, RED, GREY]), jpeg_bytes(np.full((32, 32, 3), 128, np.uint8))

    async def main() -> None:
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                first = asyncio.create_task(c.post("/v1/score", content=moving))
                await _wait_for(backend.entered.is_set)  # the animation is being scored, and blocks
                # With one decode thread shared by both, this still would wait for the animation.
                answer = await asyncio.wait_for(c.post("/v1/score", content=still), 10)
                assert answer.status_code == 200 and answer.json()["results"][0]["kind"] == "image"
                refused = await asyncio.wait_for(c.post("/v1/score", content=moving), 10)  # the media slot is taken
                assert refused.status_code == 429 and refused.json()["code"] == "overloaded"
                assert "animations and videos" in refused.json()["error"] and refused.headers["retry-after"] == "1"
                assert not backend.release.is_set()
                backend.release.set()
                done = await first
                assert done.status_code == 200, done.text
                result = done.json()["results"][0]
                assert result["kind"] == "animation" and result["frames"] == 3 and result["label"] == "nsfw"
                assert app.state.service.media_admission.active == 0

    asyncio.run(main())


def test_a_costly_animation_is_refused_413_from_its_headers() -> None:
    data = _apng_canvas(9000, 40)
    with TestClient(create_app(ServeConfig(), Detector(RedFraction()))) as client:
        start = time.perf_counter()
        resp = client.post("/v1/score", content=data)
        elapsed = time.perf_counter() - start
        assert client.post("/v1/score", content=animation([GREY, RED])).json()["results"][0]["label"] == "nsfw"
    assert resp.status_code == 413 and resp.json()["results"][0]["code"] == "too_large", resp.text
    assert "max_animation_pixels" in resp.json()["results"][0]["error"]
    assert elapsed < 5.0


@pytest.mark.parametrize("field", ["media_workers", "max_concurrent_media", "max_json_bytes"])
def test_media_and_json_limits_are_positive(field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        ServeConfig(**{field: 0})
