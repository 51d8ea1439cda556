"""Unit tests of the service's parts: error->status mapping, the streaming body cap, API keys,
admission, configuration, the micro-batcher and the review store / export."""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from nsfwlab import (
    ConfigError,
    CorruptImageError,
    EmptyImageError,
    ImageError,
    ImageTooLargeError,
    ModelError,
    TruncatedImageError,
    UnsupportedFormatError,
)
from nsfwlab.cli import app as cli_app
from nsfwlab.serve import QueueReason, ReviewLabel, ReviewStatus, ReviewStore, ServeConfig
from nsfwlab.serve.batching import MicroBatcher
from nsfwlab.serve.limits import (
    Admission,
    BadRequestError,
    BodyTooLargeError,
    CountingReceive,
    NotFoundError,
    NotReadyError,
    OverloadedError,
    RequestTimeoutError,
    TooManyFilesError,
    UnauthorizedError,
    check_api_key,
    http_status_for,
)


# -- limits ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (UnsupportedFormatError("x"), 415), (TruncatedImageError("x"), 422), (CorruptImageError("x"), 422),
        (EmptyImageError("x"), 422), (ImageError("x"), 422), (ImageTooLargeError("x"), 413),
        (BodyTooLargeError("x"), 413), (TooManyFilesError("x"), 413), (UnauthorizedError("x"), 401),
        (OverloadedError("x"), 429), (NotReadyError("x"), 503), (BadRequestError("x"), 400),
        (NotFoundError("x"), 404), (ConfigError("x"), 400), (ModelError("x"), 500),
        (RequestTimeoutError("x"), 408),
    ],
)
def test_http_status_for(exc: Exception, status: int) -> None:
    assert http_status_for(exc) == status  # type: ignore[arg-type]


def _receive_from(chunks: list[bytes]):
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive() -> dict:
        return messages.pop(0)

    return receive


def test_counting_receive_allows_the_cap_and_stops_one_byte_over() -> None:
    async def drain(chunks: list[bytes], cap: int) -> int:
        rx = CountingReceive(_receive_from(chunks), cap)
        while True:
            msg = await rx()
            if not msg.get("more_body"):
                return rx.received

    assert asyncio.run(drain([b"a" * 60, b"b" * 40], 100)) == 100
    with pytest.raises(BodyTooLargeError, match="cap of 99 bytes"):
        asyncio.run(drain([b"a" * 60, b"b" * 40], 99))
    # It stops at the first chunk over the cap: later chunks are never read.
    chunks = [b"x" * 50] * 10
    rx = CountingReceive(_receive_from(chunks), 120)

    async def until_refused() -> None:
        with pytest.raises(BodyTooLargeError):
            while True:
                await rx()

    asyncio.run(until_refused())
    assert rx.received == 150  # three chunks read of ten offered


def test_counting_receive_holds_the_whole_body_to_one_deadline() -> None:
    """A slowloris client (a trickle of chunks, or a body never finished) is cut off at the deadline,
    counted from the first read, however often it sends a little."""

    def trickle(pause: float):
        async def receive() -> dict:
            await asyncio.sleep(pause)
            return {"type": "http.request", "body": b"x", "more_body": True}
        return receive

    async def drain(rx: CountingReceive) -> None:
        while True:
            await rx()

    for pause in (0.02, 10.0):  # each chunk well inside the deadline; a stalled body
        rx = CountingReceive(trickle(pause), 1 << 20, timeout=0.3)
        start = time.monotonic()
        with pytest.raises(RequestTimeoutError, match=r"within 0\.3 s"):
            asyncio.run(drain(rx))
        assert time.monotonic() - start < 2.0
    # A body that arrives in time is untouched; no deadline at all without a timeout.
    assert asyncio.run(CountingReceive(_receive_from([b"ab"]), 10, timeout=5.0)())["body"] == b"ab"
    with pytest.raises(ConfigError, match="body_timeout_s"):
        ServeConfig(body_timeout_s=0)


