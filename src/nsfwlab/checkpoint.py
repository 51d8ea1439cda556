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
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .architectures import ARCHITECTURES, build_architecture, register_architecture
from .config import Device, Precision, PreprocessConfig
from .errors import ModelError
from .hashing import model_file_sha256
from .sidefiles import finite_number, read_json_file

__all__ = [
    "ARCHITECTURES",
    "CHECKPOINT_FORMAT",
    "NHWCWrapper",
    "build_architecture",
    "cached_onnx_export",
    "export_onnx",
    "load_model",
    "load_torch_module",
    "preprocess_record",
    "read_checkpoint",
    "register_architecture",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "nsfwlab-checkpoint-v1"

#: Bounds of a model's preprocessing record (a checkpoint's ``"preprocess"`` or an ``.onnx`` file's
#: sidecar), checked before any image is scored. The exact pipeline resizes to 256 and crops 224; a
#: resize past 4096 only costs memory (a 10^6 resize asks for terabytes per image), and a crop under 32
#: (the network's total stride) leaves no feature map. Means are pixel offsets: past +-1000 they
#: swamp the 0..255 pixels.
MAX_RESIZE, MIN_CROP, MAX_ABS_MEAN = 4096, 32, 1000.0
#: A sidecar holds a few hundred bytes of JSON.
SIDECAR_MAX_BYTES = 64 * 1024
#: A checkpoint's model_version is stored next to every score.
MAX_VERSION_CHARS = 200

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
    """Load and validate a checkpoint dictionary (tensors only: ``weights_only=True``): its format,
    its architecture (a name in :data:`ARCHITECTURES`), its preprocessing (:func:`preprocess_record`)
    and its model_version are checked, so a bad file is refused at load with one line."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise ModelError(f"model file {p} does not exist")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols: its text is not ours to show
            warnings.simplefilter("ignore")
            payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(_load_failure(p, exc)) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ModelError(f"{p} is not an nsfwlab checkpoint (format {CHECKPOINT_FORMAT!r} expected)")
    if not isinstance(payload.get("state_dict"), dict):
        raise ModelError(f"{p} is not an nsfwlab checkpoint: it has no state_dict of tensors")
    payload["arch"] = _architecture(payload.get("arch"), p)
    preprocess_record(payload.get("preprocess"), p)
    _model_version(payload.get("model_version"), "", p)
    return payload


#: What a refused pickle is told to do instead (the file is never unpickled with its code).
_CONVERT = ("nsfwlab loads only tensors-only checkpoints and never runs code from a model file; if you trust "
            "it, load its weights in Python yourself and save them with nsfwlab.checkpoint.save_checkpoint")


def _load_failure(p: Path, exc: BaseException) -> str:
    """One line of our own on why ``torch.load`` refused ``p``; none of torch's text (its refusal of a
    pickle advises ``weights_only=False``, which would run the file's code)."""
    if "weights_only" in str(exc) or "WeightsUnpickler" in str(exc):
        return f"{p} is not an nsfwlab checkpoint: it is a pickle holding more than tensors; {_CONVERT}"
    return f"{p} is not an nsfwlab checkpoint: not a file torch.save wrote ({type(exc).__name__})"


def _bool(record: dict[str, Any], key: str, default: bool, source: Path) -> bool:
    value = record.get(key, default)
    if not isinstance(value, bool):
        raise ModelError(f"{source}: preprocessing field {key} must be true or false, got {type(value).__name__}")
    return value


def preprocess_record(record: Any, source: str | os.PathLike) -> PreprocessConfig:
    """The :class:`PreprocessConfig` of a model's preprocessing record (a JSON object or a checkpoint's
    dictionary); an empty or missing one is the exact pipeline. Every field is checked for its type
    and range (:data:`MAX_RESIZE`, :data:`MIN_CROP`, :data:`MAX_ABS_MEAN`, JPEG quality 1..95);
    unknown fields are refused. Anything else is a one-line :class:`ModelError` naming ``source``."""
    src = Path(source)
    if record is None or record == {}:
        return PreprocessConfig()
    if not isinstance(record, dict):
        raise ModelError(f"{src}: the preprocessing record must be an object, got {type(record).__name__}")
    default = PreprocessConfig()
    unknown = sorted(str(k)[:40] for k in record if k not in asdict(default))
    if unknown:
        raise ModelError(f"{src}: unknown preprocessing field(s) {', '.join(unknown[:5])}")

    def number(key: str, lo: float, hi: float) -> int:
        return int(finite_number(record.get(key, getattr(default, key)), f"{src}: preprocessing field {key}",
                                 lo=lo, hi=hi, integer=True, error=ModelError))

    resize = number("resize", MIN_CROP, MAX_RESIZE)
    crop = number("crop", MIN_CROP, resize)
    quality = number("jpeg_quality", 1, 95)
    means = record.get("mean_bgr", default.mean_bgr)
    if not isinstance(means, list | tuple) or len(means) != 3:
        raise ModelError(f"{src}: preprocessing field mean_bgr must be a list of 3 numbers")
    mean_bgr = tuple(finite_number(m, f"{src}: preprocessing field mean_bgr", lo=-MAX_ABS_MEAN, hi=MAX_ABS_MEAN,
                                   error=ModelError) for m in means)
    return PreprocessConfig(resize=resize, crop=crop, jpeg_roundtrip=_bool(record, "jpeg_roundtrip", True, src),
                            jpeg_quality=quality, draft=_bool(record, "draft", False, src),
                            mean_bgr=(mean_bgr[0], mean_bgr[1], mean_bgr[2]))


def _architecture(name: Any, source: Path) -> str:
    """A recorded architecture name, checked against :data:`ARCHITECTURES` (a :class:`ModelError` if unknown)."""
    if name is None:
        return "open_nsfw"
    if not isinstance(name, str) or name not in ARCHITECTURES:
        shown = repr(name)[:60] if isinstance(name, str) else type(name).__name__
        raise ModelError(f"{source}: unknown architecture {shown}; known: {', '.join(sorted(ARCHITECTURES))}")
    return name


def _model_version(value: Any, default: str, source: Path) -> str:
    if value is None or value == "":
        return default
    if not isinstance(value, str) or len(value) > MAX_VERSION_CHARS or not value.isprintable():
        raise ModelError(f"{source}: model_version must be a printable string of at most "
                         f"{MAX_VERSION_CHARS} characters")
    return value


def _read_sidecar(model_path: Path) -> dict[str, Any] | None:
    """The ``.json`` sidecar of an ``.onnx`` file (``None`` if there is none), read as a side file:
    a regular file under :data:`SIDECAR_MAX_BYTES`, strict JSON, an object."""
    sidecar = model_path.with_suffix(".json")
    if not os.path.lexists(sidecar):
        return None
    record = read_json_file(sidecar, "preprocessing sidecar", max_bytes=SIDECAR_MAX_BYTES, error=ModelError)
    if not isinstance(record, dict):
        raise ModelError(f"{sidecar}: the preprocessing sidecar must be a JSON object")
    if "preprocess" not in record:
        raise ModelError(f"{sidecar}: preprocessing sidecar has no 'preprocess' object")
    return record


def load_model(path: str | os.PathLike, device: Device | str = Device.AUTO, *,
               precision: Precision | str = Precision.AUTO,
               threads: int | None = None) -> tuple[Any, PreprocessConfig]:
    """A ready backend and its preprocessing for a ``.pt`` checkpoint or an exported ``.onnx``.

    The file's preprocessing is validated (:func:`preprocess_record`) and the model is tried on a
    test batch at its crop size (:func:`~nsfwlab.backends.probe_backend`): a model that cannot score
    is a :class:`ModelError` here, before any image."""
    from .backends import OnnxRuntimeBackend, TorchBackend, probe_backend, resolve_device

    p = Path(path)
    dev = resolve_device(device)
    if not p.is_file():
        raise ModelError(f"model file {p} does not exist")
    version = f"{p.stem}-{model_file_sha256(p)[:12]}"
    backend: Any
    if p.suffix.lower() == ".onnx":
        record = _read_sidecar(p)
        pre = preprocess_record(record["preprocess"], p.with_suffix(".json")) if record else PreprocessConfig()
        if record:
            _architecture(record.get("arch"), p.with_suffix(".json"))
            version = _model_version(record.get("model_version"), version, p.with_suffix(".json"))
        backend = OnnxRuntimeBackend(p, device=dev, threads=threads, verify=False, model_version=version)
    else:
        payload = read_checkpoint(p)
        pre = preprocess_record(payload.get("preprocess"), p)
        model = build_architecture(payload["arch"])
        try:
            model.load_state_dict(payload["state_dict"])
        except (RuntimeError, KeyError, TypeError) as exc:
            raise ModelError(f"{p}: weights do not fit architecture {payload['arch']!r}: {exc}") from None
        backend = TorchBackend(model, device=dev, precision=precision, threads=threads,
                               model_version=_model_version(payload.get("model_version"), version, p))
    probe_backend(backend, pre.crop, p)
    return backend, pre


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
        model = build_architecture(payload["arch"])
        state = payload["state_dict"]
    else:
        from .model import read_onnx_graph

        if not p.is_file():
            raise ModelError(f"model file {p} does not exist")
        record = _read_sidecar(p)
        model = build_architecture(_architecture(record.get("arch") if record else None, p.with_suffix(".json")))
        _, initializers = read_onnx_graph(p)
        prefix = "inner."
        state = {k[len(prefix):]: torch.from_numpy(np.array(v, dtype=np.float32))
                 for k, v in initializers.items() if k.startswith(prefix)}
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as exc:
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


def export_onnx(checkpoint: str | os.PathLike, out: str | os.PathLike, *, opset: int = 17,
                model_version: str | None = None) -> Path:
    """Export a checkpoint to ONNX (NHWC float32 input ``input:0``, output ``outputs``) plus a
    ``.json`` sidecar with its preprocessing, for the onnxruntime backend. ``model_version``, when
    given, is recorded in the sidecar and becomes the exported model's version (the same weights
    keep the same version)."""
    import torch

    payload = read_checkpoint(checkpoint)
    crop = preprocess_record(payload.get("preprocess"), Path(checkpoint)).crop
    model = build_architecture(payload["arch"])
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError, TypeError) as exc:
        raise ModelError(f"{checkpoint}: weights do not fit architecture {payload['arch']!r}: {exc}") from None
    wrapped = NHWCWrapper(model.eval())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    dummy = torch.zeros(1, crop, crop, 3)
    torch.onnx.export(wrapped, (dummy,), str(tmp), input_names=["input:0"], output_names=["outputs"],
                      dynamic_axes={"input:0": {0: "batch"}, "outputs": {0: "batch"}}, opset_version=opset,
                      dynamo=False)
    os.replace(tmp, out)
    sidecar: dict[str, Any] = {"preprocess": payload.get("preprocess") or {}, "arch": payload["arch"]}
    if model_version:
        sidecar["model_version"] = model_version
    out.with_suffix(".json").write_text(json.dumps(sidecar, indent=2))
    return out


