"""The service's defences against requests it must not act on, in process: blank API keys never mean
"no auth", JSON routes take only application/json under a small cap, state-changing requests
from other web origins are refused, and no CORS header invites other origins' scripts."""

from __future__ import annotations

import asyncio
import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from nsfwlab import Detector
from nsfwlab.cli import app as cli_app
from nsfwlab.errors import ConfigError
from nsfwlab.serve import ServeConfig, create_app
from nsfwlab.serve.origin import normalize_origin
from test_serve_api import ConstantBackend

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

EVIL = "http://evil.example:8080"


def tiny_png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def served_apps(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    import uvicorn

    apps: list[object] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **k: apps.append(app))
    return apps


def _make_client(tmp_path: Path, **config: Any) -> TestClient:
    # Score 0.5 lies in the default review band: every upload is queued.
    return TestClient(create_app(ServeConfig(data_dir=tmp_path / "data", **config), Detector(ConstantBackend(0.5))))


@pytest.fixture
def keyless(tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    with _make_client(tmp_path) as client:
        rid = client.post("/v1/score", content=tiny_png(7)).json()["results"][0]["review_id"]
        yield client, rid


def _status_of(client: TestClient, rid: str) -> str:
    items = client.get("/v1/review/items", params={"status": "all"}).json()["items"]
    return str(next(i["status"] for i in items if i["sha256"] == rid))


# -- API keys -----------------------------------------------------------------------------------
@pytest.mark.parametrize("keys", [[""], ["   "], ["good-key-1", ""], ["good-key-1", " \t"]])
def test_blank_api_keys_are_refused_not_dropped(keys: list[str], served_apps: list[object]) -> None:
    args = [arg for key in keys for arg in ("--api-key", key)]
    result = CliRunner().invoke(cli_app, ["serve", "--port", "0", *args])
    assert result.exit_code == 2, result.output
    assert "--api-key" in result.output and "Traceback" not in result.output
    assert not served_apps


def test_a_key_file_of_blank_lines_is_refused(tmp_path: Path, served_apps: list[object]) -> None:
    blank = tmp_path / "keys.txt"
    blank.write_text("  \n\t\n\n")
    result = CliRunner().invoke(cli_app, ["serve", "--port", "0", "--api-key-file", str(blank)])
    assert result.exit_code == 2 and "holds no key" in result.output
    assert not served_apps


def test_keys_from_the_command_line_are_served(served_apps: list[object]) -> None:
    result = CliRunner().invoke(cli_app, ["serve", "--port", "0", "--api-key", " k3y ", "--allow-origin",
                                          "HTTPS://Review.Example.com:443/"])
    assert result.exit_code == 0, result.output
    config = served_apps[0].state.service.config  # type: ignore[attr-defined]
    assert config.api_keys == ("k3y",) and config.allow_origins == ("https://review.example.com",)


@pytest.mark.parametrize("keys", [("",), (" k",), "abc", ("ok", "")])
def test_serve_config_refuses_empty_keys(keys: Any) -> None:
    with pytest.raises(ConfigError, match="api_keys"):
        ServeConfig(api_keys=keys)


# -- content type and size of JSON bodies ---------------------------------------------------------
@pytest.mark.parametrize("headers, content", [
    ({"Content-Type": "text/plain"}, b'{"label": "safe"}'),
    ({"Content-Type": "application/x-www-form-urlencoded"}, b'{"label": "safe"}'),
    ({"Content-Type": "multipart/form-data; boundary=x"}, b'--x\r\n\r\n{"label": "safe"}\r\n--x--\r\n'),
    ({}, b'{"label": "safe"}'),
])
def test_the_label_route_takes_only_json(keyless: tuple[TestClient, str], headers: dict[str, str],
                                         content: bytes) -> None:
    client, rid = keyless
    resp = client.post(f"/v1/review/items/{rid}/label", content=content, headers=headers)
    assert resp.status_code == 415 and resp.json()["code"] == "unsupported_media_type", resp.text
    assert _status_of(client, rid) == "pending"


def test_the_label_route_accepts_json_with_a_charset(keyless: tuple[TestClient, str]) -> None:
    client, rid = keyless
    resp = client.post(f"/v1/review/items/{rid}/label", content=b'{"label": "safe"}',
                       headers={"Content-Type": "Application/JSON; charset=utf-8"})
    assert resp.status_code == 200, resp.text
    assert _status_of(client, rid) == "safe"


def test_a_json_body_over_the_cap_is_413(keyless: tuple[TestClient, str]) -> None:
    client, rid = keyless
    big = b'{"label": "safe", "reviewer": "' + b"x" * 70_000 + b'"}'
    resp = client.post(f"/v1/review/items/{rid}/label", content=big, headers={"Content-Type": "application/json"})
    assert resp.status_code == 413 and "max_json_bytes" in resp.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        yield from (big[i:i + 8192] for i in range(0, len(big), 8192))

    resp = client.post(f"/v1/review/items/{rid}/label", content=chunks(), headers={"Content-Type": "application/json"})
    assert resp.status_code == 413 and resp.json()["code"] == "body_too_large"
    assert _status_of(client, rid) == "pending"


def test_a_declared_oversized_json_body_is_refused_before_reading_it(tmp_path: Path) -> None:
    """A 20 MB Content-Length is answered 413 at once; the body (here never sent) is not waited for."""
    app = create_app(ServeConfig(data_dir=tmp_path / "data"), Detector(ConstantBackend(0.5)))
    svc = app.state.service
    svc.start()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # a client that declared 20 MB and stalls
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/review/items/" + "a" * 64 + "/label", "raw_path": b"", "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                         (b"content-length", b"20000000")]}
    try:
        asyncio.run(asyncio.wait_for(app(scope, receive, send), 5.0))
    finally:
        svc.stop()
    assert sent[0]["status"] == 413 and b"max_json_bytes" in sent[1]["body"]


