"""What a scan is configured with: the engine and executor options, :class:`ScanConfig`, and the
:class:`ScanModel` a mode builds through the core. Shared by every engine."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from ..backends import Backend
from ..calibration import Calibration
from ..config import DecodeLimits, Device, Precision, PreprocessConfig, Thresholds
from ..errors import ConfigError
from ..frames import FrameOptions
from .modes import FAST_GUARD_MARGIN, QUANT_VERSION, ExactGuard, ScanMode, fast_preprocess, model_for_cpu, quantize_int8
from .walk import WalkConfig

__all__ = ["Engine", "Executor", "ScanConfig", "ScanModel", "build_scan_model", "check_roots"]


class Engine(StrEnum):
    LOCAL = "local"
    RAY = "ray"


class Executor(StrEnum):
    """How the local engine decodes in parallel. ``auto``: threads on machines with up to 4 cores
    (measured faster there: no pickling, no second interpreter), processes above (no GIL
    contention, and a decoder crash only costs the file that caused it)."""

    AUTO = "auto"
    PROCESS = "process"
    THREAD = "thread"


#: Default images per model call (:meth:`ScanConfig.model_batch`).
CPU_BATCH, CUDA_BATCH = 8, 32


@dataclass(frozen=True)
class ScanConfig:
    """How a scan runs. ``workers``: decoding threads or processes (see :attr:`n_workers`); ``threads``: model
    threads; ``chunk``: files per worker task; ``max_attempts``: failed files are retried on later
    runs until they failed this often (unless they change); ``frames``: how videos and animations
    are sampled and their frame scores combined (``None``: score stills only, as before);
    ``calibration``: reported scores (and labels) are calibrated, the model's raw score kept;
    ``bank``: a hash bank's path: a still image within ``match_distance`` PDQ bits of a banked hash
    takes the human decision as its label (the model's score is kept); ``batch_size``: images per
    model call (default: :meth:`model_batch`)."""

    mode: ScanMode = ScanMode.EXACT
    device: Device = Device.CPU
    engine: Engine = Engine.LOCAL
    executor: Executor = Executor.AUTO
    batch_size: int | None = None
    workers: int | None = None
    threads: int | None = None
    chunk: int = 4
    max_attempts: int = 3
    thresholds: Thresholds = field(default_factory=Thresholds)
    limits: DecodeLimits = field(default_factory=DecodeLimits.from_env)
    walk: WalkConfig = field(default_factory=WalkConfig)
    model: str | None = None
    cache_dir: str | None = None
    frames: FrameOptions | None = field(default_factory=FrameOptions)
    calibration: Calibration | None = None
    bank: str | None = None
    match_distance: int = 31
    guard_margin: float = FAST_GUARD_MARGIN

    def __post_init__(self) -> None:
        if not 0.0 <= self.guard_margin <= 1.0:
            raise ConfigError(f"guard_margin must lie in [0, 1], got {self.guard_margin}", param="guard_margin")
        for name in ("chunk", "max_attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("batch_size", "workers", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        if not 0 <= self.match_distance <= 256:
            raise ConfigError(f"match_distance must be between 0 and 256, got {self.match_distance}")
        if self.frames is not None and self.frames.early_stop:
            raise ConfigError("a scan scores every sampled frame: early_stop is not supported")

    @property
    def executor_kind(self) -> Executor:
        if self.executor is not Executor.AUTO:
            return self.executor
        return Executor.THREAD if (os.cpu_count() or 1) <= 4 else Executor.PROCESS

    @property
    def n_workers(self) -> int:
        """Default: one decoding thread per core (they share the cores with the model's threads;
        Pillow releases the GIL), or half the cores as processes, the model's threads using the
        rest (measured in BENCHMARKS.md)."""
        if self.workers:
            return self.workers
        cores = os.cpu_count() or 1
        return cores if self.executor_kind is Executor.THREAD else max(1, cores // 2)

    def model_batch(self, device: str) -> int:
        """Images per model call: ``batch_size``, else 8 where the model runs on the CPU and 32 on
        CUDA. onnxruntime's cost per image rises with the batch on these CPUs: whole scans ran ~9%
        faster at 8 than at 32 (BENCHMARKS.md, "Scan")."""
        return self.batch_size or (CUDA_BATCH if device == "cuda" else CPU_BATCH)

    @property
    def window(self) -> int:
        """Files in flight at most (decoded or being decoded, not yet written)."""
        return max(2 * (self.batch_size or CPU_BATCH), 4 * self.n_workers * self.chunk)


@dataclass(frozen=True)
class ScanModel:
    """A ready model for a scan: the backend and the preprocessing its scores are defined by."""

    backend: Backend
    preprocess: PreprocessConfig
    mode: ScanMode
    #: Fast mode's exact re-scoring of scores near a band boundary (``None``: scores are kept as they are).
    guard: ExactGuard | None = None

    @property
    def model_version(self) -> str:
        return self.backend.model_version

    @property
    def model_id(self) -> str:
        """The model's id in the zoo (``open_nsfw`` for the stock model and its fine-tunes)."""
        return str(getattr(self.backend, "model_id", None) or "open_nsfw")

    @property
    def preprocess_version(self) -> str:
        return self.preprocess.version


def build_scan_model(config: ScanConfig) -> ScanModel:
    """Load the model a mode needs, through the core (``Detector`` / ``nsfwlab.checkpoint``)."""
    from ..backends import OnnxRuntimeBackend, resolve_device
    from ..detector import Detector
    from ..weights import MODEL_VERSION

    device = resolve_device(config.device)
    if config.mode is ScanMode.EXACT:
        # fp32 everywhere: fp16 on CUDA would drift by ~7e-4 from `nsfwlab score` on the CPU, and
        # so would TF32 convolutions (PyTorch's default on Ampere and later), so exact turns it off.
        if device == "cuda":
            import torch

            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        model = model_for_cpu(config.model, device, config.cache_dir)  # a .pt runs as its ONNX export on a CPU
        det = Detector(device=device, precision=Precision.FP32, threads=config.threads, model=model,
                       batch_size=config.model_batch(device))
        return ScanModel(det.backend, det.preprocess_config, ScanMode.EXACT)
    if device == "cuda":  # not guarded: the GPU's fast mode is fp16 on GPU decoding, another drift
        # fp16 channels-last on the GPU (|Δ| ~7e-4 against fp32); the GPU pipeline adds GPU decoding.
        from ..backends import TorchBackend

        if config.model is None:
            gpu_backend: Backend = TorchBackend(device="cuda", precision=Precision.FP16,
                                                model_version=f"{MODEL_VERSION}-fp16")
            return ScanModel(gpu_backend, fast_preprocess(PreprocessConfig()), ScanMode.FAST)
        # auto: fp16 for a .pt checkpoint on CUDA; an exported .onnx runs fp32 on onnxruntime.
        det = Detector(device="cuda", precision=Precision.AUTO, model=config.model)
        if isinstance(det.backend, TorchBackend):
            det.backend.model_version = f"{det.model_version}-fp16"
        return ScanModel(det.backend, fast_preprocess(det.preprocess_config), ScanMode.FAST)
    model = model_for_cpu(config.model, device, config.cache_dir)
    if model is None:
        path = quantize_int8(None, cache_dir=config.cache_dir)
        backend: Backend = OnnxRuntimeBackend(path, verify=False, threads=config.threads,
                                              model_version=f"{MODEL_VERSION}-{QUANT_VERSION}")
        return ScanModel(backend, fast_preprocess(PreprocessConfig()), ScanMode.FAST,
                         _guard(config, lambda: OnnxRuntimeBackend(threads=config.threads), PreprocessConfig()))
    det = Detector(device=device, threads=config.threads, model=model, batch_size=config.model_batch(device))
    base = det.preprocess_config
    guard = _guard(config, lambda: det.backend, base)
    source = getattr(det.backend, "onnx_path", None)
    if source is not None:
        path = quantize_int8(source, cache_dir=config.cache_dir)
        backend = OnnxRuntimeBackend(path, verify=False, threads=config.threads,
                                     model_version=f"{det.model_version}-{QUANT_VERSION}")
        return ScanModel(backend, fast_preprocess(base), ScanMode.FAST, guard)
    # A .pt checkpoint whose export failed: its fp32 torch model, DCT-scaled decoding only.
    return ScanModel(det.backend, fast_preprocess(base), ScanMode.FAST, guard)


def _guard(config: ScanConfig, exact: Callable[[], Backend], preprocess: PreprocessConfig) -> ExactGuard | None:
    """Fast mode's guard on the labels of this scan's thresholds (after its calibration, if any)."""
    if config.guard_margin <= 0:
        return None
    thresholds, calibration = config.thresholds, config.calibration

    def label(raw: float) -> object:
        return thresholds.label(raw if calibration is None else calibration.apply(raw))

    return ExactGuard(exact, preprocess, config.limits, label, config.guard_margin)


def check_roots(roots: Iterable[str | os.PathLike]) -> list[str]:
    out = [os.fspath(r) for r in roots]
    if not out:
        raise ConfigError("give at least one directory or file to scan")
    for r in out:
        if not os.path.exists(r):
            raise ConfigError(f"{r}: no such file or directory")
        if not (os.path.isdir(r) or os.path.isfile(r)):
            raise ConfigError(f"{r}: not a regular file or directory (a pipe, socket or device)")
    return out
