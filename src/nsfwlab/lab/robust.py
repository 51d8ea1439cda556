"""How robust is each image's score: under everyday transformations, and against the smallest attack.

For every image: its score; its score after each perturbation (``jpeg:50`` is exactly "re-save at quality 50
and score"); ``min_eps``, the smallest verified L-inf budget (levels of 1/255) with which an attack moves the
label across the nearer band boundary (safe < 0.2 <= review <= 0.8 < nsfw by default); and, for each
input-transformation defence (JPEG re-encode, bit-depth reduction, median filter), the score behind it and
the budget of an adaptive attack that optimises straight through it (BPDA). With labels: ROC AUC of the scores
under each perturbation. The library returns values (the report, PNG plots, an HTML page); the CLI writes them.
"""

from __future__ import annotations

import base64
import html
import io
import math
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
from .attacks import AttackConfig, Attacker, Goal, GoalKind, JpegMode
from .transforms import DEFAULT_DEFENCES, DEFAULT_PERTURBATIONS, Transform, parse_transforms

__all__ = [
    "ImageRobustness",
    "RobustnessConfig",
    "RobustnessReport",
    "boundary_goal",
    "load_labels",
    "plot_jpeg_curve",
    "plot_min_eps",
    "render_html",
    "robustness",
]

#: A label is "across" a boundary by at least this much, so a score that lands on it counts once.
_EDGE = 1e-6


@dataclass(frozen=True)
class RobustnessConfig:
    """What to measure. ``defences=()`` skips the defence attacks (the slow part); ``attack=False`` all attacks."""

    perturbations: tuple[str, ...] = DEFAULT_PERTURBATIONS
    attack: bool = True
    max_eps: float = 8.0
    steps: int = 30
    jpeg: JpegMode = JpegMode.DIFFERENTIABLE
    defences: tuple[str, ...] = DEFAULT_DEFENCES
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        parse_transforms(list(self.perturbations), seed=self.seed)  # raises ConfigError on a bad spec
        if self.defences:
            for t in parse_transforms(list(self.defences), seed=self.seed):
                if not t.aligned:
                    raise ConfigError(f"defence {t.spec} moves pixels; use jpeg:Q, bits:B, median:K, blur:R or noise:S")


@dataclass(frozen=True)
class ImageRobustness:
    path: str
    score: float | None = None
    label: str | None = None
    perturbations: dict[str, float] = field(default_factory=dict)
    min_eps: dict[str, Any] | None = None
    defences: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "score": self.score, "label": self.label,
                               "perturbations": self.perturbations, "min_eps": self.min_eps}
        if self.defences:
            out["defences"] = self.defences
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


def _min_eps(attacker: Attacker, img: Image.Image, goal: Goal, view: Transform | None) -> dict[str, Any]:
    res = attacker.run_goal(img, goal, views=[view])
    return {"value": res.linf if res.success else None, "score": res.score_after, "verified": res.success,
            "goal": goal.describe(), "psnr": None if math.isinf(res.psnr) else round(res.psnr, 2), "steps": res.steps}


def _one(img: Image.Image, name: str, det: Any, transforms: list[Transform], defences: list[Transform],
         attacker: Attacker | None) -> ImageRobustness:
    arr = np.asarray(img)
    score = det.nsfw_score(arr)
    perturbed = {t.spec: det.nsfw_score(t(arr)) for t in transforms}
    min_eps = None
    defended: dict[str, dict[str, Any]] = {}
    if attacker is not None:
        min_eps = _min_eps(attacker, img, boundary_goal(score, det.thresholds), None)
        for d in defences:
            s = det.nsfw_score(d(arr))
            defended[d.spec] = {"score": s, "min_eps": _min_eps(attacker, img, boundary_goal(s, det.thresholds), d)}
    return ImageRobustness(name, score, det.label(score).value, perturbed, min_eps, defended)


def robustness(sources: Sequence[ImageInput], *, config: RobustnessConfig | None = None, detector: Any | None = None,
               labels: Mapping[str, int] | None = None,
               progress: Callable[[int, int], None] | None = None) -> RobustnessReport:
    """Measure every source (bad ones are reported with their error, and the rest go on).

    ``labels`` maps a source's name (as :func:`describe_source` gives it, e.g. its path) to 1 (NSFW) or 0;
    with both classes present the summary holds the ROC AUC under each perturbation.
    ``progress(done, errors)`` is called after each image.
    """
    cfg = config or RobustnessConfig()
    if detector is None:
        from ..detector import Detector

        detector = Detector(device="cpu")
    transforms = parse_transforms(list(cfg.perturbations), seed=cfg.seed)
    defences = parse_transforms(list(cfg.defences), seed=cfg.seed) if cfg.defences and cfg.attack else []
    attacker = None
    if cfg.attack:
        attacker = Attacker(AttackConfig(max_eps=cfg.max_eps, steps=cfg.steps, jpeg=cfg.jpeg, seed=cfg.seed,
                                         device=cfg.device), detector=detector)
    images: list[ImageRobustness] = []
    for src in sources:
        name = describe_source(src)
        try:
            img = load_image(src, detector.limits)
            images.append(_one(img, name, detector, transforms, defences, attacker))
            failed = 0
        except NsfwlabError as exc:
            images.append(ImageRobustness(name, error=str(exc.with_source(name))))
            failed = 1
        if progress is not None:
            progress(1, failed)
    return RobustnessReport(tuple(images), _summary(images, [t.spec for t in transforms], labels))


