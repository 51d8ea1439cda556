"""Noticing query attacks: a caller probing the model with many variants of one image.

A black-box attack on a classifier (a score-based random search, a label-only boundary walk)
sends hundreds of slightly different copies of one source image and watches the answers. A
benign user uploads many *distinct* images, with a few near-duplicates at a time (burst shots,
re-saves, resized copies), whose scores barely differ. :class:`Sentinel` keeps, per caller, a
bounded window of recent uploads (time, PDQ hash, score) and flags a caller when

1. **cluster**: at least ``min_cluster`` uploads of the window (the newest included) lie within
   ``near_distance`` PDQ bits of the newest one: many near-duplicates of one source image, in at
   most ``window_s`` seconds; and
2. **varied scores**: those uploads' scores span at least ``min_spread`` (copies of one image
   that score the same are not probing anything; an attacker's perturbations move the score). It
   is small (0.005): a score search on a photo the model scores near 0 moves the score by
   hundredths only (ART's Square on photos scoring 1e-4 took 103 and 117 queries to span 0.01,
   46 and 86 to span 0.005); and
3. **probing a boundary**, any of: at least ``crowd_fraction`` of their scores lie within
   ``margin`` of one band boundary (crowding); at least ``straddle_fraction`` of them lie on each
   side of one boundary (a label-only walk's binary search: near-duplicates of one image that get
   different labels); their distance to the nearest boundary falls with upload order with a
   Spearman correlation of at least ``min_trend`` (a score search climbing toward it).

Featureless images are hashed too, whatever PDQ's quality says: an attacker chooses the images,
and a walk toward a flat image is mostly low-quality hashes that still cluster.

A flag lasts ``flag_s`` seconds after the last upload that met the rule. Memory is bounded: at
most ``max_keys`` callers (least recently seen dropped first), each with at most ``window``
uploads. Pure: no I/O, no clock of its own (times are passed in), thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from ..errors import ConfigError

__all__ = ["AttackVerdict", "Sentinel", "SentinelConfig", "spearman"]


@dataclass(frozen=True)
class SentinelConfig:
    """The rule's thresholds (see the module docstring); ``boundaries``: the band's score
    boundaries (the detector's ``safe_below`` and ``nsfw_above``)."""

    window: int = 64
    window_s: float = 600.0
    max_keys: int = 4096
    near_distance: int = 32
    min_cluster: int = 16
    min_spread: float = 0.005
    margin: float = 0.1
    crowd_fraction: float = 0.5
    straddle_fraction: float = 0.2
    min_trend: float = 0.5
    flag_s: float = 3600.0
    boundaries: tuple[float, ...] = field(default=(0.2, 0.8))

    def __post_init__(self) -> None:
        for name in ("window", "max_keys", "min_cluster"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}", param=name)
        if self.min_cluster > self.window:
            raise ConfigError(f"min_cluster ({self.min_cluster}) must not exceed window ({self.window})",
                              param="min_cluster")
        if not isinstance(self.near_distance, int) or not 0 <= self.near_distance <= 256:
            raise ConfigError(f"near_distance must be an integer from 0 to 256, got {self.near_distance!r}",
                              param="near_distance")
        for name in ("window_s", "flag_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}", param=name)
        for name in ("min_spread", "margin", "crowd_fraction", "straddle_fraction", "min_trend"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must lie in [0, 1], got {getattr(self, name)}", param=name)
        if not self.boundaries or any(not 0.0 <= b <= 1.0 for b in self.boundaries):
            raise ConfigError(f"boundaries must be scores in [0, 1], got {self.boundaries}", param="boundaries")


@dataclass(frozen=True)
class AttackVerdict:
    """What one upload told the sentinel: ``flagged`` (the caller is flagged now), ``new`` (this
    upload raised the flag), and the evidence: the near-duplicate ``cluster`` size, the scores'
    ``spread``, the share ``crowded`` near a boundary, the smaller share ``straddling`` on one side of a
    boundary and the ``trend`` toward it."""

    flagged: bool
    new: bool = False
    cluster: int = 0
    spread: float = 0.0
    crowded: float = 0.0
    straddling: float = 0.0
    trend: float = 0.0

    def to_dict(self) -> dict[str, float | int | bool]:
        return {"flagged": self.flagged, "new": self.new, "cluster": self.cluster, "spread": round(self.spread, 4),
                "crowded": round(self.crowded, 3), "straddling": round(self.straddling, 3),
                "trend": round(self.trend, 3)}


class _Track:
    __slots__ = ("flagged_until", "uploads")

    def __init__(self, window: int) -> None:
        self.uploads: deque[tuple[float, int, float]] = deque(maxlen=window)
        self.flagged_until = float("-inf")


class Sentinel:
    """Per-caller windows of uploads and the rule that flags a query attack."""

    def __init__(self, config: SentinelConfig | None = None) -> None:
        self.config = config or SentinelConfig()
        self._tracks: OrderedDict[str, _Track] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._tracks)

    def is_flagged(self, key: str, now: float) -> bool:
        with self._lock:
            track = self._tracks.get(key)
            return track is not None and now < track.flagged_until

    def observe(self, key: str, pdq_hex: str | None, score: float, now: float) -> AttackVerdict:
        """Record one scored still image of caller ``key`` (``pdq_hex``: its PDQ hash; ``None``
        when it has none usable, which only refreshes the caller) at time ``now`` (seconds)."""
        cfg = self.config
        with self._lock:
            track = self._tracks.pop(key, None) or _Track(cfg.window)
            self._tracks[key] = track  # most recently seen last
            while len(self._tracks) > cfg.max_keys:
                self._tracks.popitem(last=False)
            uploads = track.uploads
            while uploads and uploads[0][0] < now - cfg.window_s:
                uploads.popleft()
            was_flagged = now < track.flagged_until
            if pdq_hex is None:
                return AttackVerdict(was_flagged)
            h = int(pdq_hex, 16)
            uploads.append((now, h, float(score)))
            verdict = self._judge(h, uploads)
            if verdict is None:
                return AttackVerdict(was_flagged)
            track.flagged_until = now + cfg.flag_s
            return AttackVerdict(True, not was_flagged, *verdict)

    def _judge(self, h: int, uploads: deque[tuple[float, int, float]]
               ) -> tuple[int, float, float, float, float] | None:
        cfg = self.config
        scores = [s for _, other, s in uploads if (h ^ other).bit_count() <= cfg.near_distance]
        if len(scores) < cfg.min_cluster:
            return None
        spread = max(scores) - min(scores)
        if spread < cfg.min_spread:
            return None
        n = len(scores)
        crowded = max(sum(abs(s - b) <= cfg.margin for s in scores) / n for b in cfg.boundaries)
        straddling = max(min(sum(s < b for s in scores), sum(s >= b for s in scores)) / n for b in cfg.boundaries)
        closeness = [-min(abs(s - b) for b in cfg.boundaries) for s in scores]
        trend = spearman(list(range(n)), closeness)
        if crowded >= cfg.crowd_fraction or straddling >= cfg.straddle_fraction or trend >= cfg.min_trend:
            return n, spread, crowded, straddling, trend
        return None


def _ranks(values: list[float]) -> list[float]:
    """Ranks from 0, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation of ``x`` and ``y`` (0 when either is constant)."""
    rx, ry = _ranks(x), _ranks(y)
    n = len(rx)
    if n < 2:
        return 0.0
    mx, my = sum(rx) / n, sum(ry) / n
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    return 0.0 if vx == 0 or vy == 0 else cov / (vx * vy) ** 0.5
