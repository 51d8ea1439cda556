"""The table of network architectures: the name a checkpoint records (``"arch"``) -> a factory of
the untrained module (:mod:`nsfwlab.model`). Every architecture takes NCHW float32 BGR
mean-subtracted 224x224 input, returns logits ``[sfw, nsfw]`` and has ``stages()``.

Importing this module does not import torch; :func:`build_architecture` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import ConfigError

__all__ = ["ARCHITECTURES", "build_architecture", "register_architecture"]


def _open_nsfw() -> Any:
    from .model import OpenNSFW

    return OpenNSFW()


def _vgg16() -> Any:
    from .model import VGG16

    return VGG16()


#: name -> factory of an untrained ``nn.Module``: ``open_nsfw`` (Yahoo's network; its weights come
#: from the bundled ONNX file or a checkpoint) and ``vgg16`` (a from-scratch baseline).
ARCHITECTURES: dict[str, Callable[[], Any]] = {"open_nsfw": _open_nsfw, "vgg16": _vgg16}


def register_architecture(name: str, factory: Callable[[], Any]) -> None:
    """Add (or replace) an architecture, so that checkpoints recording ``name`` load."""
    ARCHITECTURES[name] = factory


def build_architecture(name: str) -> Any:
    """A new untrained module of the named architecture (a :class:`ConfigError` for an unknown name)."""
    try:
        factory = ARCHITECTURES[name]
    except KeyError:
        raise ConfigError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}") from None
    return factory()
