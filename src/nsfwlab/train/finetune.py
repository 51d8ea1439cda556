"""Transfer learning from the open_nsfw weights (or VGG-16 from scratch) on a labelled set.

The loop: hash the files (duplicates stay on one side of the split; groups of identical files
with conflicting labels are left out), preprocess every readable image once with the core's exact
pipeline, split stratified and seeded (:func:`prepare_data` -> :class:`TrainData`), then train
the unfrozen top stages with AdamW on a class-balanced cross-entropy, augmenting each batch
(:func:`train_epoch`); after each epoch measure the validation ROC AUC (:func:`validate`), keep
the best weights, stop early after ``patience`` epochs without improvement
(:meth:`TrainState.end_epoch`), and (with ``state_path``) save everything needed to resume
(:meth:`TrainState.to_dict`). Epoch ``e`` draws its shuffling, augmentation and dropout from
seeds derived from ``(seed, e)`` (no generator state is carried), so a resumed run reproduces an
uninterrupted one.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DecodeLimits, Device, PreprocessConfig
from ..datasets import LabelledItem, LabelledSet, Problem, check_hygiene
from ..errors import ConfigError
from .augment import AugmentConfig, augment_batch
from .cache import PreparedSet, prepare, text_digest

__all__ = [
    "MAX_BATCH_SIZE",
    "MAX_EPOCHS",
    "MAX_UNFREEZE",
    "PRETRAINED_ARCH",
    "Arch",
    "EpochStats",
    "FinetuneConfig",
    "FinetuneResult",
    "TrainData",
    "TrainState",
    "Validation",
    "finetune",
    "prepare_data",
    "set_trainable",
    "stratified_split",
    "train_epoch",
    "validate",
]

#: ``unfreeze`` counts the stages of ``model.stages()`` below the head, from the top: 0 = the fc
#: head only, 1..4 = also the last 1..4 residual stages, 5 = everything including the stem (``conv_1``).
MAX_UNFREEZE = 5
#: Upper bounds of the counts a caller gives (a typo such as ``epochs=10**9`` is refused at once
#: rather than running for ever): far above any useful run on one machine.
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 4096


#: The architecture trained by transfer learning from Yahoo's weights; every other architecture of
#: :data:`nsfwlab.architectures.ARCHITECTURES` is trained from scratch, every layer.
PRETRAINED_ARCH = "open_nsfw"


class Arch(StrEnum):
    """Names of the two architectures nsfwlab ships. ``FinetuneConfig.arch`` takes any name in the
    architecture table (:func:`nsfwlab.architectures.register_architecture`), these included."""

    OPEN_NSFW = "open_nsfw"  # transfer learning from Yahoo's weights
    VGG16 = "vgg16"  # VGG-16, trained from scratch (a baseline)


def _arch_name(arch: object) -> str:
    from ..architectures import ARCHITECTURES

    name = arch.value if isinstance(arch, Enum) else arch
    if not isinstance(name, str) or name not in ARCHITECTURES:
        raise ConfigError(f"unknown arch {arch!r}: use one of {sorted(ARCHITECTURES)}", param="arch")
    return name


@dataclass(frozen=True)
class FinetuneConfig:
    """How to train. ``arch`` names an architecture of :data:`nsfwlab.architectures.ARCHITECTURES`
    (``open_nsfw`` starts from Yahoo's weights; any other is trained from scratch, every layer);
    ``unfreeze`` applies to ``open_nsfw`` only."""

    arch: str = PRETRAINED_ARCH
    unfreeze: int = 1
    epochs: int = 10
    patience: int = 3
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    seed: int = 0
    balance: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "arch", _arch_name(self.arch))
        if not 0 <= self.unfreeze <= MAX_UNFREEZE:
            raise ConfigError(f"unfreeze must lie in [0, {MAX_UNFREEZE}] (stages from the top), got {self.unfreeze}",
                              param="unfreeze")
        for name, most in (("epochs", MAX_EPOCHS), ("patience", MAX_EPOCHS), ("batch_size", MAX_BATCH_SIZE)):
            value = getattr(self, name)
            if not 1 <= value <= most:
                raise ConfigError(f"{name} must lie in [1, {most}], got {value}", param=name)
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must lie in (0, 1), got {self.val_fraction}", param="val_fraction")
        if not 0.0 < self.lr <= 1.0:  # also refuses NaN
            raise ConfigError(f"lr must lie in (0, 1], got {self.lr}", param="lr")
        if not 0.0 <= self.weight_decay <= 1.0:
            raise ConfigError(f"weight_decay must lie in [0, 1], got {self.weight_decay}", param="weight_decay")

    @property
    def from_scratch(self) -> bool:
        """True for every architecture but open_nsfw: no pretrained weights, every layer trains."""
        return self.arch != PRETRAINED_ARCH

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        d = dict(d)
        d["augment"] = AugmentConfig(**d.get("augment", {}))
        return cls(**d)


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    train_loss: float | None
    val_loss: float
    val_auc: float
    val_accuracy: float
    seconds: float
    improved: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FinetuneResult:
    """The trained model (the best epoch's weights, in eval mode) and how it got there."""

    model: Any
    config: FinetuneConfig
    history: list[EpochStats]
    baseline_auc: float
    best_auc: float
    best_epoch: int
    n_train: int
    n_val: int
    stopped_early: bool
    problems: tuple[Problem, ...]
    excluded_conflicting: tuple[str, ...]
    preprocess: PreprocessConfig

    def meta(self) -> dict[str, Any]:
        """What the checkpoint records about its training (``checkpoint['meta']``)."""
        return {
            "trained_by": "nsfwlab finetune",
            "config": self.config.to_dict(),
            "baseline_val_auc": self.baseline_auc,
            "best_val_auc": self.best_auc,
            "best_epoch": self.best_epoch,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "stopped_early": self.stopped_early,
            "history": [h.to_dict() for h in self.history],
            "unreadable": [p.to_dict() for p in self.problems],
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model as an nsfwlab checkpoint (loads with ``--model PATH`` everywhere)."""
        from ..checkpoint import save_checkpoint

        return save_checkpoint(path, self.model, arch=self.config.arch, preprocess=self.preprocess,
                               meta=self.meta())


def stratified_split(labels: Sequence[int] | np.ndarray, groups: Sequence[str], val_fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation indices, stratified by label, keeping each group (identical
    contents) on one side. Each class needs at least two groups."""
    y = np.asarray(labels)
    if len(groups) != len(y):
        raise ConfigError("one group per label expected")
    rng = np.random.default_rng(seed)
    val: list[int] = []
    for cls in (0, 1):
        keys = sorted({g for g, lab in zip(groups, y, strict=True) if lab == cls})
        name = "nsfw" if cls else "safe"
        if len(keys) < 2:
            raise ConfigError(f"need at least 2 distinct {name} images to split train/validation, got {len(keys)}")
        n_val = min(len(keys) - 1, max(1, round(val_fraction * len(keys))))
        chosen = {keys[i] for i in rng.permutation(len(keys))[:n_val]}
        val.extend(i for i, (g, lab) in enumerate(zip(groups, y, strict=True)) if lab == cls and g in chosen)
    val_idx = np.asarray(sorted(val), dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(y)), val_idx)
    return train_idx, val_idx




def set_trainable(model: Any, arch: Arch | str, unfreeze: int) -> int:
    """Freeze all but the head and the top ``unfreeze`` stages of ``model.stages()`` (an
    architecture trained from scratch, anything but ``open_nsfw``, trains every stage whatever
    ``unfreeze``); returns the index in ``model.stages()`` of the first trainable stage. Frozen
    parameters do not require gradients, so the frozen part of the forward pass records no
    autograd graph: head-only training costs one forward pass per image."""
    groups = model.stages()
    first = 0 if _arch_name(arch) != PRETRAINED_ARCH else max(len(groups) - 1 - unfreeze, 0)
    for i, (_, modules) in enumerate(groups):
        for module in modules:
            module.requires_grad_(i >= first)
    return first


@dataclass(frozen=True)
class TrainData:
    """The preprocessed readable images, the train/validation split (and a digest of it, which a
    resumed run must match), and what was left out."""

    prepared: PreparedSet
    train_idx: np.ndarray
    val_idx: np.ndarray
    split_id: str
    problems: tuple[Problem, ...]
    excluded_conflicting: tuple[str, ...]

    def class_weight(self) -> np.ndarray:
        """Cross-entropy weights that give both classes of the training split equal total weight."""
        counts = np.bincount(self.prepared.labels[self.train_idx], minlength=2).astype(np.float64)
        return len(self.train_idx) / (2.0 * np.maximum(counts, 1.0))


def prepare_data(items: Sequence[LabelledItem], config: FinetuneConfig, preprocess: PreprocessConfig, *,
                 limits: DecodeLimits | None = None, workers: int = 2, cache_dir: str | os.PathLike | None = None,
                 progress: Callable[[int, int], None] | None = None) -> TrainData:
    """Hash the files (identical contents stay on one side of the split; groups with conflicting
    labels and unreadable files are left out), preprocess the rest once, and split them."""
    hygiene = check_hygiene(items)
    conflicting = tuple(sorted({p for g in hygiene.conflicting for p in g.paths}))
    left_out = {p.path for p in hygiene.unreadable} | set(conflicting)
    usable = [it for it in items if str(it.path) not in left_out]
    prepared = prepare(usable, preprocess, limits=limits, workers=workers, cache_dir=cache_dir, progress=progress)
    groups = [hygiene.digests.get(p, p) for p in prepared.paths]
    train_idx, val_idx = stratified_split(prepared.labels, groups, config.val_fraction, config.seed)
    split_id = text_digest(f"{tag}{prepared.paths[int(i)]}\n"
                           for tag, idx in (("t", train_idx), ("v", val_idx)) for i in idx)
    return TrainData(prepared, train_idx, val_idx, split_id, tuple(hygiene.unreadable) + prepared.problems,
                     conflicting)


@dataclass(frozen=True)
class Validation:
    auc: float
    loss: float
    accuracy: float


@dataclass
class TrainState:
    """Everything a run carries from epoch to epoch, and all that resuming it needs. ``epoch`` is
    the last finished epoch (0: the starting model has been measured). Random draws are not
    state: epoch ``e`` seeds them from ``(config.seed, e)``."""

    model: Any
    optimizer: Any
    epoch: int = -1
    best_auc: float = float("-inf")
    best_epoch: int = 0
    bad_epochs: int = 0
    baseline_auc: float = float("nan")
    best_state_dict: dict[str, Any] = field(default_factory=dict)
    history: list[EpochStats] = field(default_factory=list)

    def end_epoch(self, train_loss: float | None, val: Validation, seconds: float) -> EpochStats:
        """Record the next epoch's outcome: keep the weights if validation AUC improved, count
        epochs without improvement otherwise."""
        self.epoch += 1
        if self.epoch == 0:
            self.baseline_auc = val.auc
        improved = val.auc > self.best_auc + 1e-9
        if improved:
            self.best_auc, self.best_epoch, self.bad_epochs = val.auc, self.epoch, 0
            self.best_state_dict = copy.deepcopy(self.model.state_dict())
        else:
            self.bad_epochs += 1
        stats = EpochStats(self.epoch, train_loss, val.loss, val.auc, val.accuracy, seconds, improved)
        self.history.append(stats)
        return stats

    def to_dict(self, config: FinetuneConfig, split_id: str) -> dict[str, Any]:
        """The ``train_state`` record of a checkpoint (the current weights are its ``state_dict``)."""
        return {"epoch": self.epoch, "config": config.to_dict(), "split": split_id,
                "optimizer": self.optimizer.state_dict(), "best_state_dict": self.best_state_dict,
                "best_auc": self.best_auc, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "baseline_auc": self.baseline_auc, "history": [h.to_dict() for h in self.history]}

    @classmethod
    def resume(cls, path: str | os.PathLike, model: Any, optimizer: Any, config: FinetuneConfig,
               split_id: str) -> TrainState:
        """The state saved at ``path``, loaded into ``model`` and ``optimizer``; a state of
        another configuration (``epochs``/``patience`` aside) or another split is refused."""
        from ..checkpoint import read_checkpoint

        payload = read_checkpoint(path)
        record = payload.get("train_state")
        if not isinstance(record, dict):
            raise ConfigError(f"{path} is a model checkpoint, not a training state (nothing to resume)")
        try:
            saved = {k: v for k, v in record["config"].items() if k not in _RESUMABLE}
            now = {k: v for k, v in config.to_dict().items() if k not in _RESUMABLE}
            if saved != now:
                changed = sorted(k for k in now if saved.get(k) != now[k])
                raise ConfigError(f"cannot resume: the configuration differs from the saved run in {changed}")
            if record["split"] != split_id:
                raise ConfigError("cannot resume: the data set or its train/validation split has changed")
            model.load_state_dict(payload["state_dict"])
            optimizer.load_state_dict(record["optimizer"])
            return cls(model, optimizer, int(record["epoch"]), float(record["best_auc"]), int(record["best_epoch"]),
                       int(record["bad_epochs"]), float(record["baseline_auc"]), record["best_state_dict"],
                       [EpochStats(**h) for h in record["history"]])
        except ConfigError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
            raise ConfigError(f"cannot resume: {path} is not a complete training state ({exc})") from None


_RESUMABLE = ("epochs", "patience")  # may change between a run and its resumption


def _to_nchw(batch: np.ndarray, device: str = "cpu") -> Any:
    import torch

    x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).contiguous()
    return x.to(device, non_blocking=True)


def train_epoch(state: TrainState, data: TrainData, config: FinetuneConfig, *, device: str = "cpu",
                on_batch: Callable[[int], None] | None = None) -> float:
    """Train epoch ``state.epoch + 1`` over the shuffled training split (augmented on the host
    from a generator seeded by ``(config.seed, epoch)``); returns the mean training loss. The
    epoch is not recorded: :meth:`TrainState.end_epoch` does that after validation."""
    import torch

    epoch = state.epoch + 1
    seed = config.seed * 100_003 + epoch
    torch.manual_seed(seed)  # dropout (vgg16)
    gen = torch.Generator().manual_seed(seed)
    order = np.random.default_rng([config.seed, epoch]).permutation(data.train_idx)
    weight = torch.tensor(data.class_weight(), dtype=torch.float32, device=device) if config.balance else None
    prepared, model = data.prepared, state.model
    model.train()
    total, seen = 0.0, 0
    for i in range(0, len(order), config.batch_size):
        part = order[i : i + config.batch_size]
        x = _to_nchw(prepared.batch(part))
        if config.augment.enabled:  # on the host, from the seeded CPU generator
            x = augment_batch(x, config.augment, gen, prepared.config.mean_bgr)
        x = x.to(device, non_blocking=True)
        y = torch.from_numpy(prepared.labels[part]).to(device)
        loss = torch.nn.functional.cross_entropy(model(x), y, weight=weight)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        total += float(loss.item()) * len(part)
        seen += len(part)
        if on_batch is not None:
            on_batch(len(part))
    return total / max(seen, 1)


def validate(state: TrainState, data: TrainData, batch_size: int, device: str = "cpu") -> Validation:
    """ROC AUC, mean cross-entropy and accuracy (at 0.5) of the model on the validation split."""
    import torch
    from sklearn.metrics import roc_auc_score

    model, prepared, idx = state.model, data.prepared, data.val_idx
    model.eval()
    scores, losses = [], []
    y = torch.from_numpy(prepared.labels[idx]).to(device)
    with torch.no_grad():
        for i in range(0, len(idx), batch_size):
            part = idx[i : i + batch_size]
            logits = model(_to_nchw(prepared.batch(part), device)).float()
            losses.append(torch.nn.functional.cross_entropy(logits, y[i : i + len(part)], reduction="sum").item())
            scores.append(torch.softmax(logits, dim=1)[:, 1].cpu().numpy())
    s = np.concatenate(scores)
    labels = prepared.labels[idx]
    auc = float(roc_auc_score(labels, s))
    acc = float(np.mean((s > 0.5) == (labels == 1)))
    return Validation(auc, float(sum(losses) / len(idx)), acc)


def _initial_model(config: FinetuneConfig) -> Any:
    import torch

    if not config.from_scratch:
        from ..model import load_open_nsfw

        return load_open_nsfw()
    from ..architectures import build_architecture

    torch.manual_seed(config.seed)
    return build_architecture(config.arch)


def _start(config: FinetuneConfig, data: TrainData, device: str,
           resume_from: str | os.PathLike | None) -> TrainState:
    """A fresh state with the starting model measured (epoch 0), or the one saved at ``resume_from``."""
    import torch

    model = _initial_model(config).to(device)
    set_trainable(model, config.arch, config.unfreeze)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if resume_from is not None:
        return TrainState.resume(resume_from, model, optimizer, config, data.split_id)
    state = TrainState(model, optimizer)
    t0 = time.perf_counter()
    state.end_epoch(None, validate(state, data, config.batch_size, device), time.perf_counter() - t0)
    return state


def _save_state(path: str | os.PathLike, state: TrainState, config: FinetuneConfig, data: TrainData) -> None:
    from ..checkpoint import save_checkpoint

    save_checkpoint(path, state.model, arch=config.arch, preprocess=data.prepared.config,
                    meta={"trained_by": "nsfwlab finetune (training state)"},
                    extra={"train_state": state.to_dict(config, data.split_id)})


def finetune(
    data: LabelledSet | Sequence[LabelledItem],
    config: FinetuneConfig | None = None,
    *,
    state_path: str | os.PathLike | None = None,
    resume: bool = False,
    preprocess: PreprocessConfig | None = None,
    limits: DecodeLimits | None = None,
    cache_dir: str | os.PathLike | None = None,
    workers: int = 2,
    device: Device | str = Device.CPU,
    on_prepare: Callable[[int, int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> FinetuneResult:
    """Train and return the best model by validation AUC (epoch 0 is the starting model, so the
    result is never worse than it on the validation split).

    ``state_path``: written atomically after every epoch (weights, optimizer, best weights,
    history); ``resume=True`` continues from it (``epochs``/``patience`` may be raised, the rest
    of the configuration and the split must match). ``on_prepare(n, errors)``, ``on_batch(n)``
    and ``on_epoch(stats)`` report progress; an exception raised in a callback stops the run,
    and the last saved state is intact. ``device``: ``cpu``, ``cuda`` or ``auto`` (fp32 on both;
    the cached arrays stay in host memory and each batch is copied over).
    """
    import torch

    from ..backends import resolve_device

    config = config or FinetuneConfig()
    dev = resolve_device(device)
    if dev == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA was requested but torch sees no CUDA device", param="device")
    items = tuple(data.items if isinstance(data, LabelledSet) else data)
    if resume and (state_path is None or not Path(state_path).is_file()):
        raise ConfigError(f"no training state to continue from: {state_path} does not exist (run once without "
                          "resume first)", param="resume")
    prepared = prepare_data(items, config, preprocess or PreprocessConfig(), limits=limits, workers=workers,
                            cache_dir=cache_dir, progress=on_prepare)
    state = _start(config, prepared, dev, state_path if resume else None)
    if not resume and on_epoch is not None:
        on_epoch(state.history[-1])

    stopped_early = state.bad_epochs >= config.patience
    while state.epoch < config.epochs and not stopped_early:
        t0 = time.perf_counter()
        loss = train_epoch(state, prepared, config, device=dev, on_batch=on_batch)
        stats = state.end_epoch(loss, validate(state, prepared, config.batch_size, dev), time.perf_counter() - t0)
        stopped_early = state.bad_epochs >= config.patience and state.epoch < config.epochs
        if state_path is not None:
            _save_state(state_path, state, config, prepared)
        if on_epoch is not None:
            on_epoch(stats)
    return _result(state, config, prepared, stopped_early)


def _result(state: TrainState, config: FinetuneConfig, data: TrainData, stopped_early: bool) -> FinetuneResult:
    """The best weights, on the CPU, frozen, in eval mode."""
    model = state.model
    model.load_state_dict(state.best_state_dict)
    model = model.cpu().eval()
    model.requires_grad_(False)
    return FinetuneResult(model, config, state.history, state.baseline_auc, state.best_auc, state.best_epoch,
                          len(data.train_idx), len(data.val_idx), stopped_early, data.problems,
                          data.excluded_conflicting, data.prepared.config)
