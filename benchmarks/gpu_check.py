"""The GPU path measured in one run: the stages behind ``benchmarks/gpu_check.sh``.

Each stage is a function of a :class:`Ctx` returning a dict of figures; ``--stage NAME`` runs one
(the shell script runs each under its own ``timeout``), writes ``WORK/stages/NAME.json`` and prints
its result; ``--merge`` gathers every stage (a stage killed by its timeout left no JSON: the exit
status the shell recorded in ``WORK/stages/NAME.rc`` says so) into one JSON report and prints a
summary. ``--all`` runs every stage in this process, then merges (no shell, no timeouts).

Stages, in the order they run (``plan()``):

- ``env``: date, GPU (nvidia-smi), torch/CUDA/cuDNN/torchvision/onnxruntime versions, CPUs, load.
- ``tests`` (CUDA only): pytest of the test files that hold CUDA tests.
- ``corpus``: ``--n`` web-size JPEGs (640x480 .. 1920x1080, baseline, quality 70..92), from
  scikit-image's bundled photos with random scales, crops, flips, colour and noise, generated in
  parallel on every core; reused when the same corpus is already there.
- ``model``: model-only images/s and score drift against fp32 of each precision variant (CUDA:
  fp32 (TF32 off, what exact mode runs), TF32, fp16 channels-last (what fast mode runs), bf16
  channels-last, fp16 channels-last with cudnn.benchmark; CPU: fp32, fp32 channels-last, bf16), on
  exactly preprocessed corpus images; fp32 is also compared with the onnxruntime CPU reference
  (the scores of ``nsfwlab score``).
- ``scan_fast`` / ``scan_exact``: ``python -m nsfwlab scan CORPUS --device D --mode M`` with a fresh
  store per run, timed as a whole command (model loading included) and by the scan's own summary;
  exact also reports the fast-vs-exact score drift over the corpus.
- ``preprocess_cpu``: the exact (and the fast/DCT-scaled) CPU preprocessing alone on every core,
  the ceiling of exact mode on a GPU machine.
- ``cpu_balance``: ``scan --device cpu`` (fast mode) on up to 1,000 files for several splits of the
  cores between decoding workers and model threads (the defaults first), and exact mode once.
- ``decode`` (CUDA only): batched nvJPEG decoding alone, + the GPU preprocessing, + the fp16 model:
  the fast path's ceilings without the CPU workers and the store.
- ``compile`` (CUDA only): ``torch.compile`` of the fp16 channels-last model: compile time,
  images/s, drift.
- ``scan_mixed`` (CUDA only): fast mode on a web-like mix (20% progressive JPEG, 5% PNG, 5%
  greyscale JPEG), which takes the per-image fallbacks.

    python benchmarks/gpu_check.py --all --cpu --n 8        # the CPU-checkable parts, small
    bash benchmarks/gpu_check.sh                            # the real run (see that file)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCHEMA = 1

#: Web image sizes (landscape; a third of the corpus is portrait).
WEB_SIZES = ((640, 480), (800, 600), (1024, 768), (1280, 720), (1280, 960), (1600, 900), (1920, 1080))
#: scikit-image's bundled files (read directly: skimage.data's loaders may try the network).
SOURCE_FILES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "ihc.png", "hubble_deep_field.jpg",
                "retina.jpg", "motorcycle_left.png", "camera.png", "color.png")
#: Test files that hold CUDA tests (the rest of their tests run on the CPU, quickly).
CUDA_TEST_FILES = ("tests/test_gpu_check.py", "tests/test_core_torch_model.py", "tests/test_scan_gpu.py",
                   "tests/test_detector.py")
FAST_TARGET_IMAGES_PER_S = 5000.0


@dataclass
class Ctx:
    work: Path
    device: str  # "cuda" or "cpu"
    n: int
    budget: float = 60.0  # seconds this stage may take (its timeout in the shell script)
    python: str = sys.executable
    started: float = field(default_factory=time.monotonic)

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    @property
    def corpus(self) -> Path:
        return self.work / "corpus"

    @property
    def stages(self) -> Path:
        return self.work / "stages"

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.started)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def child_env() -> dict[str, str]:
    """The environment of the commands a stage runs: this tree's ``src`` first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _pool(n: int) -> Any:
    # fork: the stage processes that use pools have not initialised CUDA (torch is not imported).
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    return ctx.Pool(n)


# --------------------------------------------------------------------------------------- env


