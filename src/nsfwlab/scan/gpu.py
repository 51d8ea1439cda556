"""The GPU fast path (``--device cuda --mode fast``): batched nvJPEG decoding and GPU resizing
feeding the fp16 model; CPU workers handle what the GPU decoder cannot.

Per file, a CPU worker (thread or process) reads the bytes once, hashes them, checks the header against the
decode caps (decompression bombs never reach the GPU) and routes the file (:func:`route`):

- baseline/progressive JPEGs in RGB or greyscale go to the GPU as raw bytes:
  ``torchvision.io.decode_jpeg(..., device="cuda")`` decodes a whole batch, then
  :func:`gpu_preprocess` resizes each image to 256x256 (antialiased bilinear), runs the JPEG round
  trip on the GPU (``torchvision.io.encode_jpeg`` / ``decode_jpeg`` on CUDA tensors, quality 75),
  then the core's torch steps (:func:`nsfwlab.preprocess.differentiable.network_input`: crop 224,
  BGR, mean), all on the device;
- every other file (PNG, GIF, WebP, BMP, TIFF, CMYK JPEGs) is preprocessed on the CPU by the core's
  fast pipeline and joins the same batch; so does a JPEG the GPU decoder rejects (from the bytes
  already read).

The walk, the workers, deduplication and the store are the local engine's (:mod:`.driver`, :mod:`.sink`).

Exact mode on a GPU machine does not come here: it runs the core's exact CPU preprocessing into
the fp32 model (scores equal `nsfwlab score`'s). torchvision is imported only here.

Not measured: this path has no GPU in CI or on the development machine; its logic (routing, the
tensor preprocessing, batching) is tested on the CPU with a Pillow stand-in for the GPU JPEG round
trip, and the drift of the GPU resize is stated from those tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..config import DecodeLimits, PreprocessConfig
from ..errors import BackendUnavailableError
from ..preprocess import unpack_array
from .config import Engine, ScanConfig, ScanModel
from .driver import Workers, run, worker_context
from .sink import ProgressFn, ScanSummary, Sink
from .store import ResultStore
from .worker import GPU_JPEG_MODES, Prepared, Route, prepare_bytes, route

__all__ = [
    "GPU_JPEG_MODES",
    "GpuScorer",
    "Route",
    "gpu_preprocess",
    "pillow_jpeg_roundtrip",
    "require_torchvision",
    "route",
    "scan_gpu",
]


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
    (``roundtrip``, default the GPU encoder), then the core's
    :func:`~nsfwlab.preprocess.differentiable.network_input` (centre crop, RGB->BGR, mean).
    """
    import torch
    import torch.nn.functional as F

    from ..preprocess.differentiable import network_input

    resized = [
        F.interpolate(img[None].float(), size=(config.resize, config.resize), mode="bilinear",
                      antialias=True, align_corners=False).round().clamp(0, 255).to(torch.uint8)[0]
        for img in images
    ]
    if config.jpeg_roundtrip:
        resized = list((roundtrip or _gpu_jpeg_roundtrip)(resized, config.jpeg_quality))
    return network_input(torch.stack(resized).float(), config)


JpegDecoder = Callable[[list[bytes]], Sequence[Any]]


def _nvjpeg_decoder(device: str) -> JpegDecoder:
    tv = require_torchvision()
    import torch

    def decode(datas: list[bytes]) -> Sequence[Any]:
        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        return list(tv.io.decode_jpeg(tensors, mode=tv.io.ImageReadMode.RGB, device=device))

    return decode


class GpuScorer:
    """Scores GPU-routed JPEG bytes (decoded and preprocessed on the device) and CPU-prepared
    arrays together, in batches of ``batch_size``."""

    def __init__(self, sink: Sink, model: ScanModel, batch_size: int, limits: DecodeLimits, *,
                 device: str = "cuda", decode: JpegDecoder | None = None,
                 roundtrip: Callable[[Any, int], Any] | None = None) -> None:
        import torch

        self.torch = torch
        self.device = device
        self.decode_batch = decode or _nvjpeg_decoder(device)
        self.roundtrip = roundtrip
        self.sink, self.model, self.batch_size, self.limits = sink, model, batch_size, limits
        self.raw: list[Prepared] = []  # JPEG bytes for the device
        self.cpu: list[Prepared] = []  # network inputs prepared on the CPU

    def add(self, p: Prepared) -> None:
        (self.raw if p.data is not None else self.cpu).append(p)
        if len(self.raw) + len(self.cpu) >= self.batch_size:
            self.flush()

    def _decode(self) -> tuple[list[Any], list[Prepared]]:
        try:
            return list(self.decode_batch([r.data or b"" for r in self.raw])), list(self.raw)
        except RuntimeError:
            # One bad JPEG fails the whole batch: decode one by one, send failures to the CPU path.
            images: list[Any] = []
            kept: list[Prepared] = []
            for r in self.raw:
                try:
                    images.extend(self.decode_batch([r.data or b""]))
                    kept.append(r)
                except RuntimeError:
                    self._cpu_fallback(r)
            return images, kept

    def _cpu_fallback(self, r: Prepared) -> None:
        """The core's CPU preprocessing of the bytes already read (never a second read)."""
        p = prepare_bytes(r.file, r.sha256, r.data or b"", self.model.preprocess, self.limits)
        if p.failed:
            self.sink.failed(p)
        else:
            self.cpu.append(p)

    def flush(self) -> None:
        torch = self.torch
        parts, shas = [], []
        if self.raw:
            images, kept = self._decode()
            if images:
                parts.append(gpu_preprocess(images, self.model.preprocess, self.roundtrip))
                shas += [r.sha256 or "" for r in kept]
        if self.cpu:
            arrays = [unpack_array(p.array, self.model.preprocess.mean_bgr) for p in self.cpu if p.array is not None]
            parts.append(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(self.device))
            shas += [p.sha256 or "" for p in self.cpu]
        self.raw, self.cpu = [], []
        if parts:
            x = torch.cat(parts).contiguous(memory_format=torch.channels_last)
            probs = self.model.backend.predict_tensor(x)  # type: ignore[attr-defined]
            self.sink.scored(shas, probs[:, 1].float().cpu().tolist())


def scan_gpu(roots: list[str], store: ResultStore, config: ScanConfig, *, model: ScanModel,
             progress: ProgressFn | None = None, device: str = "cuda", decode: JpegDecoder | None = None,
             roundtrip: Callable[[Any, int], Any] | None = None) -> ScanSummary:
    """The fast GPU scan: CPU workers read/hash/route, the GPU decodes, resizes and scores.

    ``device``, ``decode`` (JPEG bytes -> RGB CHW uint8 tensors) and ``roundtrip`` replace nvJPEG
    and the GPU JPEG encoder; they exist so that this path's logic runs in CPU-only tests.
    """
    sink = Sink(store, model, config, Engine.LOCAL.value, progress, run_engine="local-gpu")
    scorer = GpuScorer(sink, model, config.model_batch(device), config.limits, device=device, decode=decode,
                       roundtrip=roundtrip)
    pool = Workers(config.n_workers, worker_context(store, model, config, gpu_route=True),
                            config.executor_kind)
    return run(roots, sink, pool, scorer, config)