# -- Origin and CORS ------------------------------------------------------------------------------
@pytest.mark.parametrize("origin", [EVIL, "null", "http://testserver.evil.example", "https://testserver",
                                    "http://testserver:8080"])
def test_state_changing_requests_from_other_origins_are_403(keyless: tuple[TestClient, str], origin: str) -> None:
    client, rid = keyless
    json_headers = {"Content-Type": "application/json", "Origin": origin}
    resp = client.post(f"/v1/review/items/{rid}/label", content=b'{"label": "safe"}', headers=json_headers)
    assert resp.status_code == 403 and resp.json()["code"] == "forbidden_origin", resp.text
    assert client.post("/v1/score", content=tiny_png(9), headers={"Origin": origin}).status_code == 403
    for method in ("PUT", "PATCH", "DELETE"):
        assert client.request(method, f"/v1/review/items/{rid}", headers={"Origin": origin}).status_code == 403
    assert _status_of(client, rid) == "pending"
    assert 'code="forbidden_origin"' in client.get("/metrics").text


def test_the_servers_own_origin_and_allowed_origins_may_post(tmp_path: Path) -> None:
    with _make_client(tmp_path, allow_origins=("https://Review.Example.com",)) as client:
        rids = [client.post("/v1/score", content=tiny_png(v)).json()["results"][0]["review_id"] for v in (1, 2)]
        for rid, origin in zip(rids, ("http://testserver", "https://review.example.com:443"), strict=True):
            resp = client.post(f"/v1/review/items/{rid}/label", json={"label": "nsfw"}, headers={"Origin": origin})
            assert resp.status_code == 200, resp.text
            assert _status_of(client, rid) == "nsfw"


def test_reads_pass_and_no_cors_headers_are_sent(keyless: tuple[TestClient, str]) -> None:
    client, rid = keyless
    preflight = client.options(f"/v1/review/items/{rid}/label", headers={
        "Origin": EVIL, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
    answers = [preflight, client.get("/v1/review/items", headers={"Origin": EVIL}),
               client.get("/healthz", headers={"Origin": EVIL}),
               client.post(f"/v1/review/items/{rid}/label", json={"label": "safe"}, headers={"Origin": EVIL})]
    assert answers[1].status_code == 200 and answers[3].status_code == 403
    for resp in answers:
        assert not [h for h in resp.headers if h.lower().startswith("access-control-")], resp.headers


@pytest.mark.parametrize("text, expected", [
    ("http://a.example", "http://a.example"), ("HTTPS://A.example:443", "https://a.example"),
    ("http://a.example:80/", "http://a.example"), ("http://[::1]:8000", "http://[::1]:8000"),
    ("https://a.example:8443", "https://a.example:8443"),
])
def test_origins_are_normalised(text: str, expected: str) -> None:
    assert normalize_origin(text) == expected


@pytest.mark.parametrize("text", ["*", "null", "a.example", "ftp://a.example", "http://a.example/path",
                                  "http://user@a.example", "http://a.example?x=1", "http://a.example:99999", ""])
def test_non_origins_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="allow_origins"):
        normalize_origin(text)
    with pytest.raises(ConfigError, match="allow_origins"):
        ServeConfig(allow_origins=(text,))