def _run_text(cmd: list[str], timeout: float = 20) -> str | None:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def stage_env(ctx: Ctx) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    from corpus import cpu_name

    out: dict[str, Any] = {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpus": cores(),
        "loadavg": list(os.getloadavg()),
        "device": ctx.device,
        "commit": os.environ.get("GPU_CHECK_COMMIT")
        or _run_text(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
    }
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        out["memory_gib"] = round(pages / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    if shutil.which("nvidia-smi"):
        q = _run_text(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit",
                       "--format=csv,noheader"])
        out["nvidia_smi"] = q
        if q:
            out["gpu"] = q.split(",")[0].strip()
    import torch

    out["torch"] = torch.__version__
    out["torch_cuda"] = torch.version.cuda
    out["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out["torch_gpu"] = props.name
        out["gpu"] = out.get("gpu") or props.name
        out["capability"] = f"{props.major}.{props.minor}"
        out["multiprocessors"] = props.multi_processor_count
        out["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        out["cudnn"] = torch.backends.cudnn.version()
        out["default_allow_tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32,
                                     "cudnn": torch.backends.cudnn.allow_tf32}
    for mod in ("torchvision", "onnxruntime", "PIL", "numpy", "skimage", "triton"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            out[mod] = None
    import nsfwlab
    from nsfwlab.weights import resolve_onnx_path

    out["nsfwlab"] = nsfwlab.__version__
    out["nsfwlab_path"] = str(Path(nsfwlab.__file__).parent)
    try:
        out["weights"] = str(resolve_onnx_path())  # sha256-verified
    except Exception as exc:  # the rest of the report still helps; the model stages will fail on it
        out["weights"] = f"{type(exc).__name__}: {exc}"
        out["ok"] = False
    return out


# ------------------------------------------------------------------------------------ tests


def _pytest_counts(text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    lines = [ln for ln in text.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", ln)]
    if lines:
        for num, what in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)", lines[-1]):
            counts[what.rstrip("s") if what.startswith("error") else what] = int(num)
    return counts


def stage_tests(ctx: Ctx) -> dict[str, Any]:
    files = [f for f in CUDA_TEST_FILES if (ROOT / f).is_file()]
    cmd = [ctx.python, "-m", "pytest", *files, "-v", "-rfEs", "--durations=5", "-p", "no:cacheprovider"]
    t0 = time.monotonic()
    try:
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(10.0, ctx.left() - 5),
                             check=False, env=child_env())
        text, rc = res.stdout + res.stderr, res.returncode
    except subprocess.TimeoutExpired as exc:
        text = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        rc = 124
    print(text, flush=True)
    counts = _pytest_counts(text)
    return {
        "ok": rc == 0,
        "returncode": rc,
        "files": files,
        "counts": counts,
        "failed": re.findall(r"^(?:FAILED|ERROR) (\S+)", text, flags=re.M),
        "skipped": re.findall(r"^SKIPPED \[\d+\] (.+)$", text, flags=re.M),
        "seconds": round(time.monotonic() - t0, 1),
    }


# ----------------------------------------------------------------------------------- corpus


#: Bumped when the generator changes (a corpus left by an older one is remade).
CORPUS_VERSION = 2
_SOURCES: list[Any] = []
_NOISE: list[Any] = []  # one RGB tile of gaussian noise around 128, per worker
NOISE_TILE = 1920


def _load_sources() -> list[Any]:
    from PIL import Image

    images = []
    try:
        import skimage

        data = Path(skimage.__file__).parent / "data"
        for name in SOURCE_FILES:
            try:
                with Image.open(data / name) as im:
                    images.append(im.convert("RGB"))
            except OSError:
                continue
    except ImportError:
        pass
    if not images:  # no scikit-image: smooth synthetic colour fields stand in
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:512, 0:512] / 512.0
        for _ in range(6):
            a, b, c = rng.uniform(0.5, 6.0, 3)
            arr = np.stack([np.sin(a * xx + b * yy), np.cos(b * xx * yy * c), np.sin(c * (xx - yy))], -1)
            images.append(Image.fromarray(((arr + 1) * 127.5).astype(np.uint8)))
    return images


def _init_sources() -> None:
    from PIL import Image

    global _SOURCES, _NOISE
    _SOURCES = _load_sources()
    noise = np.random.default_rng(12345).standard_normal((NOISE_TILE, NOISE_TILE, 3), dtype=np.float32)
    _NOISE = [Image.fromarray((128.0 + 3.0 * noise).clip(0, 255).astype(np.uint8))]


def _make_one(job: tuple[int, int, str, str]) -> tuple[int, int]:
    """One corpus file: (index, seed, kind, path) -> (bytes, pixels). ``kind``: jpeg, progressive,
    grey (a greyscale JPEG) or png. A random region of a source photo, scaled up to a web size,
    flipped, colour- and brightness-shifted, with sensor-like noise (so that no two files are
    alike and JPEG sizes are photo-like)."""
    from PIL import Image, ImageChops, ImageEnhance

    i, seed, kind, path = job
    rng = np.random.default_rng([seed, i])
    src = _SOURCES[i % len(_SOURCES)]
    w, h = WEB_SIZES[int(rng.integers(len(WEB_SIZES)))]
    if rng.random() < 1 / 3:
        w, h = h, w
    scale = max(w / src.width, h / src.height) * float(rng.uniform(1.0, 1.6))
    bw, bh = w / scale, h / scale  # the region of the source, in source pixels
    left, top = float(rng.uniform(0, src.width - bw)), float(rng.uniform(0, src.height - bh))
    img = src.resize((w, h), Image.Resampling.BILINEAR, box=(left, top, left + bw, top + bh))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img = ImageEnhance.Color(img).enhance(float(rng.uniform(0.6, 1.4)))
    img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.85, 1.15)))
    nx, ny = int(rng.integers(0, NOISE_TILE - w + 1)), int(rng.integers(0, NOISE_TILE - h + 1))
    img = ImageChops.add(img, _NOISE[0].crop((nx, ny, nx + w, ny + h)), 1.0, -128)
    if kind == "grey":
        img = img.convert("L")
    if kind == "png":
        img.save(path, optimize=False, compress_level=1)
    else:
        img.save(path, quality=int(rng.integers(70, 93)), progressive=kind == "progressive")
    return os.path.getsize(path), w * h


