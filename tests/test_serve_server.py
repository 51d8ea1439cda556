"""`nsfwlab serve` as a real uvicorn process on 127.0.0.1: scoring over TCP, a chunked upload over
the body cap, and graceful shutdown on SIGTERM with a request in flight."""

from __future__ import annotations

import io
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def running_server(tmp_path: Path, *args: str, ready_timeout: float = 120.0, scheme: str = "http",
                   verify: ssl.SSLContext | bool = True) -> Iterator[Server]:
    """Start `nsfwlab serve ARGS` on a free port and wait until /readyz answers 200."""
    port = free_port()
    log = tmp_path / f"server-{port}.log"
    cmd = [sys.executable, "-c", "from nsfwlab.cli import main; main()", "serve", "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning", *args]
    env = dict(os.environ, NSFWLAB_THREADS="1")
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    server = Server(f"{scheme}://127.0.0.1:{port}", port, proc, log)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}:\n{server.output()}")
            try:
                if httpx.get(server.url + "/readyz", timeout=2, verify=verify).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server not ready after {ready_timeout}s:\n{server.output()}")
            time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def chunked_upload(port: int, chunk: bytes, max_chunks: int) -> bytes:
    """Send a chunked body (no Content-Length) until the server answers or stops reading; return
    what it answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /v1/score HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: application/octet-stream\r\n\r\n")
        frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        sock.settimeout(0.05)
        answer = b""
        for _ in range(max_chunks):
            try:
                sock.sendall(frame)
            except OSError:  # the server closed the connection after answering 413
                break
            try:
                answer += sock.recv(65536)
                if answer:
                    break
            except (TimeoutError, BlockingIOError):
                continue
        sock.settimeout(30)
        try:
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except OSError:
            pass
        return answer


def stall_uploads(srv: Server, n: int) -> list[socket.socket]:
    """``n`` connections that send headers and a sliver of a 100 kB body, then nothing; returns
    once the server counts them in flight."""
    stalled = []
    for _ in range(n):
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        sock.sendall(b"POST /v1/score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: 100000\r\n\r\n\xff\xd8\xff")
        stalled.append(sock)
    deadline = time.monotonic() + 10
    while f"nsfwlab_requests_in_flight {n}.0" not in httpx.get(srv.url + "/metrics", timeout=10).text:
        assert time.monotonic() < deadline, "stalled requests never took their slots"
        time.sleep(0.02)
    return stalled


def read_answer(sock: socket.socket) -> bytes:
    """An HTTP answer with a JSON body, read until the body's closing brace or the end."""
    answer = sock.recv(65536)
    while not answer.rstrip().endswith(b"}") and (more := sock.recv(65536)):
        answer += more
    return answer


def test_serve_over_tcp_limits_and_graceful_sigterm(tmp_path: Path, photos: dict[str, np.ndarray],
                                                    detector) -> None:
    jpg = jpeg(photos["astronaut"])
    with running_server(tmp_path, "--max-body-bytes", "2000000", "--max-files", "16", "--no-batching") as srv:
        one = httpx.post(srv.url + "/v1/score", files={"file": ("astronaut.jpg", jpg, "image/jpeg")}, timeout=60)
        assert one.status_code == 200
        assert one.json()["results"][0]["score"] == pytest.approx(detector.nsfw_score(jpg), abs=1e-6)

        # A chunked upload without Content-Length is stopped at the cap (2 MB of 64 MiB offered).
        answer = chunked_upload(srv.port, b"\xff" * 65536, max_chunks=1024)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"body_too_large" in answer
        assert httpx.get(srv.url + "/healthz", timeout=10).status_code == 200

        # SIGTERM with a 16-image request in flight: it finishes, then the process exits cleanly.
        files = [("file", (f"{i}.jpg", jpg, "image/jpeg")) for i in range(16)]
        result: dict[str, httpx.Response] = {}
        sender = threading.Thread(target=lambda: result.setdefault(
            "r", httpx.post(srv.url + "/v1/score", files=files, timeout=120)))
        sender.start()
        deadline = time.monotonic() + 60
        while "nsfwlab_requests_in_flight 1.0" not in httpx.get(srv.url + "/metrics", timeout=10).text:
            assert time.monotonic() < deadline and sender.is_alive(), "request never seen in flight"
            time.sleep(0.005)
        srv.proc.send_signal(signal.SIGTERM)
        sender.join(120)
        # uvicorn finishes the shutdown, then re-raises the captured SIGTERM (exit status -15).
        assert srv.proc.wait(60) in (0, -signal.SIGTERM), srv.output()
        assert "Traceback" not in srv.output()
        resp = result["r"]
        assert resp.status_code == 200
        assert len(resp.json()["results"]) == 16 and all("score" in r for r in resp.json()["results"])
        with pytest.raises(httpx.TransportError):
            httpx.get(srv.url + "/healthz", timeout=2)


