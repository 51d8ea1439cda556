"""How robust is each image's score: under everyday transformations, and against the smallest attack.

For every image: its score; its score after each perturbation (``jpeg:50`` is exactly "re-save at quality 50
and score"); ``min_eps``, the smallest verified L-inf budget (levels of 1/255) with which an attack moves the
label across the nearer band boundary (safe < 0.2 <= review <= 0.8 < nsfw by default), and at that budget the
fewest changed pixels (a gradient-ranked L0 search, verified on the saved PNG) with the L2 norm of that
perturbation -- open_nsfw is so fragile that nearly every ``min_eps`` is 1/255, and the pixel count is what
still tells images apart; and, for each input-transformation defence (JPEG re-encode, bit-depth reduction,
median filter), the score behind it and the budget of an adaptive attack that optimises straight through it
(BPDA). With labels: ROC AUC under each perturbation, with a 95 % interval and a warning when it rests on
too few examples. Images over ``max_work_side`` are measured on a downscaled working copy (said per image).
The library returns values (:mod:`nsfwlab.lab.robust_report` draws the plots and the HTML page); the CLI
writes them.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..config import Label, Thresholds
from ..datasets import load_labelled
from ..errors import ConfigError, NsfwlabError
from ..imageio import ImageInput, describe_source, load_image
from ..progress import Progress, ProgressCallback, notify
from ..sizing import check_aspect, downscale
from .attack_options import AttackConfig, Goal, GoalKind, JpegMode
from .options import configure
from .pgd import Engine
from .transforms import DEFAULT_DEFENCES, DEFAULT_PERTURBATIONS, Transform, parse_transforms

__all__ = [
    "MIN_PER_CLASS",
    "ImageRobustness",
    "RobustnessConfig",
    "RobustnessReport",
    "auc_interval",
    "boundary_goal",
    "load_labels",
    "robustness",
]

#: A label is "across" a boundary by at least this much, so a score that lands on it counts once.
_EDGE = 1e-6
#: Figures resting on fewer examples than this (per class for an AUC) carry a warning.
MIN_PER_CLASS = 20
_Z95 = 1.959964


@dataclass(frozen=True)
class RobustnessConfig:
    """What to measure. ``defences=()`` skips the defence attacks (the slow part); ``attack=False`` all attacks.
    ``labels`` maps a source's name (as :func:`describe_source` gives it, e.g. its path) to 1 (NSFW) or 0; with
    both classes present the summary holds the ROC AUC under each perturbation. ``max_work_side`` /
    ``max_aspect``: the lab's working-size caps (:class:`~nsfwlab.lab.attacks.AttackConfig`)."""

    perturbations: tuple[str, ...] = DEFAULT_PERTURBATIONS
    attack: bool = True
    max_eps: float = 8.0
    steps: int = 30
    jpeg: JpegMode = JpegMode.DIFFERENTIABLE
    defences: tuple[str, ...] = DEFAULT_DEFENCES
    labels: Mapping[str, int] | None = None
    max_work_side: int = 2048
    max_aspect: float = 20.0
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        parse_transforms(list(self.perturbations), seed=self.seed)  # raises ConfigError on a bad spec
        if self.defences:
            for t in parse_transforms(list(self.defences), seed=self.seed):
                if not t.aligned:
                    raise ConfigError(f"defence {t.spec} moves pixels; use jpeg:Q, bits:B, median:K, blur:R or "
                                      "noise:S", param="defences")
        self.attack_config()  # checks max_eps, steps, jpeg, the caps and the device

    def attack_config(self) -> AttackConfig:
        return AttackConfig(max_eps=self.max_eps, steps=self.steps, jpeg=self.jpeg, seed=self.seed,
                            device=self.device, max_work_side=self.max_work_side, max_aspect=self.max_aspect)


@dataclass(frozen=True)
class ImageRobustness:
    path: str
    score: float | None = None
    label: str | None = None
    perturbations: dict[str, float] = field(default_factory=dict)
    min_eps: dict[str, Any] | None = None
    defences: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str | None = None
    working_copy: str | None = None  # "WxH of WxH" when measured on a downscaled copy

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "score": self.score, "label": self.label,
                               "perturbations": self.perturbations, "min_eps": self.min_eps}
        if self.defences:
            out["defences"] = self.defences
        if self.working_copy is not None:
            out["working_copy"] = self.working_copy
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class RobustnessReport:
    images: tuple[ImageRobustness, ...]
    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"images": [im.to_dict() for im in self.images], "summary": self.summary}


