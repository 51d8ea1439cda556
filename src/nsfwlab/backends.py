"""Inference backends behind one interface.

A backend takes an NHWC float32 batch from :mod:`nsfwlab.preprocess` and returns softmax
probabilities ``(N, 2)`` as ``[sfw, nsfw]``.

- :class:`OnnxRuntimeBackend`: the bundled ONNX graph on onnxruntime; the CPU default (about 1.5x
  faster than PyTorch on CPU).
- :class:`TorchBackend`: the PyTorch port; fp32 on CPU (gradients, explainers, fine-tuning),
  fp16 channels-last on CUDA by default (fp32 selectable).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .config import BackendName, Device, Precision, option
from .errors import BackendUnavailableError, ConfigError, ModelError
from .weights import MODEL_VERSION

__all__ = [
    "Backend",
    "OnnxRuntimeBackend",
    "TorchBackend",
    "check_probabilities",
    "create_backend",
    "cuda_available",
    "probe_backend",
]

#: Images in the batch a model from a file is tried on at load (two: a graph that returns one row
#: whatever the batch shows itself).
PROBE_BATCH = 2
#: How far a row of class probabilities may stray from [0, 1] and from summing to 1: an int8 graph's
#: quantised output is coarser than fp32's softmax (its rows sum to 1 within ~4e-3, measured).
PROBABILITY_TOLERANCE = 0.02


@runtime_checkable
class Backend(Protocol):
    """What the Detector needs from an inference engine."""

    name: str
    device: str
    model_version: str

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """NHWC float32 batch -> (N, 2) softmax probabilities [sfw, nsfw]."""
        ...


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return bool(torch.cuda.is_available())


def _check_batch(batch: np.ndarray) -> np.ndarray:
    if batch.ndim != 4 or batch.shape[3] != 3:
        raise ConfigError(f"expected an NHWC batch of shape (N, H, W, 3), got {batch.shape}")
    return np.ascontiguousarray(batch, dtype=np.float32)


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one short line: its type and the first line of its message."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_probabilities(out: Any, n: int, source: object) -> np.ndarray:
    """``out`` as ``(n, 2)`` float32 class probabilities, or a one-line :class:`ModelError` naming
    ``source``: one row per input image, two columns, finite, within [0, 1], rows summing to 1
    (all within :data:`PROBABILITY_TOLERANCE`). A model that breaks this would otherwise have its
    output stored as scores (NaN, 1e30, a third column's value) or fail deep inside the caller."""
    shape = getattr(out, "shape", None)
    if shape is None or tuple(shape) != (n, 2):
        raise ModelError(f"model {source} returned an output of shape {shape} for {n} image(s); a model must "
                         "return one row of two class probabilities [sfw, nsfw] per image")
    try:
        arr = np.asarray(out, dtype=np.float64)
    except (TypeError, ValueError):
        raise ModelError(f"model {source} returned an output that is not numbers") from None
    tol = PROBABILITY_TOLERANCE
    if not np.isfinite(arr).all():
        raise ModelError(f"model {source} returned a score that is not a finite number (NaN or infinity)")
    if arr.min() < -tol or arr.max() > 1 + tol or np.abs(arr.sum(axis=1) - 1).max() > tol:
        raise ModelError(f"model {source} returned values that are not class probabilities (each in [0, 1], "
                         f"each row summing to 1): min {arr.min():.4g}, max {arr.max():.4g}")
    return np.clip(arr, 0.0, 1.0).astype(np.float32)


def probe_backend(backend: Backend, size: int, source: object) -> None:
    """Run a fixed batch of :data:`PROBE_BATCH` images of ``size`` x ``size`` through ``backend`` and
    check its output (:func:`check_probabilities`): a model file that cannot score is refused when it
    is loaded, with one line, not on the first image."""
    rng = np.random.default_rng(0)
    batch = rng.uniform(-123.0, 151.0, (PROBE_BATCH, size, size, 3)).astype(np.float32)
    try:
        out = backend.predict(batch)
    except ModelError:
        raise
    except Exception as exc:  # a torch module that cannot take this input, say
        raise ModelError(f"model {source} fails on a test batch of {size}x{size} images: {one_line(exc)}") from None
    check_probabilities(out, PROBE_BATCH, source)


def _fits(dim: object, size: int) -> bool:
    return not isinstance(dim, int) or dim == size  # a named or unknown dimension fits any size


def _check_signature(session: Any, path: Path) -> str:
    """The input name of a graph shaped like open_nsfw (NHWC float images in, ``[sfw, nsfw]`` out).

    Any other graph loads fine in onnxruntime and would fail on the first batch instead, with an
    onnxruntime traceback (or, worse, a wrong-shaped output read as scores).
    """
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) == 1 and outputs:
        shape_in, shape_out = inputs[0].shape, outputs[0].shape
        if (inputs[0].type == "tensor(float)" and len(shape_in) == 4 and _fits(shape_in[3], 3)
                and len(shape_out) == 2 and _fits(shape_out[1], 2)):
            return str(inputs[0].name)
    got = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs) or "no inputs"
    got_out = ", ".join(f"{o.name} {o.shape}" for o in outputs) or "no outputs"
    raise ModelError(
        f"{path} is not an open_nsfw-shaped graph: it needs one float input (N, H, W, 3) and an "
        f"output (N, 2); it has inputs {got} and outputs {got_out}"
    )


