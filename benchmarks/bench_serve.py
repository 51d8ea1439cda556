"""Load test of `nsfwlab serve` on 127.0.0.1: micro-batching against the naive
one-request-one-model-call server (``--no-batching``), in the same run, plus overload behaviour.

Each server is a real `nsfwlab serve` process on a free local port. Requests carry one web-size
JPEG (public scikit-image photos, resized to 1024 px on the long side). For each mode: a warm-up,
then a fixed number of requests at a fixed concurrency; throughput, p50/p99 latency, the mean
model batch (from /metrics) and the scores, so the drift between the modes is measured too. The
overload phase sends far more concurrent requests than a small queue admits and counts 200 / 429
/ 503 / timeouts. Everything is bounded in count and time. Only 127.0.0.1 is contacted.

    .venv/bin/python benchmarks/bench_serve.py --requests 400 --concurrency 16 --json out.json

``--overhead N`` measures instead the app's own CPU cost per request, in process (httpx's ASGI
transport, a fake model (tests/synthetic.py), sequential requests): an empty body (refused 422 after the whole
path: API key, rate limit, admission, body read, the decode pool) and a 16x16 JPEG (scored), for an
open server, one with an API key, and one with a key and a rate limit that never refuses; plus the
time to answer a request over its rate limit. It runs against whichever ``nsfwlab`` is imported,
so two source trees can be compared (``PYTHONPATH=other/src``).

``--bank-latency N`` measures the latency a hash bank adds: N sequential requests of one
1024-px photo each, in process with the fake model, against a server without a bank and one with
a bank of 10,000 hashes (PDQ hashing of the decoded image and the lookup, in the decode pool), in
interleaved rounds; plus PDQ hashing of the same JPEG bytes alone (decoding included).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "immunohistochemistry", "hubble_deep_field")


def web_jpegs(long_side: int = 1024) -> list[tuple[str, bytes]]:
    import skimage.data

    out = []
    for name in PHOTOS:
        img = Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB")
        scale = long_side / max(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append((name, buf.getvalue()))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-c", "from nsfwlab.cli import main; main()", "serve", "--host", "127.0.0.1",
               "--port", str(self.port), "--log-level", "warning", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode() if self.proc.stderr else ''}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server not ready after 120 s")

    def metric(self, name: str) -> float:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@dataclass
class Run:
    mode: str
    concurrency: int
    requests: int
    seconds: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    timeouts: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    mean_batch: float = 0.0
    round_rates: list[float] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        """Median over rounds when there were rounds, else successes per second."""
        if self.round_rates:
            return float(np.median(self.round_rates))
        return self.statuses.get("200", 0) / self.seconds if self.seconds else 0.0

    def pct(self, q: float, status: str | None = None) -> float:
        lat = self.latencies_ms if status is None else self._by_status.get(status, [])
        return float(np.percentile(lat, q)) if lat else float("nan")

    _by_status: dict[str, list[float]] = field(default_factory=dict)
    _server_ms: dict[str, list[float]] = field(default_factory=dict)  # Server-Timing: time inside the app

    def summary(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("latencies_ms", "_by_status", "_server_ms", "scores")}
        d.update(throughput_rps=round(self.throughput, 2), p50_ms=round(self.pct(50), 1), p99_ms=round(self.pct(99), 1))
        for status, lat in self._by_status.items():
            d[f"p50_ms_{status}"] = round(float(np.percentile(lat, 50)), 1)
            d[f"p99_ms_{status}"] = round(float(np.percentile(lat, 99)), 1)
        for status, lat in self._server_ms.items():
            d[f"server_p50_ms_{status}"] = round(float(np.percentile(lat, 50)), 1)
            d[f"server_p99_ms_{status}"] = round(float(np.percentile(lat, 99)), 1)
        return d


async def load(url: str, images: list[tuple[str, bytes]], n: int, concurrency: int, timeout: float,
               budget_s: float, run: Run) -> None:
    """``n`` requests, at most ``concurrency`` in flight, stopping early after ``budget_s``."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        counter = iter(range(n))
        stop_at = time.monotonic() + budget_s

        async def worker() -> None:
            for i in counter:
                if time.monotonic() > stop_at:
                    return
                name, data = images[i % len(images)]
                t0 = time.perf_counter()
                try:
                    resp = await client.post(f"/v1/score?filename={name}", content=data,
                                             headers={"content-type": "image/jpeg"})
                except httpx.TimeoutException:
                    run.timeouts += 1
                    continue
                except httpx.TransportError as exc:
                    run.statuses[type(exc).__name__] = run.statuses.get(type(exc).__name__, 0) + 1
                    continue
                ms = (time.perf_counter() - t0) * 1000
                key = str(resp.status_code)
                run.statuses[key] = run.statuses.get(key, 0) + 1
                run._by_status.setdefault(key, []).append(ms)
                timing = resp.headers.get("server-timing", "")
                if timing.startswith("app;dur="):
                    run._server_ms.setdefault(key, []).append(float(timing[8:]))
                if resp.status_code == 200:
                    run.latencies_ms.append(ms)
                    run.scores[name] = resp.json()["results"][0]["score"]

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        run.seconds = time.perf_counter() - t0


