"""Videos and animations through the HTTP service, a calibrated server, and the serve CLI's options
for both and for the hash bank.

Clips and animations are generated at test time (tests/test_frames.py's helpers); the fake backend
RedFraction scores a frame by its share of red pixels, so a red frame is the "explicit" stand-in."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nsfwlab import DecodeLimits, Detector, Thresholds
from nsfwlab.calibration import Calibration
from nsfwlab.frames import FrameOptions
from nsfwlab.serve import ServeConfig, create_app
from synthetic import GREY, RED, RedFraction, animation, clip
from test_serve_api import ConstantBackend, jpeg_bytes

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def red_clip() -> bytes:
    return clip(seconds=6.0, red=(2.0, 4.0))


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    config = ServeConfig(max_body_bytes=2_000_000, limits=DecodeLimits(max_bytes=1_000_000),
                         frames=FrameOptions(max_duration_s=60.0))
    with TestClient(create_app(config, Detector(RedFraction()))) as c:
        yield c


def _one(resp) -> dict:  # type: ignore[no-untyped-def]
    (item,) = resp.json()["results"]
    return item


def test_a_clip_with_a_red_middle_is_flagged_with_its_segment(client: TestClient, red_clip: bytes) -> None:
    resp = client.post("/v1/score?filename=clip.mp4&per_frame=1", content=red_clip)
    assert resp.status_code == 200, resp.text
    item = _one(resp)
    assert item["kind"] == "video" and item["label"] == "nsfw" and item["score"] >= 0.8
    assert item["frames"] == 12 and len(item["frame_scores"]) == 12  # 6 s at 2 fps
    (start, end, peak), = item["segments"]
    assert abs(start - 2.0) <= 0.5 and abs(end - 4.0) <= 0.5 and peak >= 0.8
    assert "frame_scores" not in _one(client.post("/v1/score", content=red_clip))  # only on request


def test_an_animation_is_scored_frame_by_frame_and_stills_keep_their_path(client: TestClient) -> None:
    gif = animation([GREY, (120, 120, 120), RED, (110, 110, 110), (100, 100, 100)])
    still = jpeg_bytes(np.full((48, 64, 3), RED, np.uint8))
    files = [("file", ("a.gif", gif, "image/gif")), ("file", ("red.jpg", still, "image/jpeg"))]
    resp = client.post("/v1/score", files=files)
    assert resp.status_code == 200, resp.text
    anim, image = resp.json()["results"]
    assert anim["kind"] == "animation" and anim["frames"] == 5 and anim["label"] == "nsfw"
    assert [seg[:2] for seg in anim["segments"]] == [pytest.approx([0.4, 0.6])]
    assert image["kind"] == "image" and "frames" not in image and image["label"] == "nsfw"
    assert client.app.state.service.batcher.stats.images >= 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(("make", "status", "code"), [
    (lambda c: b"#EXTM3U\n#EXT-X-VERSION:3\n#EXTINF:10,\nhttp://example.invalid/a.ts\n", 415, "unsupported_format"),
    (lambda c: b"ffconcat version 1.0\nfile '/etc/passwd'\n", 415, "unsupported_format"),
    (lambda c: b"just some text, not a video", 415, "unsupported_format"),
    (lambda c: c[: len(c) // 2], 422, "truncated"),  # its top-level boxes overrun the file
    (lambda c: b"\x00\x00\x00\x18ftypisom" + b"\x00" * 200, 422, "corrupt"),
    (lambda c: c + bytes(1_000_000), 413, "too_large"),  # over the server's byte cap
    (lambda c: clip(seconds=70.0, fps=1, red=(0, 0)), 413, "too_long"),
])
def test_bad_videos_are_one_line_client_errors(client: TestClient, red_clip: bytes, make, status: int,  # type: ignore[no-untyped-def]
                                               code: str) -> None:
    resp = client.post("/v1/score", content=make(red_clip))
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["results"][0]["code"] == code and "\n" not in body["results"][0]["error"]
    assert client.get("/healthz").status_code == 200


def test_a_server_without_videos_refuses_them(red_clip: bytes) -> None:
    with TestClient(create_app(ServeConfig(formats=("JPEG", "PNG")), Detector(RedFraction()))) as c:
        resp = c.post("/v1/score", content=red_clip)
    assert resp.status_code == 415 and "MP4 is not accepted" in _one(resp)["error"]


def test_a_review_band_video_is_queued_with_its_reddest_frame_blurred_on_the_page(tmp_path: Path,
                                                                                  red_clip: bytes) -> None:
    det = Detector(RedFraction(), thresholds=Thresholds(safe_below=0.2, nsfw_above=1.0))  # red is "review"
    with TestClient(create_app(ServeConfig(data_dir=tmp_path / "d", bank=tmp_path / "bank.sqlite3"), det)) as c:
        item = _one(c.post("/v1/score?filename=clip.mp4", content=red_clip))
        assert item["label"] == "review" and item["kind"] == "video"
        (queued,) = c.get("/v1/review/items").json()["items"]
        assert queued["sha256"] == item["review_id"] and queued["ext"] == "mp4"
        thumb = np.asarray(Image.open(io.BytesIO(c.get(f"/v1/review/items/{item['review_id']}/thumbnail").content)))
        assert thumb[..., 0].mean() > 180 and thumb[..., 1].mean() < 80  # the red frame, not the grey first
        labelled = c.post(f"/v1/review/items/{item['review_id']}/label", json={"label": "nsfw"}).json()
        assert labelled["status"] == "nsfw" and labelled["bank"]["banked"] is False  # a frame is not the video
        assert "not banked" in labelled["bank"]["skipped"]
    assert "blur(" in (Path(__file__).parents[1] / "src/nsfwlab/serve/static/review.html").read_text()


def test_a_calibrated_server_labels_and_queues_by_the_calibrated_score(tmp_path: Path) -> None:
    backend = ConstantBackend(0.15)  # raw 0.15: 'safe' by the raw score
    cal = Calibration("isotonic", backend.model_version, "yahoo-exact-v1", {"x": [0.0, 0.5, 1.0], "y": [0.0, 0.9, 1.0]})
    det = Detector(backend, calibration=cal)
    image = jpeg_bytes(np.full((32, 32, 3), 90, np.uint8))
    with TestClient(create_app(ServeConfig(data_dir=tmp_path / "d"), det)) as c:
        item = _one(c.post("/v1/score", content=image))
        assert item["raw_score"] == pytest.approx(0.15, abs=1e-6)
        assert item["score"] == pytest.approx(0.27, abs=1e-6) and item["label"] == "review"
        (queued,) = c.get("/v1/review/items").json()["items"]
        assert queued["score"] == pytest.approx(0.27, abs=1e-6) and queued["model_label"] == "review"
        assert c.get("/readyz").json()["model"]["calibration"] == "isotonic"
    with TestClient(create_app(ServeConfig(), Detector(ConstantBackend(0.15)))) as c:
        plain = _one(c.post("/v1/score", content=image))
    assert plain["label"] == "safe" and "raw_score" not in plain



@pytest.fixture
def served_apps(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The apps `nsfwlab serve` would run (uvicorn.run replaced)."""
    import uvicorn

    apps: list[object] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **k: apps.append(app))
    return apps


