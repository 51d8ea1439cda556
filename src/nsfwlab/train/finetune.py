"""Transfer learning from the open_nsfw weights (or VGG-16 from scratch) on a labelled set.

The loop: hash the files (duplicates stay on one side of the split; groups of identical files
with conflicting labels are left out), preprocess every readable image once with the core's exact
pipeline, split stratified and seeded, then train the unfrozen top stages with AdamW on a
class-balanced cross-entropy, augmenting each batch; after each epoch measure the validation
ROC AUC, keep the best weights, stop early after ``patience`` epochs without improvement, and
(with ``state_path``) save everything needed to resume. Epoch ``e`` draws its shuffling,
augmentation and dropout from seeds derived from ``(seed, e)``, so a resumed run reproduces an
uninterrupted one.
"""

from __future__ import annotations

import copy
import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DecodeLimits, Device, PreprocessConfig
from ..errors import ConfigError
from ..evaluate.data import LabelledItem, LabelledSet, Problem, check_hygiene
from .augment import AugmentConfig, augment_batch
from .cache import PreparedSet, prepare

__all__ = [
    "MAX_UNFREEZE",
    "Arch",
    "EpochStats",
    "FinetuneConfig",
    "FinetuneResult",
    "finetune",
    "set_trainable",
    "stratified_split",
]

#: ``unfreeze`` counts stages from the top: 0 = the fc head only, 1..4 = also the last 1..4
#: residual stages, 5 = everything including ``conv_1``.
MAX_UNFREEZE = 5


class Arch(str, Enum):
    OPEN_NSFW = "open_nsfw"  # transfer learning from Yahoo's weights
    VGG16 = "vgg16"  # the seed tutorial's VGG-16, trained from scratch (a baseline)


@dataclass(frozen=True)
class FinetuneConfig:
    """How to train. ``unfreeze`` applies to ``open_nsfw``; ``vgg16`` trains every layer."""

    arch: Arch = Arch.OPEN_NSFW
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
        object.__setattr__(self, "arch", Arch(self.arch))
        if not 0 <= self.unfreeze <= MAX_UNFREEZE:
            raise ConfigError(f"unfreeze must lie in [0, {MAX_UNFREEZE}] (stages from the top), got {self.unfreeze}")
        if self.epochs < 1 or self.patience < 1 or self.batch_size < 1:
            raise ConfigError("epochs, patience and batch_size must be at least 1")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError("lr must be positive and weight_decay non-negative")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["arch"] = self.arch.value
        return d

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

        return save_checkpoint(path, self.model, arch=self.config.arch.value, preprocess=self.preprocess,
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


def _open_nsfw_steps(model: Any) -> list[tuple[str, Callable[[Any], Any]]]:
    import torch

    def stem(x: Any) -> Any:
        return model.pool1(torch.relu(model.conv_1(x)))

    return [("conv_1", stem)] + [(name, getattr(model, name)) for name in model.block_names]


def set_trainable(model: Any, arch: Arch, unfreeze: int) -> int:
    """Freeze all but the top ``unfreeze`` stages (and the head); returns the index of the first
    trainable step of the forward pass (everything before it runs without gradients)."""
    if arch is Arch.VGG16:
        for p in model.parameters():
            p.requires_grad_(True)
        return 0
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.fc_nsfw.parameters():
        p.requires_grad_(True)
    steps = _open_nsfw_steps(model)
    first = len(steps)
    for i, (name, _) in enumerate(steps):
        stage = -1 if name == "conv_1" else int(name[5])
        trainable = unfreeze >= MAX_UNFREEZE if stage < 0 else stage >= 4 - unfreeze
        if trainable:
            module = model.conv_1 if name == "conv_1" else getattr(model, name)
            for p in module.parameters():
                p.requires_grad_(True)
            first = min(first, i)
    return first


def _logits(model: Any, x: Any, arch: Arch, first_trainable: int) -> Any:
    import torch

    if arch is Arch.VGG16:
        return model(x)
    steps = _open_nsfw_steps(model)
    with torch.no_grad():
        for _, fn in steps[:first_trainable]:
            x = fn(x)
    for _, fn in steps[first_trainable:]:
        x = fn(x)
    return model.forward_head(x)


def _to_nchw(batch: np.ndarray, device: str = "cpu") -> Any:
    import torch

    x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).contiguous()
    return x.to(device, non_blocking=True)


def _validate(model: Any, data: PreparedSet, idx: np.ndarray, batch_size: int,
              device: str = "cpu") -> tuple[float, float, float]:
    import torch
    from sklearn.metrics import roc_auc_score

    model.eval()
    scores, losses = [], []
    y = torch.from_numpy(data.labels[idx]).to(device)
    with torch.no_grad():
        for i in range(0, len(idx), batch_size):
            part = idx[i : i + batch_size]
            logits = model(_to_nchw(data.batch(part), device)).float()
            losses.append(torch.nn.functional.cross_entropy(logits, y[i : i + len(part)], reduction="sum").item())
            scores.append(torch.softmax(logits, dim=1)[:, 1].cpu().numpy())
    s = np.concatenate(scores)
    labels = data.labels[idx]
    auc = float(roc_auc_score(labels, s))
    acc = float(np.mean((s > 0.5) == (labels == 1)))
    return auc, float(sum(losses) / len(idx)), acc


