"""The attack's engine: the differentiable exact pipeline, PGD at one budget, the budget search, thinning,
the fewest-pixels search, and the verified result. :func:`nsfwlab.lab.attacks.attack` is the public verb;
the robustness report drives :class:`Engine` directly (its own goals and views)."""

from __future__ import annotations

import copy
import io
import math
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..backends import resolve_device
from ..errors import ConfigError, NsfwlabError
from ..imageio import ImageInput, describe_source, load_image
from ..objectives import LogitMargin
from ..preprocess.differentiable import network_input, straight_through_jpeg
from ..preprocess.resize import resize_exact
from ..progress import ProgressCallback, notify
from ..sizing import check_aspect, downscale
from .attack_options import (
    EOT_QUALITIES,
    AttackConfig,
    Goal,
    GoalKind,
    JpegMode,
    Norm,
    Space,
    check_attackable,
    check_attackable_card,
    survive_specs,
)
from .transforms import Transform, parse_transform, straight_through

__all__ = ["AttackResult", "Attempt", "Engine", "image_metrics"]

#: The in-loop estimate (torch fp32) and the Detector (onnxruntime) agree to ~1e-5; a candidate is sent to
#: verification only when its estimate clears the goal by this much.
_ESTIMATE_SLACK = 2e-4


@dataclass(frozen=True)
class AttackResult:
    """An attack's outcome. Every score is the Detector's on the saved (PNG) pixels of ``image``; ``views``
    holds the score after each transformation it was verified against (``image`` = none). ``model``: the
    model attacked; ``target_class``: the class whose probability the scores are (``None``: the NSFW score)."""

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
    pixels_changed: int = 0
    original_size: tuple[int, int] | None = None
    model: str = "open_nsfw"
    target_class: str | None = None

    @property
    def note(self) -> str | None:
        """Said when the image was attacked on a working copy (``original_size`` over the cap)."""
        if self.original_size is None:
            return None
        w, h = self.original_size
        return (f"{w}x{h} is over max_work_side: attacked a {self.image.width}x{self.image.height} working copy "
                "(the result has its size)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without the image)."""
        return {
            "source": self.source, "model": self.model, "score_of": self.target_class or "nsfw",
            "goal": self.goal.describe(), "target": self.goal.value,
            "score_before": self.score_before, "score_after": self.score_after, "success": self.success,
            "eps": self.eps, "linf": self.linf, "l2": self.l2, "pixels_changed": self.pixels_changed,
            "psnr": None if math.isinf(self.psnr) else self.psnr, "ssim": self.ssim,
            "steps": self.steps, "seconds": round(self.seconds, 3), "views": dict(self.views),
            "verified_against": list(self.views), "width": self.image.width, "height": self.image.height,
            "original_size": None if self.original_size is None else list(self.original_size),
            "note": self.note, "history": list(self.history),
        }


def image_metrics(before: np.ndarray, after: np.ndarray) -> dict[str, float]:
    """L-inf and L2 (in /255 levels), PSNR (dB; inf when equal), SSIM and the changed pixels (positions where
    any channel differs) of two uint8 RGB arrays."""
    from skimage.metrics import structural_similarity

    d = after.astype(np.float64) - before.astype(np.float64)
    mse = float(np.mean(d * d))
    small = min(before.shape[:2]) < 7
    ssim = 1.0 if mse == 0 or small else float(
        structural_similarity(before, after, channel_axis=2, data_range=255))
    return {"linf": float(np.abs(d).max()) if d.size else 0.0, "l2": float(np.sqrt(np.sum(d * d))),
            "psnr": math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse), "ssim": ssim,
            "pixels": float(np.count_nonzero(np.any(d != 0, axis=-1)))}


