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

__all__ = ["Backend", "OnnxRuntimeBackend", "TorchBackend", "create_backend", "cuda_available"]


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
            raise ModelError(f"onnxruntime could not load {path}: {exc}") from None
        self._input = _check_signature(self._session, path)
        self.device = device
        self.model_version = model_version or MODEL_VERSION
        self.onnx_path = path

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = _check_batch(batch)
        (out,) = self._session.run(None, {self._input: batch})
        return np.asarray(out, dtype=np.float32)


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
            return torch.softmax(logits, dim=1).cpu().numpy()

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