#: Largest |score difference| between a checkpoint's torch model and its automatic ONNX export on a
#: test batch for the export to be used (measured: ~1e-6 on open_nsfw).
EXPORT_TOLERANCE = 1e-4


def cached_onnx_export(checkpoint: str | os.PathLike, cache_dir: str | os.PathLike) -> Path | None:
    """The ONNX export of a ``.pt`` checkpoint for onnxruntime (several times faster than the torch
    CPU backend), made once and cached as ``<cache_dir>/onnx/<name>-<sha256[:16]>.onnx`` with its
    sidecar, which keeps the checkpoint's preprocessing, architecture and model_version (scores keep the
    checkpoint's version). ``None`` when the export does not score as the checkpoint does (more than
    :data:`EXPORT_TOLERANCE` apart on a test batch): the caller keeps the torch model."""
    import shutil

    import numpy as np

    p = Path(checkpoint)
    payload = read_checkpoint(p)
    sha = model_file_sha256(p)
    version = _model_version(payload.get("model_version"), f"{p.stem}-{sha[:12]}", p)
    out = Path(cache_dir) / "onnx" / f"{p.stem}-{sha[:16]}.onnx"
    if out.is_file() and out.with_suffix(".json").is_file():
        return out
    work = out.parent / f".{out.stem}.{os.getpid()}.tmp"
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create the model cache {out.parent}: {exc.strerror or exc}") from None
    try:
        exported = export_onnx(p, work / "model.onnx", model_version=version)
        torch_backend, pre = load_model(p, "cpu")
        onnx_backend, _ = load_model(exported, "cpu")
        rng = np.random.default_rng(1)
        batch = rng.uniform(-123.0, 151.0, (4, pre.crop, pre.crop, 3)).astype(np.float32)
        drift = float(np.abs(torch_backend.predict(batch) - onnx_backend.predict(batch)).max())
        if drift > EXPORT_TOLERANCE:
            return None
        # The sidecar first: a graph in the cache always has its sidecar.
        os.replace(exported.with_suffix(".json"), out.with_suffix(".json"))
        os.replace(exported, out)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)