def _split_digest(paths: Sequence[str], train_idx: np.ndarray, val_idx: np.ndarray) -> str:
    h = hashlib.sha256()
    for tag, idx in (("t", train_idx), ("v", val_idx)):
        for i in idx:
            h.update(f"{tag}{paths[int(i)]}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:24]


def _initial_model(config: FinetuneConfig) -> Any:
    import torch

    if config.arch is Arch.OPEN_NSFW:
        from ..model import load_open_nsfw

        return load_open_nsfw()
    from ..checkpoint import build_architecture

    torch.manual_seed(config.seed)
    return build_architecture(config.arch.value)


_RESUMABLE = ("epochs", "patience")  # may change between a run and its resumption


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
    from ..checkpoint import read_checkpoint, save_checkpoint

    config = config or FinetuneConfig()
    dev = resolve_device(device)
    if dev == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA was requested but torch sees no CUDA device")
    pre = preprocess or PreprocessConfig()
    items = tuple(data.items if isinstance(data, LabelledSet) else data)
    if resume and (state_path is None or not Path(state_path).is_file()):
        raise ConfigError(f"nothing to resume: {state_path} does not exist (run without --resume first)")

    hygiene = check_hygiene(items)
    conflicting = tuple(sorted({p for g in hygiene.conflicting for p in g.paths}))
    unreadable = {p.path for p in hygiene.unreadable}
    usable = [it for it in items if str(it.path) not in unreadable and str(it.path) not in conflicting]
    prepared = prepare(usable, pre, limits=limits, workers=workers, cache_dir=cache_dir, progress=on_prepare)
    problems = tuple(hygiene.unreadable) + prepared.problems
    groups = [hygiene.digests.get(p, p) for p in prepared.paths]
    train_idx, val_idx = stratified_split(prepared.labels, groups, config.val_fraction, config.seed)
    split_id = _split_digest(prepared.paths, train_idx, val_idx)

    model = _initial_model(config).to(dev)
    first_trainable = set_trainable(model, config.arch, config.unfreeze)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    counts = np.bincount(prepared.labels[train_idx], minlength=2).astype(np.float64)
    balanced = len(train_idx) / (2.0 * np.maximum(counts, 1.0))
    weight = torch.tensor(balanced, dtype=torch.float32, device=dev) if config.balance else None

    history: list[EpochStats] = []
    start = 1
    if resume:
        payload = read_checkpoint(state_path)  # type: ignore[arg-type]
        state = payload.get("train_state")
        if not isinstance(state, dict):
            raise ConfigError(f"{state_path} is a model checkpoint, not a training state (nothing to resume)")
        saved = {k: v for k, v in state["config"].items() if k not in _RESUMABLE}
        now = {k: v for k, v in config.to_dict().items() if k not in _RESUMABLE}
        if saved != now:
            changed = sorted(k for k in now if saved.get(k) != now[k])
            raise ConfigError(f"cannot resume: the configuration differs from the saved run in {changed}")
        if state["split"] != split_id:
            raise ConfigError("cannot resume: the data set or its train/validation split has changed")
        model.load_state_dict(payload["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        history = [EpochStats(**h) for h in state["history"]]
        best_state = state["best_state_dict"]
        best_auc, best_epoch, bad = float(state["best_auc"]), int(state["best_epoch"]), int(state["bad_epochs"])
        baseline = float(state["baseline_auc"])
        start = int(state["epoch"]) + 1
    else:
        t0 = time.perf_counter()
        baseline, val_loss, val_acc = _validate(model, prepared, val_idx, config.batch_size, dev)
        history.append(EpochStats(0, None, val_loss, baseline, val_acc, time.perf_counter() - t0, True))
        if on_epoch is not None:
            on_epoch(history[-1])
        best_state = copy.deepcopy(model.state_dict())
        best_auc, best_epoch, bad = baseline, 0, 0

    stopped_early = bad >= config.patience
    for epoch in range(start, config.epochs + 1):
        if stopped_early:
            break
        t0 = time.perf_counter()
        seed = config.seed * 100_003 + epoch
        torch.manual_seed(seed)  # dropout (vgg16)
        gen = torch.Generator().manual_seed(seed)
        order = np.random.default_rng([config.seed, epoch]).permutation(train_idx)
        model.train()
        total, seen = 0.0, 0
        for i in range(0, len(order), config.batch_size):
            part = order[i : i + config.batch_size]
            x = _to_nchw(prepared.batch(part))
            if config.augment.enabled:  # on the host, from the seeded CPU generator
                x = augment_batch(x, config.augment, gen, pre.mean_bgr)
            x = x.to(dev, non_blocking=True)
            y = torch.from_numpy(prepared.labels[part]).to(dev)
            loss = torch.nn.functional.cross_entropy(_logits(model, x, config.arch, first_trainable), y, weight=weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.item()) * len(part)
            seen += len(part)
            if on_batch is not None:
                on_batch(len(part))
        auc, val_loss, val_acc = _validate(model, prepared, val_idx, config.batch_size, dev)
        improved = auc > best_auc + 1e-9
        if improved:
            best_auc, best_epoch, bad = auc, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
        history.append(EpochStats(epoch, total / max(seen, 1), val_loss, auc, val_acc,
                                  time.perf_counter() - t0, improved))
        stopped_early = bad >= config.patience and epoch < config.epochs
        if state_path is not None:
            save_checkpoint(state_path, model, arch=config.arch.value, preprocess=pre,
                            meta={"trained_by": "nsfwlab finetune (training state)"},
                            extra={"train_state": {
                                "epoch": epoch, "config": config.to_dict(), "split": split_id,
                                "optimizer": optimizer.state_dict(), "best_state_dict": best_state,
                                "best_auc": best_auc, "best_epoch": best_epoch, "bad_epochs": bad,
                                "baseline_auc": baseline, "history": [h.to_dict() for h in history]}})
        if on_epoch is not None:
            on_epoch(history[-1])

    model.load_state_dict(best_state)
    model = model.cpu().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return FinetuneResult(model, config, history, baseline, best_auc, best_epoch, len(train_idx), len(val_idx),
                          stopped_early, problems, conflicting, pre)

