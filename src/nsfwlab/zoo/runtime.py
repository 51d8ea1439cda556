"""Running zoo models: ``load(model_id)`` -> a model with ``predict`` (class probabilities),
``nsfw_score`` (per the card) and ``score`` (both); a detector (``nudenet-320n``) also has
``detect`` (boxes), and its ``predict`` gives each class's highest detection confidence.

Images are HxWx3 uint8 RGB arrays (a list, or one (N, H, W, 3) array); each is prepared as its
card says (:func:`prepare`), so images of different sizes batch together. Weights are read once,
sha256-verified, and the model is built from the verified bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..config import Settings
from ..errors import ConfigError, ModelError, WeightsError
from . import nudenet
from .cards import InputSpec, ModelCard
from .convert import read_converted
from .registry import get_card, parse_ensemble
from .store import read_verified, weights_path

__all__ = ["BACKENDS", "EnsembleModel", "ZooModel", "build_plan_net", "load", "prepare"]

BACKENDS = ("torch", "onnxruntime")
Images = Sequence[np.ndarray] | np.ndarray


def _check_images(images: Images) -> list[np.ndarray]:
    items = list(images) if not (isinstance(images, np.ndarray) and images.ndim == 3) else [images]
    if not items:
        raise ConfigError("images must hold at least one image", param="images")
    for arr in items:
        if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 \
                or min(arr.shape[:2]) < 1:
            raise ConfigError("images must be HxWx3 uint8 RGB arrays", param="images")
    return items


def prepare(images: Images, spec: InputSpec) -> Any:
    """The network input (a float32 torch tensor, NCHW or NHWC per ``spec``) of HxWx3 uint8 images:
    ``x * scale`` (as a division where ``1/scale`` is whole, as nsfwjs divides by 255), resize to
    ``spec.size`` unless the image has it already, channel order, ``(x - mean) / std``."""
    import torch
    import torch.nn.functional as F

    if spec.resize == "yahoo-exact":
        raise ConfigError("the yahoo-exact pipeline is open_nsfw's own (nsfwlab.preprocess)")
    inverse = 1.0 / spec.scale
    out = []
    for arr in _check_images(images):
        x = torch.from_numpy(np.ascontiguousarray(arr)).to(torch.float32)
        x = x / round(inverse) if math.isclose(inverse, round(inverse)) else x * spec.scale
        x = x.permute(2, 0, 1).unsqueeze(0)
        if x.shape[2:] != (spec.size, spec.size):
            x = F.interpolate(x, size=(spec.size, spec.size), mode="bilinear",
                              align_corners=spec.resize == "bilinear-align-corners")
        out.append(x)
    batch = torch.cat(out)
    if spec.channel_order == "BGR":
        batch = batch.flip(1)
    if spec.mean != (0.0, 0.0, 0.0) or spec.std != (1.0, 1.0, 1.0):
        batch = (batch - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    return batch.permute(0, 2, 3, 1).contiguous() if spec.layout == "NHWC" else batch.contiguous()


def build_plan_net(data: bytes, what: str) -> Any:
    """A :class:`~nsfwlab.zoo.net.PlanNet` in eval mode from a converted file's (verified) bytes."""
    import torch

    from .net import PlanNet

    plan, tensors, output = read_converted(data, what)
    net = PlanNet(plan, output, {k: tuple(v.shape) for k, v in tensors.items()})
    names = net.tensor_names()
    if set(names) != set(tensors):
        raise WeightsError(f"{what}: the tensors do not match the plan")
    net.load_state_dict({names[k]: torch.from_numpy(v.copy()) for k, v in tensors.items()})
    # channels_last: oneDNN's fast convolutions on CPU (measured 2.3x on MobileNetV2, one thread).
    return net.eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def _ort_session(model: bytes, threads: int | None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for a bad graph
        raise ModelError(f"onnxruntime could not load the model: {str(exc)[:200]}") from None


def export_onnx(net: Any, size: int, opset: int = 17) -> bytes:
    """``net`` (NCHW float32 input ``input``, output ``probabilities``) as ONNX bytes, batch dynamic."""
    import torch

    buffer = io.BytesIO()
    axes = {"input": {0: "batch"}, "probabilities": {0: "batch"}}
    try:
        torch.onnx.export(net, (torch.zeros(1, 3, size, size),), buffer,  # type: ignore[arg-type]
                          input_names=["input"], output_names=["probabilities"], dynamic_axes=axes,
                          opset_version=opset, dynamo=False)
    except Exception as exc:  # the exporter raises many types, with pages of graph dump
        raise ModelError(f"the ONNX export failed: {str(exc).splitlines()[0][:200]}") from None
    return buffer.getvalue()


class ZooModel:
    """One zoo model. ``predict(images)`` -> (N, classes) float32 probabilities in ``card.classes``
    order; ``nsfw_score(probs)`` -> (N,) per the card; ``score(images)`` both."""

    def __init__(self, card: ModelCard, runner: Any, backend: str, batch_size: int = 8) -> None:
        self.card = card
        self.id = card.id
        self.classes = card.classes
        self.backend = backend
        self.batch_size = batch_size
        self._runner = runner

    def predict(self, images: Images) -> np.ndarray:
        items = _check_images(images)
        chunks = [self._runner(items[i:i + self.batch_size]) for i in range(0, len(items), self.batch_size)]
        return np.concatenate(chunks).astype(np.float32, copy=False)

    def nsfw_score(self, probs: np.ndarray) -> np.ndarray:
        probs = np.asarray(probs, dtype=np.float32)
        if probs.ndim != 2 or probs.shape[1] != len(self.card.classes):
            raise ConfigError(f"probs must have shape (N, {len(self.card.classes)}) for {self.id}", param="probs")
        picked = probs[:, list(self.card.nsfw_indices)]
        return picked.max(axis=1) if self.card.kind == "detector" else np.clip(picked.sum(axis=1), 0.0, 1.0)

    def score(self, images: Images) -> np.ndarray:
        return self.nsfw_score(self.predict(images))

    def detect(self, images: Images) -> list[list[dict[str, Any]]]:
        """A detector's boxes: per image a list of ``{"class", "score", "box": [x, y, w, h]}`` (ints,
        pixels of the image given), highest score first."""
        detect = getattr(self._runner, "detect", None)
        if detect is None:
            raise ModelError(f"{self.id} is a {self.card.kind}: it gives class probabilities, not boxes")
        items = _check_images(images)
        return [d for i in range(0, len(items), self.batch_size) for d in detect(items[i:i + self.batch_size])]

    def reported(self, probs: np.ndarray) -> dict[str, np.ndarray]:
        """The card's ``report_classes`` (nsfwjs: Sexy), each (N,): shown beside the NSFW score, not in it."""
        probs = np.asarray(probs, dtype=np.float32)
        return {name: probs[:, self.card.classes.index(name)] for name in self.card.report_classes}

    def torch_model(self) -> Any:
        """The PyTorch module (input per :func:`prepare`), where the model has one."""
        module = getattr(self._runner, "module", None)
        if module is None:
            raise ModelError(f"{self.id} on {self.backend} has no PyTorch module")
        return module


class EnsembleModel:
    """Members' NSFW scores side by side: ``predict`` -> (N, members); ``nsfw_score`` combines them
    by ``mean`` or ``max``."""

    def __init__(self, model_id: str, members: list[ZooModel], combine: str) -> None:
        self.id = model_id
        self.members = members
        self.classes = tuple(m.id for m in members)
        self.combine = combine

    def predict(self, images: Images) -> np.ndarray:
        items = _check_images(images)
        return np.stack([m.score(items) for m in self.members], axis=1).astype(np.float32)

    def nsfw_score(self, probs: np.ndarray) -> np.ndarray:
        probs = np.asarray(probs, dtype=np.float32)
        if probs.ndim != 2 or probs.shape[1] != len(self.members):
            raise ConfigError(f"probs must have shape (N, {len(self.members)}) for {self.id}", param="probs")
        return probs.max(axis=1) if self.combine == "max" else probs.mean(axis=1)

    def score(self, images: Images) -> np.ndarray:
        return self.nsfw_score(self.predict(images))


class _TorchRunner:
    def __init__(self, module: Any, spec: InputSpec, output: str) -> None:
        self.module, self.spec, self.output = module, spec, output

    def __call__(self, items: list[np.ndarray]) -> np.ndarray:
        import torch

        x = prepare(items, self.spec)
        if self.spec.layout == "NCHW":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            out = self.module(x)
            if self.output == "logits":
                out = torch.softmax(out, dim=1)
        return out.numpy()


class _OrtRunner:
    def __init__(self, session: Any, spec: InputSpec, output: str) -> None:
        self.session, self.spec, self.output = session, spec, output
        self.input = session.get_inputs()[0].name

    def __call__(self, items: list[np.ndarray]) -> np.ndarray:
        try:
            (out,) = self.session.run(None, {self.input: prepare(items, self.spec).numpy()})[:1]
        except Exception as exc:  # onnxruntime's own error types: a card whose input contract is wrong
            raise ModelError(f"onnxruntime could not run the model: {str(exc).splitlines()[0][:200]}") from None
        out = np.asarray(out, dtype=np.float32)
        if self.output == "logits":
            out = np.exp(out - out.max(axis=1, keepdims=True))
            out /= out.sum(axis=1, keepdims=True)
        return out


class _OpenNsfwRunner:
    """open_nsfw through its exact pipeline (nsfwlab.preprocess) and the bundled ONNX file."""

    def __init__(self, threads: int | None) -> None:
        from ..weights import resolve_onnx_path

        self.session = _ort_session(resolve_onnx_path().read_bytes(), threads)
        self.input = self.session.get_inputs()[0].name

    def __call__(self, items: list[np.ndarray]) -> np.ndarray:
        from PIL import Image

        from ..preprocess import preprocess_rgb, stack_batch

        batch = stack_batch([preprocess_rgb(Image.fromarray(a)) for a in items])
        return np.asarray(self.session.run(None, {self.input: batch})[0], dtype=np.float32)


def _load_one(card: ModelCard, backend: str, threads: int | None, trust_code: bool) -> Any:
    what = f"weights of {card.id}"
    if card.id == "open_nsfw":
        if backend != "onnxruntime":
            raise ConfigError("open_nsfw loads through the Detector for torch; the zoo runs it on onnxruntime",
                              param="backend")
        return _OpenNsfwRunner(threads)
    if card.weights.package == f"pypi:{nudenet.PACKAGE}":
        if backend != "onnxruntime":
            raise ConfigError(f"{card.id} is an ONNX model: use backend onnxruntime", param="backend")
        data = read_verified(nudenet.package_file(), card.weights.sha256, what)
        return nudenet.NudeNetRunner(_ort_session(data, threads))
    data = read_verified(weights_path(card), card.weights.sha256, what)
    if card.weights.format == "tfjs":
        net = build_plan_net(data, what)
        if backend == "torch":
            return _TorchRunner(net, card.input, card.output)
        return _OrtRunner(_ort_session(export_onnx(net, card.input.size), threads), card.input, card.output)
    if card.weights.format == "onnx":
        if backend != "onnxruntime":
            raise ConfigError(f"{card.id} is an ONNX model: use backend onnxruntime", param="backend")
        return _OrtRunner(_ort_session(data, threads), card.input, card.output)
    if not trust_code:
        raise ConfigError(f"{card.id} is a TorchScript file, which can run code: pass trust_code=True only for a "
                          "file you trust", param="trust_code")
    import torch

    try:
        module = torch.jit.load(io.BytesIO(data), map_location="cpu").eval()
    except Exception as exc:  # TorchScript raises RuntimeError subclasses of its own
        raise ModelError(f"{card.id}: TorchScript could not load its weights: {str(exc)[:200]}") from None
    return _TorchRunner(module, card.input, card.output)


def load(model_id: str, *, backend: str | None = None, threads: int | None = None, batch_size: int = 8,
         trust_code: bool = False) -> ZooModel | EnsembleModel:
    """A zoo model by id (a built-in id, a user card's id or card file path, or
    ``ensemble:A+B[:mean|max]``). ``backend``: ``torch`` or ``onnxruntime`` (default: onnxruntime
    for ONNX weights, torch otherwise)."""
    if backend is not None and backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}", param="backend")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}", param="batch_size")
    threads = threads if threads is not None else Settings.from_env().threads
    ensemble = parse_ensemble(model_id)
    if ensemble is not None:
        members = [load(m, backend=backend, threads=threads, batch_size=batch_size, trust_code=trust_code)
                   for m in ensemble.members]
        return EnsembleModel(model_id, [m for m in members if isinstance(m, ZooModel)], ensemble.combine)
    card = get_card(model_id)
    chosen = backend or ("onnxruntime" if card.weights.format == "onnx" else "torch")
    return ZooModel(card, _load_one(card, chosen, threads, trust_code), chosen, batch_size)
