"""A server of several models: ``?model=ID`` routes a request, the first model is the default,
each model answers with its own id, bands and (a multi-class model) classes, and each has its own
micro-batcher; /readyz waits for all of them and /v1/models lists them."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from nsfwlab import Detector, zoo
from nsfwlab.config import Thresholds
from nsfwlab.errors import ConfigError, ModelError
from nsfwlab.serve import ServeConfig, create_app
from nsfwlab.serve.config import AnswerMode
from nsfwlab.serve.service import Service

NSFWJS = "nsfwjs-mobilenetv2"


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def jpg(photos: dict[str, np.ndarray]) -> bytes:
    return _jpeg(photos["coffee"])


@pytest.fixture(scope="module")
def strict(detector: Detector) -> Detector:
    """open_nsfw's weights with bands that call every score nsfw: a second, open_nsfw-compatible model."""
    return Detector(detector.backend, thresholds=Thresholds(safe_below=0.0, nsfw_above=0.0))


@pytest.fixture(scope="module")
def two(detector: Detector, strict: Detector) -> Iterator[TestClient]:
    with TestClient(create_app(ServeConfig(), {"open_nsfw": detector, "strict": strict})) as c:
        yield c


def _score(client: TestClient, data: bytes, **params: Any) -> Any:
    return client.post("/v1/score", content=data, params=params, headers={"content-type": "image/jpeg"})


def test_the_first_model_is_the_default_and_model_picks_another(two: TestClient, detector: Detector,
                                                                 jpg: bytes) -> None:
    expected = detector.classify(jpg)
    default = _score(two, jpg)
    assert default.status_code == 200, default.text
    item = default.json()["results"][0]
    assert item["model"] == "open_nsfw" and item["label"] == expected.label.value
    assert item["score"] == pytest.approx(expected.score, abs=1e-6)
    assert "classes" not in item
    assert default.json()["model"]["id"] == "open_nsfw" and default.json()["model"]["card"] == "open_nsfw"

    picked = _score(two, jpg, model="strict")
    assert picked.status_code == 200, picked.text
    item = picked.json()["results"][0]
    assert item["model"] == "strict" and item["label"] == "nsfw"  # its own bands, the same weights
    assert item["score"] == pytest.approx(expected.score, abs=1e-6)
    assert picked.json()["model"]["id"] == "strict" and picked.json()["model"]["nsfw_above"] == 0.0
    assert _score(two, jpg, model="open_nsfw").json()["results"][0]["model"] == "open_nsfw"


def test_each_model_has_its_own_batcher(two: TestClient, jpg: bytes) -> None:
    svc: Service = two.app.state.service  # type: ignore[attr-defined]
    first, second = svc.models
    assert first.batcher is not second.batcher
    before = (first.batcher.stats.images, second.batcher.stats.images)
    assert _score(two, jpg, model="strict").status_code == 200
    assert (first.batcher.stats.images, second.batcher.stats.images) == (before[0], before[1] + 1)


def test_an_unknown_model_is_404_with_its_code(two: TestClient, jpg: bytes) -> None:
    resp = _score(two, jpg, model="nope")
    assert resp.status_code == 404
    body = resp.json()
    assert body["code"] == "unknown_model" and "'nope'" in body["error"] and "open_nsfw, strict" in body["error"]


def test_models_route_and_readyz_list_every_model(two: TestClient) -> None:
    listed = two.get("/v1/models").json()["models"]
    assert [(m["id"], m["default"], m["ready"], m["card"]) for m in listed] == [
        ("open_nsfw", True, True, "open_nsfw"), ("strict", False, True, "open_nsfw")]
    ready = two.get("/readyz").json()
    assert ready["status"] == "ready" and [m["id"] for m in ready["models"]] == ["open_nsfw", "strict"]
    assert "id" not in ready["model"]  # the default model's description, as with one model


def test_a_single_open_nsfw_server_answers_as_before(detector: Detector, jpg: bytes) -> None:
    with TestClient(create_app(ServeConfig(), detector)) as c:
        item = _score(c, jpg).json()["results"][0]
        assert "model" not in item and "classes" not in item  # open_nsfw's rows stay as they were
        assert "id" not in c.get("/readyz").json()["model"] and "models" not in c.get("/readyz").json()
        assert _score(c, jpg, model="open_nsfw").status_code == 200  # its card id names it
        assert _score(c, jpg, model="other").json()["code"] == "unknown_model"
        assert c.get("/v1/models").json()["models"][0]["id"] == "open_nsfw"


def test_readyz_waits_for_every_model_and_the_default_scores_meanwhile(detector: Detector, strict: Detector,
                                                                       jpg: bytes) -> None:
    gate = threading.Event()

    def slow() -> Detector:
        assert gate.wait(30)
        return Detector(strict.backend, thresholds=strict.thresholds)

    with TestClient(create_app(ServeConfig(), {"open_nsfw": detector, "strict": slow})) as c:
        assert c.get("/readyz").status_code == 503
        assert _score(c, jpg).status_code == 200
        loading = _score(c, jpg, model="strict")
        assert loading.status_code == 503 and "model strict is still loading" in loading.json()["error"]
        assert [m["ready"] for m in c.get("/v1/models").json()["models"]] == [True, False]
        gate.set()
        deadline = time.monotonic() + 20
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert _score(c, jpg, model="strict").json()["results"][0]["label"] == "nsfw"


