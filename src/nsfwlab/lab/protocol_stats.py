"""The protocol's figures from its per-image records: clean and robust accuracy against epsilon with
intervals, the worst case over attacks, query counts, the transfer matrix and the gradient-masking sanity
checks (Carlini et al. 2019). Pure functions of the records; no model runs here."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np

from .protocol_attacks import AttackOutcome
from .robust import MIN_PER_CLASS

__all__ = ["ImageRecord", "ModelRecord", "clean_accuracy", "curves", "interval", "query_counts", "sanity_checks",
           "transfer"]

_Z95 = 1.959964
WORST = "worst"
#: The APGD sanity rerun (more steps and restarts) may lower robust accuracy by this much before it is flagged.
STRONGER_DROP = 0.10


@dataclass
class ModelRecord:
    """One image on one model: its clean exact score, the label to move away from, whether the clean decision
    is right, every attack's outcome, the adversarial the transfer matrix uses and the sanity reruns (``None``
    where not run): ``unbounded`` broken by APGD at the unbounded budget, ``stronger`` broken by the stronger
    APGD at the middle budget."""

    clean_score: float
    label: int
    correct: bool
    attacks: dict[str, AttackOutcome] = field(default_factory=dict)
    transfer_from: np.ndarray | None = None
    unbounded: bool | None = None
    stronger: bool | None = None

    def broken_at(self, attack: str) -> float | None:
        """The smallest verified budget of ``attack`` (``worst``: of any attack)."""
        if attack == WORST:
            found = [o.broken_at for o in self.attacks.values() if o.broken_at is not None]
            return min(found) if found else None
        outcome = self.attacks.get(attack)
        return None if outcome is None else outcome.broken_at

    def to_dict(self) -> dict[str, Any]:
        return {"clean_score": self.clean_score, "label": self.label, "correct": self.correct,
                "attacks": {a: o.to_dict() for a, o in self.attacks.items()}}


@dataclass
class ImageRecord:
    path: str
    label: int | None
    models: dict[str, ModelRecord] = field(default_factory=dict)
    transfer: dict[tuple[str, str], bool] = field(default_factory=dict)  # (source, target) -> flipped target
    working_copy: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "label": self.label,
                               "models": {m: r.to_dict() for m, r in self.models.items()}}
        if self.working_copy is not None:
            out["working_copy"] = self.working_copy
        if self.error is not None:
            out["error"] = self.error
        return out


def wilson(successes: int, n: int) -> tuple[float, float]:
    """Wilson's score interval (95 %) for a proportion."""
    p = successes / n
    z2 = _Z95 * _Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = _Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def interval(values: Sequence[bool], resamples: int, seed: int) -> list[float] | None:
    """A 95 % percentile-bootstrap interval of the share of ``values`` that are true, resampling images
    (seeded). When every value agrees the bootstrap collapses to a point, which would claim certainty from a
    handful of images: Wilson's score interval is given instead. ``None`` for no values."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return None
    if np.all(v == v[0]):
        lo, hi = wilson(int(v.sum()), v.size)
    else:
        rng = np.random.default_rng(seed)
        means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
        lo, hi = (float(q) for q in np.percentile(means, [2.5, 97.5]))
    return [round(lo, 4), round(hi, 4)]


def _rows(images: Sequence[ImageRecord], model: str) -> list[ModelRecord]:
    return [im.models[model] for im in images if im.error is None and model in im.models]


def clean_accuracy(images: Sequence[ImageRecord], models: Sequence[str], resamples: int,
                   seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in models:
        correct = [r.correct for r in _rows(images, m)]
        out[m] = {"value": float(np.mean(correct)) if correct else None, "n": len(correct),
                  "ci95": interval(correct, resamples, seed)}
    return out


def curves(images: Sequence[ImageRecord], models: Sequence[str], attacks: Mapping[str, Sequence[str]],
           eps: Sequence[float], resamples: int, seed: int) -> dict[str, Any]:
    """``curves[model][attack]``: per budget, robust accuracy (clean right and not broken at that budget or
    below; clean errors count as not robust), its interval, n and the images the attack broke; ``worst`` is
    an image broken by any attack run on that model."""
    out: dict[str, Any] = {}
    for m in models:
        rows = _rows(images, m)
        names = [*attacks.get(m, ()), WORST] if attacks.get(m) else []
        out[m] = {}
        for a in names:
            points = []
            for e in eps:
                broken = [r.correct and (b := r.broken_at(a)) is not None and b <= e for r in rows]
                robust = [r.correct and not k for r, k in zip(rows, broken, strict=True)]
                points.append({"eps": e, "robust_accuracy": float(np.mean(robust)) if rows else None,
                               "n": len(rows), "ci95": interval(robust, resamples, seed), "broken": sum(broken)})
            out[m][a] = points
    return out


def query_counts(images: Sequence[ImageRecord], models: Sequence[str], attacks: Sequence[str],
                 service: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """``queries[model][attack]`` (median, max, per image; ``None`` for an image not attacked) and, against a
    service, ``blocked_at_query[model][attack]`` per image."""
    queries: dict[str, Any] = {}
    blocked: dict[str, Any] = {}
    for m in models:
        rows = _rows(images, m)
        for a in attacks:
            per = [r.attacks[a].queries if a in r.attacks else None for r in rows]
            if all(q is None for q in per):
                continue
            spent = [q for q in per if q is not None]
            queries.setdefault(m, {})[a] = {"median": float(np.median(spent)), "max": max(spent), "per_image": per}
            if service:
                blocked.setdefault(m, {})[a] = [r.attacks[a].blocked_at_query if a in r.attacks else None
                                                for r in rows]
    return queries, blocked


def transfer(images: Sequence[ImageRecord], models: Sequence[str], eps: float, resamples: int,
             seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """For every ordered pair: of the source's verified adversarials (crafted at the largest budget), the share
    that also flip the target's decision, over images the target got right clean; ``None`` when the source
    has no adversarial for such an image."""
    share: dict[str, Any] = {}
    detail: dict[str, Any] = {}
    for s in models:
        share[s], detail[s] = {}, {}
        for t in models:
            if s == t:
                continue
            hits = [im.transfer[(s, t)] for im in images if im.error is None and (s, t) in im.transfer]
            n = len(hits)
            share[s][t] = (sum(hits) / n) if n else None
            detail[s][t] = {"n": n, "succeeded": sum(hits), "ci95": interval(hits, resamples, seed), "eps": eps}
    return share, detail


def sanity_checks(images: Sequence[ImageRecord], models: Sequence[str], curve: dict[str, Any],
                  attacks: Mapping[str, Sequence[str]], eps: Sequence[float], unbounded: float) -> list[dict[str, Any]]:
    """Carlini et al. (2019)'s checks, each ``{check, passed, detail}`` (``passed`` ``None`` when not run):
    robust accuracy falls with the budget and reaches 0 without a bound; a stronger APGD changes little;
    white-box does at least as well as black-box."""
    out: list[dict[str, Any]] = []
    for m in models:
        rows = _rows(images, m)
        for a, points in curve.get(m, {}).items():
            values = [p["robust_accuracy"] for p in points if p["robust_accuracy"] is not None]
            ok = all(b <= a_ + 1e-12 for a_, b in pairwise(values))
            out.append({"check": f"{m}: {a} robust accuracy does not rise with eps", "passed": ok,
                        "detail": ", ".join(f"{p['eps']:g}: {p['robust_accuracy']}" for p in points)})
        if "apgd" not in attacks.get(m, ()):
            continue
        ran = [r for r in rows if r.unbounded is not None]
        survivors = sum(1 for r in ran if not r.unbounded)
        out.append({"check": f"{m}: APGD at an unbounded budget ({unbounded:g}/255) breaks every image that "
                    f"survived eps {max(eps):g}", "passed": survivors == 0 if ran else None,
                    "detail": (f"{len(ran) - survivors} of {len(ran)} broken" if ran
                               else "no image survived the largest eps: nothing to run")})
        out.append(_stronger(m, rows, eps))
        out.append(_white_vs_black(m, rows, attacks.get(m, ())))
    return out


def _stronger(m: str, rows: Sequence[ModelRecord], eps: Sequence[float]) -> dict[str, Any]:
    mid = eps[len(eps) // 2]
    sub = [r for r in rows if r.stronger is not None]
    check = f"{m}: APGD with 4x steps and 2x restarts at eps {mid:g} changes robust accuracy little"
    if not sub:
        return {"check": check, "passed": None, "detail": "no image of the subsample was classified right clean"}
    before = np.mean([not ((b := r.broken_at("apgd")) is not None and b <= mid) for r in sub])
    after = np.mean([not ((b := r.broken_at("apgd")) is not None and b <= mid) and not r.stronger for r in sub])
    drop = float(before - after)
    return {"check": check, "passed": drop <= STRONGER_DROP,
            "detail": f"{len(sub)} image(s): robust accuracy {before:.2f} -> {after:.2f} (a drop over "
                      f"{STRONGER_DROP:.0%} means the default APGD is too weak)"}


def _white_vs_black(m: str, rows: Sequence[ModelRecord], attacks: Sequence[str]) -> dict[str, Any]:
    black = [a for a in attacks if a in ("square", "hopskipjump")]
    check = f"{m}: white-box APGD breaks every image black-box attacks break, at the same eps or less"
    if not black:
        return {"check": check, "passed": None, "detail": "no black-box attack ran"}
    masked = 0
    for r in rows:
        white = r.broken_at("apgd")
        found = [b for a in black if (b := r.broken_at(a)) is not None]
        if found and (white is None or white > min(found)):
            masked += 1
    return {"check": check, "passed": masked == 0,
            "detail": f"{masked} image(s) broken by {'/'.join(black)} at an eps where APGD failed"
                      + (" (a sign of gradient masking)" if masked else "")}


def few_warnings(clean: dict[str, Any], detail: dict[str, Any]) -> list[str]:
    """A warning for each figure resting on fewer than robust.MIN_PER_CLASS images."""
    notes = []
    for m, c in clean.items():
        if 0 < c["n"] < MIN_PER_CLASS:
            notes.append(f"{m}: clean and robust accuracy rest on {c['n']} image(s), fewer than {MIN_PER_CLASS}: "
                         "read the 95% intervals, not the values")
    for s, row in detail.items():
        for t, d in row.items():
            if 0 < d["n"] < MIN_PER_CLASS:
                notes.append(f"transfer {s} -> {t} rests on {d['n']} adversarial(s), fewer than {MIN_PER_CLASS}")
    return notes
