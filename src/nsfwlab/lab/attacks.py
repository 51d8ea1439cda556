"""Adversarial attacks on the exact open_nsfw pipeline: the smallest change that gives an image a chosen score.

The seed ("inverse open NSFW") optimised the 256x256 resized image with Adam for 1000-8000 iterations through a
learned mock of the JPEG step, and reached L-inf 10/255. Here the whole pipeline is differentiable or exact:

- ``space="original"`` (default): the perturbation lives on the image at its own resolution; the forward pass is
  Pillow's BILINEAR resize bit for bit (:func:`nsfwlab.preprocess.resize.resize_exact`) with the gradient of its
  linear map, then the JPEG round trip, crop, BGR, mean (the core's differentiable preprocessing).
- ``space="resized"``: the classic setting; the 256x256 resized image is optimised (and returned).
- The JPEG step: ``differentiable`` (default: forward Pillow's real round trip, backward kornia's differentiable
  JPEG at quality 75; kornia needs sides that are multiples of 16, else straight-through is used),
  ``straight-through`` (forward Pillow's, backward identity), ``eot`` (gradients summed over re-encodings at
  qualities 60, 75 and 90; the quality-75 member gives the exact forward value). All three reach the same
  L-inf budgets; differentiable needs the fewest changed values (PSNR +1.5-2.3 dB, BENCHMARKS.md), EOT costs 2x.

The search: integer L-inf budgets ``eps`` (1, 2, 4, ... then bisection up to ``max_eps``), at each a
sign-gradient PGD with integer steps (so every iterate is an exact uint8 image and the forward pass is the
exact pipeline); the first iterate that meets the goal is verified by the Detector on the uint8 pixels. Then
the perturbation is thinned: a seeded random mask keeps a fraction ``t`` of its non-zero values, and a
bisection on ``t`` finds the fewest changed values that still meet the goal (for a mid-range target: lands
within the tolerance). Only Detector scores of the final uint8 pixels are reported; the optimiser's own
estimates appear only in the history, labelled as such.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..backends import resolve_device
from ..config import Device
from ..errors import ConfigError, NsfwlabError
from ..imageio import ImageInput, describe_source, load_image
from ..objectives import LogitMargin
from ..preprocess.differentiable import network_input, straight_through_jpeg
from ..preprocess.resize import resize_exact
from .transforms import Transform, parse_transform, straight_through

__all__ = [
    "AttackConfig",
    "AttackResult",
    "Attacker",
    "Goal",
    "GoalKind",
    "JpegMode",
    "Norm",
    "Space",
    "attack",
    "image_metrics",
]

ProgressCallback = Callable[[str], None]


class Norm(StrEnum):
    """The budget's norm: L-inf (max change per value) or L2 (its RMS per value), both in /255 levels."""

    LINF = "linf"
    L2 = "l2"


class JpegMode(StrEnum):
    STRAIGHT_THROUGH = "straight-through"
    DIFFERENTIABLE = "differentiable"
    EOT = "eot"


class Space(StrEnum):
    ORIGINAL = "original"
    RESIZED = "resized"


class GoalKind(StrEnum):
    AT_LEAST = "at-least"
    AT_MOST = "at-most"
    WITHIN = "within"


#: The in-loop estimate (torch fp32) and the Detector (onnxruntime) agree to ~1e-5; a candidate is sent to
#: verification only when its estimate clears the goal by this much.
_ESTIMATE_SLACK = 2e-4
#: Qualities of the EOT mode (75 is the pipeline's own and gives the exact forward value).
EOT_QUALITIES = (60, 75, 90)


