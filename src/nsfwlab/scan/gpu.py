"""The GPU fast path (``--device cuda --mode fast``): batched nvJPEG decoding and GPU resizing
feeding the fp16 model; CPU workers handle what the GPU decoder cannot.

Per file, a CPU worker (thread or process) reads the bytes, hashes them, checks the header against the decode
caps (decompression bombs never reach the GPU) and routes the file (:func:`route`):

- baseline/progressive JPEGs in RGB or greyscale go to the GPU as raw bytes:
  ``torchvision.io.decode_jpeg(..., device="cuda")`` decodes a whole batch, then
  :func:`gpu_preprocess` resizes each image to 256x256 (antialiased bilinear), runs the JPEG round
  trip on the GPU (``torchvision.io.encode_jpeg`` / ``decode_jpeg`` on CUDA tensors, quality 75),
  crops 224, swaps to BGR and subtracts the mean, all on the device;
- every other file (PNG, GIF, WebP, BMP, TIFF, CMYK JPEGs) is preprocessed on the CPU by the core's
  fast pipeline and joins the same batch.

Exact mode on a GPU machine does not come here: it runs the core's exact CPU preprocessing into
the fp32 model (scores equal `nsfwlab score`'s). torchvision is imported only here.

Not measured: this path has no GPU in CI or on the development machine; its logic (routing, the
tensor preprocessing, batching) is tested on the CPU with a Pillow stand-in for the GPU JPEG round
trip, and the drift of the GPU resize is stated from those tests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from ..config import DecodeLimits, PreprocessConfig
from ..errors import BackendUnavailableError, NsfwlabError
from .pipeline import (
    Engine,
    Prepared,
    ProgressFn,
    ScanConfig,
    ScanModel,
    ScanSummary,
    WorkerContext,
    _plan,
    _Writer,
    pack_array,
    prepare_file,
    unpack_array,
    worker_context,
)
from .store import ResultStore
from .walk import WalkedFile

__all__ = ["Route", "gpu_preprocess", "pillow_jpeg_roundtrip", "require_torchvision", "route", "scan_gpu"]


class Route(str, Enum):
    GPU = "gpu"  # raw JPEG bytes, decoded by nvJPEG
    CPU = "cpu"  # preprocessed by the core on a CPU worker


#: Pillow modes of JPEGs that nvJPEG decodes to RGB faithfully.
GPU_JPEG_MODES = frozenset({"RGB", "L"})


def route(fmt: str, mode: str) -> Route:
    """Where a file is decoded, from its sniffed format and header mode."""
    return Route.GPU if fmt == "JPEG" and mode in GPU_JPEG_MODES else Route.CPU


def require_torchvision() -> Any:
    try:
        import torchvision
        import torchvision.io
    except ImportError:
        raise BackendUnavailableError(
            "GPU JPEG decoding needs torchvision built for your torch (pip install torchvision); "
            "or use --mode exact, which decodes on the CPU"
        ) from None
    return torchvision


def pillow_jpeg_roundtrip(images: Any, quality: int) -> Any:
    """The JPEG round trip on CPU tensors with Pillow: the stand-in for the GPU encoder in tests
    and for machines whose torchvision lacks CUDA JPEG encoding."""
    import torch
    from PIL import Image

    from ..preprocess import jpeg_roundtrip

    out = []
    for img in images:
        arr = img.permute(1, 2, 0).contiguous().cpu().numpy()
        out.append(torch.from_numpy(jpeg_roundtrip(Image.fromarray(arr), quality).copy()).permute(2, 0, 1))
    return [o.to(images[0].device) for o in out]


def _gpu_jpeg_roundtrip(images: Any, quality: int) -> Any:
    tv = require_torchvision()
    encoded = tv.io.encode_jpeg(list(images), quality=quality)
    return tv.io.decode_jpeg(encoded, mode=tv.io.ImageReadMode.RGB, device=images[0].device)


def gpu_preprocess(images: Sequence[Any], config: PreprocessConfig,
                   roundtrip: Callable[[Any, int], Any] | None = None) -> Any:
    """uint8 RGB CHW tensors (any sizes, on one device) -> the NCHW float32 BGR mean-subtracted batch.

    The steps of the core pipeline, on the tensors' device: antialiased bilinear resize to
    ``config.resize`` (torch's, not Pillow's: measured drift ~0.011), the JPEG round trip
    (``roundtrip``, default the GPU encoder), centre crop, RGB->BGR, mean subtraction.
    """
    import torch
    import torch.nn.functional as F

    resized = [
        F.interpolate(img[None].float(), size=(config.resize, config.resize), mode="bilinear",
                      antialias=True, align_corners=False).round().clamp(0, 255).to(torch.uint8)[0]
        for img in images
    ]
    if config.jpeg_roundtrip:
        resized = list((roundtrip or _gpu_jpeg_roundtrip)(resized, config.jpeg_quality))
    top = (config.resize - config.crop) // 2
    batch = torch.stack([r[:, top : top + config.crop, top : top + config.crop] for r in resized])
    bgr = batch.flip(1).float()
    mean = torch.tensor(config.mean_bgr, dtype=torch.float32, device=bgr.device).view(1, 3, 1, 1)
    return bgr - mean


JpegDecoder = Callable[[list[bytes]], Sequence[Any]]


def _nvjpeg_decoder(device: str) -> JpegDecoder:
    tv = require_torchvision()
    import torch

    def decode(datas: list[bytes]) -> Sequence[Any]:
        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        return list(tv.io.decode_jpeg(tensors, mode=tv.io.ImageReadMode.RGB, device=device))

    return decode


@dataclass
class _Raw:
    """A JPEG routed to the GPU: its bytes, read and header-checked by a CPU worker."""

    file: WalkedFile
    sha256: str
    data: bytes


def _prepare_or_route(file: WalkedFile, preprocess: PreprocessConfig, limits: DecodeLimits,
                      pack: bool = True) -> Prepared | _Raw:
    from ..imageio import open_image, read_bytes

    try:
        data = read_bytes(file.path, limits)
        opened = open_image(data, limits)
    except NsfwlabError as exc:
        return Prepared(file, error_code=exc.code, error=exc.message)
    sha = hashlib.sha256(data).hexdigest()
    if route(opened.format, opened.image.mode) is Route.GPU:
        return _Raw(file, sha, data)
    p = prepare_file(file, preprocess, limits)
    if p.array is not None and pack:
        p.array = pack_array(p.array, preprocess.mean_bgr)
    return p


def _route_chunk(files: list[WalkedFile], ctx: WorkerContext) -> list[Prepared | _Raw]:
    return [_prepare_or_route(f, ctx.preprocess, ctx.limits, ctx.pack) for f in files]


class _GpuBatcher:
    """Collects GPU-routed JPEGs and CPU-prepared arrays; scores them in batches on the device."""

    def __init__(self, model: ScanModel, writer: _Writer, batch_size: int, limits: DecodeLimits, *,
                 device: str = "cuda", decode: JpegDecoder | None = None,
                 roundtrip: Callable[[Any, int], Any] | None = None) -> None:
        import torch

        self.torch = torch
        self.device = device
        self.decode_batch = decode or _nvjpeg_decoder(device)
        self.roundtrip = roundtrip
        self.model, self.writer, self.batch_size, self.limits = model, writer, batch_size, limits
        self.raw: list[_Raw] = []
        self.cpu: list[Prepared] = []
        self.twins: dict[str, list[WalkedFile]] = {}

    def add(self, item: Prepared | _Raw) -> None:
        if isinstance(item, _Raw):
            if item.sha256 in self.twins:
                self.twins[item.sha256].append(item.file)
            elif (known := self.writer.store.cached_score(item.sha256, self.model.model_version,
                                                          self.model.preprocess_version)) is not None:
                self.writer.record(item.file, item.sha256, score=known, reused=True)
            else:
                self.twins[item.sha256] = []
                self.raw.append(item)
        elif item.array is not None:
            known = self.writer.store.cached_score(item.sha256 or "", self.model.model_version,
                                                   self.model.preprocess_version)
            if known is not None:
                self.writer.record(item.file, item.sha256, score=known, reused=True)
            else:
                self.cpu.append(item)
        else:
            self.writer.add(item)
        if len(self.raw) + len(self.cpu) >= self.batch_size:
            self.flush()

    def _decode(self) -> tuple[list[Any], list[_Raw]]:
        try:
            return list(self.decode_batch([r.data for r in self.raw])), list(self.raw)
        except RuntimeError:
            # One bad JPEG fails the whole batch: decode one by one, send failures to the CPU path.
            images: list[Any] = []
            kept: list[_Raw] = []
            for r in self.raw:
                try:
                    images.extend(self.decode_batch([r.data]))
                    kept.append(r)
                except RuntimeError:
                    self.cpu_fallback(r)
            return images, kept

    def cpu_fallback(self, r: _Raw) -> None:
        p = prepare_file(r.file, self.model.preprocess, self.limits)
        if p.array is None:
            self.writer.add(p)
        else:
            self.cpu.append(p)

    def flush(self) -> None:
        torch = self.torch
        parts, owners = [], []
        if self.raw:
            images, kept = self._decode()
            if images:
                parts.append(gpu_preprocess(images, self.model.preprocess, self.roundtrip))
                owners += [(r.file, r.sha256) for r in kept]
        if self.cpu:
            arrays = [unpack_array(p.array, self.model.preprocess.mean_bgr) for p in self.cpu if p.array is not None]
            parts.append(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(self.device))
            owners += [(p.file, p.sha256 or "") for p in self.cpu]
        self.raw, self.cpu = [], []
        if parts:
            x = torch.cat(parts).contiguous(memory_format=torch.channels_last)
            probs = self.model.backend.predict_tensor(x)  # type: ignore[attr-defined]
            for (file, sha), s in zip(owners, probs[:, 1].float().cpu().tolist(), strict=True):
                self.writer.record(file, sha, score=float(s))
                for twin in self.twins.get(sha, []):
                    self.writer.record(twin, sha, score=float(s), reused=True)
        self.twins = {}
        self.writer.flush()


def scan_gpu(roots: list[str], store: ResultStore, config: ScanConfig, *, model: ScanModel,
             progress: ProgressFn | None = None, device: str = "cuda", decode: JpegDecoder | None = None,
             roundtrip: Callable[[Any, int], Any] | None = None) -> ScanSummary:
    """The fast GPU scan: CPU workers read/hash/route, the GPU decodes, resizes and scores.

    ``device``, ``decode`` (JPEG bytes -> RGB CHW uint8 tensors) and ``roundtrip`` replace nvJPEG
    and the GPU JPEG encoder; they exist so that this path's logic runs in CPU-only tests.
    """
    from .pipeline import _Workers, drive_workers

    summary = ScanSummary(model.model_version, model.preprocess_version, model.mode.value, Engine.LOCAL.value)
    writer = _Writer(store, model, config.thresholds, config.batch_size, summary, progress)
    batcher = _GpuBatcher(model, writer, config.batch_size, config.limits, device=device, decode=decode,
                          roundtrip=roundtrip)
    run_id = store.start_run(model_version=model.model_version, preprocess_version=model.preprocess_version,
                             mode=model.mode.value, engine="local-gpu", roots=roots)
    workers = _Workers(config.n_workers, worker_context(store, model, config), config.executor_kind,
                       task=_route_chunk)
    drive_workers(_plan(roots, store, model, config, writer), workers, config, summary,
                  sink=batcher.add, flush=batcher.flush)
    store.finish_run(run_id, scored=summary.scored, reused=summary.reused, skipped=summary.skipped,
                     errors=summary.errors)
    return summary
