"""The attacks of the robustness protocol, one image and one model at a time, each ending in a verified
outcome: the smallest budget of the protocol's ladder at which a uint8 adversarial, scored by the exact
Detector (:func:`~nsfwlab.lab.differentiable.exact_score`), lands on the wrong side of the threshold.

- ``apgd``: ART's :class:`~art.attacks.evasion.AutoProjectedGradientDescent` (cross-entropy, restarts) on an
  ART :class:`~art.estimators.classification.PyTorchClassifier` wrapping :meth:`Scorer.logits`; per budget,
  ascending, until one verifies.
- ``square``: :func:`nsfwlab.lab.blackbox.square` on the oracle, per budget, ascending.
- ``hopskipjump``: :func:`nsfwlab.lab.blackbox.hopskipjump` once (minimal-norm), its result projected onto
  each budget's ball and verified there.
- ``minimal``: the lab :class:`~nsfwlab.lab.pgd.Engine`'s smallest-budget search (L-inf).

Balls nest, so a verified adversarial at one budget is one at every larger budget: ``broken_at`` is the
smallest budget that verified. An attack's claim that the exact score contradicts is counted in
``rejected`` and never as a success.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import NsfwlabError
from .attack_options import AttackConfig, Goal, GoalKind, Norm

__all__ = ["ATTACKS", "AttackOutcome", "Verifier", "WhiteBox", "into_ball", "run_blackbox", "run_minimal"]

#: The attacks the protocol knows, in the order they run.
ATTACKS = ("apgd", "square", "hopskipjump", "minimal")
#: A score exactly on the threshold is NSFW; an at-most goal ends this far below it.
_EDGE = 1e-6


@dataclass
class AttackOutcome:
    """One attack on one image and model. ``broken_at``: the smallest budget (of the ladder) whose adversarial
    verified, ``None`` when none did; ``score``: its exact score; ``adversarial``: its uint8 pixels (kept in
    memory for the transfer matrix and ``--save-adversarial``, never written otherwise); ``queries``: oracle
    queries spent (black-box attacks); ``rejected``: budgets where the attack claimed a success the exact
    score did not confirm; ``tried``: the budgets attacked; ``seconds``: wall time of the attack on this image
    (its verification included, the sanity reruns not)."""

    broken_at: float | None = None
    score: float | None = None
    adversarial: np.ndarray | None = None
    queries: int | None = None
    blocked_at_query: int | None = None
    rejected: int = 0
    tried: tuple[float, ...] = ()
    error: str | None = None
    saved: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"broken_at": self.broken_at, "score": self.score, "queries": self.queries,
                               "saved": self.saved, "seconds": round(self.seconds, 3)}
        if self.blocked_at_query is not None:
            out["blocked_at_query"] = self.blocked_at_query
        if self.rejected:
            out["rejected"] = self.rejected
        if self.error is not None:
            out["error"] = self.error
        return out


class Verifier:
    """What "verified" means for one model: ``score(pixels)`` is the exact Detector's score of the PNG of
    ``pixels``, and an adversarial succeeds when that score's decision (NSFW iff score >= threshold) differs
    from ``label``."""

    def __init__(self, score: Callable[[np.ndarray], float], threshold: float) -> None:
        self.score = score
        self.threshold = threshold

    def decision(self, score: float) -> int:
        return int(score >= self.threshold)

    def check(self, pixels: np.ndarray, label: int) -> tuple[bool, float]:
        s = float(self.score(pixels))
        return self.decision(s) != label, s


def into_ball(orig: np.ndarray, adv: np.ndarray, norm: Norm, eps: float) -> np.ndarray:
    """``adv`` (HxWx3, uint8 or float levels 0..255) as uint8 pixels whose change from ``orig`` lies within the
    ``eps`` ball: rounded; L-inf clipped to +-floor(eps) levels; L2 (RMS over all values <= eps levels) scaled
    down and truncated toward zero when rounding took it outside (truncation only shrinks every value)."""
    delta = np.rint(np.asarray(adv, dtype=np.float64)) - orig.astype(np.float64)
    if norm is Norm.LINF:
        bound = math.floor(eps + 1e-9)
        delta = np.clip(delta, -bound, bound)
    else:
        cap = eps * math.sqrt(delta.size)
        size = float(np.linalg.norm(delta))
        if size > cap:
            delta = np.trunc(delta * (cap / size))
    return np.clip(orig.astype(np.float64) + delta, 0, 255).astype(np.uint8)


def _ladder(eps: Sequence[float], outcome: AttackOutcome, verifier: Verifier, label: int, orig: np.ndarray,
            norm: Norm, craft: Callable[[float], np.ndarray | None]) -> AttackOutcome:
    """``craft(e)`` per budget, ascending, until one verifies; ``craft`` returns the attack's claimed adversarial
    or ``None`` when the attack itself reports no success."""
    tried = []
    for e in eps:
        tried.append(e)
        adv = craft(e)
        if adv is None:
            continue
        adv = into_ball(orig, adv, norm, e)
        ok, s = verifier.check(adv, label)
        if ok:
            outcome.broken_at, outcome.score, outcome.adversarial = e, s, adv
            break
        outcome.rejected += 1
    outcome.tried = tuple(tried)
    return outcome


class WhiteBox:
    """APGD on one image: the ART classifier over ``scorer.logits`` at this image's size (one image at a time:
    sizes differ) and one attack object whose budget is set per run. ART's random start draws from numpy's
    global generator, so each run seeds it and puts the caller's state back."""

    def __init__(self, scorer: Any, image: np.ndarray, norm: Norm, device: str) -> None:
        import torch
        from art.attacks.evasion import AutoProjectedGradientDescent
        from art.estimators.classification import PyTorchClassifier

        class Logits(torch.nn.Module):  # ART calls model(x) and reads the class logits
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.inner.logits(x)  # type: ignore[no-any-return]

        self.image = image
        self.norm = norm
        self.x = (image.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        classifier = PyTorchClassifier(model=Logits(scorer), loss=torch.nn.CrossEntropyLoss(),
                                       input_shape=self.x.shape[1:], nb_classes=2, clip_values=(0.0, 1.0),
                                       device_type="gpu" if device.startswith("cuda") else "cpu")
        self.attack = AutoProjectedGradientDescent(
            classifier, norm=np.inf if norm is Norm.LINF else 2, eps=self._radius(1.0),
            eps_step=2 * self._radius(1.0), max_iter=1, nb_random_init=1, batch_size=1,
            loss_type="cross_entropy", verbose=False)

    def _radius(self, eps: float) -> float:
        """The budget in ART's [0, 1] units: L-inf eps/255; L2 the RMS eps/255 times sqrt(H*W*3)."""
        return eps / 255.0 if self.norm is Norm.LINF else eps / 255.0 * math.sqrt(self.x.size)

    def craft(self, eps: float, label: int, *, steps: int, restarts: int, seed: int) -> np.ndarray | None:
        """APGD's adversarial at ``eps`` (moving away from ``label``), as float levels 0..255 (HxWx3); ``None``
        when APGD's own float result keeps the label (ART then returns a random start, not an adversarial)."""
        a = self.attack
        a.eps, a.eps_step, a.max_iter, a.nb_random_init = self._radius(eps), 2 * self._radius(eps), steps, restarts
        state = np.random.get_state()
        np.random.seed(seed % 2**32)
        try:
            adv = a.generate(self.x, y=np.array([label]))
        finally:
            np.random.set_state(state)
        if int(np.argmax(a.estimator.predict(adv), axis=1)[0]) == label:
            return None
        return np.asarray(adv[0].transpose(1, 2, 0), dtype=np.float64) * 255.0

    def ladder(self, eps: Sequence[float], verifier: Verifier, label: int, *, steps: int, restarts: int,
               seed: int) -> AttackOutcome:
        return _ladder(eps, AttackOutcome(), verifier, label, self.image, self.norm,
                       lambda e: self.craft(e, label, steps=steps, restarts=restarts, seed=seed))


def run_blackbox(name: str, oracle: Any, image: np.ndarray, label: int, eps: Sequence[float], verifier: Verifier,
                 *, norm: Norm, queries: int, seed: int, start: np.ndarray | None = None) -> AttackOutcome:
    """Square (per budget, ascending) or HopSkipJump (once, minimal-norm, then projected onto each budget's
    ball) through :mod:`nsfwlab.lab.blackbox`; queries summed over the runs. ``start``: HopSkipJump's first
    image on the other side (without one it draws random images). A service that blocks the key ends the
    attack (``blocked_at_query``)."""
    from . import blackbox

    out = AttackOutcome(queries=0)

    def account(res: Any) -> None:
        out.queries = (out.queries or 0) + int(res.queries)
        if res.blocked_at_query is not None:
            out.blocked_at_query = int(res.blocked_at_query)

    try:
        if name == "square":
            def craft(e: float) -> np.ndarray | None:
                if out.blocked_at_query is not None:
                    return None
                res = blackbox.square(oracle, image, label, norm=norm.value, eps=e, queries=queries, seed=seed)
                account(res)
                return res.adversarial if res.success else None
            return _ladder(eps, out, verifier, label, image, norm, craft)
        res = blackbox.hopskipjump(oracle, image, label, norm=norm.value, queries=queries, seed=seed, start=start)
        account(res)
        out.tried = tuple(eps)
        if not res.success or res.adversarial is None:
            return out
        if not verifier.check(res.adversarial, label)[0]:  # the attack's own claim, before any projection
            out.rejected = 1
            return out
        for e in eps:  # projections that miss at a small budget are expected: not counted as rejected
            adv = into_ball(image, res.adversarial, norm, e)
            ok, s = verifier.check(adv, label)
            if ok:
                out.broken_at, out.score, out.adversarial = e, s, adv
                break
        return out
    except NsfwlabError as exc:
        at = getattr(exc, "at_query", None)
        if at is not None:  # the service blocked this key: what was found so far stands
            out.blocked_at_query = int(at)
            out.queries = max(out.queries or 0, int(at))
            return out
        out.error = str(exc)
        return out


def minimal_engine(detector: Any, eps: Sequence[float], *, steps: int, seed: int, device: str,
                   work_side: int) -> Any:
    """The lab Engine for ``detector`` searching L-inf budgets up to the largest of ``eps`` (a ConfigError
    when the Engine cannot attack that model)."""
    from .pgd import Engine

    cfg = AttackConfig(max_eps=max(1.0, float(max(eps))), steps=steps, norm=Norm.LINF, seed=seed, device=device,
                       max_work_side=max(32, work_side))
    return Engine(cfg, detector)


def run_minimal(engine: Any, image: np.ndarray, label: int, eps: Sequence[float], verifier: Verifier,
                threshold: float) -> AttackOutcome:
    """The Engine's smallest verified L-inf budget that moves the decision off ``label``, placed on the
    ladder (the smallest budget at least as large) and verified again on its uint8 pixels."""
    from PIL import Image

    goal = Goal(GoalKind.AT_MOST, max(threshold - _EDGE, 0.0)) if label == 1 else Goal(GoalKind.AT_LEAST, threshold)
    res = engine.run_goal(Image.fromarray(image), goal)
    out = AttackOutcome(tried=tuple(eps))
    if not res.success:
        return out
    adv = np.asarray(res.image.convert("RGB"))
    at = [e for e in eps if e + 1e-9 >= res.linf]
    if not at:
        return out
    ok, s = verifier.check(adv, label)
    if ok:
        out.broken_at, out.score, out.adversarial = at[0], s, adv
    else:
        out.rejected = 1
    return out