@dataclass(frozen=True)
class Goal:
    """What the score must satisfy: ``at-least value``, ``at-most value`` or ``within tolerance of value``."""

    kind: GoalKind
    value: float
    tolerance: float = 0.01

    @classmethod
    def from_target(cls, to: float, before: float, tolerance: float) -> Goal:
        """The goal's rule: ``to >= 0.95`` above the score means at least; ``<= 0.05`` below, at most."""
        if to >= 0.95 and to > before:
            return cls(GoalKind.AT_LEAST, to, tolerance)
        if to <= 0.05 and to < before:
            return cls(GoalKind.AT_MOST, to, tolerance)
        return cls(GoalKind.WITHIN, to, tolerance)

    def met(self, score: float, slack: float = 0.0) -> bool:
        if self.kind is GoalKind.AT_LEAST:
            return score >= self.value + slack
        if self.kind is GoalKind.AT_MOST:
            return score <= self.value - slack
        return abs(score - self.value) <= self.tolerance - slack

    def crossed(self, score: float, up: bool, slack: float = 0.0) -> bool:
        """Met, or (within-goals) beyond the value in the direction of travel: the bisection can land it."""
        if self.met(score, slack):
            return True
        return self.kind is GoalKind.WITHIN and (score >= self.value if up else score <= self.value)

    def describe(self) -> str:
        return {GoalKind.AT_LEAST: ">= {v:g}", GoalKind.AT_MOST: "<= {v:g}",
                GoalKind.WITHIN: "{v:g} +- {t:g}"}[self.kind].format(v=self.value, t=self.tolerance)


@dataclass(frozen=True)
class AttackConfig:
    """How to attack (the per-call argument is the image and the target)."""

    max_eps: float = 8.0
    norm: Norm = Norm.LINF
    tolerance: float = 0.01
    steps: int = 30
    jpeg: JpegMode = JpegMode.DIFFERENTIABLE
    survive_jpeg: int | None = None
    space: Space = Space.ORIGINAL
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", _enum(Norm, self.norm, "norm"))
        object.__setattr__(self, "jpeg", _enum(JpegMode, self.jpeg, "jpeg"))
        object.__setattr__(self, "space", _enum(Space, self.space, "space"))
        if not 1 <= self.max_eps <= 255:
            raise ConfigError(f"max_eps is in /255 levels and must lie in [1, 255], got {self.max_eps}")
        if not 0 < self.tolerance < 0.5:
            raise ConfigError(f"tolerance must lie in (0, 0.5), got {self.tolerance}")
        if self.steps < 1:
            raise ConfigError(f"steps must be at least 1, got {self.steps}")
        if self.survive_jpeg is not None and not 1 <= self.survive_jpeg <= 100:
            raise ConfigError(f"survive_jpeg is a JPEG quality in [1, 100], got {self.survive_jpeg}")
        try:
            Device(self.device)
        except ValueError:
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}") from None


