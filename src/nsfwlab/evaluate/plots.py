"""ROC curve, precision-recall curve, per-class score histogram and reliability diagram as PNG bytes.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global state, safe in
threads); the caller decides where the bytes go.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..config import Thresholds
from ..errors import ConfigError
from .metrics import Recommendation

__all__ = ["MAX_BINS", "figure", "histogram_png", "png_bytes", "pr_png", "reliability_png", "roc_png", "training_png",
           "unit_square"]

_SAFE_COLOUR, _NSFW_COLOUR = "#2b8a3e", "#c92a2a"


def figure(width: float = 5.5, height: float = 4.5) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def unit_square(ax: Any, xlabel: str, ylabel: str, title: str, legend_loc: str) -> None:
    """Both axes 0..1 (with a sliver of margin), labels, title, grid and legend."""
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc=legend_loc, fontsize=8)


def png_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


#: The most histogram / reliability bins (a count beyond the pixels of the plot draws nothing more).
MAX_BINS = 1000


def _check_bins(bins: int) -> None:
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or not 1 <= bins <= MAX_BINS:
        raise ConfigError(f"bins must be an integer in [1, {MAX_BINS}], got {bins!r}", param="bins")


def roc_png(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, *,
            auc_text: str = "", recommendations: Sequence[Recommendation] = (),
            title: str = "ROC curve") -> bytes:
    """The ROC curve, with the operating point of each recommended threshold marked."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(np.asarray(labels), np.asarray(scores, dtype=np.float64))
    fig, ax = figure()
    ax.plot(fpr, tpr, color="#1c7ed6", lw=2, label=f"model {auc_text}".strip())
    ax.plot([0, 1], [0, 1], color="#adb5bd", lw=1, ls="--", label="chance")
    for rec in recommendations:
        c = rec.achieved
        ax.plot([c.fpr], [c.recall], "o", ms=7,
                label=f"{rec.target.name}: {rec.sets}={rec.threshold:.4g}")
    unit_square(ax, "false positive rate (safe images flagged)", "true positive rate (NSFW images caught)",
                 title, "lower right")
    return png_bytes(fig)


def pr_png(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, *,
           ap_text: str = "", title: str = "Precision-recall curve") -> bytes:
    """The precision-recall curve with the positive-class prevalence as the chance line."""
    from sklearn.metrics import precision_recall_curve

    y = np.asarray(labels)
    precision, recall, _ = precision_recall_curve(y, np.asarray(scores, dtype=np.float64))
    fig, ax = figure()
    ax.step(recall, precision, where="post", color="#7048e8", lw=2, label=f"model {ap_text}".strip())
    prevalence = float(np.mean(y == 1))
    ax.axhline(prevalence, color="#adb5bd", lw=1, ls="--", label=f"chance (prevalence {prevalence:.2f})")
    unit_square(ax, "recall (NSFW images caught)", "precision (flagged images truly NSFW)", title, "lower left")
    return png_bytes(fig)


def histogram_png(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, *,
                  thresholds: Thresholds | None = None, recommended: Thresholds | None = None,
                  bins: int = 40, title: str = "Scores by class") -> bytes:
    """Per-class score histograms (log count axis) with the current and recommended bands."""
    _check_bins(bins)
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    fig, ax = figure(6.5, 4.0)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ax.hist(s[y == 0], bins=edges, alpha=0.6, color=_SAFE_COLOUR, label=f"safe (n={int(np.sum(y == 0))})")
    ax.hist(s[y == 1], bins=edges, alpha=0.6, color=_NSFW_COLOUR, label=f"nsfw (n={int(np.sum(y == 1))})")
    if thresholds is not None:
        for v in (thresholds.safe_below, thresholds.nsfw_above):
            ax.axvline(v, color="#495057", ls="--", lw=1)
        ax.plot([], [], color="#495057", ls="--",
                label=f"current bands {thresholds.safe_below:g} / {thresholds.nsfw_above:g}")
    if recommended is not None:
        for v in (recommended.safe_below, recommended.nsfw_above):
            ax.axvline(v, color="#f08c00", ls="-", lw=1.5)
        ax.plot([], [], color="#f08c00",
                label=f"recommended {recommended.safe_below:.3g} / {recommended.nsfw_above:.3g}")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_yscale("log")
    ax.set_ylim(bottom=0.7)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(0, 1)
    ax.set_xlabel("open_nsfw score")
    ax.set_ylabel("images (log scale)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return png_bytes(fig)


def training_png(epochs: Sequence[int], val_auc: Sequence[float], val_loss: Sequence[float],
                 train_loss: Sequence[float | None], *, best_epoch: int | None = None,
                 title: str = "Fine-tuning") -> bytes:
    """Validation AUC (left axis) and train / validation loss (right axis) per epoch; epoch 0 is
    the starting model (no training loss)."""
    fig, ax = figure(6.5, 4.0)
    ax.plot(epochs, val_auc, "o-", color="#1c7ed6", lw=2, label="validation AUC")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("epoch (0 = starting model)")
    ax.set_ylabel("validation ROC AUC")
    ax.grid(alpha=0.3)
    loss_ax = ax.twinx()
    loss_ax.plot(epochs, val_loss, "s--", color="#e8590c", lw=1.5, label="validation loss")
    trained = [(e, v) for e, v in zip(epochs, train_loss, strict=True) if v is not None]
    if trained:
        loss_ax.plot(*zip(*trained, strict=True), "^:", color="#868e96", lw=1.5, label="train loss")
    loss_ax.set_ylabel("cross-entropy")
    if best_epoch is not None:
        ax.axvline(best_epoch, color="#2b8a3e", lw=1, ls="--", label=f"best (epoch {best_epoch})")
    handles = ax.get_legend_handles_labels()
    more = loss_ax.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8, loc="center right")
    ax.set_xticks(list(epochs))
    ax.set_title(title)
    return png_bytes(fig)


def reliability_png(labels: Sequence[int] | np.ndarray, probabilities: Sequence[float] | np.ndarray, *,
                    bins: int = 10, brier: float | None = None, title: str = "Reliability") -> bytes:
    """Reliability diagram: the share of NSFW images per bin of predicted probability against the
    bin's mean probability (a calibrated score lies on the diagonal), with the bin counts below it."""
    _check_bins(bins)
    y = np.asarray(labels)
    p = np.asarray(probabilities, dtype=np.float64)
    which = np.clip(np.digitize(p, np.linspace(0.0, 1.0, bins + 1)[1:-1]), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    filled = counts > 0
    mean_p = np.bincount(which, weights=p, minlength=bins)[filled] / counts[filled]
    frac = np.bincount(which, weights=y, minlength=bins)[filled] / counts[filled]
    fig, ax = figure(5.5, 6.0)
    ax.remove()
    grid = fig.add_gridspec(2, 1, height_ratios=(3, 1))
    ax = fig.add_subplot(grid[0])
    ax.plot([0, 1], [0, 1], color="#adb5bd", lw=1, ls="--", label="perfectly calibrated")
    label = "model" + (f" (Brier {brier:.4f})" if brier is not None else "")
    ax.plot(mean_p, frac, "o-", color="#1c7ed6", lw=2, label=label)
    unit_square(ax, "", "share of NSFW images in the bin", title, "upper left")
    below = fig.add_subplot(grid[1], sharex=ax)
    below.bar((np.arange(bins) + 0.5) / bins, counts, width=1.0 / bins, color="#868e96", edgecolor="white")
    below.set_xlabel("predicted probability")
    below.set_ylabel("images")
    below.grid(alpha=0.3)
    return png_bytes(fig)