def test_counting_receive_answers_a_cancelled_body_read_not_ready() -> None:
    """uvicorn cancels requests still reading their body at the end of the graceful timeout."""

    async def stalled() -> dict:
        await asyncio.sleep(60)
        return {}

    async def main(timeout: float | None) -> BaseException:
        task = asyncio.create_task(CountingReceive(stalled, 10, timeout=timeout)())
        await asyncio.sleep(0.01)
        task.cancel()
        try:
            await task
        except BaseException as exc:
            return exc
        raise AssertionError("not cancelled")

    for timeout in (None, 30.0):
        assert isinstance(asyncio.run(main(timeout)), NotReadyError)


def test_check_api_key() -> None:
    check_api_key({}, ())  # no keys configured: open
    check_api_key({"x-api-key": "b"}, ("a", "b"))
    check_api_key({"authorization": "Bearer a"}, ("a", "b"))
    check_api_key({"authorization": "bearer   a "}, ("a",))
    for headers in ({}, {"x-api-key": "c"}, {"authorization": "Basic a"}, {"authorization": "Bearer"},
                    {"x-api-key": ""}, {"x-api-key": "a\udcff"}):
        with pytest.raises(UnauthorizedError):
            check_api_key(headers, ("a", "b"))


def test_admission_refuses_when_full_and_frees_on_leave() -> None:
    adm = Admission(2)
    adm.enter()
    adm.enter()
    with pytest.raises(OverloadedError):
        adm.enter()
    adm.leave()
    adm.enter()
    assert adm.active == 2