def metric_pair(srv: Server) -> tuple[float, float]:
    return srv.metric("nsfwlab_batch_size_count"), srv.metric("nsfwlab_batch_size_sum")


def compare(modes: dict[str, list[str]], images: list[tuple[str, bytes]], args: argparse.Namespace) -> list[Run]:
    """All servers up at once; rounds alternate between them so that the load of other processes on
    a shared machine falls on every mode alike. Throughput is the median over rounds."""
    servers = {mode: Server(*a) for mode, a in modes.items()}
    try:
        for srv in servers.values():
            srv.__enter__()
        runs = {mode: Run(mode, args.concurrency, 0) for mode in modes}
        rates: dict[str, list[float]] = {mode: [] for mode in modes}
        before = {}
        for mode, srv in servers.items():
            asyncio.run(load(srv.url, images, args.warmup, args.concurrency, args.timeout, args.budget,
                             Run(mode, args.concurrency, args.warmup)))
            before[mode] = metric_pair(srv)
        per_round = max(1, args.requests // args.rounds)
        for rnd in range(args.rounds):
            order = list(servers.items())
            order = order[rnd % len(order):] + order[: rnd % len(order)]  # rotate who goes first
            for mode, srv in order:
                part = Run(mode, args.concurrency, per_round)
                asyncio.run(load(srv.url, images, per_round, args.concurrency, args.timeout, args.budget, part))
                run = runs[mode]
                run.requests += per_round
                run.seconds += part.seconds
                run.timeouts += part.timeouts
                for k, v in part.statuses.items():
                    run.statuses[k] = run.statuses.get(k, 0) + v
                for k, v in part._by_status.items():
                    run._by_status.setdefault(k, []).extend(v)
                run.latencies_ms += part.latencies_ms
                run.scores.update(part.scores)
                rates[mode].append(part.throughput)
        for mode, srv in servers.items():
            calls, imgs = (a - b for a, b in zip(metric_pair(srv), before[mode], strict=True))
            runs[mode].mean_batch = round(imgs / calls, 2) if calls else 0.0
            runs[mode].round_rates = [round(r, 1) for r in rates[mode]]
        return list(runs.values())
    finally:
        for srv in servers.values():
            srv.__exit__()


def measure(mode: str, server_args: list[str], images: list[tuple[str, bytes]], args: argparse.Namespace,
            concurrency: int, requests: int) -> Run:
    with Server(*server_args) as srv:
        run = Run(mode, concurrency, requests)
        asyncio.run(load(srv.url, images, requests, concurrency, args.timeout, args.budget, run))
    return run


def model_batch_curve(sizes: tuple[int, ...] = (1, 2, 4, 8, 16), reps: int = 6,
                      seconds: float = 1.0) -> dict[int, float]:
    """onnxruntime images/s by batch size (the Detector's backend alone; interleaved repetitions,
    median), to show whether batching can pay on this machine at all."""
    from nsfwlab import Detector

    det = Detector(device="cpu")
    x = np.random.default_rng(0).normal(size=(max(sizes), 224, 224, 3)).astype(np.float32)
    rates: dict[int, list[float]] = {bs: [] for bs in sizes}
    for bs in sizes:
        det.predict_arrays(x[:bs])
    for _ in range(reps):
        for bs in sizes:
            t0, n = time.perf_counter(), 0
            while time.perf_counter() - t0 < seconds:
                det.backend.predict(x[:bs])
                n += bs
            rates[bs].append(n / (time.perf_counter() - t0))
    det.close()
    return {bs: round(float(np.median(v)), 1) for bs, v in rates.items()}


def fake_detector() -> Any:
    """A Detector with the fake model of tests/synthetic.py: no model cost in the numbers."""
    from nsfwlab import Detector

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from synthetic import RedFraction

    return Detector(RedFraction())


def bank_latency(n: int, reps: int = 3, banked: int = 10_000) -> dict[str, Any]:
    """Median wall milliseconds per sequential request without and with a hash bank (see the
    module docstring), and of PDQ-hashing the JPEG bytes alone."""
    import tempfile

    from nsfwlab.bank import Bank, BankEntry, pdq_hash
    from nsfwlab.serve import ServeConfig, create_app

    images = web_jpegs()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bank.sqlite3"
        with Bank(path) as bank:
            bank.add_many(BankEntry.make(rng.bytes(32).hex(), "nsfw", "list:bench") for _ in range(banked))

        async def timed(config: dict[str, Any]) -> list[float]:
            app = create_app(ServeConfig(batching=False, **config), fake_detector())
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://b", timeout=60) as c:
                    for _, body in images:  # warm-up
                        await c.post("/v1/score", content=body)
                    out = []
                    for i in range(n):
                        t0 = time.perf_counter()
                        r = await c.post("/v1/score", content=images[i % len(images)][1])
                        out.append((time.perf_counter() - t0) * 1000)
                        assert r.status_code == 200, r.text
                    return out

        samples: dict[str, list[float]] = {"no bank": [], f"bank of {banked} hashes": []}
        for _ in range(reps):  # interleaved, so that load from other processes hits both alike
            samples["no bank"] += asyncio.run(timed({}))
            samples[f"bank of {banked} hashes"] += asyncio.run(timed({"bank": path}))
    hashing = []
    for _ in range(reps):
        for _, body in images:
            t0 = time.perf_counter()
            pdq_hash(body)
            hashing.append((time.perf_counter() - t0) * 1000)
    out: dict[str, Any] = {k: {"p50_ms": round(float(np.median(v)), 1), "p90_ms": round(float(np.percentile(v, 90)), 1)}
                           for k, v in samples.items()}
    out["pdq_hash_of_the_bytes_alone_p50_ms"] = round(float(np.median(hashing)), 1)
    out["requests_per_cell"] = n * reps
    return out


def app_overhead(n: int, reps: int = 5) -> dict[str, dict[str, float]]:
    """Median CPU microseconds per request, all threads of the process (see the module docstring;
    the client's share is in it too, alike for every cell), by configuration and body."""
    import httpx

    from nsfwlab.serve import ServeConfig, create_app

    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(buf, format="JPEG")
    bodies = {"empty (422)": (b"", 422), "16x16 JPEG (200)": (buf.getvalue(), 200)}
    configs: dict[str, dict[str, Any]] = {"open": {}, "API key": {"api_keys": ("k",)}}  # + batching=False below
    try:
        ServeConfig(rate_limit="1000000/s")  # type: ignore[call-arg]
        configs["API key + rate limit"] = {"api_keys": ("k",), "rate_limit": "1000000/s"}
        configs["over the rate limit (429)"] = {"api_keys": ("k",), "rate_limit": "1/h"}
    except TypeError:  # a tree without rate limits
        pass

    async def timed(config: dict[str, Any], body: bytes, status: int) -> float:
        app = create_app(ServeConfig(batching=False, **config), fake_detector())  # no batch wait
        limited = status == 422 and config.get("rate_limit") == "1/h"
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://b", headers={"X-API-Key": "k"}) as c:
                for _ in range(20):
                    await c.post("/v1/score", content=body)
                t0 = time.process_time()  # CPU time of every thread: what the app costs, whatever the load
                for _ in range(n):
                    r = await c.post("/v1/score", content=body)
                    assert r.status_code == (429 if limited else status), r.text
                return (time.process_time() - t0) / n * 1e6

    samples: dict[tuple[str, str], list[float]] = {}
    for _ in range(reps):  # interleaved, so that load from other processes hits every cell alike
        for cname, config in configs.items():
            for bname, (body, status) in bodies.items():
                if cname.startswith("over") and status != 422:
                    continue
                samples.setdefault((cname, bname), []).append(asyncio.run(timed(config, body, status)))
    out: dict[str, dict[str, float]] = {}
    for (cname, bname), v in samples.items():
        out.setdefault(cname, {})[bname] = round(float(np.median(v)), 1)
    return out


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if line.startswith("Model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": model, "cores": str(os.cpu_count()), "python": platform.python_version(),
            "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=400, help="measured requests per mode")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--rounds", type=int, default=8, help="alternating rounds per mode")
    p.add_argument("--also-greedy", action="store_true", help="add a third mode: --max-batch 4 --max-wait-ms 0")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--overload-requests", type=int, default=600)
    p.add_argument("--overload-concurrency", type=int, default=128)
    p.add_argument("--overload-queue", type=int, default=16)
    p.add_argument("--timeout", type=float, default=60.0, help="client timeout per request (s)")
    p.add_argument("--budget", type=float, default=240.0, help="longest phase (s); stops early past it")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--overhead", type=int, default=0, metavar="N",
                   help="only measure the app's cost per request, N requests per cell (in process)")
    p.add_argument("--bank-latency", type=int, default=0, metavar="N",
                   help="only measure the latency a hash bank adds, N sequential requests per round (in process)")
    args = p.parse_args()

    if args.overhead or args.bank_latency:
        info = machine()
        print(f"# {info}", flush=True)
        result = ({"machine": info, "us_per_request": app_overhead(args.overhead)} if args.overhead
                  else {"machine": info, "bank_latency": bank_latency(args.bank_latency)})
        print(json.dumps(result, indent=2))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(result, fh, indent=2)
        return

    images = web_jpegs()
    info = machine()
    print(f"# {info}", flush=True)
    curve = model_batch_curve()
    print(f"# model alone, img/s by batch size: {curve}", flush=True)
    common = ["--decode-workers", "2"]
    modes = {
        "naive (--no-batching)": [*common, "--no-batching"],
        f"micro-batching (--max-batch {args.max_batch} --max-wait-ms {args.max_wait_ms:g})":
            [*common, "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)],
    }
    if args.also_greedy:
        modes["greedy (--max-batch 4 --max-wait-ms 0)"] = [*common, "--max-batch", "4", "--max-wait-ms", "0"]
    runs = compare(modes, images, args)
    naive = runs[0]
    for r in runs:
        print(json.dumps(r.summary()), flush=True)
    drift = max(abs(r.scores[k] - naive.scores[k]) for r in runs[1:] for k in r.scores.keys() & naive.scores.keys())
    overload_args = [*common, "--max-batch", str(args.max_batch), "--queue-size", str(args.overload_queue),
                     "--max-concurrent", str(args.overload_queue * 2)]
    overload = measure("overload", overload_args, images, args, args.overload_concurrency, args.overload_requests)
    print(json.dumps(overload.summary()), flush=True)
    info["load_average_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    total = sum(overload.statuses.values()) + overload.timeouts
    result = {
        "machine": info,
        "model_alone_img_per_s_by_batch": curve,
        "modes": [r.summary() for r in runs],
        "throughput_ratio_vs_naive": {r.mode: round(r.throughput / naive.throughput, 3) if naive.throughput else None
                                      for r in runs[1:]},
        "max_score_drift_vs_naive": drift,
        "overload": overload.summary(),
        "overload_share_refused": round((overload.statuses.get("429", 0) + overload.statuses.get("503", 0)) / total, 3)
        if total else None,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    print("\n| mode | concurrency | requests | img/s | p50 ms | p99 ms | mean batch |\n|---|---|---|---|---|---|---|")
    for r in runs:
        print(f"| {r.mode} | {r.concurrency} | {r.statuses.get('200', 0)} | {r.throughput:.1f} | {r.pct(50):.0f} | "
              f"{r.pct(99):.0f} | {r.mean_batch} |")
    print(f"\nratio vs naive: {result['throughput_ratio_vs_naive']}; max score drift {drift:.2e}")
    print(f"overload: {overload.statuses}, timeouts {overload.timeouts}; "
          f"429 p50/p99 {overload.pct(50, '429'):.1f}/{overload.pct(99, '429'):.1f} ms; "
          f"200 p50/p99 {overload.pct(50, '200'):.0f}/{overload.pct(99, '200'):.0f} ms")


if __name__ == "__main__":
    main()
