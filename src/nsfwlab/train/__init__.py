"""Fine-tune open_nsfw on your labelled data, or train the seed tutorial's VGG-16 from scratch.

Importing this package registers the ``vgg16`` architecture with :mod:`nsfwlab.checkpoint`, so
its checkpoints load wherever ``--model PATH`` is accepted.
"""

from __future__ import annotations

from ..checkpoint import register_architecture
from .augment import NO_AUGMENT, AugmentConfig, augment_batch
from .cache import PreparedSet, prepare
from .finetune import (
    MAX_UNFREEZE,
    Arch,
    EpochStats,
    FinetuneConfig,
    FinetuneResult,
    finetune,
    set_trainable,
    stratified_split,
)
from .vgg import VGG16

__all__ = [
    "MAX_UNFREEZE",
    "NO_AUGMENT",
    "VGG16",
    "Arch",
    "AugmentConfig",
    "EpochStats",
    "FinetuneConfig",
    "FinetuneResult",
    "PreparedSet",
    "augment_batch",
    "finetune",
    "prepare",
    "set_trainable",
    "stratified_split",
]

register_architecture("vgg16", VGG16)
