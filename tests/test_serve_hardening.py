"""Issue 13, in process: per-key rate limits, the audit log of review decisions, review paging,
the one error shape (and the API key checked before the body), hostile upload names, and a full
disk in the review store."""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import logging
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from nsfwlab import Detector
from nsfwlab.cli import app as cli_app
from nsfwlab.serve import QueueReason, ReviewStore, ServeConfig, create_app
from test_serve_api import ConstantBackend

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def tiny_jpeg(value: int = 90, corner: int = 0) -> bytes:
    arr = np.full((16, 16, 3), value, np.uint8)
    arr[:8, :8] = corner
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def review_client(tmp_path: Path) -> Iterator[TestClient]:
    config = ServeConfig(data_dir=tmp_path / "data", api_keys=("alpha-key-1",))
    with TestClient(create_app(config, Detector(ConstantBackend(0.5))), headers={"X-API-Key": "alpha-key-1"}) as c:
        yield c


# -- 1. rate limits ------------------------------------------------------------------------------------
def test_rate_limit_parsing_and_token_bucket() -> None:
    from nsfwlab.serve.ratelimit import RateLimit, RateLimiter

    assert RateLimit.parse("5/s") == RateLimit(5.0, 1.0)
    assert RateLimit.parse("120/min").per_second == pytest.approx(2.0)
    assert RateLimit.parse(" 10 / h ").burst == 10
    for bad in ("5", "0/s", "-1/s", "x/s", "5/week", ""):
        with pytest.raises(ValueError, match="rate"):
            RateLimit.parse(bad)
    now = [100.0]
    limiter = RateLimiter(RateLimit(2, 1.0), clock=lambda: now[0])
    assert limiter.take("a") is None and limiter.take("a") is None
    wait = limiter.take("a")
    assert wait == pytest.approx(0.5)
    assert limiter.take("b") is None  # another bucket
    now[0] += 0.5
    assert limiter.take("a") is None


def test_rate_limit_per_api_key() -> None:
    keys = ("alpha-key-1", "beta-key-2")
    jpg = tiny_jpeg()
    with TestClient(create_app(ServeConfig(api_keys=keys, rate_limit="5/s"), Detector(ConstantBackend(0.5)))) as c:
        burst = [c.post("/v1/score", content=jpg, headers={"X-API-Key": keys[0]}) for _ in range(20)]
        other = c.post("/v1/score", content=jpg, headers={"Authorization": f"Bearer {keys[1]}"})
        metrics = c.get("/metrics").text
    statuses = [r.status_code for r in burst]
    assert statuses[:5] == [200] * 5 and statuses.count(429) >= 10
    refused = next(r for r in burst if r.status_code == 429)
    assert refused.json()["code"] == "rate_limited" and set(refused.json()) == {"error", "code"}
    assert int(refused.headers["retry-after"]) >= 1
    assert other.status_code == 200
    alpha, beta = (hashlib.sha256(k.encode()).hexdigest()[:12] for k in keys)
    assert f'nsfwlab_key_requests_total{{key="{alpha}",outcome="rate_limited"}} {statuses.count(429)}.0' in metrics
    assert f'nsfwlab_key_requests_total{{key="{beta}",outcome="allowed"}} 1.0' in metrics
    assert keys[0] not in metrics and keys[1] not in metrics


def test_rate_limit_per_client_without_keys() -> None:
    with TestClient(create_app(ServeConfig(rate_limit="2/min"), Detector(ConstantBackend(0.5)))) as c:
        statuses = [c.post("/v1/score", content=tiny_jpeg()).status_code for _ in range(3)]
        assert c.get("/healthz").status_code == 200  # probes are never limited
    assert statuses == [200, 200, 429]


