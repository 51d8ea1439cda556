"""In-process tests of the HTTP service: every status it answers with, the service staying up after
each, metrics, auth, overload and readiness, and the review flow through to `review export`."""

from __future__ import annotations

import asyncio
import io
import struct
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from nsfwlab import DecodeLimits, Detector, ModelError, Thresholds
from nsfwlab.serve import ReviewStore, ServeConfig, create_app

with warnings.catch_warnings():  # starlette's TestClient warns about its httpx transport at import
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# -- inputs ------------------------------------------------------------------------------------------
def jpeg_bytes(arr: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def pixel_bomb_png(width: int = 60_000, height: int = 60_000) -> bytes:
    """A 100-byte PNG whose header claims width x height pixels (never decoded by the server)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def corrupt_png() -> bytes:
    """A well-formed PNG header and chunk structure whose IDAT is not zlib data."""
    ihdr = struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"not zlib data" * 8)
            + png_chunk(b"IEND", b""))


def gif_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(buf, format="GIF")
    return buf.getvalue()


@pytest.fixture(scope="module")
def jpg(photos: dict[str, np.ndarray]) -> bytes:
    return jpeg_bytes(photos["astronaut"])


@pytest.fixture(scope="module")
def jpg2(photos: dict[str, np.ndarray]) -> bytes:
    return jpeg_bytes(photos["coffee"])


@pytest.fixture(scope="module")
def wide_detector(detector: Detector) -> Detector:
    """The shared model with a review band covering every score, so real photos reach /review."""
    return Detector(detector.backend, thresholds=Thresholds(safe_below=0.0, nsfw_above=1.0))


@pytest.fixture(scope="module")
def client(detector: Detector) -> Iterator[TestClient]:
    config = ServeConfig(max_body_bytes=1_000_000, max_files=3, formats=("JPEG", "PNG"),
                         limits=DecodeLimits(max_bytes=600_000, max_pixels=20_000_000))
    with TestClient(create_app(config, detector)) as c:
        yield c


def _one(resp: httpx.Response) -> dict:
    body = resp.json()
    assert len(body["results"]) == 1
    return body["results"][0]


def _still_serving(client: TestClient, jpg: bytes) -> None:
    ok = client.post("/v1/score", content=jpg, headers={"content-type": "image/jpeg"})
    assert ok.status_code == 200, ok.text
    assert 0.0 <= _one(ok)["score"] <= 1.0


# -- scoring -----------------------------------------------------------------------------------------
def test_multipart_scores_match_the_core(client: TestClient, detector: Detector, jpg: bytes, jpg2: bytes) -> None:
    files = [("file", ("a.jpg", jpg, "image/jpeg")), ("file", ("b.jpg", jpg2, "image/jpeg"))]
    resp = client.post("/v1/score", files=files)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert [r["filename"] for r in body["results"]] == ["a.jpg", "b.jpg"]
    for r, data in zip(body["results"], (jpg, jpg2), strict=True):
        assert r["score"] == pytest.approx(detector.nsfw_score(data), abs=1e-6)
        assert r["label"] == detector.label(r["score"]).value
        assert "error" not in r
    assert body["model"]["model_version"] == detector.model_version
    assert body["model"]["preprocess_version"] == "yahoo-exact-v1"


def test_raw_body_with_filename(client: TestClient, detector: Detector, jpg: bytes) -> None:
    resp = client.post("/v1/score?filename=me.jpg", content=jpg, headers={"content-type": "application/octet-stream"})
    assert resp.status_code == 200
    r = _one(resp)
    assert r["filename"] == "me.jpg"
    assert r["score"] == pytest.approx(detector.nsfw_score(jpg), abs=1e-6)


def test_mixed_batch_reports_each_bad_file_and_scores_the_rest(client: TestClient, jpg: bytes) -> None:
    files = [("file", ("good.jpg", jpg, "image/jpeg")), ("file", ("notes.txt", b"hello world", "text/plain")),
             ("file", ("cut.jpg", jpg[: len(jpg) // 3], "image/jpeg"))]
    resp = client.post("/v1/score", files=files)
    assert resp.status_code == 200
    good, text, cut = resp.json()["results"]
    assert 0 <= good["score"] <= 1
    assert text == {"filename": "notes.txt", "error": text["error"], "code": "unsupported_format"}
    assert cut["code"] == "truncated" and "score" not in cut


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        (lambda jpg: b"just some text, not an image", 415, "unsupported_format"),
        (lambda jpg: b"%PDF-1.7\n1 0 obj\n", 415, "unsupported_format"),
        (lambda jpg: gif_bytes(), 415, "unsupported_format"),  # allowed by the core, not by this server
        (lambda jpg: jpg[: len(jpg) // 2], 422, "truncated"),
        (lambda jpg: corrupt_png(), 422, "corrupt"),
        (lambda jpg: pixel_bomb_png(), 413, "too_large"),
        (lambda jpg: b"\xff\xd8\xff" + b"\x00" * 700_000, 413, "too_large"),  # over the per-image byte cap
    ],
    ids=["text", "pdf", "gif-disallowed", "truncated", "corrupt", "pixel-bomb", "image-over-byte-cap"],
)
def test_bad_images_get_their_status_and_the_service_keeps_serving(client: TestClient, jpg: bytes, make, status: int,
                                                                   code: str) -> None:
    data = make(jpg)
    raw = client.post("/v1/score", content=data, headers={"content-type": "application/octet-stream"})
    assert raw.status_code == status, raw.text
    assert _one(raw)["code"] == code
    multi = client.post("/v1/score", files=[("file", ("x", data, "application/octet-stream"))])
    assert multi.status_code == status
    assert _one(multi)["code"] == code
    _still_serving(client, jpg)


@pytest.mark.parametrize(("side", "needle"), [(5_000, "5000x5000 = 25000000 pixels"), (100_000, "bomb")])
def test_pixel_bomb_is_refused_from_the_header(client: TestClient, jpg: bytes, side: int, needle: str) -> None:
    # 10^10 RGB pixels would need 30 GB to decode: an answer at all shows it was refused from the header.
    resp = client.post("/v1/score", content=pixel_bomb_png(side, side))
    assert resp.status_code == 413
    assert _one(resp)["code"] == "too_large" and needle in _one(resp)["error"]
    _still_serving(client, jpg)


def test_empty_image_is_422(client: TestClient, jpg: bytes) -> None:
    raw = client.post("/v1/score", content=b"", headers={"content-type": "image/jpeg"})
    assert raw.status_code == 422 and _one(raw)["code"] == "empty"
    multi = client.post("/v1/score", files=[("file", ("empty.jpg", b"", "image/jpeg"))])
    assert multi.status_code == 422 and _one(multi)["code"] == "empty"
    _still_serving(client, jpg)


def test_body_over_cap_is_413_by_content_length(client: TestClient, jpg: bytes) -> None:
    resp = client.post("/v1/score", content=b"\xff\xd8\xff" + b"\x00" * 1_100_000)
    assert resp.status_code == 413
    assert resp.json()["code"] == "body_too_large"
    _still_serving(client, jpg)


def test_chunked_body_over_cap_is_413_while_streaming(client: TestClient, jpg: bytes) -> None:
    sent = {"chunks": 0}

    def stream() -> Iterator[bytes]:
        for _ in range(200):  # 200 x 64 KiB = 12.5 MiB offered, cap is 1 MB
            sent["chunks"] += 1
            yield b"\xff" * 65536

    resp = client.post("/v1/score", content=stream(), headers={"content-type": "application/octet-stream"})
    assert "content-length" not in {k.lower() for k in resp.request.headers}
    assert resp.status_code == 413
    assert resp.json()["code"] == "body_too_large"
    _still_serving(client, jpg)


def test_chunked_multipart_over_cap_is_413(client: TestClient, jpg: bytes) -> None:
    boundary = "xyzBOUNDARY"

    def stream() -> Iterator[bytes]:
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jpg\"\r\n"
               "Content-Type: image/jpeg\r\n\r\n").encode()
        for _ in range(40):
            yield b"\x00" * 65536

    resp = client.post("/v1/score", content=stream(),
                       headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert resp.status_code == 413 and resp.json()["code"] == "body_too_large"
    _still_serving(client, jpg)


def test_too_many_files_is_413(client: TestClient, jpg: bytes) -> None:
    tiny = jpeg_bytes(np.full((16, 16, 3), 128, np.uint8))
    resp = client.post("/v1/score", files=[("file", (f"{i}.jpg", tiny, "image/jpeg")) for i in range(4)])
    assert resp.status_code == 413
    assert resp.json()["code"] == "too_many_files"
    ok = client.post("/v1/score", files=[("file", (f"{i}.jpg", tiny, "image/jpeg")) for i in range(3)])
    assert ok.status_code == 200 and len(ok.json()["results"]) == 3


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"data": {"url": "http://example.com/a.jpg"}}, 415, "unsupported_format"),  # URLs are never fetched
        ({"json": {"url": "http://example.com/a.jpg"}}, 415, "unsupported_format"),
        ({"files": [("other", ("a.jpg", b"\xff\xd8\xff", "image/jpeg"))]}, 400, "bad_request"),
        ({"files": [("file", (None, b"text value"))]}, 400, "bad_request"),
    ],
    ids=["form-url", "json-url", "wrong-field", "text-field"],
)
def test_malformed_requests(client: TestClient, kwargs: dict, status: int, code: str) -> None:
    resp = client.post("/v1/score", **kwargs)
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert (_one(resp) if "results" in body else body)["code"] == code


def test_raw_body_is_judged_by_its_bytes_not_its_content_type(client: TestClient, jpg: bytes) -> None:
    # curl --data-binary @photo.jpg sends application/x-www-form-urlencoded by default.
    resp = client.post("/v1/score", content=jpg, headers={"content-type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 200 and 0 <= _one(resp)["score"] <= 1


# -- ops ---------------------------------------------------------------------------------------------
def test_health_ready_openapi_docs(client: TestClient, detector: Detector) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model"]["model_version"] == detector.model_version
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/score"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body and "application/octet-stream" in body
    assert {"413", "415", "422", "429", "503"} <= set(spec["paths"]["/v1/score"]["post"]["responses"])
    assert client.get("/docs").status_code == 200


def test_metrics_count_requests_scores_and_errors(detector: Detector, jpg: bytes) -> None:
    with TestClient(create_app(ServeConfig(), detector)) as c:
        first = c.post("/v1/score", content=jpg)
        assert first.headers["server-timing"].startswith("app;dur=")
        assert float(first.headers["server-timing"][8:]) > 0
        c.post("/v1/score", content=jpg)
        c.post("/v1/score", content=b"nope")
        svc = c.app.state.service  # type: ignore[attr-defined]
        text = c.get("/metrics").text
    assert 'nsfwlab_http_requests_total{method="POST",route="/v1/score",status="200"} 2.0' in text
    assert 'nsfwlab_http_requests_total{method="POST",route="/v1/score",status="415"} 1.0' in text
    assert 'nsfwlab_errors_total{code="unsupported_format"} 1.0' in text
    assert "nsfwlab_http_request_seconds_bucket" in text
    assert svc.metrics.sample("nsfwlab_score_count") == 2.0
    assert svc.metrics.sample("nsfwlab_score_sum") == pytest.approx(2 * detector.nsfw_score(jpg), abs=1e-5)
    assert svc.metrics.sample("nsfwlab_batch_size_count") >= 1
    assert svc.metrics.sample("nsfwlab_ready") == 0.0  # after shutdown


def test_api_key_auth(detector: Detector, jpg: bytes) -> None:
    with TestClient(create_app(ServeConfig(api_keys=("s3cret", "other-key")), detector)) as c:
        missing = c.post("/v1/score", content=jpg)
        assert missing.status_code == 401 and missing.json()["code"] == "unauthorized"
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert c.post("/v1/score", content=jpg, headers={"X-API-Key": "wrong"}).status_code == 401
        assert c.post("/v1/score", content=jpg, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.post("/v1/score", content=jpg, headers={"Authorization": "Bearer other-key"}).status_code == 200
        assert c.get("/healthz").status_code == 200  # probes stay open
        assert c.get("/readyz").status_code == 200


# -- overload and readiness ------------------------------------------------------------------------
class BlockingBackend:
    """A backend whose model call waits for ``release``: makes queue states deterministic."""

    name = "blocking"
    device = "cpu"
    model_version = "blocking-test"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.batch_sizes: list[int] = []

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.entered.set()
        assert self.release.wait(30)
        self.batch_sizes.append(len(batch))
        return np.tile(np.array([[0.9, 0.1]], np.float32), (len(batch), 1))


async def _wait_for(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def _overload_scenario(config: ServeConfig, tiny: bytes) -> tuple[list[int], BlockingBackend]:
    backend = BlockingBackend()
    app = create_app(config, Detector(backend))

    async def main() -> list[int]:
        async with app.router.lifespan_context(app):
            svc = app.state.service
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                first = asyncio.create_task(c.post("/v1/score", content=tiny))
                await _wait_for(backend.entered.is_set)
                queued = [asyncio.create_task(c.post("/v1/score", content=tiny)) for _ in range(2)]
                # Both queued images waiting for the model: admitted is not enough, as a request still
                # decoding has not taken its queue place, and the next one would be queued instead.
                await _wait_for(lambda: svc.batcher.depth == 2)
                refused = await c.post("/v1/score", content=tiny)
                # Answered while the model call is still blocked: at once, not by a timeout.
                assert not backend.release.is_set()
                backend.release.set()
                done = [await t for t in (first, *queued)]
                assert refused.headers["retry-after"] == "1"
                return [r.status_code for r in done] + [refused.status_code, refused.json()["code"] == "overloaded"]

    return asyncio.run(main()), backend


def test_full_queue_answers_429_at_once_and_the_queued_requests_finish() -> None:
    tiny = jpeg_bytes(np.full((32, 32, 3), 90, np.uint8))
    statuses, backend = _overload_scenario(ServeConfig(queue_size=2, max_batch=1), tiny)
    assert statuses == [200, 200, 200, 429, True]
    assert backend.batch_sizes == [1, 1, 1]


def test_too_many_concurrent_requests_answers_429() -> None:
    tiny = jpeg_bytes(np.full((32, 32, 3), 90, np.uint8))
    statuses, _ = _overload_scenario(ServeConfig(max_concurrent_requests=3, queue_size=100, max_batch=1), tiny)
    assert statuses == [200, 200, 200, 429, True]


def test_concurrent_requests_share_model_calls() -> None:
    tiny = jpeg_bytes(np.full((32, 32, 3), 90, np.uint8))
    backend = BlockingBackend()
    app = create_app(ServeConfig(max_batch=8, max_wait_ms=50), Detector(backend))

    async def main() -> list[int]:
        async with app.router.lifespan_context(app):
            svc = app.state.service
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                first = asyncio.create_task(c.post("/v1/score", content=tiny))
                await _wait_for(backend.entered.is_set)
                rest = [asyncio.create_task(c.post("/v1/score", content=tiny)) for _ in range(6)]
                await _wait_for(lambda: svc.batcher.depth == 6)
                backend.release.set()
                return [(await t).status_code for t in (first, *rest)]

    assert asyncio.run(main()) == [200] * 7
    assert backend.batch_sizes == [1, 6]  # six waiting requests went through one model call


def test_not_ready_while_loading_then_ready(jpg: bytes, detector: Detector) -> None:
    gate = threading.Event()

    def slow_load() -> Detector:
        assert gate.wait(30)
        return Detector(detector.backend)

    with TestClient(create_app(ServeConfig(), slow_load)) as c:
        assert c.get("/healthz").status_code == 200
        not_ready = c.get("/readyz")
        assert not_ready.status_code == 503 and not_ready.json()["code"] == "not_ready"
        assert not_ready.headers["retry-after"] == "1"
        scored = c.post("/v1/score", content=jpg)
        assert scored.status_code == 503 and "loading" in scored.json()["error"]
        gate.set()
        deadline = time.monotonic() + 20
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert c.post("/v1/score", content=jpg).status_code == 200


def test_model_load_failure_is_reported_on_readyz() -> None:
    def broken() -> Detector:
        raise ModelError("weights file is missing")

    with TestClient(create_app(ServeConfig(), broken)) as c:
        deadline = time.monotonic() + 10
        while "failed" not in c.get("/readyz").json()["error"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        resp = c.get("/readyz")
        assert resp.status_code == 503 and "weights file is missing" in resp.json()["error"]
        assert c.get("/healthz").status_code == 200


# -- review ------------------------------------------------------------------------------------------
def test_review_band_images_are_queued_labelled_and_exported(tmp_path: Path, wide_detector: Detector,
                                                            detector: Detector, jpg: bytes, jpg2: bytes) -> None:
    from typer.testing import CliRunner

    from nsfwlab.cli import app as cli_app

    data_dir = tmp_path / "data"
    with TestClient(create_app(ServeConfig(data_dir=data_dir), wide_detector)) as c:
        r1 = _one(c.post("/v1/score?filename=a.jpg", content=jpg))
        r2 = _one(c.post("/v1/score", files=[("file", ("b.jpg", jpg2, "image/jpeg"))]))
        again = _one(c.post("/v1/score", content=jpg))  # same bytes: stored once
        assert r1["label"] == "review" and len(r1["review_id"]) == 64 and again["review_id"] == r1["review_id"]
        listing = c.get("/v1/review/items").json()
        assert listing["counts"] == {"pending": 2, "safe": 0, "nsfw": 0, "skip": 0}
        assert [i["sha256"] for i in listing["items"]] == [r1["review_id"], r2["review_id"]]
        assert listing["items"][0]["score"] == pytest.approx(detector.nsfw_score(jpg), abs=1e-6)
        thumb = c.get(f"/v1/review/items/{r1['review_id']}/thumbnail")
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert max(Image.open(io.BytesIO(thumb.content)).size) == 256
        labelled = c.post(f"/v1/review/items/{r1['review_id']}/label", json={"label": "nsfw", "reviewer": "ann"})
        assert labelled.status_code == 200
        ok = c.post(f"/v1/review/items/{r2['review_id']}/label", json={"label": "safe", "reviewer": "bob"})
        assert ok.json()["status"] == "safe" and ok.json()["reviewer"] == "bob"
        missing = c.post(f"/v1/review/items/{'0' * 64}/label", json={"label": "safe"})
        assert missing.status_code == 404 and missing.json()["code"] == "not_found"
        assert c.post(f"/v1/review/items/{r1['review_id']}/label", json={"label": "maybe"}).status_code == 422
        assert c.get("/v1/review/items?status=all").json()["counts"]["pending"] == 0
        assert "nsfwlab review" in c.get("/review").text

    with ReviewStore(data_dir) as store:  # persisted, readable by a fresh process
        item = store.get(r1["review_id"])
        assert item is not None and item.status.value == "nsfw" and item.reviewer == "ann"
        assert [h.label.value for h in store.history(r1["review_id"])] == ["nsfw"]

    out = tmp_path / "export"
    result = CliRunner().invoke(cli_app, ["review", "export", "--data-dir", str(data_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "nsfw" / f"{r1['review_id']}.jpg").read_bytes() == jpg
    assert (out / "safe" / f"{r2['review_id']}.jpg").read_bytes() == jpg2
    assert (out / "labels.csv").read_text().count("\n") == 3


def test_confident_decisions_are_not_queued_unless_audited(tmp_path: Path, detector: Detector, jpg: bytes) -> None:
    assert detector.label(detector.nsfw_score(jpg)).value == "safe"  # the astronaut is a confident 'safe'
    with TestClient(create_app(ServeConfig(data_dir=tmp_path / "a"), detector)) as c:
        assert "review_id" not in _one(c.post("/v1/score", content=jpg))
        assert c.get("/v1/review/items").json()["counts"]["pending"] == 0
    with TestClient(create_app(ServeConfig(data_dir=tmp_path / "b", audit_rate=1.0, audit_seed=0), detector)) as c:
        rid = _one(c.post("/v1/score", content=jpg))["review_id"]
        (item,) = c.get("/v1/review/items").json()["items"]
        assert item["sha256"] == rid and item["reason"] == "audit" and item["model_label"] == "safe"


def test_review_routes_without_data_dir_are_404(client: TestClient) -> None:
    resp = client.get("/v1/review/items")
    assert resp.status_code == 404 and "--data-dir" in resp.json()["error"]


class ConstantBackend:
    """A model that gives every image the same score (by default 0.05, a confident 'safe')."""

    name = "constant"
    device = "cpu"
    model_version = "constant-test"

    def __init__(self, score: float = 0.05) -> None:
        self.score = score

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.tile(np.array([[1.0 - self.score, self.score]], np.float32), (len(batch), 1))


def test_audit_sample_is_seeded_and_has_the_requested_share(tmp_path: Path) -> None:
    import random

    images = [jpeg_bytes(np.full((16, 16, 3), i, np.uint8)) for i in range(0, 240, 8)]  # 30 distinct
    rng = random.Random(7)
    expected = [rng.random() < 0.5 for _ in images]
    config = ServeConfig(data_dir=tmp_path / "d", audit_rate=0.5, audit_seed=7)
    with TestClient(create_app(config, Detector(ConstantBackend()))) as c:
        queued = [("review_id" in _one(c.post("/v1/score", content=data))) for data in images]
        counts = c.get("/v1/review/items").json()["counts"]
    assert queued == expected and 5 < sum(queued) < 25
    assert counts["pending"] == sum(queued)