def make_corpus(out: Path, n: int, *, seed: int = 0, progressive: float = 0.0, png: float = 0.0,
                grey: float = 0.0, processes: int | None = None) -> dict[str, Any]:
    """``n`` web-size images in ``out`` (made in parallel); reused when ``out`` holds the same corpus."""
    spec = {"generator": CORPUS_VERSION, "n": n, "seed": seed, "progressive": progressive, "png": png, "grey": grey,
            "sizes": WEB_SIZES}
    marker = out / ".corpus.json"
    if marker.is_file():
        old = json.loads(marker.read_text())
        if old.get("spec") == json.loads(json.dumps(spec)):
            return {**old["stats"], "reused": True}
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    draws = rng.random(n)
    jobs = []
    for i in range(n):
        r = draws[i]
        kind = ("progressive" if r < progressive else "png" if r < progressive + png
                else "grey" if r < progressive + png + grey else "jpeg")
        jobs.append((i, seed, kind, str(out / f"img_{i:05d}.{'png' if kind == 'png' else 'jpg'}")))
    t0 = time.perf_counter()
    procs = max(1, min(processes or cores(), n))
    if procs == 1:
        _init_sources()
        made = [_make_one(j) for j in jobs]
    else:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ctx.Pool(procs, initializer=_init_sources) as pool:
            made = pool.map(_make_one, jobs, chunksize=max(1, n // (procs * 8)))
    seconds = time.perf_counter() - t0
    kinds: dict[str, int] = {}
    for j in jobs:
        kinds[j[2]] = kinds.get(j[2], 0) + 1
    nbytes = sum(b for b, _ in made)
    stats = {
        "n": n, "kinds": kinds, "seconds": round(seconds, 2), "images_per_s": round(n / seconds, 1),
        "megabytes": round(nbytes / 1e6, 1), "mean_kb": round(nbytes / n / 1e3, 1),
        "mean_megapixels": round(sum(p for _, p in made) / n / 1e6, 3), "processes": procs,
    }
    marker.write_text(json.dumps({"spec": spec, "stats": stats}))
    return {**stats, "reused": False}


def corpus_files(root: Path, limit: int | None = None) -> list[Path]:
    files = sorted(p for p in root.iterdir() if p.suffix in (".jpg", ".png"))
    return files[:limit] if limit else files


def stage_corpus(ctx: Ctx) -> dict[str, Any]:
    stats = make_corpus(ctx.corpus, ctx.n)
    stats["path"] = str(ctx.corpus)
    return stats


# ------------------------------------------------------------------------------------ model


def _preprocess_exact(path: str) -> np.ndarray:
    from nsfwlab.preprocess import preprocess

    return preprocess(path)


def exact_inputs(files: list[Path]) -> np.ndarray:
    """NHWC float32 network inputs of ``files`` by the exact pipeline, on every core."""
    with _pool(max(1, min(cores(), len(files)))) as pool:
        arrays = pool.map(_preprocess_exact, [str(f) for f in files], chunksize=4)
    return np.ascontiguousarray(np.stack(arrays), dtype=np.float32)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def images_per_s(fn: Callable[[Any], Any], x: Any, device: str, *, seconds: float = 1.5,
                 max_iters: int = 200) -> dict[str, Any]:
    """Throughput of ``fn(x)`` (x: a batch on the device): 3 warm-up calls on the GPU, a timed probe
    call (the CPU's only warm-up), then as many calls as fit in about ``seconds`` (at least 3 on the
    GPU, 1 on the CPU), timed with CUDA events on the GPU, perf_counter on the CPU."""
    import torch

    cuda = device == "cuda"
    with torch.inference_mode():
        for _ in range(3 if cuda else 0):
            fn(x)
        _sync(device)
        t0 = time.perf_counter()
        fn(x)
        _sync(device)
        one = max(time.perf_counter() - t0, 1e-6)
        iters = int(max(3 if cuda else 1, min(max_iters, seconds / one)))
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn(x)
            end.record()
            end.synchronize()
            elapsed = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            for _ in range(iters):
                fn(x)
            elapsed = time.perf_counter() - t0
    batch = int(x.shape[0])
    return {"batch": batch, "iters": iters, "seconds": round(elapsed, 3),
            "images_per_s": round(batch * iters / elapsed, 1), "ms_per_batch": round(1e3 * elapsed / iters, 3)}


@dataclass
class Variant:
    name: str
    dtype: str  # float32 | float16 | bfloat16
    channels_last: bool
    tf32: bool = False
    cudnn_benchmark: bool = False
    compiled: bool = False
    note: str = ""


CUDA_VARIANTS = (
    Variant("fp32", "float32", True, note="TF32 off: what `scan --mode exact --device cuda` runs"),
    Variant("tf32", "float32", True, tf32=True, note="TF32 convolutions and matmuls (PyTorch's cuDNN default)"),
    Variant("fp16_cl", "float16", True, note="fp16 channels-last: what `scan --mode fast --device cuda` runs"),
    Variant("bf16_cl", "bfloat16", True),
    Variant("fp16_cl_cudnn_benchmark", "float16", True, cudnn_benchmark=True, note="cudnn.benchmark=True"),
)
CPU_VARIANTS = (
    Variant("fp32", "float32", False),
    Variant("bf16_cl", "bfloat16", True),
)
COMPILED_VARIANT = Variant("fp16_cl_compiled", "float16", True, compiled=True,
                           note="torch.compile(model) (inductor, default mode) of fp16_cl")


def _set_backend_flags(v: Variant) -> None:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = v.tf32
    torch.backends.cudnn.allow_tf32 = v.tf32
    torch.backends.cudnn.benchmark = v.cudnn_benchmark


def build_variant(v: Variant, device: str) -> tuple[Callable[[Any], Any], float]:
    """A callable NCHW float32 batch (on ``device``) -> NSFW probabilities, and its build seconds
    (for a compiled variant: the compilation, triggered by the first call, is timed by the caller)."""
    import torch

    from nsfwlab.model import load_open_nsfw

    t0 = time.perf_counter()
    dtype = getattr(torch, v.dtype)
    net = load_open_nsfw().eval().to(device)
    if v.channels_last:
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    net = net.to(dtype)
    model: Any = torch.compile(net) if v.compiled else net
    fmt = torch.channels_last if v.channels_last else torch.contiguous_format

    def run(x: Any) -> Any:
        _set_backend_flags(v)
        logits = model(x.to(dtype=dtype).contiguous(memory_format=fmt))
        return torch.softmax(logits.float(), dim=1)[:, 1]

    return run, time.perf_counter() - t0


def nsfw_scores(fn: Callable[[Any], Any], inputs: np.ndarray, device: str, batch: int) -> np.ndarray:
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(inputs), batch):
            x = torch.from_numpy(inputs[i:i + batch]).permute(0, 3, 1, 2).to(device)
            out.append(fn(x).float().cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def drift(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    d = np.abs(a - b)
    bands = lambda s: np.digitize(s, [0.2, 0.8], right=True)  # noqa: E731
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "p99_abs": float(np.quantile(d, 0.99)),
            "band_changes": int((bands(a) != bands(b)).sum()), "n": len(d)}


def _timing_batch(inputs: np.ndarray, size: int, device: str) -> Any:
    import torch

    reps = -(-size // len(inputs))
    x = np.concatenate([inputs] * reps)[:size]
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(device)


def _model_sizes(ctx: Ctx) -> tuple[int, tuple[int, ...]]:
    """(inputs for the drift, batch sizes for the timing)."""
    return (512, (32, 256)) if ctx.cuda else (min(ctx.n, 8), (2,))


def measure_variant(v: Variant, ctx: Ctx, inputs: np.ndarray, reference: np.ndarray | None,
                    batches: tuple[int, ...], seconds: float) -> tuple[dict[str, Any], np.ndarray]:
    import torch

    fn, built = build_variant(v, ctx.device)
    res: dict[str, Any] = {"dtype": v.dtype, "channels_last": v.channels_last, "tf32": v.tf32,
                           "cudnn_benchmark": v.cudnn_benchmark, "note": v.note}
    if v.compiled:
        x = _timing_batch(inputs, batches[-1], ctx.device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            fn(x)
        _sync(ctx.device)
        res["compile_seconds"] = round(time.perf_counter() - t0 + built, 1)
    res["throughput"] = {str(b): images_per_s(fn, _timing_batch(inputs, b, ctx.device), ctx.device,
                                              seconds=seconds) for b in batches}
    res["images_per_s"] = res["throughput"][str(batches[-1])]["images_per_s"]
    scores = nsfw_scores(fn, inputs, ctx.device, batches[-1])
    if reference is not None:
        res["drift_vs_fp32"] = drift(scores, reference)
    if ctx.cuda:
        res["max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        torch.cuda.reset_peak_memory_stats()
    return res, scores


def stage_model(ctx: Ctx) -> dict[str, Any]:
    n_inputs, batches = _model_sizes(ctx)
    files = corpus_files(ctx.corpus, n_inputs)
    if not files:
        raise RuntimeError(f"no corpus in {ctx.corpus}: run the corpus stage first")
    t0 = time.perf_counter()
    inputs = exact_inputs(files)
    prep_s = time.perf_counter() - t0
    np.save(ctx.work / "model_inputs.npy", inputs)

    from nsfwlab import Detector

    det = Detector(device="cpu")  # onnxruntime: the reference scores of `nsfwlab score`
    onnx_scores = det.backend.predict(inputs)[:, 1].astype(np.float64) if len(inputs) <= 64 else np.concatenate(
        [det.backend.predict(inputs[i:i + 64])[:, 1] for i in range(0, len(inputs), 64)]).astype(np.float64)
    det.close()

    variants = CUDA_VARIANTS if ctx.cuda else CPU_VARIANTS
    out: dict[str, Any] = {"inputs": len(inputs), "preprocess_seconds": round(prep_s, 2), "variants": {}}
    reference: np.ndarray | None = None
    seconds = 1.5 if ctx.cuda else 0.1
    for v in variants:
        try:
            res, scores = measure_variant(v, ctx, inputs, reference, batches, seconds)
        except Exception as exc:  # one variant failing must not lose the others
            out["variants"][v.name] = {"error": f"{type(exc).__name__}: {exc}"}
            traceback.print_exc()
            continue
        if v.name == "fp32":  # the reference (first in the list)
            reference = scores
            res["drift_vs_fp32"] = drift(scores, reference)
            np.save(ctx.work / "fp32_scores.npy", reference)
        res["drift_vs_onnxruntime_cpu"] = drift(scores, onnx_scores)
        out["variants"][v.name] = res
        print(f"  {v.name:26s} {res['images_per_s']:>10.1f} images/s  max|drift| vs fp32 "
              f"{_get(res, 'drift_vs_fp32', 'max_abs')}, vs onnxruntime CPU "
              f"{res['drift_vs_onnxruntime_cpu']['max_abs']:.2e}", flush=True)
    return out


def stage_compile(ctx: Ctx) -> dict[str, Any]:
    inputs = np.load(ctx.work / "model_inputs.npy")
    reference = np.load(ctx.work / "fp32_scores.npy")
    _, batches = _model_sizes(ctx)
    res, _ = measure_variant(COMPILED_VARIANT, ctx, inputs, reference, batches[-1:], 1.5)
    return {"variants": {COMPILED_VARIANT.name: res}}


# ------------------------------------------------------------------------------------- scan


def scan_once(ctx: Ctx, root: Path, mode: str, *, tag: str, batch_size: int, workers: int | None = None,
              timeout: float = 120.0, device: str | None = None, threads: int | None = None,
              executor: str | None = None) -> dict[str, Any]:
    """One ``python -m nsfwlab scan`` with a fresh store, timed as a whole command."""
    db = ctx.work / "db" / f"{tag}.sqlite"
    db.parent.mkdir(parents=True, exist_ok=True)
    for p in db.parent.glob(db.name + "*"):
        p.unlink()
    cmd = [ctx.python, "-m", "nsfwlab", "scan", str(root), "--db", str(db), "--device", device or ctx.device,
           "--mode", mode, "--batch-size", str(batch_size), "--no-progress", "--json"]
    if workers:
        cmd += ["--workers", str(workers)]
    if threads:
        cmd += ["--threads", str(threads)]
    if executor:
        cmd += ["--executor", executor]
    n = len(corpus_files(root))
    res: dict[str, Any] = {"mode": mode, "batch_size": batch_size, "workers": workers or "default",
                           "threads": threads or "default", "executor": executor or "auto",
                           "files": n, "db": str(db), "command": " ".join(cmd[1:])}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT,
                              env=child_env())
    except subprocess.TimeoutExpired:
        res.update(status="timeout", timeout_s=round(timeout, 1))
        return res
    wall = time.perf_counter() - t0
    res["returncode"] = proc.returncode
    res["wall_seconds"] = round(wall, 2)
    try:
        summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    except ValueError:
        res.update(status="failed", stderr=proc.stderr[-3000:], stdout=proc.stdout[-1000:])
        return res
    res["summary"] = summary
    res["scored"] = summary["scored"]
    res["images_per_s_wall"] = round(summary["scored"] / wall, 1)  # start-up and model loading included
    res["images_per_s_scan"] = summary["files_per_second"]  # the scan itself (the store opened, model loaded)
    ok = proc.returncode == 0 and summary["scored"] == n and summary["errors"] == 0
    res["status"] = "ok" if ok else "failed"
    if not ok:
        res["stderr"] = proc.stderr[-3000:]
    return res


def scan_configs(ctx: Ctx, mode: str) -> list[dict[str, Any]]:
    if not ctx.cuda:
        return [{"batch_size": 4}]
    if mode == "fast":  # the headline first
        return [{"batch_size": 256}, {"batch_size": 32}]
    return [{"batch_size": 64}, {"batch_size": 64, "workers": cores()}]


def _run_scans(ctx: Ctx, mode: str, root: Path, tag: str) -> dict[str, Any]:
    runs = []
    configs = scan_configs(ctx, mode)
    for i, cfg in enumerate(configs):
        left = ctx.left() - 3
        if left < 15:
            runs.append({**cfg, "status": "skipped", "reason": "out of stage time"})
            continue
        # the first run may use most of the time; later ones what is left
        timeout = left if i == len(configs) - 1 else left * (0.6 if i == 0 else 0.5)
        r = scan_once(ctx, root, mode, tag=f"{tag}_{i}", timeout=timeout, **cfg)
        runs.append(r)
        print(f"  {mode} {cfg}: {r.get('status')} {r.get('images_per_s_scan')} images/s (scan), "
              f"{r.get('images_per_s_wall')} (whole command, {r.get('wall_seconds')} s)", flush=True)
    good = [r for r in runs if r.get("status") == "ok"]
    out: dict[str, Any] = {"runs": runs, "ok": bool(good)}
    if good:
        best = max(good, key=lambda r: r["images_per_s_scan"])
        out["best"] = {k: best[k] for k in ("batch_size", "workers", "images_per_s_scan", "images_per_s_wall",
                                            "wall_seconds")}
    return out


def stage_scan_fast(ctx: Ctx) -> dict[str, Any]:
    out = _run_scans(ctx, "fast", ctx.corpus, "fast")
    if ctx.cuda and "best" in out:
        out["target_images_per_s"] = FAST_TARGET_IMAGES_PER_S
        out["target_met"] = out["best"]["images_per_s_scan"] >= FAST_TARGET_IMAGES_PER_S
    return out


def store_scores(db: Path) -> dict[str, float]:
    from nsfwlab.scan import ResultStore

    with ResultStore(db, readonly=True) as store:
        return {r["path"]: r["score"] for r in store.iter_rows() if r["score"] is not None}


def stage_scan_exact(ctx: Ctx) -> dict[str, Any]:
    out = _run_scans(ctx, "exact", ctx.corpus, "exact")
    fast_db, exact_db = ctx.work / "db" / "fast_0.sqlite", ctx.work / "db" / "exact_0.sqlite"
    if fast_db.is_file() and exact_db.is_file():
        fast, exact = store_scores(fast_db), store_scores(exact_db)
        common = sorted(set(fast) & set(exact))
        if common:
            out["fast_vs_exact"] = drift(np.array([fast[p] for p in common]), np.array([exact[p] for p in common]))
            out["exact_score_spread"] = {"min": min(exact.values()), "max": max(exact.values()),
                                         "above_0.2": sum(s > 0.2 for s in exact.values())}
    return out


def stage_scan_mixed(ctx: Ctx) -> dict[str, Any]:
    root = ctx.work / "mixed"
    stats = make_corpus(root, max(8, ctx.n // 5), seed=1, progressive=0.2, png=0.05, grey=0.05)
    configs = scan_configs(ctx, "fast")[:1]
    r = scan_once(ctx, root, "fast", tag="mixed", timeout=max(10.0, ctx.left() - 3), **configs[0])
    return {"corpus": stats, "run": r, "ok": r.get("status") == "ok"}


def balance_configs(ctx: Ctx) -> list[dict[str, Any]]:
    """Decoding workers x model threads for the CPU scan on this machine's cores ("the
    balance of decoding threads and model threads on 2 to 16 cores"); the defaults first."""
    n = cores()
    if not ctx.cuda:
        return [{}, {"workers": 1, "threads": 1, "executor": "thread"}]
    half, quarter = max(1, n // 2), max(1, n // 4)
    return [{}, {"executor": "process", "workers": half, "threads": half},
            {"executor": "thread", "workers": half, "threads": half},
            {"executor": "process", "workers": n - quarter, "threads": quarter},
            {"executor": "process", "workers": quarter, "threads": n - quarter}]


def stage_cpu_balance(ctx: Ctx) -> dict[str, Any]:
    """``scan --device cpu`` (fast, then exact with the defaults) on up to 1,000 of the corpus's
    files, for each balance of decoding workers and model threads: what the CPU path gives on a
    16-core machine, and whether the defaults are the best split."""
    root = ctx.work / "balance"
    files = corpus_files(ctx.corpus, 1000 if ctx.cuda else None)
    root.mkdir(parents=True, exist_ok=True)
    for f in files:
        link = root / f.name
        if not link.exists():
            link.symlink_to(f)
    runs = []
    configs = [("fast", c) for c in balance_configs(ctx)] + [("exact", {})]
    for i, (mode, cfg) in enumerate(configs):
        left = ctx.left() - 3
        if left < 8:
            runs.append({"mode": mode, **cfg, "status": "skipped", "reason": "out of stage time"})
            continue
        r = scan_once(ctx, root, mode, tag=f"balance_{i}", batch_size=32, device="cpu",
                      timeout=left / max(1, len(configs) - i) * 1.5, **cfg)
        runs.append(r)
        print(f"  cpu {mode} {cfg or 'defaults'}: {r.get('status')} {r.get('images_per_s_scan')} images/s (scan), "
              f"{r.get('images_per_s_wall')} (whole command)", flush=True)
    good = [r for r in runs if r.get("status") == "ok" and r["mode"] == "fast"]
    out: dict[str, Any] = {"files": len(files), "cores": cores(), "runs": runs, "ok": bool(good)}
    if good:
        best = max(good, key=lambda r: r["images_per_s_scan"])
        out["best_fast"] = {k: best[k] for k in ("workers", "threads", "executor", "images_per_s_scan",
                                                 "images_per_s_wall")}
        out["defaults_share_of_best"] = round(good[0]["images_per_s_scan"] / best["images_per_s_scan"], 3) \
            if runs[0].get("status") == "ok" else None
    return out


# ------------------------------------------------------------------------ CPU preprocessing


def _prep_checksum(job: tuple[str, bool]) -> float:
    from nsfwlab.config import PreprocessConfig
    from nsfwlab.preprocess import preprocess

    path, draft = job
    return float(preprocess(path, PreprocessConfig(draft=draft))[0, 0, 0])


def stage_preprocess_cpu(ctx: Ctx) -> dict[str, Any]:
    """The CPU preprocessing alone on every core (a process each): exact (the exact-mode ceiling on
    a GPU machine) and DCT-scaled (fast mode's CPU pipeline)."""
    files = [str(f) for f in corpus_files(ctx.corpus, 2000 if ctx.cuda else None)]
    procs = cores()
    out: dict[str, Any] = {"processes": procs, "files": len(files)}
    with _pool(procs) as pool:
        pool.map(_prep_checksum, [(f, False) for f in files[: 2 * procs]])  # warm the workers
        for name, draft in (("exact", False), ("fast_draft", True)):
            t0 = time.perf_counter()
            pool.map(_prep_checksum, [(f, draft) for f in files], chunksize=4)
            s = time.perf_counter() - t0
            out[name] = {"seconds": round(s, 2), "images_per_s": round(len(files) / s, 1),
                         "images_per_s_per_core": round(len(files) / s / procs, 1)}
            print(f"  {name}: {out[name]['images_per_s']} images/s on {procs} processes", flush=True)
    return out


# ------------------------------------------------------------------------------ GPU decode


def stage_decode(ctx: Ctx) -> dict[str, Any]:
    """Batched nvJPEG decoding alone, then + the GPU preprocessing, then + the fp16 model: the
    ceilings of the fast path with the files' bytes already in memory."""
    import torch
    import torchvision
    from torchvision.io import ImageReadMode, decode_jpeg

    from nsfwlab.backends import TorchBackend
    from nsfwlab.config import Precision, PreprocessConfig
    from nsfwlab.scan.gpu import gpu_preprocess
    from nsfwlab.scan.modes import fast_preprocess

    files = corpus_files(ctx.corpus, 1024)
    datas = [torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8) for f in files]
    batch = 256
    chunks = [datas[i:i + batch] for i in range(0, len(datas), batch)]
    cfg = fast_preprocess(PreprocessConfig())
    backend = TorchBackend(device="cuda", precision=Precision.FP16)

    def decode(chunk: list[Any]) -> list[Any]:
        return list(decode_jpeg(chunk, mode=ImageReadMode.RGB, device="cuda"))

    steps: dict[str, Callable[[list[Any]], Any]] = {
        "nvjpeg_decode": decode,
        "decode_preprocess": lambda c: gpu_preprocess(decode(c), cfg),
        "decode_preprocess_fp16_model": lambda c: backend.predict_tensor(
            gpu_preprocess(decode(c), cfg).contiguous(memory_format=torch.channels_last)),
    }
    out: dict[str, Any] = {"files": len(files), "batch": batch, "torchvision": torchvision.__version__,
                           "mean_megapixels": None}
    out["mean_megapixels"] = round(float(np.mean([im.shape[1] * im.shape[2] for im in decode(chunks[0])])) / 1e6, 3)
    for name, fn in steps.items():
        with torch.inference_mode():
            fn(chunks[0])  # warm-up
            torch.cuda.synchronize()
            t0, done, passes = time.perf_counter(), 0, 0
            while passes < 1 or (time.perf_counter() - t0 < 2.0 and passes < 20):
                for c in chunks:
                    fn(c)
                    done += len(c)
                passes += 1
            torch.cuda.synchronize()
            s = time.perf_counter() - t0
        out[name] = {"images_per_s": round(done / s, 1), "images": done, "seconds": round(s, 2)}
        print(f"  {name}: {out[name]['images_per_s']} images/s", flush=True)
    return out


# ------------------------------------------------------------------------------------ plan


STAGES: dict[str, tuple[Callable[[Ctx], dict[str, Any]], int, bool]] = {
    # name: (function, budget in seconds on the GPU machine, CUDA only)
    "env": (stage_env, 30, False),
    "tests": (stage_tests, 90, True),
    "corpus": (stage_corpus, 60, False),
    "model": (stage_model, 60, False),
    "scan_fast": (stage_scan_fast, 60, False),
    "scan_exact": (stage_scan_exact, 75, False),
    "preprocess_cpu": (stage_preprocess_cpu, 30, False),
    "cpu_balance": (stage_cpu_balance, 45, False),
    "decode": (stage_decode, 30, True),
    "compile": (stage_compile, 100, True),
    "scan_mixed": (stage_scan_mixed, 45, True),
}


def plan(device: str) -> list[tuple[str, int]]:
    return [(name, budget) for name, (_, budget, cuda_only) in STAGES.items() if device == "cuda" or not cuda_only]


def run_stage(name: str, ctx: Ctx) -> dict[str, Any]:
    """Run one stage, catching its failure; write and return its record."""
    fn = STAGES[name][0]
    ctx.stages.mkdir(parents=True, exist_ok=True)
    ctx.started = time.monotonic()
    print(f"== {name} (budget {ctx.budget:.0f} s, device {ctx.device})", flush=True)
    t0 = time.perf_counter()
    try:
        result = fn(ctx)
        status = "failed" if result.get("ok") is False else "ok"
        rec: dict[str, Any] = {"status": status, "result": result}
    except Exception as exc:
        traceback.print_exc()
        rec = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
               "traceback": traceback.format_exc()[-3000:]}
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    (ctx.stages / f"{name}.json").write_text(json.dumps(rec, indent=1, default=str))
    print(f"== {name}: {rec['status']} in {rec['seconds']} s" + (f" ({rec['error']})" if "error" in rec else ""),
          flush=True)
    return rec


# ----------------------------------------------------------------------------------- merge


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def merge(work: Path, device: str, out: Path, *, log: str | None = None, started: str | None = None) -> dict[str, Any]:
    """One report of every planned stage: its own record, or what the shell saw (a timeout)."""
    stages: dict[str, Any] = {}
    for name, budget in plan(device):
        rec_path, rc_path = work / "stages" / f"{name}.json", work / "stages" / f"{name}.rc"
        shell = rc_path.read_text().split() if rc_path.is_file() else []
        if rec_path.is_file():
            rec = json.loads(rec_path.read_text())
        elif shell and shell[0] == "skipped":
            rec = {"status": "skipped", "reason": " ".join(shell[1:])}
        elif shell:
            rc = int(shell[0])
            rec = {"status": "timeout" if rc in (124, 137) else "failed", "returncode": rc,
                   "error": "killed by its timeout" if rc in (124, 137) else "exited without a record"}
        else:
            rec = {"status": "not run"}
        rec["budget_s"] = budget
        if len(shell) > 1 and shell[0] != "skipped":
            rec["shell_seconds"] = float(shell[1])
        stages[name] = rec

    res = {k: v.get("result") for k, v in stages.items()}
    env = res.get("env") or {}
    variants = {**(_get(res, "model", "variants") or {}), **(_get(res, "compile", "variants") or {})}
    prep_exact = _get(res, "preprocess_cpu", "exact", "images_per_s")
    exact_best = _get(res, "scan_exact", "best", "images_per_s_scan")
    summary: dict[str, Any] = {
        "gpu_measured": device == "cuda",
        "gpu": env.get("gpu"), "torch": env.get("torch"), "date_utc": env.get("date_utc"),
        "cpus": env.get("cpus"), "cpu": env.get("cpu"), "loadavg": env.get("loadavg"),
        "stages": {k: v["status"] for k, v in stages.items()},
        "tests": _get(res, "tests", "counts"),
        "corpus": {k: _get(res, "corpus", k) for k in ("n", "mean_megapixels", "mean_kb", "images_per_s")},
        "model_images_per_s": {k: v.get("images_per_s") for k, v in variants.items()},
        "model_drift_max_vs_fp32": {k: _get(v, "drift_vs_fp32", "max_abs") for k, v in variants.items()},
        "fp32_vs_onnxruntime_cpu_max": _get(variants, "fp32", "drift_vs_onnxruntime_cpu", "max_abs"),
        "compile_seconds": _get(variants, COMPILED_VARIANT.name, "compile_seconds"),
        "scan_fast_best": _get(res, "scan_fast", "best"),
        "scan_exact_best": _get(res, "scan_exact", "best"),
        "fast_vs_exact_drift": _get(res, "scan_exact", "fast_vs_exact"),
        "cpu_preprocess_exact_images_per_s": prep_exact,
        "cpu_preprocess_fast_images_per_s": _get(res, "preprocess_cpu", "fast_draft", "images_per_s"),
        "cpu_scan_fast_best": _get(res, "cpu_balance", "best_fast"),
        "cpu_scan_defaults_share_of_best": _get(res, "cpu_balance", "defaults_share_of_best"),
        "exact_scan_share_of_cpu_ceiling": round(exact_best / prep_exact, 3) if exact_best and prep_exact else None,
        "decode": None if device != "cuda" else {
            k: _get(res, "decode", k, "images_per_s")
            for k in ("nvjpeg_decode", "decode_preprocess", "decode_preprocess_fp16_model")},
        "scan_mixed": _get(res, "scan_mixed", "run", "images_per_s_scan"),
        "fast_target_images_per_s": FAST_TARGET_IMAGES_PER_S,
        "fast_target_met": _get(res, "scan_fast", "target_met"),
    }
    if device != "cuda":
        summary["note"] = ("GPU figures not measured: no CUDA device here; these are the CPU-checkable parts "
                           "at a small scale (their figures are not GPU figures)")
    report = {"schema": SCHEMA, "tool": "benchmarks/gpu_check.py", "device": device, "started": started,
              "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "log": log,
              "summary": summary, "stages": stages}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print_summary(summary)
    print(f"report: {out}" + (f"; log: {log}" if log else ""), flush=True)
    return report


def print_summary(s: dict[str, Any]) -> None:
    print("\n==== gpu_check summary ====")
    for k, v in s.items():
        print(f"{k}: {json.dumps(v, default=str)}")
    print("===========================", flush=True)


# ------------------------------------------------------------------------------------- CLI


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_n(device: str) -> int:
    return 5000 if device == "cuda" else 8


def run_all(work: Path, device: str, n: int, out: Path, *, budget_scale: float = 1.0) -> dict[str, Any]:
    """Every stage in this process (no timeouts), then the report."""
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    if (work / "stages").exists():
        shutil.rmtree(work / "stages")
    for name, budget in plan(device):
        run_stage(name, Ctx(work=work, device=device, n=n, budget=budget * budget_scale))
    return merge(work, device, out, started=started)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--stage", choices=list(STAGES))
    what.add_argument("--all", action="store_true", help="every stage in this process, then --merge")
    what.add_argument("--merge", action="store_true", help="gather the stage records into one report")
    what.add_argument("--plan", action="store_true", help="print the stages and their budgets")
    what.add_argument("--resolve-device", action="store_true", help="print cuda or cpu")
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--cpu", action="store_true", help="same as --device cpu")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "nsfwlab_gpu_check")
    ap.add_argument("--n", type=int, default=None, help="corpus size (default 5000 on CUDA, 8 on the CPU)")
    ap.add_argument("--budget", type=float, default=None, help="seconds this stage may take")
    ap.add_argument("--out", type=Path, default=HERE / "out" / "gpu_check.json")
    ap.add_argument("--log", default=None, help="the log's path, recorded in the report")
    ap.add_argument("--started", default=None)
    args = ap.parse_args(argv)
    device = resolve_device("cpu" if args.cpu else args.device)
    if args.resolve_device:
        print(device)
        return 0
    if args.plan:
        for name, budget in plan(device):
            print(name, budget)
        return 0
    n = args.n or default_n(device)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.merge:
        merge(args.work, device, args.out, log=args.log, started=args.started)
        return 0
    if args.all:
        run_all(args.work, device, n, args.out)
        return 0
    budget = args.budget if args.budget is not None else STAGES[args.stage][1]
    rec = run_stage(args.stage, Ctx(work=args.work, device=device, n=n, budget=budget))
    print(json.dumps(rec.get("result", rec), indent=1, default=str)[:4000], flush=True)
    return 0 if rec["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