@pytest.mark.parametrize(
    "kwargs",
    [{"max_files": 0}, {"max_body_bytes": -1}, {"queue_size": 0}, {"max_wait_ms": -1.0}, {"audit_rate": 1.5},
     {"formats": ("JPEG", "EPS")}, {"formats": ()}, {"api_keys": (" padded",)}, {"api_keys": ("",)},
     {"match_distance": 257}, {"match_distance": -1}],
)
def test_serve_config_rejects_bad_values(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        ServeConfig(**kwargs)


def test_serve_config_batching_switch() -> None:
    assert ServeConfig(max_batch=8, max_wait_ms=4).model_batch == 8
    assert ServeConfig().model_batch == 16
    naive = ServeConfig(max_batch=8, max_wait_ms=4, batching=False)
    assert naive.model_batch == 1 and naive.max_wait_s == 0.0
    assert isinstance(ServeConfig(data_dir="x").data_dir, Path)  # type: ignore[arg-type]
    assert isinstance(ServeConfig(bank="b.sqlite3").bank, Path)  # type: ignore[arg-type]
    assert ServeConfig(formats=("JPEG", "MP4")).formats == ("JPEG", "MP4")  # videos may be allowed alone


# -- micro-batcher -----------------------------------------------------------------------------------
class Recorder:
    """A predict function returning each image's first value, recording batch sizes."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.sizes: list[int] = []
        self.gate = gate
        self.entered = threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30)
        self.sizes.append(len(batch))
        return batch[:, 0, 0, 0].astype(np.float32)


def _arr(v: float) -> np.ndarray:
    return np.full((2, 2, 3), v, np.float32)


def test_batcher_groups_waiting_images_and_keeps_order() -> None:
    gate = threading.Event()
    rec = Recorder(gate)
    b = MicroBatcher(rec, max_batch=4, max_wait_s=0.05, max_queue=100)
    b.start()
    try:
        first = b.submit_nowait([_arr(0.5)])
        assert rec.entered.wait(10)
        futures = b.submit_nowait([_arr(i / 10) for i in range(10)])
        gate.set()
        assert first[0].result(10) == 0.5
        assert [f.result(10) for f in futures] == pytest.approx([i / 10 for i in range(10)])
    finally:
        b.stop()
    assert rec.sizes == [1, 4, 4, 2]
    assert b.stats.calls == 4 and b.stats.images == 11 and b.stats.largest == 4


def test_batcher_bounded_queue_refuses_whole_submissions() -> None:
    gate = threading.Event()
    rec = Recorder(gate)
    b = MicroBatcher(rec, max_batch=1, max_wait_s=0.0, max_queue=3)
    b.start()
    try:
        b.submit_nowait([_arr(1)])
        assert rec.entered.wait(10)
        b.submit_nowait([_arr(2), _arr(3)])
        with pytest.raises(OverloadedError):
            b.submit_nowait([_arr(4), _arr(5)])  # would make 4 > 3: none of them is queued
        with pytest.raises(OverloadedError):
            b.check_capacity(2)
        assert b.depth == 2
        last = b.submit_nowait([_arr(6)])
        gate.set()
        assert last[0].result(10) == 6
    finally:
        b.stop()


def test_batcher_stop_drains_queued_work_then_refuses() -> None:
    gate = threading.Event()
    rec = Recorder(gate)
    b = MicroBatcher(rec, max_batch=2, max_wait_s=0.0, max_queue=10)
    b.start()
    futures = b.submit_nowait([_arr(i) for i in range(5)])
    assert rec.entered.wait(10)
    stopper = threading.Thread(target=b.stop)
    stopper.start()
    gate.set()
    stopper.join(20)
    assert [f.result(0) for f in futures] == [0, 1, 2, 3, 4]
    with pytest.raises(NotReadyError):
        b.submit_nowait([_arr(1)])


def test_batcher_model_failure_reaches_callers_and_worker_survives() -> None:
    calls = {"n": 0}

    def flaky(batch: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("device lost")
        if calls["n"] == 2:
            return np.zeros(len(batch) + 1, np.float32)  # wrong shape
        return np.ones(len(batch), np.float32)

    b = MicroBatcher(flaky, max_batch=1, max_wait_s=0.0, max_queue=10)
    b.start()
    try:
        with pytest.raises(ModelError, match="device lost"):
            b.submit_nowait([_arr(0)])[0].result(10)
        with pytest.raises(ModelError, match="scores for 1 images"):
            b.submit_nowait([_arr(0)])[0].result(10)
        assert b.submit_nowait([_arr(0)])[0].result(10) == 1.0
        assert asyncio.run(b.score([_arr(0), _arr(0)])) == [1.0, 1.0]
        assert asyncio.run(b.score([])) == []
    finally:
        b.stop()


# -- review store ------------------------------------------------------------------------------------
def _jpeg(color: tuple[int, int, int], size: tuple[int, int] = (400, 300)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def _png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (64, 64), (*color, 128)).save(buf, format="PNG")
    return buf.getvalue()


def test_store_is_content_addressed_and_keeps_label_history(tmp_path: Path) -> None:
    a, b = _jpeg((200, 10, 10)), _png((10, 10, 200))
    with ReviewStore(tmp_path) as store:
        item = store.add(a, "JPEG", score=0.5, model_label="review", reason=QueueReason.BAND,
                         model_version="m1", filename="/etc/dir/a.jpg", now=100.0)
        again = store.add(a, "JPEG", score=0.9, model_label="nsfw", reason=QueueReason.AUDIT,
                          model_version="m2", filename="other.jpg", now=200.0)
        other = store.add(b, "PNG", score=0.3, model_label="review", reason=QueueReason.BAND,
                          model_version="m1", now=150.0)
        assert again == item and item.filename == "a.jpg" and item.status is ReviewStatus.PENDING
        assert store.image_path(item).read_bytes() == a and store.image_path(other).suffix == ".png"
        assert Image.open(store.thumbnail_path(item.sha256)).size == (256, 192)
        assert [i.sha256 for i in store.items()] == [item.sha256, other.sha256]
        store.set_label(item.sha256, ReviewLabel.SKIP, "ann", now=300.0)
        store.set_label(item.sha256, "nsfw", "  bob  ", now=400.0)
        assert [i.sha256 for i in store.items()] == [other.sha256]
        assert [i.sha256 for i in store.items(None)] == [item.sha256, other.sha256]
        assert store.counts() == {"pending": 1, "safe": 0, "nsfw": 1, "skip": 0}
        hist = store.history(item.sha256)
        assert [(h.label.value, h.reviewer, h.labelled_at) for h in hist] == [("skip", "ann", 300.0),
                                                                            ("nsfw", "bob", 400.0)]
        with pytest.raises(NotFoundError):
            store.set_label("f" * 64, "safe", "ann")
        with pytest.raises(BadRequestError):
            store.set_label(item.sha256, "safe", " " * 3)
        with pytest.raises(BadRequestError, match="control"):
            store.set_label(item.sha256, "safe", "r\x00 <x>")
        with pytest.raises(ValueError):
            store.set_label(item.sha256, "maybe", "ann")
        assert store.history(item.sha256) == hist  # refused decisions leave no trace
        with pytest.raises(ImageError):
            store.add(b"not an image", "JPEG", score=0.5, model_label="review", reason=QueueReason.BAND,
                      model_version="m1")
    with ReviewStore(tmp_path, create=False) as reopened:
        got = reopened.get(item.sha256)
        assert got is not None and got.status is ReviewStatus.NSFW and got.reviewer == "bob"
        assert [i.sha256 for i in reopened.labelled()] == [item.sha256]


def test_store_refuses_a_missing_directory_when_not_creating(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no review store"):
        ReviewStore(tmp_path / "nope", create=False)


def test_unusable_data_dir_is_a_typed_error_before_the_server_starts(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a traceback from the server's startup: a one-line error and exit status 2."""
    import uvicorn

    started: list[object] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append(a))
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    result = CliRunner().invoke(cli_app, ["serve", "--data-dir", str(not_a_dir)])
    assert result.exit_code == 2 and not started
    assert "cannot open the review store" in result.output and "Traceback" not in result.output
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "review.sqlite3").write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match="cannot open the review store"):
        ReviewStore(garbage)


