"""``nsfwlab score --timeline``: frame scores against time, one subplot per video or animation,
the safe/review/nsfw bands shaded and the flagged segments marked. matplotlib is imported only
when a timeline is drawn (object API on the Agg canvas: no pyplot, no global state)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Thresholds
from ..errors import ConfigError

__all__ = ["PER_PAGE", "Timeline", "check_matplotlib", "page_paths", "timeline_pngs"]

#: Subplots per PNG; more videos continue in OUT_2.png, OUT_3.png, ...
PER_PAGE = 12
_BANDS = (("safe", "#2b8a3e"), ("review", "#e8a317"), ("nsfw", "#c92a2a"))


@dataclass(frozen=True)
class Timeline:
    """What one subplot shows: a scored video or animation."""

    name: str
    kind: str
    score: float
    label: str
    frame_scores: tuple[tuple[float, float], ...]
    segments: tuple[tuple[float, float, float], ...]


def check_matplotlib() -> None:
    """Fail before any scoring when the timeline could not be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError("--timeline needs matplotlib: pip install 'nsfwlab[evaluate]'") from None


def page_paths(out: Path, pages: int) -> list[Path]:
    """OUT.png for the first page, then OUT_2.png, OUT_3.png, ..."""
    return [out if i == 0 else out.with_name(f"{out.stem}_{i + 1}{out.suffix}") for i in range(pages)]


def _subplot(ax: Any, item: Timeline, thresholds: Thresholds) -> None:
    times = [t for t, _ in item.frame_scores]
    scores = [s for _, s in item.frame_scores]
    end = max([*times, *(e for _, e, _ in item.segments)], default=0.0)
    end = end if end > 0 else 1.0
    edges = (0.0, thresholds.safe_below, thresholds.nsfw_above, 1.0)
    for (band, colour), low, high in zip(_BANDS, edges[:-1], edges[1:], strict=True):
        ax.axhspan(low, high, color=colour, alpha=0.10, lw=0, label=f"{band} band")
    for i, (start, stop, _peak) in enumerate(item.segments):
        ax.axvspan(start, stop, color="#c92a2a", alpha=0.25, lw=0, label="flagged segment" if i == 0 else None)
    ax.plot(times, scores, "-o", color="#1c3d5a", ms=3, lw=1.2, drawstyle="steps-post" if len(times) > 1 else None,
            label="frame score")
    ax.set_xlim(0.0, end * 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("score")
    ax.grid(alpha=0.3)
    ax.set_title(f"{item.name} ({item.kind}, {len(times)} frames): {item.score:.3f} {item.label}",
                 fontsize=9, loc="left")


def timeline_pngs(items: Sequence[Timeline], thresholds: Thresholds) -> list[bytes]:
    """One PNG per :data:`PER_PAGE` items, each a column of subplots sharing the score axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pages: list[bytes] = []
    for first in range(0, len(items), PER_PAGE):
        page = items[first : first + PER_PAGE]
        fig = Figure(figsize=(8.0, 1.2 + 2.1 * len(page)), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(len(page), 1, squeeze=False)[:, 0]
        for ax, item in zip(axes, page, strict=True):
            _subplot(ax, item, thresholds)
        axes[-1].set_xlabel("time (s)")
        axes[0].legend(loc="upper right", fontsize=7, ncol=5)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        pages.append(buf.getvalue())
    return pages