def _enum(cls: type[Enum], value: Any, name: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(str(m.value) for m in cls)  # type: ignore[attr-defined]
        raise ConfigError(f"{name} must be one of {choices}; got {value!r}") from None


@dataclass(frozen=True)
class AttackResult:
    """An attack's outcome. Every score is the Detector's on the uint8 pixels of ``image``."""

    image: Image.Image
    source: str
    goal: Goal
    score_before: float
    score_after: float
    success: bool
    eps: float
    linf: float
    l2: float
    psnr: float
    ssim: float
    steps: int
    seconds: float
    views: dict[str, float] = field(default_factory=dict)
    history: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the image)."""
        return {
            "source": self.source, "goal": self.goal.describe(), "target": self.goal.value,
            "score_before": self.score_before, "score_after": self.score_after, "success": self.success,
            "eps": self.eps, "linf": self.linf, "l2": self.l2,
            "psnr": None if math.isinf(self.psnr) else self.psnr, "ssim": self.ssim,
            "steps": self.steps, "seconds": round(self.seconds, 3), "views": dict(self.views),
            "width": self.image.width, "height": self.image.height, "history": list(self.history),
        }


def image_metrics(before: np.ndarray, after: np.ndarray) -> dict[str, float]:
    """L-inf and L2 (in /255 levels), PSNR (dB; inf when equal) and SSIM of two uint8 RGB arrays."""
    from skimage.metrics import structural_similarity

    d = after.astype(np.float64) - before.astype(np.float64)
    mse = float(np.mean(d * d))
    small = min(before.shape[:2]) < 7
    ssim = 1.0 if mse == 0 or small else float(
        structural_similarity(before, after, channel_axis=2, data_range=255))
    return {"linf": float(np.abs(d).max()) if d.size else 0.0, "l2": float(np.sqrt(np.sum(d * d))),
            "psnr": math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse), "ssim": ssim}


@dataclass
class _Attempt:
    """A candidate perturbation (integer levels, (1, 3, H, W)), its estimate and, if checked, its verification."""

    delta: torch.Tensor
    estimate: float
    verified: list[float] | None = None

    @property
    def success(self) -> bool:
        return self.verified is not None


class Attacker:
    """Attacks images toward a score. ``detector`` (default: an exact CPU ``Detector``) verifies every result
    and provides the torch model the gradients come from."""

    def __init__(self, config: AttackConfig | None = None, *, detector: Any | None = None) -> None:
        self.config = config or AttackConfig()
        if detector is None:
            from ..detector import Detector

            detector = Detector(device="cpu")
        self.detector = detector
        self.device = torch.device(resolve_device(self.config.device))
        self.model = detector.torch_model(device=str(self.device))
        self.margin = LogitMargin()
        self.pre = detector.preprocess_config
        if self.pre.draft:
            raise ConfigError("the attack needs the exact resize; use a Detector without draft decoding")
        self._kornia_jpeg: Callable[..., torch.Tensor] | None = None

    # -- public -----------------------------------------------------------------------------
    def run(self, image: ImageInput, to: float, *, progress: ProgressCallback | None = None) -> AttackResult:
        """Attack ``image`` toward score ``to`` (see :meth:`Goal.from_target`)."""
        if not 0.0 <= to <= 1.0:
            raise ConfigError(f"the target score must lie in [0, 1], got {to}")
        q = self.config.survive_jpeg
        views = [None] if q is None else [None, parse_transform(f"jpeg:{q}")]
        return self.run_goal(image, lambda before: Goal.from_target(to, before, self.config.tolerance),
                             views=views, progress=progress)

    def run_goal(self, image: ImageInput, goal: Goal | Callable[[float], Goal], *,
                 views: Sequence[Transform | None] = (None,), progress: ProgressCallback | None = None) -> AttackResult:
        """Attack toward ``goal`` (or ``goal(score_before)``), which must hold for the Detector's score of every
        view of the result: ``None`` is the image itself, a :class:`Transform` what is scored after it (a JPEG
        re-save the result must survive, a defence the attack must get through)."""
        t0 = time.perf_counter()
        name = describe_source(image)
        try:
            img = load_image(image, self.detector.limits)
        except NsfwlabError as exc:
            raise exc.with_source(name) from None
        orig = np.asarray(img)
        size = self.pre.resize
        if self.config.space is Space.RESIZED and orig.shape[:2] != (size, size):
            orig = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))
        problem = _Problem(self, orig, list(views), progress)
        before = problem.verify(np.zeros_like(orig, dtype=np.int16))
        g = goal(before[0]) if callable(goal) else goal
        problem.set_goal(g, before)
        best = problem.search()
        return problem.result(best, name, before, time.perf_counter() - t0)

    # -- pipeline pieces used by _Problem ---------------------------------------------------
    def jpeg_step(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The JPEG round trip of (N, 3, 256, 256) images as the mode says; returns the batch and the index of
        the exact member within each image's group (EOT stacks the qualities along the batch)."""
        mode, quality = self.config.jpeg, self.pre.jpeg_quality
        if not self.pre.jpeg_roundtrip:
            return x, 0
        if mode is JpegMode.STRAIGHT_THROUGH or (
                mode is JpegMode.DIFFERENTIABLE and (x.shape[-1] % 16 or x.shape[-2] % 16)):
            return straight_through_jpeg(x, quality), 0
        if mode is JpegMode.DIFFERENTIABLE:
            soft = self._kornia(x, quality)
            exact = straight_through_jpeg(x.detach(), quality)
            return soft + (exact - soft).detach(), 0
        qualities = sorted({*EOT_QUALITIES, quality})
        outs = [straight_through_jpeg(x, q) for q in qualities]
        return torch.stack(outs, dim=1).flatten(0, 1), qualities.index(quality)

    def _kornia(self, x: torch.Tensor, quality: int) -> torch.Tensor:
        if self._kornia_jpeg is None:
            from kornia.enhance import jpeg_codec_differentiable

            self._kornia_jpeg = jpeg_codec_differentiable
        q = torch.full((x.shape[0],), float(quality), device=x.device, dtype=x.dtype)
        return self._kornia_jpeg(x / 255.0, q) * 255.0