def test_stalled_uploads_are_cut_off_and_free_their_slots(tmp_path: Path, photos: dict[str, np.ndarray]) -> None:
    """Slowloris: clients that send headers and a sliver of body, then nothing, used to hold every
    --max-concurrent slot forever, so every other client got 429 for as long as they liked."""
    jpg = jpeg(photos["astronaut"])
    with running_server(tmp_path, "--max-concurrent", "2", "--body-timeout", "1.5", "--no-batching") as srv:
        stalled = stall_uploads(srv, 2)
        try:
            busy = httpx.post(srv.url + "/v1/score", content=jpg, headers={"Content-Type": "image/jpeg"}, timeout=30)
            assert busy.status_code == 429  # the slots are taken ...
            for sock in stalled:  # ... until the deadline answers the stalled ones
                answer = read_answer(sock)
                assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
                assert b"request_timeout" in answer
            ok = httpx.post(srv.url + "/v1/score", content=jpg, headers={"Content-Type": "image/jpeg"}, timeout=30)
            assert ok.status_code == 200 and ok.json()["results"][0]["label"] == "safe"
        finally:
            for sock in stalled:
                sock.close()


def test_sigterm_answers_stalled_uploads_503_with_one_log_line(tmp_path: Path) -> None:
    """Uploads stalled when SIGTERM came used to get 500 after the graceful timeout, with three
    tracebacks in the log; they get 503 not_ready (retry elsewhere) and one line."""
    with running_server(tmp_path, "--graceful-timeout", "1", "--body-timeout", "60", "--log-level", "info") as srv:
        stalled = stall_uploads(srv, 2)
        try:
            srv.proc.send_signal(signal.SIGTERM)
            for sock in stalled:
                answer = read_answer(sock)
                assert answer.startswith(b"HTTP/1.1 503"), answer[:300]
                assert b'"code":"not_ready"' in answer
            assert srv.proc.wait(30) in (0, -signal.SIGTERM)
        finally:
            for sock in stalled:
                sock.close()
    log = srv.output()
    assert "Traceback" not in log, log
    assert log.count("shutting down with the request body unfinished") == 2, log


def self_signed(tmp_path: Path, password: bytes) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its private key, encrypted with ``password``, made now."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.BestAvailableEncryption(password)))
    return cert_path, key_path


def test_serve_over_tls(tmp_path: Path, photos: dict[str, np.ndarray]) -> None:
    cert, key = self_signed(tmp_path, b"pa55word")
    trust = ssl.create_default_context(cafile=str(cert))
    with running_server(tmp_path, "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
                        "--ssl-keyfile-password", "pa55word", scheme="https", verify=trust) as srv:
        resp = httpx.post(srv.url + "/v1/score", content=jpeg(photos["coffee"]), verify=trust, timeout=60)
        assert resp.status_code == 200 and resp.json()["results"][0]["label"] == "safe"
        with pytest.raises(httpx.TransportError):  # the certificate is checked: untrusted without it
            httpx.get(srv.url + "/healthz", timeout=10)
        with pytest.raises(httpx.TransportError):  # no plain HTTP on the TLS port
            httpx.get(f"http://127.0.0.1:{srv.port}/healthz", timeout=10)