class OnnxRuntimeBackend:
    """onnxruntime on the bundled (or a given, sha256-verified or explicitly trusted) ONNX graph."""

    name = "onnxruntime"

    def __init__(self, onnx_path: str | os.PathLike | None = None, *, device: str = "cpu",
                 threads: int | None = None, verify: bool = True,
                 model_version: str | None = None, spin: bool = False) -> None:
        import onnxruntime as ort

        from .weights import resolve_onnx_path

        path = resolve_onnx_path(onnx_path) if verify else Path(onnx_path or "")
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailableError(
                    "onnxruntime has no CUDA provider here; use --backend torch for CUDA"
                )
            providers.insert(0, "CUDAExecutionProvider")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        if not spin:
            # Idle intra-op threads otherwise busy-wait and starve the decoding threads that run
            # beside the model (measured: 36 -> 80 img/s end to end with one decoding thread).
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:
            raise ModelError(f"onnxruntime could not load {path}: {one_line(exc)}") from None
        self._input = _check_signature(self._session, path)
        self.device = device
        self.model_version = model_version or MODEL_VERSION
        self.onnx_path = path

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = _check_batch(batch)
        try:
            outs = self._session.run(None, {self._input: batch})
        except Exception as exc:  # onnxruntime's own failures: shapes, allocations, kernels
            raise ModelError(f"onnxruntime failed to run {self.onnx_path}: {one_line(exc)}") from None
        return check_probabilities(outs[0] if outs else None, len(batch), self.onnx_path)


class TorchBackend:
    """The PyTorch port. On CUDA it runs fp16 channels-last unless ``precision='fp32'``."""

    name = "torch"

    def __init__(self, model: object | None = None, *, device: str = "cpu",
                 precision: Precision | str = Precision.AUTO, threads: int | None = None,
                 model_version: str | None = None) -> None:
        import torch

        from .model import load_open_nsfw

        precision = option(Precision, precision, "precision")
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError("CUDA was requested but torch sees no CUDA device")
        if precision is Precision.AUTO:
            precision = Precision.FP16 if device == "cuda" else Precision.FP32
        if precision is Precision.FP16 and device != "cuda":
            raise ConfigError("fp16 is only supported on CUDA; use fp32 on the CPU")
        if threads:
            torch.set_num_threads(threads)
        net = model if model is not None else load_open_nsfw()
        if not isinstance(net, torch.nn.Module):
            raise ConfigError("model must be a torch.nn.Module")
        net = net.eval().to(device)
        self.dtype = torch.float16 if precision is Precision.FP16 else torch.float32
        if device == "cuda":
            net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.model = net.to(self.dtype)
        #: Whether the caller supplied the module (its fp32 weights exist only as this module).
        self.custom_model = model is not None
        self.device = device
        self.precision = precision
        self.model_version = model_version or MODEL_VERSION

    def predict(self, batch: np.ndarray) -> np.ndarray:
        import torch

        batch = _check_batch(batch)
        with torch.inference_mode():
            # NHWC -> NCHW view: channels-last memory, no copy on the CPU.
            x = torch.from_numpy(batch).permute(0, 3, 1, 2)
            x = x.to(self.device, dtype=self.dtype, non_blocking=True)
            logits = self.model(x).float()
            probs = torch.softmax(logits, dim=1).cpu().numpy()
        if not np.isfinite(probs).all():  # weights holding NaN or infinities
            raise ModelError(f"model {self.model_version} returned a score that is not a finite number")
        return probs

    def predict_tensor(self, x: object) -> object:
        """NCHW tensor already on the device -> (N, 2) probabilities tensor (GPU pipelines)."""
        import torch

        assert isinstance(x, torch.Tensor)
        with torch.inference_mode():
            return torch.softmax(self.model(x.to(self.dtype)).float(), dim=1)


def resolve_device(device: Device | str) -> str:
    device = option(Device, device, "device")
    if device is Device.AUTO:
        return "cuda" if cuda_available() else "cpu"
    return device.value


def create_backend(backend: BackendName | str = BackendName.AUTO, device: Device | str = Device.AUTO,
                   *, precision: Precision | str = Precision.AUTO, threads: int | None = None,
                   onnx_path: str | os.PathLike | None = None) -> Backend:
    """Pick and build a backend: on CUDA the torch backend, on CPU onnxruntime (unless told)."""
    backend = option(BackendName, backend, "backend")
    dev = resolve_device(device)
    if backend is BackendName.AUTO:
        backend = BackendName.TORCH if dev == "cuda" else BackendName.ONNXRUNTIME
    if backend is BackendName.ONNXRUNTIME:
        if option(Precision, precision, "precision") is Precision.FP16:
            raise ConfigError("the onnxruntime backend runs fp32; use --backend torch for fp16")
        return OnnxRuntimeBackend(onnx_path, device=dev, threads=threads)
    return TorchBackend(device=dev, precision=precision, threads=threads)