def _serve(*args: str):  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from nsfwlab.cli import app as cli_app

    return CliRunner().invoke(cli_app, ["serve", "--port", "0", *args])


def test_serve_cli_refuses_a_bad_calibration_and_bad_frame_options(tmp_path: Path, served_apps: list[object]) -> None:
    bad = tmp_path / "calibration.json"
    bad.write_text("{not json")
    for args, message in ((["--calibration", str(bad)], "calibration"), (["--aggregate", "median"], "aggregate"),
                          (["--bank", str(tmp_path), "--no-bank"], "contradict")):
        result = _serve(*args)
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not served_apps


def test_serve_cli_banks_in_the_data_dir_by_default(tmp_path: Path, served_apps: list[object]) -> None:
    pytest.importorskip("pdqhash")
    data, other = tmp_path / "data", tmp_path / "b.sqlite3"
    for args, expected in (([], data / "bank.sqlite3"), (["--bank", str(other)], other), (["--no-bank"], None)):
        result = _serve("--data-dir", str(data), "--match-distance", "20", "--fps", "1", "--aggregate", "p90", *args)
        assert result.exit_code == 0, result.output
        config = served_apps.pop().state.service.config  # type: ignore[attr-defined]
        assert config.bank == expected and config.match_distance == 20
        assert (config.frames.fps, config.frames.aggregate, config.frames.max_frames) == (1.0, "p90", 300)
