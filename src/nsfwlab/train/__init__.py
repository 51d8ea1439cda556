"""Fine-tune open_nsfw on your labelled data, or train a VGG-16 from scratch as a baseline.

Both networks are core architectures (:mod:`nsfwlab.model`, named in
:mod:`nsfwlab.architectures`), so their checkpoints load wherever ``--model PATH`` is accepted
without importing this package. ``VGG16`` is re-exported here.
"""

from __future__ import annotations

from ..model import VGG16
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