def _saved(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Attempt:
    """A candidate perturbation (integer levels, (1, 3, H, W)), its estimate and, if checked, its verification."""

    delta: torch.Tensor
    estimate: float
    verified: list[float] | None = None

    @property
    def success(self) -> bool:
        return self.verified is not None


class Engine:
    """The model, its device and the differentiable exact pipeline, for one :class:`AttackConfig`;
    ``detector`` verifies every result and provides the model the gradients come from.

    open_nsfw (and its checkpoints): the Detector's torch module behind the exact differentiable pipeline
    (resize bit for bit, the JPEG step as ``config.jpeg`` says). A zoo classifier or an ensemble
    (``Detector(model="nsfwjs-mobilenetv2")``): its :class:`~nsfwlab.lab.differentiable.Scorer` (the card's
    preprocessing in torch and the converted network; an ensemble's mean or max), with the probability of
    ``config.target_class`` instead of the NSFW score where one is set. Either way only the Detector's score of
    the saved pixels decides a success. A model without a differentiable form is a one-line ConfigError
    (:func:`~nsfwlab.lab.attack_options.check_attackable`)."""

    def __init__(self, config: AttackConfig, detector: Any) -> None:
        self.config = config
        self.detector = detector
        self.device = torch.device(resolve_device(config.device))
        zoo = getattr(detector, "zoo", None)
        self.model_id: str = zoo.model_id if zoo is not None else "open_nsfw"
        target = config.target_class
        card = getattr(getattr(zoo, "model", None), "card", None)
        if card is not None:  # one zoo model, perhaps from a card file outside the registry: check its card
            check_attackable_card(card)
            if target is not None and target not in card.classes:
                raise ConfigError(f"model {card.id} has no class {target!r}; its classes: {', '.join(card.classes)}",
                                  param="target_class")
        else:
            check_attackable(self.model_id, target)
        #: The class whose probability the attack moves; ``None``: the model's NSFW score.
        self.target_class = None if zoo is None or target is None else target
        self.margin = LogitMargin()
        self._kornia_jpeg: Callable[..., torch.Tensor] | None = None
        #: A zoo model's differentiable score (``None`` for open_nsfw, which runs its own exact pipeline).
        self.scorer: Any = None
        if zoo is None:
            self.model = detector.torch_model(device=str(self.device))  # refuses a model it cannot differentiate
            self.pre = detector.preprocess_config
            if self.pre.draft:
                raise ConfigError("the attack needs the exact resize; use a Detector without draft decoding",
                                  param="detector")
        else:
            self.pre = detector.preprocess_config
            if config.jpeg is not JpegMode.DIFFERENTIABLE:
                raise ConfigError(f"the JPEG step is open_nsfw's; model {self.model_id} has none, so jpeg "
                                  f"{config.jpeg.value} does not apply (leave it at differentiable)", param="jpeg")
            self.scorer = _zoo_scorer(detector, self.target_class, self.device)
            self.model = self.scorer
        #: The side of a ``space="resized"`` attack: the network's own input.
        self.input_side = self.pre.resize if zoo is None else _input_side(self.scorer, self.model_id, config)

    def exact(self, arr: np.ndarray) -> float:
        """The Detector's score of uint8 pixels that the goal is about: the NSFW score, or (``target_class``)
        that class's probability in the zoo model's own output."""
        if self.target_class is None:
            return float(self.detector.nsfw_score(arr))
        classes = self.detector.classify(arr).classes
        return float(classes[self.target_class])

    def survive_views(self) -> list[Transform | None]:
        """The image itself and every transformation of ``survive_jpeg`` / ``survive_resize``."""
        return [None, *(parse_transform(s) for s in survive_specs(self.config))]

    def load(self, image: ImageInput) -> tuple[np.ndarray, str, tuple[int, int] | None]:
        """The pixels to attack (the working copy of an image over ``max_work_side``), the source's name and,
        when downscaled, the original (width, height)."""
        name = describe_source(image)
        try:
            img = load_image(image, self.detector.limits)
            check_aspect(img.height, img.width, self.config.max_aspect, who="the lab")
        except NsfwlabError as exc:
            raise exc.with_source(name) from None
        size = self.input_side
        if self.config.space is Space.RESIZED:
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(img), name, None
        work = downscale(img, self.config.max_work_side)
        return np.asarray(work), name, (None if work is img else img.size)

    def run_goal(self, image: ImageInput, goal: Goal | Callable[[float], Goal], *,
                 views: Sequence[Transform | None] = (None,), fewest_pixels: bool | None = None,
                 progress: ProgressCallback | None = None) -> AttackResult:
        """Attack toward ``goal`` (or ``goal(score_before)``), which must hold for the Detector's score of every
        view of the result: ``None`` is the image itself, a :class:`Transform` what is scored after it (a JPEG
        re-save or a resize the result must survive, a defence the attack must get through).
        ``fewest_pixels`` overrides the config's."""
        t0 = time.perf_counter()
        orig, name, original_size = self.load(image)
        search = Search(self, orig, list(views), progress)
        before = search.verify(np.zeros_like(orig, dtype=np.int16))
        g = goal(before[0]) if callable(goal) else goal
        search.set_goal(g, before)
        best = search.search()
        if (self.config.fewest_pixels if fewest_pixels is None else fewest_pixels) and best.success:
            best = search.fewest_pixels(best) or best
        return search.result(best, name, before, time.perf_counter() - t0, original_size)

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


#: Each zoo Detector's Scorer per device (its weights are read once; an attack per image or per budget reuses it).
_SCORERS: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def _zoo_scorer(detector: Any, target_class: str | None, device: torch.device) -> Any:
    """The zoo Detector's :class:`~nsfwlab.lab.differentiable.Scorer` on ``device``; with ``target_class``,
    the same network's probability of that class (the card's preprocessing unchanged)."""
    from .differentiable import load_scorer

    cache = _SCORERS.setdefault(detector, {})
    key = str(device)
    if key not in cache:
        other = next(iter(cache.values()), None)  # .to() moves a module in place: copy one on another device
        cache[key] = (copy.deepcopy(other) if other is not None else load_scorer(detector=detector)).to(device)
    scorer = cache[key]
    return scorer if target_class is None else _class_scorer(scorer, target_class)


def _class_scorer(scorer: Any, name: str) -> Any:
    """A zoo classifier's Scorer reading one class's probability instead of the NSFW classes' sum."""
    return scorer.for_class(name)


def _input_side(scorer: Any, model_id: str, config: AttackConfig) -> int:
    spec = getattr(scorer, "spec", None)
    if spec is not None:
        return int(spec.size)
    if config.space is Space.RESIZED:
        raise ConfigError(f"space resized attacks a model's own input size; the members of {model_id} differ "
                          "in theirs (use space original)", param="space")
    return 0


def _logit(p: torch.Tensor) -> torch.Tensor:
    """log(p / (1 - p)): the margin whose sigmoid is the probability (clamped where float32 saturates)."""
    p = p.clamp(1e-7, 1 - 1e-7)
    return torch.log(p) - torch.log1p(-p)


def view_forward(view: Transform | None, x: torch.Tensor) -> torch.Tensor:
    """``view`` applied to (1, 3, H, W) float pixels: exact forward; a resize (``scale:F``) is Pillow's
    bilinear resize bit for bit with its linear map's gradient, other views are straight-through."""
    if view is None:
        return x
    if view.kind == "scale" and view.value is not None:
        h, w = x.shape[-2:]
        return resize_exact(x, (max(1, round(h * view.value)), max(1, round(w * view.value))))
    return straight_through(view, x)


class Search:
    """One image, its views and goal: the forward pass, PGD at one budget, the budget search, the thinning."""

    def __init__(self, engine: Engine, orig: np.ndarray, views: list[Transform | None],
                 progress: ProgressCallback | None) -> None:
        self.a = engine
        self.cfg = engine.config
        self.orig_np = orig
        self.orig = torch.from_numpy(orig.copy()).permute(2, 0, 1)[None].to(engine.device, torch.float32)
        self.views = views
        self.progress = progress
        self.history: list[dict[str, Any]] = []
        self.steps = 0
        gen = torch.Generator().manual_seed(self.cfg.seed)
        self.mask_u = torch.rand(self.orig.shape, generator=gen).to(engine.device)
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
        """All logit margins (for the loss: the sum over every view is the expectation over the set) and the
        exact ones, one per view."""
        if self.a.scorer is not None:
            # each view through the zoo model's own preprocessing (its sizes may differ: one call each)
            m = torch.cat([_logit(self.a.scorer(view_forward(view, x) / 255.0)) for view in self.views])
            return m, m
        size = self.a.pre.resize
        resized = []
        for view in self.views:
            v = view_forward(view, x)
            resized.append(v if v.shape[-2:] == (size, size) else resize_exact(v, size))
        jpeg, exact_idx = self.a.jpeg_step(torch.cat(resized))
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
        return [self.a.exact(arr if v is None else v(arr)) for v in self.views]

    def verify_saved(self, arr: np.ndarray) -> list[float]:
        """Every view's Detector score of ``arr`` as written: encoded as PNG and decoded again."""
        with Image.open(io.BytesIO(_saved(arr)), formats=["PNG"]) as im:
            saved = np.asarray(im.convert("RGB"))
        return [self.a.exact(saved if v is None else v(saved)) for v in self.views]

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

    def pgd(self, eps: float, warm: torch.Tensor | None) -> Attempt:
        """Sign-gradient PGD on a float latent ``delta`` whose rounding is the perturbation: every forward pass
        sees an exact uint8 image, and half-level latent steps let single values move by one level at a time
        (measured: reaches budgets that integer steps only oscillate around)."""
        delta = self.project(warm.clone(), eps) if warm is not None else torch.zeros_like(self.orig)
        best: Attempt | None = None
        linf = self.cfg.norm is Norm.LINF
        alpha = (0.5 if eps <= 4 else eps / 8) if linf else eps * math.sqrt(delta.numel()) / 8
        for step in range(self.cfg.steps + 1):
            q = self.project(delta.round(), eps).round()
            d = q.detach().requires_grad_(step < self.cfg.steps)
            m, exact = self.margins(self.orig + d)
            est = self.estimate(exact)
            self.history.append({"eps": eps, "step": step, "estimate": round(est, 6)})
            attempt = Attempt(q.detach().clone(), est)
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

    def _est_met(self, delta: torch.Tensor) -> tuple[bool, np.ndarray]:
        s = self.exact_scores(delta)
        return all(self.goal.met(float(v), _ESTIMATE_SLACK) for v in s), s

    def land(self, delta: torch.Tensor) -> Attempt | None:
        """Bisect the kept fraction t of ``delta`` (a seeded random mask) for the fewest changes that meet the
        goal; verified by the Detector. ``None`` if neither a thinned nor the full ``delta`` verifies."""
        lo, hi = 0.0, 1.0
        good: Attempt | None = None
        ok, full = self._est_met(delta)
        if ok:
            scores = self.verified_if_met(delta)
            if scores is not None:
                good = Attempt(delta, self._pick(full), scores)
        for _ in range(12):
            t = (lo + hi) / 2
            cand = delta * (self.mask_u < t)
            ok, s = self._est_met(cand)
            if ok:
                scores = self.verified_if_met(cand)
                if scores is not None:
                    good = Attempt(cand, self._pick(s), scores)
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

    def fewest_pixels(self, att: Attempt) -> Attempt | None:
        """The fewest changed pixels (positions) that still meet an at-least / at-most goal at ``att``'s budget:
        pixels ranked by their first-order share of the loss (``-grad . delta`` summed over channels), a
        bisection on how many of the top ones keep their change, verified by the Detector (and, if the
        estimate misleads, grown until it verifies). ``None`` for within-goals or when nothing fewer verifies."""
        if self.goal.kind is GoalKind.WITHIN:
            return None
        delta = att.delta
        d = delta.detach().clone().requires_grad_(True)
        m, _ = self.margins(self.orig + d)
        (grad,) = torch.autograd.grad(self.loss(m), d)
        share = (-(grad * delta)).sum(dim=1)[0].flatten()
        changed = (delta != 0).any(dim=1)[0].flatten()
        n = int(changed.sum())
        if n == 0:
            return None
        order = torch.argsort(torch.where(changed, share, torch.full_like(share, -math.inf)), descending=True)[:n]

        def keep(k: int) -> torch.Tensor:
            mask = torch.zeros_like(changed)
            mask[order[:k]] = True
            return delta * mask.view(1, 1, *delta.shape[-2:])

        lo, hi = 0, n  # the estimate is not met with lo pixels, met with hi (the full perturbation)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._est_met(keep(mid))[0]:
                hi = mid
            else:
                lo = mid
        k = hi
        while k < n:
            scores = self.verified_if_met(keep(k))
            if scores is not None:
                self.history.append({"phase": "fewest-pixels", "pixels": k, "of": n, "verified": scores})
                return Attempt(keep(k), self._pick(np.asarray(scores)), scores)
            k = min(n, max(k + 1, round(k * 1.25)))
        return None

    def _pick(self, scores: np.ndarray) -> float:
        return float(scores.min() if self.up else scores.max())

    # -- budget search ---------------------------------------------------------------------------
    def levels(self) -> list[float]:
        if self.cfg.norm is Norm.LINF:
            return [float(e) for e in range(1, int(self.cfg.max_eps) + 1)]
        # RMS budgets below ~0.5 level mostly round away; the ladder starts there
        return [float(v) for v in np.geomspace(0.5, self.cfg.max_eps, 8)]

    def search(self) -> Attempt:
        zero = torch.zeros_like(self.orig)
        before = self.verify(zero)
        if all(self.goal.met(s) for s in before):
            return Attempt(zero, self._pick(np.asarray(before)), before)
        levels = self.levels()
        tried: dict[int, Attempt] = {}
        best: Attempt | None = None
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

    def _at(self, levels: list[float], i: int, tried: dict[int, Attempt], best: Attempt | None) -> Attempt:
        eps = levels[i]
        warm = best.delta if best is not None else None
        att = self.pgd(eps, warm)
        self.history.append({"phase": "budget", "eps": eps, "success": att.success, "verified": att.verified})
        tried[i] = att
        notify(self.progress, "budget", len(tried), None, {"eps": eps, "success": att.success})
        return att

    def _better(self, best: Attempt | None, att: Attempt) -> Attempt:
        if best is None:
            return att
        if att.success != best.success:
            return att if att.success else best
        return att if self._closer(att.estimate, best.estimate) else best

    # -- result -----------------------------------------------------------------------------------
    def result(self, att: Attempt, name: str, before: list[float], seconds: float,
               original_size: tuple[int, int] | None = None) -> AttackResult:
        arr = self.pixels(att.delta)
        scores = self.verify_saved(arr)
        metrics = image_metrics(self.orig_np, arr)
        names = ["image" if v is None else v.spec for v in self.views]
        success = all(self.goal.met(s) for s in scores)
        eps = metrics["linf"] if self.cfg.norm is Norm.LINF else metrics["l2"] / math.sqrt(arr.size)
        return AttackResult(
            image=Image.fromarray(arr), source=name, goal=self.goal, score_before=before[0], score_after=scores[0],
            success=success, eps=eps, linf=metrics["linf"], l2=metrics["l2"], psnr=metrics["psnr"],
            ssim=metrics["ssim"], steps=self.steps, seconds=seconds, views=dict(zip(names, scores, strict=True)),
            history=tuple(self.history), pixels_changed=int(metrics["pixels"]), original_size=original_size,
            model=self.a.model_id, target_class=self.a.target_class,
        )
