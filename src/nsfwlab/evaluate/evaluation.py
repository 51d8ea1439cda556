"""Score a labelled set through :class:`~nsfwlab.detector.Detector` and measure it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import Label, Thresholds
from ..datasets import Hygiene, LabelledSet, Problem, check_hygiene
from ..detector import Detector, ScoreResult
from ..errors import ImageError
from .metrics import DEFAULT_TARGETS, Metrics, TargetRate, check_bootstrap, compute_metrics

__all__ = ["Evaluation", "ScoredItem", "evaluate"]


@dataclass(frozen=True)
class ScoredItem:
    path: str
    label: int
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "label": "nsfw" if self.label else "safe", "score": self.score}


@dataclass(frozen=True)
class Evaluation:
    """The outcome of :func:`evaluate`: per-image scores, data hygiene and metrics."""

    source: str
    scored: tuple[ScoredItem, ...]
    hygiene: Hygiene
    metrics: Metrics
    model: dict[str, Any]
    excluded_duplicates: int = 0

    def false_positives(self, thresholds: Thresholds | None = None) -> list[ScoredItem]:
        """Safe images labelled NSFW (``score > nsfw_above``), highest score first."""
        th = thresholds or self.metrics.recommended
        fps = [it for it in self.scored if it.label == 0 and th.label(it.score) is Label.NSFW]
        return sorted(fps, key=lambda it: -it.score)

    def false_negatives(self, thresholds: Thresholds | None = None) -> list[ScoredItem]:
        """NSFW images labelled safe (``score < safe_below``), lowest score first."""
        th = thresholds or self.metrics.recommended
        fns = [it for it in self.scored if it.label == 1 and th.label(it.score) is Label.SAFE]
        return sorted(fns, key=lambda it: it.score)

    def to_dict(self) -> dict[str, Any]:
        """The content of ``metrics.json`` (scores per image are written separately)."""
        return {
            "data": {"source": self.source, "scored": len(self.scored),
                     "excluded_duplicates": self.excluded_duplicates,
                     **{k: v for k, v in self.hygiene.to_dict().items()}},
            "model": self.model,
            **self.metrics.to_dict(),
        }


def evaluate(data: LabelledSet, detector: Detector, *, targets: Sequence[TargetRate] = DEFAULT_TARGETS,
             n_boot: int = 1000, level: float = 0.95, seed: int = 0, drop_duplicates: bool = False,
             progress: Callable[[ScoreResult], None] | None = None) -> Evaluation:
    """Hash the files (hygiene), score the readable ones in batches, and compute the metrics at the
    detector's thresholds. Unreadable files are reported in ``hygiene`` and left out of the
    metrics; nothing on disk is changed. ``drop_duplicates`` scores each distinct content once
    (first path in order) and leaves out groups whose copies carry different labels."""
    check_bootstrap(n_boot, level)  # before minutes of scoring
    hygiene = check_hygiene(data.items)
    bad = {p.path for p in hygiene.unreadable}
    if progress is not None:  # files that could not even be read count as done (with an error)
        for p in hygiene.unreadable:
            progress(ScoreResult(p.path, error=ImageError(p.message)))
    items = [it for it in data.items if str(it.path) not in bad]
    excluded = 0
    if drop_duplicates:
        conflicting = {p for g in hygiene.conflicting for p in g.paths}
        seen: set[str] = set()
        kept = []
        for it in items:
            digest = hygiene.digests.get(str(it.path), str(it.path))
            if str(it.path) in conflicting or digest in seen:
                excluded += 1
                continue
            seen.add(digest)
            kept.append(it)
        items = kept
    scored: list[ScoredItem] = []
    failed: list[Problem] = []
    names = [str(it.path) for it in items]
    for it, res in zip(items, detector.iter_score(list(it.path for it in items), names, progress=progress),
                       strict=True):
        if res.ok and res.score is not None:
            scored.append(ScoredItem(res.source, it.label, float(res.score)))
        else:
            err = res.error
            failed.append(Problem(res.source, it.label, err.code if err else "error",
                                  err.message if err else "unknown error"))
    hygiene = hygiene.with_unreadable(failed)
    metrics = compute_metrics([it.label for it in scored], [it.score for it in scored],
                              thresholds=detector.thresholds, targets=targets, n_boot=n_boot,
                              level=level, seed=seed)
    return Evaluation(data.source, tuple(scored), hygiene, metrics, detector.describe(), excluded)
