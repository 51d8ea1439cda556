"""Model files other than the stock weights: fine-tuned checkpoints and exported ONNX graphs.

A checkpoint is a ``torch.save`` dictionary::

    {"format": "nsfwlab-checkpoint-v1", "arch": "open_nsfw", "state_dict": {...},
     "preprocess": {...PreprocessConfig fields...}, "model_version": "finetuned-...", "meta": {...}}

It carries its preprocessing, so every command that accepts ``--model PATH`` scores exactly as the
model was trained. An exported ``.onnx`` file (``export_onnx``) takes the same NHWC input as the
bundled graph and runs on the fast onnxruntime CPU backend; its preprocessing travels in a
``.json`` sidecar written next to it. ``"arch"`` names an entry of
:data:`nsfwlab.architectures.ARCHITECTURES` (re-exported here with ``build_architecture`` and
``register_architecture``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .architectures import ARCHITECTURES, build_architecture, register_architecture
from .config import Device, Precision, PreprocessConfig
from .errors import ModelError
from .hashing import model_file_sha256

__all__ = [
    "ARCHITECTURES",
    "CHECKPOINT_FORMAT",
    "NHWCWrapper",
    "build_architecture",
    "export_onnx",
    "load_model",
    "load_torch_module",
    "read_checkpoint",
    "register_architecture",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "nsfwlab-checkpoint-v1"

def save_checkpoint(path: str | os.PathLike, model: Any, *, arch: str = "open_nsfw",
                    preprocess: PreprocessConfig | None = None, meta: dict[str, Any] | None = None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically (temporary file, then rename). Returns the path."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "arch": arch,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "preprocess": asdict(preprocess or PreprocessConfig()),
        "meta": meta or {},
    }
    if extra:
        payload.update(extra)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate a checkpoint dictionary (tensors only: ``weights_only=True``)."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise ModelError(f"model file {p} does not exist")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{p} is not an nsfwlab checkpoint ({_load_failure(exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{p} is not an nsfwlab checkpoint (format {CHECKPOINT_FORMAT!r} expected)")
    return payload


def _load_failure(exc: BaseException) -> str:
    """One line on why ``torch.load`` refused a file.

    torch's ``weights_only`` refusal is a paragraph that suggests ``weights_only=False`` (running
    the file's code): keep only its cause.
    """
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        cause = next((line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()), "")
        cause = cause.split(". Please use", 1)[0]  # drop the allowlisting advice
        return f"not a tensors-only torch file: {cause}" if cause else "not a tensors-only torch file"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _preprocess_from(d: Any, source: Path) -> PreprocessConfig:
    """The preprocessing stored with a model; a malformed record is a :class:`ModelError`."""
    if not d:
        return PreprocessConfig()
    try:
        d = dict(d)
        if "mean_bgr" in d:
            d["mean_bgr"] = tuple(float(v) for v in d["mean_bgr"])
        return PreprocessConfig(**d)
    except (TypeError, ValueError) as exc:  # ConfigError is a ValueError
        raise ModelError(f"{source}: invalid preprocessing record: {exc}") from None


def _sidecar_preprocess(sidecar: Path) -> PreprocessConfig:
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{sidecar}: unreadable preprocessing sidecar: {exc}") from None
    if not isinstance(record, dict) or "preprocess" not in record:
        raise ModelError(f"{sidecar}: preprocessing sidecar has no 'preprocess' object")
    return _preprocess_from(record["preprocess"], sidecar)


def load_model(path: str | os.PathLike, device: Device | str = Device.AUTO, *,
               precision: Precision | str = Precision.AUTO,
               threads: int | None = None) -> tuple[Any, PreprocessConfig]:
    """A ready backend and its preprocessing for a ``.pt`` checkpoint or an exported ``.onnx``."""
    from .backends import OnnxRuntimeBackend, TorchBackend, resolve_device

    p = Path(path)
    dev = resolve_device(device)
    version = f"{p.stem}-{model_file_sha256(p)[:12]}" if p.is_file() else p.stem
    if p.suffix.lower() == ".onnx":
        if not p.is_file():
            raise ModelError(f"model file {p} does not exist")
        sidecar = p.with_suffix(".json")
        pre = PreprocessConfig()
        if sidecar.is_file():
            pre = _sidecar_preprocess(sidecar)
        return OnnxRuntimeBackend(p, device=dev, threads=threads, verify=False, model_version=version), pre
    payload = read_checkpoint(p)
    model = build_architecture(str(payload.get("arch", "open_nsfw")))
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError) as exc:
        raise ModelError(f"{p}: weights do not fit architecture {payload.get('arch')!r}: {exc}") from None
    torch_backend = TorchBackend(model, device=dev, precision=precision, threads=threads,
                                 model_version=str(payload.get("model_version") or version))
    return torch_backend, _preprocess_from(payload.get("preprocess"), p)


def load_torch_module(path: str | os.PathLike) -> Any:
    """The fp32 ``nn.Module`` (eval mode, CPU) of a model file, for gradients: a ``.pt``
    checkpoint, or an ``.onnx`` graph written by :func:`export_onnx` (its weights are read back
    from the graph's initializers, which keep the checkpoint's parameter names). Any other ONNX
    graph is a :class:`~nsfwlab.errors.ModelError`: its weights cannot be mapped onto a network."""
    import numpy as np
    import torch

    p = Path(path)
    if p.suffix.lower() != ".onnx":
        payload = read_checkpoint(p)
        model = build_architecture(str(payload.get("arch", "open_nsfw")))
        state = payload["state_dict"]
    else:
        from .model import read_onnx_graph

        if not p.is_file():
            raise ModelError(f"model file {p} does not exist")
        sidecar = p.with_suffix(".json")
        arch = "open_nsfw"
        if sidecar.is_file():
            try:
                arch = str(json.loads(sidecar.read_text(encoding="utf-8")).get("arch") or arch)
            except (OSError, ValueError, AttributeError) as exc:
                raise ModelError(f"{sidecar}: unreadable preprocessing sidecar: {exc}") from None
        model = build_architecture(arch)
        _, initializers = read_onnx_graph(p)
        prefix = "inner."
        state = {k[len(prefix):]: torch.from_numpy(np.array(v, dtype=np.float32))
                 for k, v in initializers.items() if k.startswith(prefix)}
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError) as exc:
        raise ModelError(f"{p}: the weights cannot be mapped onto a PyTorch network for gradients ({exc}); "
                         "pass the fine-tuned .pt checkpoint") from None
    return model.float().eval()


class NHWCWrapper:
    """Wraps an NCHW logits model as NHWC input -> softmax probabilities, like the bundled graph."""

    def __new__(cls, model: Any) -> Any:
        import torch

        class _Wrapped(torch.nn.Module):
            def __init__(self, inner: torch.nn.Module) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return torch.softmax(self.inner(x.permute(0, 3, 1, 2)), dim=1)

        return _Wrapped(model)


def export_onnx(checkpoint: str | os.PathLike, out: str | os.PathLike, *, opset: int = 17) -> Path:
    """Export a checkpoint to ONNX (NHWC float32 input ``input:0``, output ``outputs``) plus a
    ``.json`` sidecar with its preprocessing, for the onnxruntime backend."""
    import torch

    payload = read_checkpoint(checkpoint)
    model = build_architecture(str(payload.get("arch", "open_nsfw")))
    model.load_state_dict(payload["state_dict"])
    wrapped = NHWCWrapper(model.eval())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    dummy = torch.zeros(1, 224, 224, 3)
    torch.onnx.export(wrapped, (dummy,), str(tmp), input_names=["input:0"], output_names=["outputs"],
                      dynamic_axes={"input:0": {0: "batch"}, "outputs": {0: "batch"}}, opset_version=opset,
                      dynamo=False)
    os.replace(tmp, out)
    out.with_suffix(".json").write_text(json.dumps({"preprocess": payload.get("preprocess") or {},
                                                     "arch": payload.get("arch")}, indent=2))
    return out