def boundary_goal(score: float, thresholds: Thresholds) -> Goal:
    """The goal that moves ``score``'s label across the nearer band boundary."""
    lo, hi = thresholds.safe_below, thresholds.nsfw_above
    band = thresholds.label(score)
    if band is Label.SAFE:
        return Goal(GoalKind.AT_LEAST, lo)
    if band is Label.NSFW:
        return Goal(GoalKind.AT_MOST, hi)
    if score - lo <= hi - score:
        return Goal(GoalKind.AT_MOST, max(lo - _EDGE, 0.0))
    return Goal(GoalKind.AT_LEAST, min(hi + _EDGE, 1.0))


def _min_eps(engine: Engine, img: Image.Image, goal: Goal, view: Transform | None,
             fewest_pixels: bool) -> dict[str, Any]:
    res = engine.run_goal(img, goal, views=[view], fewest_pixels=fewest_pixels)
    out = {"value": res.linf if res.success else None, "score": res.score_after, "verified": res.success,
           "goal": goal.describe(), "psnr": None if math.isinf(res.psnr) else round(res.psnr, 2), "steps": res.steps}
    if fewest_pixels:
        out.update({"pixels": res.pixels_changed if res.success else None, "pixels_total": img.width * img.height,
                    "l2": round(res.l2, 3) if res.success else None})
    return out


def _one(img: Image.Image, name: str, det: Any, transforms: list[Transform], defences: list[Transform],
         engine: Engine | None, working: str | None) -> ImageRobustness:
    arr = np.asarray(img)
    score = det.nsfw_score(arr)
    perturbed = {t.spec: det.nsfw_score(t(arr)) for t in transforms}
    min_eps = None
    defended: dict[str, dict[str, Any]] = {}
    if engine is not None:
        min_eps = _min_eps(engine, img, boundary_goal(score, det.thresholds), None, True)
        for d in defences:
            s = det.nsfw_score(d(arr))
            defended[d.spec] = {"score": s,
                                "min_eps": _min_eps(engine, img, boundary_goal(s, det.thresholds), d, False)}
    return ImageRobustness(name, score, det.label(score).value, perturbed, min_eps, defended, working_copy=working)


def _load(src: ImageInput, det: Any, cfg: RobustnessConfig) -> tuple[Image.Image, str | None]:
    img = load_image(src, det.limits)
    check_aspect(img.height, img.width, cfg.max_aspect, who="the lab")
    work = downscale(img, cfg.max_work_side)
    return work, (None if work is img else f"{work.width}x{work.height} of {img.width}x{img.height}")


def robustness(sources: Sequence[ImageInput], detector: Any | None = None, config: RobustnessConfig | None = None,
               *, progress: ProgressCallback | None = None, **overrides: Any) -> RobustnessReport:
    """Measure every source (bad ones are reported with their error, and the rest go on).

    ``detector``: the :class:`nsfwlab.Detector` to study (default ``Detector()``). ``config``: a
    :class:`RobustnessConfig`; keywords override its fields (``labels=``, ``attack=False`` ...). ``progress``
    gets an ``image`` event per source, its :class:`ImageRobustness` as the item.
    """
    progress = _progress_shim(progress)
    cfg = configure(RobustnessConfig, config, overrides)
    if detector is None:
        from ..detector import Detector

        detector = Detector()
    transforms = parse_transforms(list(cfg.perturbations), seed=cfg.seed)
    defences = parse_transforms(list(cfg.defences), seed=cfg.seed) if cfg.defences and cfg.attack else []
    engine = Engine(cfg.attack_config(), detector) if cfg.attack else None
    images: list[ImageRobustness] = []
    for i, src in enumerate(sources):
        name = describe_source(src)
        try:
            img, working = _load(src, detector, cfg)
            row = _one(img, name, detector, transforms, defences, engine, working)
        except NsfwlabError as exc:
            row = ImageRobustness(name, error=str(exc.with_source(name)))
        images.append(row)
        notify(progress, "image", i + 1, len(sources), row)
    return RobustnessReport(tuple(images), _summary(images, [t.spec for t in transforms], cfg.labels))