# -- 2. audit log ----------------------------------------------------------------------------------------
def test_review_decisions_are_audited_and_exported(review_client: TestClient, tmp_path: Path) -> None:
    c = review_client
    rid = c.post("/v1/score?filename=a.jpg", content=tiny_jpeg()).json()["results"][0]["review_id"]
    assert c.post(f"/v1/review/items/{rid}/label", json={"label": "nsfw", "reviewer": "ann"}).status_code == 200
    assert c.post(f"/v1/review/items/{rid}/label", json={"label": "safe", "reviewer": "bob"}).status_code == 200
    audit = c.get("/v1/review/audit").json()
    assert audit["total"] == 2
    first, second = audit["entries"]
    key = hashlib.sha256(b"alpha-key-1").hexdigest()[:12]
    assert (first["review_id"], first["label"], first["previous_label"], first["reviewer"]) == (
        rid, "nsfw", "pending", "ann")
    assert (second["label"], second["previous_label"], second["reviewer"], second["key_id"]) == (
        "safe", "nsfw", "bob", key)
    assert first["at"] <= second["at"] and first["id"] < second["id"]
    assert c.get("/v1/review/audit", headers={"X-API-Key": "nope"}).status_code == 401
    assert c.get("/v1/review/audit?limit=1&offset=1").json()["entries"] == [second]

    out = tmp_path / "export"
    result = CliRunner().invoke(cli_app, ["review", "export", "--data-dir", str(tmp_path / "data"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "audit.csv").open(encoding="utf-8")))
    assert [(r["review_id"], r["label"], r["previous_label"], r["reviewer"]) for r in rows] == [
        (rid, "nsfw", "pending", "ann"), (rid, "safe", "nsfw", "bob")]
    assert rows[1]["key_id"] == key and rows[0]["at"].endswith("Z")


def test_audit_log_is_append_only(tmp_path: Path) -> None:
    import sqlite3

    with ReviewStore(tmp_path) as store:
        item = store.add(tiny_jpeg(), "JPEG", score=0.5, model_label="review", reason=QueueReason.BAND,
                         model_version="m")
        store.set_label(item.sha256, "skip", "ann")
    db = sqlite3.connect(tmp_path / "review.sqlite3")
    for sql in ("UPDATE audit SET label = 'nsfw'", "DELETE FROM audit"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute(sql)
    db.close()


def test_audit_backfills_the_decisions_of_an_older_store(tmp_path: Path) -> None:
    import sqlite3

    with ReviewStore(tmp_path) as store:
        item = store.add(tiny_jpeg(), "JPEG", score=0.5, model_label="review", reason=QueueReason.BAND,
                         model_version="m")
        store.set_label(item.sha256, "nsfw", "ann", now=1.0)
        store.set_label(item.sha256, "safe", "bob", now=2.0)
    db = sqlite3.connect(tmp_path / "review.sqlite3", isolation_level=None)
    db.executescript("DROP TRIGGER audit_no_delete; DROP TRIGGER audit_no_update; DROP TABLE audit;")
    db.close()
    with ReviewStore(tmp_path) as store:
        entries = store.audit()
    assert [(e.label.value, e.previous_label, e.reviewer, e.at) for e in entries] == [
        ("nsfw", "pending", "ann", 1.0), ("safe", "nsfw", "bob", 2.0)]


# -- 3. paging -------------------------------------------------------------------------------------------
def test_review_items_page_beyond_200_with_totals(tmp_path: Path) -> None:
    with ReviewStore(tmp_path / "data") as store:
        for i in range(230):
            store.add(tiny_jpeg(i % 200, i // 200 * 100), "JPEG", score=0.5, model_label="review",
                      reason=QueueReason.BAND, model_version="m", now=float(i))
    with TestClient(create_app(ServeConfig(data_dir=tmp_path / "data"), Detector(ConstantBackend(0.5)))) as c:
        first = c.get("/v1/review/items?limit=200").json()
        second = c.get(f"/v1/review/items?limit=200&offset={first['next_offset']}").json()
        safe = c.get("/v1/review/items?status=safe").json()
    assert (len(first["items"]), first["total"], first["offset"], first["next_offset"]) == (200, 230, 0, 200)
    assert (len(second["items"]), second["total"], second["next_offset"]) == (30, 230, None)
    ids = [i["sha256"] for i in first["items"] + second["items"]]
    assert len(set(ids)) == 230
    assert safe["total"] == 0 and safe["items"] == []


# -- 4. one error shape, the key before the body -------------------------------------------------------
BAD_SHA = "/v1/review/items/not-a-sha/label"


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("post", BAD_SHA, {"json": {"label": "safe"}}),
        ("post", f"/v1/review/items/{'0' * 64}/label", {"json": {"label": "maybe"}}),
        ("post", f"/v1/review/items/{'0' * 64}/label",
         {"content": b"{not json", "headers": {"content-type": "application/json"}}),
        ("get", "/v1/review/items?limit=0", {}),
        ("get", "/v1/review/items/xyz/thumbnail", {}),
        ("post", "/v1/score?filename=" + "x" * 300, {"content": b"abc"}),
    ],
    ids=["bad-sha", "bad-label", "bad-json", "bad-limit", "bad-thumb-sha", "long-filename"],
)
def test_the_api_key_is_checked_before_the_request_is_validated(review_client: TestClient, method: str, path: str,
                                                               kwargs: dict) -> None:
    anonymous = getattr(review_client, method)(path, **{**kwargs, "headers": {**kwargs.get("headers", {}),
                                                                              "X-API-Key": "wrong"}})
    assert anonymous.status_code == 401 and anonymous.json()["code"] == "unauthorized"
    invalid = getattr(review_client, method)(path, **kwargs)
    assert invalid.status_code == 422, invalid.text
    body = invalid.json()
    assert set(body) == {"error", "code"} and body["code"] == "invalid_request" and body["error"]