def test_a_model_that_fails_to_load_is_reported(detector: Detector, jpg: bytes) -> None:
    def broken() -> Detector:
        raise ModelError("weights file is missing")

    with TestClient(create_app(ServeConfig(), {"open_nsfw": detector, "b": broken})) as c:
        deadline = time.monotonic() + 10
        while "failed" not in c.get("/readyz").json().get("error", ""):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert "model b failed to load: weights file is missing" in c.get("/readyz").json()["error"]
        assert _score(c, jpg, model="b").status_code == 503
        assert c.get("/v1/models").json()["models"][1]["error"] == "weights file is missing"
        assert _score(c, jpg).status_code == 200


@pytest.mark.parametrize("models", [{}, {" a": None}, {"": None}])
def test_model_ids_are_checked(models: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        create_app(ServeConfig(), models)


def test_serve_refuses_a_model_named_twice() -> None:
    from typer.testing import CliRunner

    from nsfwlab.cli import app

    res = CliRunner().invoke(app, ["serve", "--model", "open_nsfw", "--model", "open_nsfw"])
    assert res.exit_code == 2 and "named twice" in res.output


# -- a multi-class zoo model ----------------------------------------------------------------------
def _need(model_id: str = NSFWJS) -> None:
    if not zoo.installed(model_id):
        pytest.skip(f"{model_id} weights are not in NSFWLAB_HOME: run setup.sh or `nsfwlab models fetch {model_id}`")


@pytest.fixture(scope="module")
def nsfwjs() -> Detector:
    _need()
    return Detector(model=NSFWJS)


def _animation() -> bytes:
    frames = [Image.new("RGB", (64, 48), color) for color in ((200, 30, 30), (30, 200, 30), (30, 30, 200))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=200, loop=0)
    return buf.getvalue()


def test_a_zoo_model_answers_with_its_classes(detector: Detector, nsfwjs: Detector, jpg: bytes) -> None:
    expected = nsfwjs.classify(jpg)
    assert expected.classes is not None
    with TestClient(create_app(ServeConfig(), {"open_nsfw": detector, NSFWJS: nsfwjs})) as c:
        resp = _score(c, jpg, model=NSFWJS)
        assert resp.status_code == 200, resp.text
        item = resp.json()["results"][0]
        assert item["model"] == NSFWJS and item["label"] == expected.label.value
        assert item["score"] == pytest.approx(expected.score, abs=1e-5)
        assert list(item["classes"]) == list(expected.classes)
        np.testing.assert_allclose(list(item["classes"].values()), list(expected.classes.values()), atol=1e-5)
        assert resp.json()["model"]["card"] == NSFWJS
        assert "classes" not in _score(c, jpg).json()["results"][0]
        gif = _animation()
        frames = c.post("/v1/score", content=gif, params={"model": NSFWJS}, headers={"content-type": "image/gif"})
        assert frames.status_code == 200, frames.text
        item = frames.json()["results"][0]
        assert item["kind"] == "animation" and item["model"] == NSFWJS
        assert item["score"] == pytest.approx(nsfwjs.score_frames(gif).score, abs=1e-5)
        listed = c.get("/v1/models").json()["models"]
        assert [(m["id"], m["card"]) for m in listed] == [("open_nsfw", "open_nsfw"), (NSFWJS, NSFWJS)]


def test_a_single_zoo_model_server_and_labels_only_answers(nsfwjs: Detector, jpg: bytes) -> None:
    with TestClient(create_app(ServeConfig(answer=AnswerMode.LABEL), nsfwjs)) as c:
        item = _score(c, jpg).json()["results"][0]
        assert item["model"] == NSFWJS and "label" in item
        assert "classes" not in item and "score" not in item  # probabilities are scores too
    with TestClient(create_app(ServeConfig(), nsfwjs)) as c:
        item = _score(c, jpg, model=NSFWJS).json()["results"][0]
        assert item["model"] == NSFWJS and set(item["classes"]) == set(nsfwjs.zoo.classes)  # type: ignore[union-attr]


# -- the serve command ----------------------------------------------------------------------------
def test_serve_command_serves_its_models_with_the_bands_on_the_default(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, torch_model: Any, detector: Detector, jpg: bytes) -> None:
    """`serve --model A --model B`: A is the default and takes --safe-below/--nsfw-above; B keeps its
    own bands (open_nsfw's, here a checkpoint of the same weights)."""
    import uvicorn
    from typer.testing import CliRunner

    from nsfwlab.checkpoint import save_checkpoint
    from nsfwlab.cli import app

    checkpoint = str(save_checkpoint(tmp_path / "copy.pt", torch_model))
    served: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda asgi, **kwargs: served.setdefault("app", asgi))
    res = CliRunner().invoke(app, ["serve", "--port", "0", "--model", "open_nsfw", "--model", checkpoint,
                                   "--safe-below", "0.0", "--nsfw-above", "0.0"])
    assert res.exit_code == 0, res.output
    score = detector.classify(jpg).score
    with TestClient(served["app"], base_url="http://127.0.0.1") as c:
        deadline = time.monotonic() + 30
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, c.get("/readyz").text
            time.sleep(0.05)
        default = _score(c, jpg).json()["results"][0]
        assert default["model"] == "open_nsfw" and default["label"] == "nsfw"
        other = _score(c, jpg, model=checkpoint).json()
        assert other["results"][0]["model"] == checkpoint and other["model"]["card"] == "open_nsfw"
        assert other["model"]["nsfw_above"] == 0.8 and other["results"][0]["score"] == pytest.approx(score, abs=1e-4)