def _progress_shim(progress: Any) -> ProgressCallback | None:
    """The older ``progress(done, errors)`` callbacks still work for one release (DeprecationWarning)."""
    if progress is None:
        return None
    try:
        params = [p for p in inspect.signature(progress).parameters.values()
                  if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return progress  # type: ignore[no-any-return]
    if len(params) != 2:
        return progress  # type: ignore[no-any-return]
    warnings.warn("progress(done, errors) is deprecated; robustness calls progress(Progress) "
                  "(nsfwlab.progress)", DeprecationWarning, stacklevel=3)
    old: Callable[[int, int], None] = progress

    def call(event: Progress) -> None:
        old(1, int(event.item is not None and event.item.error is not None))
    return call


def auc_interval(auc: float, positives: int, negatives: int) -> tuple[float, float]:
    """A 95 % interval for an AUC: Wilson's score interval with the smaller class's count as the sample
    size, after the Birnbaum-Klose bound ``var(AUC) <= AUC (1 - AUC) / min(m, n)``. Conservative, and,
    unlike the bootstrap, DeLong's or Hanley-McNeil's, it does not shrink to a point when the classes
    separate perfectly (AUC 1.0 from 2 + 2 images gets [0.34, 1])."""
    n = max(1, min(positives, negatives))
    z2 = _Z95 * _Z95
    centre = (auc + z2 / (2 * n)) / (1 + z2 / n)
    half = _Z95 * math.sqrt(auc * (1 - auc) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _auc(labels: Sequence[int], scores: Sequence[float]) -> dict[str, Any] | None:
    pos = sum(1 for y in labels if y == 1)
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return None
    from sklearn.metrics import roc_auc_score

    value = float(roc_auc_score(labels, scores))
    lo, hi = auc_interval(value, pos, neg)
    return {"value": value, "ci95": [round(lo, 4), round(hi, 4)], "positives": pos, "negatives": neg}


def _summary(images: Sequence[ImageRobustness], specs: Sequence[str],
             labels: Mapping[str, int] | None) -> dict[str, Any]:
    ok = [im for im in images if im.error is None]
    notes: list[str] = []
    out: dict[str, Any] = {
        "images": len(images), "errors": len(images) - len(ok),
        "mean_abs_change": {s: float(np.mean([abs(im.perturbations[s] - (im.score or 0.0)) for im in ok]))
                            if ok else None for s in specs},
        "label_flips": {s: sum(1 for im in ok if _label_of(im.perturbations[s]) != _label_of(im.score or 0.0))
                        for s in specs},
    }
    if 0 < len(ok) < MIN_PER_CLASS:
        notes.append(f"the per-perturbation figures rest on {len(ok)} image(s); fewer than {MIN_PER_CLASS} "
                     "give no stable mean or flip rate")
    if any(im.min_eps for im in ok):
        out["min_eps"] = _attack_summary(ok)
        if out["min_eps"]["flipped"] < MIN_PER_CLASS:
            notes.append(f"the smallest-budget figures rest on {out['min_eps']['flipped']} flipped image(s)")
        defence_names = sorted({d for im in ok for d in im.defences})
        out["defences"] = {d: _defence_summary([im.defences[d] for im in ok if d in im.defences])
                           for d in defence_names}
    if labels is not None:
        known = [im for im in ok if im.path in labels]
        y = [int(labels[im.path]) for im in known]
        out["labelled"] = len(known)
        out["auc"] = {"none": _auc(y, [im.score or 0.0 for im in known]),
                      **{s: _auc(y, [im.perturbations[s] for im in known]) for s in specs}}
        pos, neg = sum(y), len(y) - sum(y)
        if min(pos, neg) < MIN_PER_CLASS:
            notes.append(f"AUC rests on {pos} NSFW and {neg} safe image(s): too few (under {MIN_PER_CLASS} per "
                         "class) for a stable figure; read the 95% interval, not the value")
    out["warnings"] = notes
    return out


def _attack_summary(ok: Sequence[ImageRobustness]) -> dict[str, Any]:
    rows = [im.min_eps for im in ok if im.min_eps and im.min_eps["verified"]]
    eps = [r["value"] for r in rows]
    pixels = [r["pixels"] for r in rows if r.get("pixels") is not None]
    l2 = [r["l2"] for r in rows if r.get("l2") is not None]
    return {"flipped": len(eps), "attacked": sum(1 for im in ok if im.min_eps),
            "median": float(np.median(eps)) if eps else None, "max": max(eps) if eps else None,
            "histogram": {str(int(v)): eps.count(v) for v in sorted(set(eps))},
            "median_pixels": float(np.median(pixels)) if pixels else None,
            "min_pixels": min(pixels) if pixels else None, "max_pixels": max(pixels) if pixels else None,
            "median_l2": float(np.median(l2)) if l2 else None}


def _defence_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    eps = [r["min_eps"]["value"] for r in rows if r["min_eps"]["verified"]]
    return {"attacked": len(rows), "flipped": len(eps), "median_min_eps": float(np.median(eps)) if eps else None}


def _label_of(score: float, thresholds: Thresholds = Thresholds()) -> str:
    return thresholds.label(score).value


def load_labels(source: str | Path) -> dict[str, int]:
    """Labels from a CSV of ``path,label`` (relative paths resolve against the CSV's folder; a header row is
    allowed) or a folder with ``safe/`` and ``nsfw/`` subfolders (the core's :mod:`nsfwlab.datasets`
    formats, as ``nsfwlab evaluate`` reads them). Keys are the paths the images are named by."""
    return {str(item.path): item.label for item in load_labelled(source).items}