def test_busy_port_and_missing_model_fail_before_the_server_starts(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    import uvicorn

    started: list[object] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append(a))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        result = CliRunner().invoke(cli_app, ["serve", "--port", port])
    assert result.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in result.output and not started
    result = CliRunner().invoke(cli_app, ["serve", "--port", "0", "--model", str(tmp_path / "nope.pt")])
    assert result.exit_code == 3 and "does not exist" in result.output and not started


def test_export_moves_an_image_whose_label_changed(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    a, b, c = _jpeg((1, 2, 3)), _jpeg((200, 200, 200)), _png((5, 5, 5))
    with ReviewStore(data) as store:
        ia = store.add(a, "JPEG", score=0.4, model_label="review", reason=QueueReason.BAND, model_version="m")
        ib = store.add(b, "JPEG", score=0.6, model_label="review", reason=QueueReason.BAND, model_version="m")
        ic = store.add(c, "PNG", score=0.5, model_label="review", reason=QueueReason.BAND, model_version="m")
        store.set_label(ia.sha256, "safe", "ann")
        store.set_label(ib.sha256, "nsfw", "ann")
        store.set_label(ic.sha256, "skip", "ann")
    runner = CliRunner()
    args = ["review", "export", "--data-dir", str(data), "--out", str(out)]
    assert runner.invoke(cli_app, args).exit_code == 0
    assert sorted(p.name for p in (out / "safe").iterdir()) == [f"{ia.sha256}.jpg"]
    assert sorted(p.name for p in (out / "nsfw").iterdir()) == [f"{ib.sha256}.jpg"]
    with ReviewStore(data) as store:
        store.set_label(ia.sha256, "nsfw", "bob")
    result = runner.invoke(cli_app, args)
    assert result.exit_code == 0 and "0 safe and 2 nsfw" in result.output
    assert list((out / "safe").iterdir()) == []
    assert (out / "nsfw" / f"{ia.sha256}.jpg").read_bytes() == a
    lines = (out / "labels.csv").read_text().splitlines()
    assert lines[0].startswith("path,label,score") and len(lines) == 3
    assert sorted(line.split(",")[4] for line in lines[1:]) == ["ann", "bob"]


def test_export_from_a_directory_without_a_store_fails_cleanly(tmp_path: Path) -> None:
    args = ["review", "export", "--data-dir", str(tmp_path / "x"), "--out", str(tmp_path)]
    result = CliRunner().invoke(cli_app, args)
    assert result.exit_code == 2
    assert "no review store" in result.output and "Traceback" not in result.output


def test_public_names_are_pinned() -> None:
    import nsfwlab.serve as serve
    import nsfwlab.serve.app as app_module

    assert sorted(serve.__all__) == ["QueueReason", "ReviewItem", "ReviewLabel", "ReviewStatus", "ReviewStore",
                                     "ServeConfig", "create_app"]
    assert serve.create_app is app_module.create_app
    for name in serve.__all__:
        assert getattr(serve, name) is not None
    with pytest.raises(AttributeError):
        serve.no_such_name  # noqa: B018


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--safe-below", "0.9", "--nsfw-above", "0.1"], "must not exceed"),
        (["--api-key-file", "/nonexistent/keys.txt"], "cannot read the API key file"),
        (["--rate-limit", "5/week"], "is not N/s, N/min or N/h"),
        (["--rate-limit", "0/s"], "positive rate"),
    ],
)
def test_serve_refuses_bad_configuration_before_starting(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli_app, ["serve", "--port", "1", *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_serve_refuses_an_empty_or_binary_api_key_file(tmp_path: Path) -> None:
    """An empty key file used to start a service open to everyone; a binary one, a traceback."""
    empty, binary = tmp_path / "empty.txt", tmp_path / "keys.bin"
    empty.write_text("# no keys yet\n\n")
    binary.write_bytes(b"\xff\xfe\x00key")
    for path, message in ((empty, "holds no key"), (binary, "is not UTF-8 text")):
        result = CliRunner().invoke(cli_app, ["serve", "--port", "1", "--api-key-file", str(path)])
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output


def test_serve_refuses_unusable_tls_files(tmp_path: Path) -> None:
    """TLS files are checked before the server starts: a usage error, never a traceback at startup."""
    from test_serve_server import self_signed

    cert, key = self_signed(tmp_path, b"secret")
    unreadable = tmp_path / "locked.pem"
    unreadable.write_text("x")
    unreadable.chmod(0)
    huge, fifo = tmp_path / "huge.pem", tmp_path / "fifo.pem"
    huge.write_bytes(b"-" * (2 << 20))
    os.mkfifo(fifo)  # OpenSSL would wait on it for ever
    cases = [
        (["--ssl-certfile", str(huge)], "the limit is"),
        (["--ssl-certfile", str(fifo)], "is not a regular file"),
        (["--ssl-certfile", str(cert), "--ssl-keyfile", str(fifo)], "is not a regular file"),
        (["--ssl-certfile", str(tmp_path / "missing.pem")], "No such file"),
        (["--ssl-certfile", str(tmp_path)], "is not a regular file"),
        (["--ssl-certfile", "/dev/zero"], "is not a regular file"),
        (["--ssl-keyfile", str(key)], "need --ssl-certfile"),
        (["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)], "cannot use the TLS certificate"),  # no password
        (["--ssl-certfile", str(cert), "--ssl-keyfile", str(key), "--ssl-keyfile-password", "wrong"],
         "cannot use the TLS certificate"),
        (["--ssl-certfile", str(key), "--ssl-keyfile", str(cert), "--ssl-keyfile-password", "secret"],
         "cannot use the TLS certificate"),
    ]
    if os.geteuid() != 0:  # root reads anything
        cases.append((["--ssl-certfile", str(unreadable)], "Permission denied"))
    for args, message in cases:
        result = CliRunner().invoke(cli_app, ["serve", "--port", "1", *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output, result.output


def test_routes_and_dependencies_are_async() -> None:
    """A plain ``def`` dependency or route makes FastAPI hop to a worker thread on every request
    (a sync ``get_service`` once cost the cheapest request about a third more CPU)."""
    import inspect

    from fastapi.dependencies.utils import get_dependant
    from fastapi.routing import APIRoute

    from nsfwlab.serve.routers import ops, review, score

    def is_async(call: object) -> bool:
        fn = call if inspect.isfunction(call) else getattr(call, "__call__", call)  # noqa: B004
        return inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)

    def walk(dependant) -> None:  # type: ignore[no-untyped-def]
        for sub in dependant.dependencies:
            assert is_async(sub.call), sub.call
            walk(sub)

    routes = 0
    for router in (ops.router, score.router, review.page, review.api):
        for dep in router.dependencies:
            assert is_async(dep.dependency)
            walk(get_dependant(path="", call=dep.dependency))
        for route in router.routes:
            assert isinstance(route, APIRoute) and is_async(route.endpoint), route
            walk(route.dependant)
            routes += 1
    assert routes == 10