def test_unknown_routes_and_methods_answer_the_error_shape(review_client: TestClient) -> None:
    missing = review_client.get("/v2/nothing")
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    wrong = review_client.get("/v1/score")
    assert wrong.status_code == 405 and wrong.json()["code"] == "method_not_allowed"


# -- 6. hostile names, full disk ---------------------------------------------------------------------
HOSTILE = "a\x00b\x1bc\x07d\ne\u202ef.jpg"


def _clean(text: str) -> bool:
    return not any(ch in text for ch in "\x00\x1b\x07\n\r\u202e")


def test_control_characters_in_upload_names_never_reach_labels_csv(review_client: TestClient, tmp_path: Path) -> None:
    c = review_client
    raw = c.post("/v1/score", params={"filename": HOSTILE}, content=tiny_jpeg(10)).json()["results"][0]
    parts = c.post("/v1/score", files=[("file", ("p\x1bq\x07r.jpg", tiny_jpeg(200), "image/jpeg"))]).json()
    multi = parts["results"][0]
    assert _clean(raw["filename"]) and _clean(multi["filename"])
    assert raw["filename"].startswith("a") and raw["filename"].endswith("f.jpg")
    for rid in (raw["review_id"], multi["review_id"]):
        c.post(f"/v1/review/items/{rid}/label", json={"label": "safe"})
    out = tmp_path / "export"
    result = CliRunner().invoke(cli_app, ["review", "export", "--data-dir", str(tmp_path / "data"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.reader((out / "labels.csv").open(newline="", encoding="utf-8")))
    assert len(rows) == 3 and all(_clean(field) for row in rows for field in row)
    assert sorted(r[6] for r in rows[1:]) == sorted([raw["filename"], multi["filename"]])


def test_a_full_disk_leaves_no_temporary_files_and_one_clean_log_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    real_write = Path.write_bytes

    def no_space(self: Path, data: bytes) -> int:  # as a full disk does: the file exists, empty
        if self.name.endswith(".tmp"):
            real_write(self, b"")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    config = ServeConfig(data_dir=tmp_path / "data")
    with TestClient(create_app(config, Detector(ConstantBackend(0.5)))) as c:
        monkeypatch.setattr(Path, "write_bytes", no_space)
        with caplog.at_level(logging.ERROR, logger="nsfwlab.serve"):
            resp = c.post("/v1/score", params={"filename": "x\ny: forged line"}, content=tiny_jpeg())
        monkeypatch.undo()
        metrics = c.get("/metrics").text
    (result,) = resp.json()["results"]
    assert resp.status_code == 200 and result["score"] == 0.5 and "review_id" not in result  # the score survives
    assert list((tmp_path / "data").rglob("*.tmp")) == []
    (record,) = [r for r in caplog.records if "could not queue" in r.getMessage()]
    assert "\n" not in record.getMessage() and "No space left" in record.getMessage()
    assert 'nsfwlab_errors_total{code="review_store_failed"} 1.0' in metrics


def test_stale_temporary_files_are_removed_when_the_store_opens(tmp_path: Path) -> None:
    folder = tmp_path / "images" / "ab"
    folder.mkdir(parents=True)
    stale, writing, keep = folder / ".ab12.jpg.999.1.tmp", folder / ".ab34.jpg.999.2.tmp", folder / "ab12.jpg"
    for path in (stale, writing, keep):
        path.write_bytes(b"")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(keep, (old, old))
    ReviewStore(tmp_path).close()
    # A young one may be a running server's write in progress (review export opens its store).
    assert not stale.exists() and writing.exists() and keep.exists()