def _auc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    if len(set(labels)) < 2:
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def _summary(images: Sequence[ImageRobustness], specs: Sequence[str],
             labels: Mapping[str, int] | None) -> dict[str, Any]:
    ok = [im for im in images if im.error is None]
    eps = [im.min_eps["value"] for im in ok if im.min_eps and im.min_eps["verified"]]
    out: dict[str, Any] = {
        "images": len(images), "errors": len(images) - len(ok),
        "mean_abs_change": {s: float(np.mean([abs(im.perturbations[s] - (im.score or 0.0)) for im in ok]))
                            if ok else None for s in specs},
        "label_flips": {s: sum(1 for im in ok if _label_of(im.perturbations[s]) != _label_of(im.score or 0.0))
                        for s in specs},
    }
    if any(im.min_eps for im in ok):
        out["min_eps"] = {"flipped": len(eps), "attacked": sum(1 for im in ok if im.min_eps),
                          "median": float(np.median(eps)) if eps else None, "max": max(eps) if eps else None,
                          "histogram": {str(int(v)): eps.count(v) for v in sorted(set(eps))}}
        defence_names = sorted({d for im in ok for d in im.defences})
        out["defences"] = {d: _defence_summary([im.defences[d] for im in ok if d in im.defences])
                           for d in defence_names}
    if labels is not None:
        known = [im for im in ok if im.path in labels]
        y = [int(labels[im.path]) for im in known]
        out["labelled"] = len(known)
        out["auc"] = {"none": _auc(y, [im.score or 0.0 for im in known]),
                      **{s: _auc(y, [im.perturbations[s] for im in known]) for s in specs}}
    return out


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


# -- plots and HTML --------------------------------------------------------------------------------------------
def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def plot_jpeg_curve(report: RobustnessReport) -> bytes:
    """Score against JPEG quality, one line per image (the unperturbed score at quality 100)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for im in report.images:
        if im.error is not None:
            continue
        pts = sorted((float(k.split(":")[1]), v) for k, v in im.perturbations.items() if k.startswith("jpeg:"))
        if pts:
            qs, ss = zip(*pts, strict=True)
            ax.plot([*qs, 100], [*ss, im.score], marker="o", label=Path(im.path).name[:24])
    ax.set_xlabel("JPEG quality (100 = unperturbed)")
    ax.set_ylabel("NSFW score")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if len(report.images) <= 12:
        ax.legend(fontsize=7)
    return _png(fig)


def plot_min_eps(report: RobustnessReport) -> bytes:
    """The distribution of the smallest verified budget that flips a label (and of those behind defences)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[float]] = {"no defence": []}
    for im in report.images:
        if im.min_eps and im.min_eps["verified"]:
            series["no defence"].append(im.min_eps["value"])
        for d, row in im.defences.items():
            if row["min_eps"]["verified"]:
                series.setdefault(d, []).append(row["min_eps"]["value"])
    fig, ax = plt.subplots(figsize=(6, 4))
    top = max([1.0, *(v for vs in series.values() for v in vs)])
    bins = [float(b) for b in np.arange(0.5, top + 1.5, 1.0)]
    for name, vals in series.items():
        if vals:
            ax.hist(vals, bins=bins, alpha=0.5, label=f"{name} (n={len(vals)})")
    ax.set_xlabel("smallest flipping L-inf budget (levels of 1/255)")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    return _png(fig)


def _thumb(source: str, size: int = 160) -> str | None:
    try:
        img = load_image(source)
    except (NsfwlabError, OSError):
        return None
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    return f"{x:.4f}" if isinstance(x, float) else html.escape(str(x))


_STYLE = """body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td.l{text-align:left}
img.t{filter:blur(12px);cursor:pointer;max-width:120px}img.t.shown{filter:none}.err{color:#b00}"""


def render_html(report: RobustnessReport, plots: Mapping[str, bytes], *, thumbnails: bool = True) -> str:
    """A self-contained page: summary, plots, a table per image. Thumbnails start blurred; a click reveals one."""
    specs = list(next((im.perturbations for im in report.images if im.error is None), {}))
    head = "".join(f"<th>{html.escape(s)}</th>" for s in specs)
    rows = []
    for im in report.images:
        if im.error is not None:
            rows.append(f'<tr><td class="l">{html.escape(im.path)}</td><td class="l err" colspan="{len(specs) + 3}">'
                        f"{html.escape(im.error)}</td></tr>")
            continue
        src = _thumb(im.path) if thumbnails else None
        thumb = f'<img class="t" src="{src}" alt="thumbnail" onclick="this.classList.toggle(\'shown\')">' if src else ""
        eps = im.min_eps or {}
        cells = "".join(f"<td>{_fmt(im.perturbations[s])}</td>" for s in specs)
        defs = "; ".join(f"{d}: {_fmt(r['min_eps']['value'])}" for d, r in im.defences.items())
        rows.append(f'<tr><td class="l">{thumb}<br>{html.escape(im.path)}</td><td>{_fmt(im.score)}</td>'
                    f"<td>{_fmt(eps.get('value'))}</td><td class=\"l\">{html.escape(defs)}</td>{cells}</tr>")
    figs = "".join(f'<figure><img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" '
                   f'alt="{html.escape(k)}"><figcaption>{html.escape(k)}</figcaption></figure>'
                   for k, png in plots.items())
    summary = html.escape(_summary_text(report.summary))
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>nsfwlab robustness</title>"
            f"<style>{_STYLE}</style></head><body><h1>Robustness</h1><pre>{summary}</pre>{figs}<table><tr><th>image</th><th>score</th>"
            f"<th>min eps</th><th>defences (min eps)</th>{head}</tr>{''.join(rows)}</table></body></html>")


def _summary_text(summary: Mapping[str, Any]) -> str:
    import json

    return json.dumps(summary, indent=1, default=str)