class _Problem:
    """One image, its views and goal: the forward pass, PGD at one budget, the budget search, the thinning."""

    def __init__(self, attacker: Attacker, orig: np.ndarray, views: list[Transform | None],
                 progress: ProgressCallback | None) -> None:
        self.a = attacker
        self.cfg = attacker.config
        self.orig_np = orig
        self.orig = torch.from_numpy(orig.copy()).permute(2, 0, 1)[None].to(attacker.device, torch.float32)
        self.views = views
        self.progress = progress
        self.history: list[dict[str, Any]] = []
        self.steps = 0
        gen = torch.Generator().manual_seed(self.cfg.seed)
        self.mask_u = torch.rand(self.orig.shape, generator=gen).to(attacker.device)
        self.goal = Goal(GoalKind.AT_LEAST, 1.0)
        self.up = True

    def set_goal(self, goal: Goal, before: list[float]) -> None:
        self.goal = goal
        if goal.kind is GoalKind.WITHIN:
            self.up = goal.value > float(np.mean(before))
        else:
            self.up = goal.kind is GoalKind.AT_LEAST

    # -- forward ------------------------------------------------------------------------------
    def margins(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All logit margins (for the loss) and the exact ones, one per view."""
        batch = []
        for view in self.views:
            batch.append(x if view is None else straight_through(view, x))
        xs = torch.cat(batch)
        resized = resize_exact(xs, self.a.pre.resize) if self.cfg.space is Space.ORIGINAL else xs
        jpeg, exact_idx = self.a.jpeg_step(resized)
        logits = self.a.model(network_input(jpeg, self.a.pre))
        m = self.a.margin(logits)
        group = m.shape[0] // len(self.views)
        return m, m.view(len(self.views), group)[:, exact_idx]

    def loss(self, m: torch.Tensor) -> torch.Tensor:
        """Minimised: push every margin in the direction of travel."""
        return -m.sum() if self.up else m.sum()

    def estimate(self, exact: torch.Tensor) -> float:
        scores = torch.sigmoid(exact.detach().float()).cpu().numpy()
        return float(scores.min() if self.up else scores.max())

    def all_met(self, exact: torch.Tensor, crossed: bool = False) -> bool:
        scores = torch.sigmoid(exact.detach().float()).cpu().numpy()
        if crossed:
            return all(self.goal.crossed(float(s), self.up, _ESTIMATE_SLACK) for s in scores)
        return all(self.goal.met(float(s), _ESTIMATE_SLACK) for s in scores)

    # -- verification ---------------------------------------------------------------------------
    def pixels(self, delta: torch.Tensor | np.ndarray) -> np.ndarray:
        d = delta if isinstance(delta, np.ndarray) else delta[0].permute(1, 2, 0).round().cpu().numpy()
        return np.clip(self.orig_np.astype(np.int16) + d.astype(np.int16), 0, 255).astype(np.uint8)

    def verify(self, delta: torch.Tensor | np.ndarray) -> list[float]:
        arr = self.pixels(delta)
        return [self.a.detector.nsfw_score(arr if v is None else v(arr)) for v in self.views]

    def verified_if_met(self, delta: torch.Tensor) -> list[float] | None:
        scores = self.verify(delta)
        return scores if all(self.goal.met(s) for s in scores) else None

    # -- PGD at one budget -------------------------------------------------------------------------
    def project(self, delta: torch.Tensor, eps: float) -> torch.Tensor:
        if self.cfg.norm is Norm.LINF:
            delta = delta.clamp(-eps, eps)
        else:
            cap = eps * math.sqrt(delta.numel())
            norm = float(delta.norm())
            if norm > cap:
                delta = delta * (cap / norm)
        return (self.orig + delta).clamp(0, 255) - self.orig

    def pgd(self, eps: float, warm: torch.Tensor | None) -> _Attempt:
        """Sign-gradient PGD on a float latent ``delta`` whose rounding is the perturbation: every forward pass
        sees an exact uint8 image, and half-level latent steps let single values move by one level at a time
        (measured: reaches budgets that integer steps only oscillate around)."""
        delta = self.project(warm.clone(), eps) if warm is not None else torch.zeros_like(self.orig)
        best: _Attempt | None = None
        linf = self.cfg.norm is Norm.LINF
        alpha = (0.5 if eps <= 4 else eps / 8) if linf else eps * math.sqrt(delta.numel()) / 8
        for step in range(self.cfg.steps + 1):
            q = self.project(delta.round(), eps).round()
            d = q.detach().requires_grad_(step < self.cfg.steps)
            m, exact = self.margins(self.orig + d)
            est = self.estimate(exact)
            self.history.append({"eps": eps, "step": step, "estimate": round(est, 6)})
            attempt = _Attempt(q.detach().clone(), est)
            if best is None or self._closer(est, best.estimate):
                best = attempt
            if self.all_met(exact, crossed=True):
                landed = self.land(attempt.delta)
                if landed is not None:
                    self.steps += step
                    return landed
            if step == self.cfg.steps:
                break
            (grad,) = torch.autograd.grad(self.loss(m), d)
            step_dir = grad.sign() if linf else grad / (grad.norm() + 1e-12)
            delta = self.project(delta - alpha * step_dir, eps)
        self.steps += self.cfg.steps
        assert best is not None
        return best

    def _closer(self, est: float, than: float) -> bool:
        return est > than if self.up else est < than

    # -- thinning / landing --------------------------------------------------------------------
    @torch.no_grad()
    def exact_scores(self, delta: torch.Tensor) -> np.ndarray:
        _, exact = self.margins(self.orig + delta)
        return torch.sigmoid(exact.float()).cpu().numpy()

    def land(self, delta: torch.Tensor) -> _Attempt | None:
        """Bisect the kept fraction t of ``delta`` (a seeded random mask) for the fewest changes that meet the
        goal; verified by the Detector. ``None`` if neither a thinned nor the full ``delta`` verifies."""
        lo, hi = 0.0, 1.0
        good: _Attempt | None = None
        full = self.exact_scores(delta)
        if all(self.goal.met(float(s), _ESTIMATE_SLACK) for s in full):
            scores = self.verified_if_met(delta)
            if scores is not None:
                good = _Attempt(delta, self._pick(full), scores)
        for _ in range(12):
            t = (lo + hi) / 2
            cand = delta * (self.mask_u < t)
            s = self.exact_scores(cand)
            if all(self.goal.met(float(v), _ESTIMATE_SLACK) for v in s):
                scores = self.verified_if_met(cand)
                if scores is not None:
                    good = _Attempt(cand, self._pick(s), scores)
                    if self.goal.kind is GoalKind.WITHIN:
                        break
                hi = t
            elif self.goal.kind is GoalKind.WITHIN and not all(self.goal.crossed(float(v), self.up) for v in s):
                lo = t
            elif self.goal.kind is GoalKind.WITHIN:
                hi = t
            else:
                lo = t
        verified = None if good is None else good.verified
        self.history.append({"phase": "thin", "kept": round(hi, 4), "verified": verified})
        return good

    def _pick(self, scores: np.ndarray) -> float:
        return float(scores.min() if self.up else scores.max())

    # -- budget search ---------------------------------------------------------------------------
    def levels(self) -> list[float]:
        if self.cfg.norm is Norm.LINF:
            return [float(e) for e in range(1, int(self.cfg.max_eps) + 1)]
        # RMS budgets below ~0.5 level mostly round away; the ladder starts there
        return [float(v) for v in np.geomspace(0.5, self.cfg.max_eps, 8)]

    def search(self) -> _Attempt:
        zero = torch.zeros_like(self.orig)
        before = self.verify(zero)
        if all(self.goal.met(s) for s in before):
            return _Attempt(zero, self._pick(np.asarray(before)), before)
        levels = self.levels()
        tried: dict[int, _Attempt] = {}
        best: _Attempt | None = None
        lo, hi = -1, None
        i = 0
        while True:  # gallop: 1, 2, 4, 8 ... levels
            att = self._at(levels, i, tried, best)
            best = self._better(best, att)
            if att.success:
                hi = i
                break
            lo = i
            if i == len(levels) - 1:
                break
            i = min(2 * i + 1, len(levels) - 1)
        while hi is not None and hi - lo > 1:  # bisect between the last failure and the first success
            mid = (lo + hi) // 2
            att = self._at(levels, mid, tried, best)
            best = self._better(best, att)
            if att.success:
                hi = mid
            else:
                lo = mid
        assert best is not None
        if hi is not None:
            return tried[hi]
        return best

    def _at(self, levels: list[float], i: int, tried: dict[int, _Attempt], best: _Attempt | None) -> _Attempt:
        eps = levels[i]
        if self.progress is not None:
            self.progress(f"eps {eps:g}")
        warm = best.delta if best is not None else None
        att = self.pgd(eps, warm)
        self.history.append({"phase": "budget", "eps": eps, "success": att.success, "verified": att.verified})
        tried[i] = att
        return att

    def _better(self, best: _Attempt | None, att: _Attempt) -> _Attempt:
        if best is None:
            return att
        if att.success != best.success:
            return att if att.success else best
        return att if self._closer(att.estimate, best.estimate) else best

    # -- result -----------------------------------------------------------------------------------
    def result(self, att: _Attempt, name: str, before: list[float], seconds: float) -> AttackResult:
        arr = self.pixels(att.delta)
        scores = att.verified if att.verified is not None else self.verify(att.delta)
        metrics = image_metrics(self.orig_np, arr)
        names = ["image" if v is None else v.spec for v in self.views]
        success = all(self.goal.met(s) for s in scores)
        eps = metrics["linf"] if self.cfg.norm is Norm.LINF else metrics["l2"] / math.sqrt(arr.size)
        return AttackResult(
            image=Image.fromarray(arr), source=name, goal=self.goal, score_before=before[0], score_after=scores[0],
            success=success, eps=eps, linf=metrics["linf"], l2=metrics["l2"], psnr=metrics["psnr"],
            ssim=metrics["ssim"], steps=self.steps, seconds=seconds, views=dict(zip(names, scores, strict=True)),
            history=tuple(self.history),
        )


def attack(image: ImageInput, to: float = 0.983, *, max_eps: float = 8, norm: Norm | str = Norm.LINF,
           tolerance: float = 0.01, steps: int = 30, jpeg: JpegMode | str = JpegMode.DIFFERENTIABLE,
           survive_jpeg: int | None = None, space: Space | str = Space.ORIGINAL, seed: int = 0,
           device: str = "auto", detector: Any | None = None,
           progress: ProgressCallback | None = None) -> AttackResult:
    """The smallest verified change that brings ``image``'s score to ``to``.

    ``to >= 0.95`` above the current score means "at least ``to``", ``<= 0.05`` below means "at most"; any other
    target is reached within ``tolerance``. ``max_eps`` caps the L-inf budget (``norm="linf"``, levels of
    1/255) or the RMS change per value (``norm="l2"``). ``survive_jpeg=Q``: the result must also meet the
    target after a re-save as JPEG at quality Q. Returns an :class:`AttackResult` whose scores are the
    Detector's on the result's uint8 pixels.
    """
    config = AttackConfig(max_eps=max_eps, norm=norm, tolerance=tolerance, steps=steps, jpeg=jpeg,  # type: ignore[arg-type]
                          survive_jpeg=survive_jpeg, space=space, seed=seed, device=device)  # type: ignore[arg-type]
    return Attacker(config, detector=detector).run(image, to, progress=progress)
