"""What ``Detector(model=...)`` names: a checkpoint file (``.pt`` / ``.onnx``, loaded through
:mod:`nsfwlab.checkpoint`) or a zoo model (``nsfwjs-mobilenetv2``, a user's card,
``ensemble:A+B[:mean|max]``), which runs behind the Detector as a :class:`ZooBackend`.

A zoo model takes decoded RGB images of any size and prepares them as its card says
(:func:`nsfwlab.zoo.prepare`), not through Yahoo's pipeline: the Detector hands it the decoded
uint8 pixels (:meth:`ZooBackend.prepare_image`) and gets back each image's class probabilities and
the NSFW score its card derives from them. A detector (``nudenet-320n``) also gives each image's
boxes (:meth:`ZooBackend.run_images`); its "probabilities" are each class's highest box
confidence. The verdict (bands, calibration, frames, the bank) is the same as open_nsfw's; only
the score's source differs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config import BackendName, Device, Precision, Thresholds, option
from .errors import ConfigError, ModelError

__all__ = ["CHECKPOINT_SUFFIXES", "Detection", "ZooBackend", "check_file_backend", "is_model_file", "is_zoo_id",
           "load_zoo_backend", "rgb_pixels"]

#: Suffixes of model files the Detector loads through :mod:`nsfwlab.checkpoint` (not the zoo).
CHECKPOINT_SUFFIXES = (".pt", ".onnx")


def is_model_file(model: str | os.PathLike) -> bool:
    """Whether ``model`` names a checkpoint file (a path object, an existing file, or a name ending
    in ``.pt`` / ``.onnx``) rather than a zoo id. A zoo card file (``.json``) is a zoo id."""
    if isinstance(model, os.PathLike):
        return Path(model).suffix.lower() != ".json"
    if Path(model).suffix.lower() in CHECKPOINT_SUFFIXES:
        return True
    return os.path.isfile(model) and Path(model).suffix.lower() != ".json"


def check_file_backend(model: str | os.PathLike, backend: BackendName | str | Any,
                       precision: Precision | str) -> None:
    """Refuse a backend or precision that ``model`` cannot run on, instead of ignoring it.

    An exported ``.onnx`` runs on onnxruntime in fp32; a ``.pt`` checkpoint on torch.
    """
    if not isinstance(backend, (str, BackendName)):
        raise ConfigError("pass either a ready backend or model=..., not both")
    name = option(BackendName, backend, "backend")
    onnx = Path(model).suffix.lower() == ".onnx"
    if onnx and name is BackendName.TORCH:
        raise ConfigError(f"{model} is an exported ONNX graph, which runs on onnxruntime; pass the .pt "
                          "checkpoint for the torch backend")
    if onnx and option(Precision, precision, "precision") is Precision.FP16:
        raise ConfigError(f"{model} is an exported ONNX graph, which runs fp32; pass the .pt checkpoint for fp16")
    if not onnx and name is BackendName.ONNXRUNTIME:
        raise ConfigError(f"{model} is a PyTorch checkpoint, which runs on the torch backend; export it with "
                          "`nsfwlab export-onnx` for onnxruntime")


def check_model_name(model: str | os.PathLike) -> None:
    """Refuse at once a model that cannot load: a checkpoint path that is not a file, or an id that no
    card has (one-line :class:`ModelError` / :class:`ConfigError`); loading itself may come later."""
    if is_model_file(model):
        if not os.path.isfile(model):
            raise ModelError(f"model file {os.fspath(model)} does not exist")
    elif os.fspath(model) != "open_nsfw":
        from .zoo import get_card, parse_ensemble

        if parse_ensemble(os.fspath(model)) is None:
            get_card(os.fspath(model))


def is_zoo_id(model: str | os.PathLike | None) -> bool:
    """Whether ``model`` names a zoo model other than open_nsfw (which is the default model, loaded
    as it always is)."""
    return model is not None and not is_model_file(model) and os.fspath(model) != "open_nsfw"


#: One detection of a detector model: ``{"class": str, "score": float, "box": [x, y, w, h]}`` (ints, pixels).
Detection = dict[str, Any]


class ZooBackend:
    """A zoo model as the Detector's backend: ``predict_images`` (uint8 RGB images of any size ->
    (N, classes) probabilities), ``run_images`` (those and, for a detector, each image's boxes) and
    ``nsfw_scores`` (-> (N,) per the card). ``predict`` (open_nsfw's preprocessed NHWC batches) is
    refused: a zoo model prepares its own input."""

    def __init__(self, model: Any, device: str = "cpu") -> None:
        from . import zoo

        self.model = model
        self.model_id: str = model.id
        self.name = f"zoo-{getattr(model, 'backend', 'ensemble')}"
        self.device = device
        self.classes: tuple[str, ...] = tuple(model.classes)
        if isinstance(model, zoo.EnsembleModel):
            members = "+".join(_version(m.card) for m in model.members)
            self.model_version = f"ensemble:{members}:{model.combine}"
            self.preprocess_version = "+".join(_input_version(m.card) for m in model.members)
            self.thresholds = Thresholds()
        else:
            self.model_version = _version(model.card)
            self.preprocess_version = _input_version(model.card)
            self.thresholds = model.card.bands
        card = getattr(model, "card", None)
        #: Whether the model gives boxes (``card.kind == "detector"``); an ensemble never does.
        self.is_detector: bool = card is not None and card.kind == "detector"
        #: The classes whose confidence makes the NSFW score (a detector's: the boxes censor hides).
        self.nsfw_classes: tuple[str, ...] = tuple(card.nsfw_classes) if card is not None else ()

    def prepare_image(self, img: Any) -> np.ndarray:
        """The decoded image (a PIL image) as the model's input (:func:`rgb_pixels`)."""
        return rgb_pixels(img)

    def predict_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(N, classes) float32: class probabilities (an ensemble: its members' NSFW scores)."""
        probs = self.model.predict(list(images))
        if not np.isfinite(probs).all():
            from .errors import ModelError

            raise ModelError(f"model {self.model_id} returned a probability that is not a finite number")
        return probs

    def run_images(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, list[list[Detection]] | None]:
        """(N, classes) probabilities as :meth:`predict_images`, and a detector's boxes per image
        (``None`` for a classifier). A detector runs once: its probabilities are each class's
        highest box confidence, taken from the boxes (0 where a class has none)."""
        if not self.is_detector:
            return self.predict_images(images), None
        boxes: list[list[Detection]] = self.model.detect(list(images))
        probs = np.zeros((len(boxes), len(self.classes)), np.float32)
        index = {name: i for i, name in enumerate(self.classes)}
        for row, found in zip(probs, boxes, strict=True):
            for det in found:
                if not math.isfinite(det["score"]):
                    raise ModelError(f"model {self.model_id} returned a box score that is not a finite number")
                i = index[det["class"]]
                row[i] = max(row[i], det["score"])
        return probs, boxes

    def nsfw_scores(self, probs: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.nsfw_score(probs), dtype=np.float32)

    def class_dict(self, row: np.ndarray) -> dict[str, float]:
        return {name: float(p) for name, p in zip(self.classes, row.tolist(), strict=True)}

    def predict(self, batch: np.ndarray) -> np.ndarray:
        raise ConfigError(f"model {self.model_id} takes decoded images (predict_images), not open_nsfw's "
                          "preprocessed arrays")


def rgb_pixels(img: Any) -> np.ndarray:
    """A decoded image (a PIL image) as a zoo model's input: its HxWx3 uint8 RGB pixels (a writable
    copy: torch takes it as it is)."""
    return np.array(img.convert("RGB") if img.mode != "RGB" else img, dtype=np.uint8)


def _version(card: Any) -> str:
    """A zoo model's version: its id and the first 12 hex digits of its weights' sha256."""
    return f"{card.id}-{card.weights.sha256[:12]}"


def _input_version(card: Any) -> str:
    spec = card.input
    return f"{spec.resize}-{spec.size}-{spec.channel_order.lower()}"


def load_zoo_backend(model_id: str, backend: BackendName | str, device: Device | str, precision: Precision | str,
                     threads: int | None, batch_size: int) -> ZooBackend:
    """Load zoo model ``model_id`` for the Detector. Zoo models run on the CPU in float32: another
    ``device`` or ``precision`` is refused rather than ignored. An unknown id is a ConfigError
    listing the ids (:func:`nsfwlab.zoo.get_card`)."""
    from . import zoo

    name = option(BackendName, backend, "backend")
    if option(Device, device, "device") is Device.CUDA:
        raise ConfigError(f"model {model_id} runs on the CPU; leave device at auto or cpu", param="device")
    if option(Precision, precision, "precision") is Precision.FP16:
        raise ConfigError(f"model {model_id} runs in fp32; leave precision at auto or fp32", param="precision")
    chosen = None if name is BackendName.AUTO else name.value
    return ZooBackend(zoo.load(model_id, backend=chosen, threads=threads, batch_size=batch_size))

