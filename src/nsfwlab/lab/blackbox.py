"""Black-box attacks on any oracle (a local model or a live service): Square and HopSkipJump.

Both come from the adversarial-robustness-toolbox (ART): :class:`art.attacks.evasion.SquareAttack`
(score-based random search in an epsilon ball, Andriushchenko et al. 2020) and
:class:`art.attacks.evasion.HopSkipJump` (label-only boundary walk toward the smallest perturbation,
Chen et al. 2020); Square's l2 window update is corrected to the paper's (see ``_square_class``).
What this module adds is the black-box bookkeeping ART leaves to its caller:

- **Pixels.** Every candidate ART proposes (floats in [0, 1]) is rounded to uint8 and, for Square,
  put back into the ball *after* rounding; the oracle answers that uint8 image, and the image
  returned is one the oracle answered. ``success`` is the oracle's answer on it.
- **Queries.** One query is one image the oracle answers. ART asks for the same image more than
  once (Square re-predicts its current point every iteration; a binary search ends on images that
  round to one uint8 image): each distinct uint8 image is asked once and its answer remembered,
  as a real attacker would. The attack stops when ``queries`` images have been answered and keeps
  the best adversarial found so far.
- **A service that blocks.** When the oracle raises :class:`~nsfwlab.lab.remote.ServiceBlocked`
  (a server that flagged the caller), the attack stops, keeps what it had and records the query
  at which it was refused (``blocked_at_query``).

Threat model: ``eps`` and the reported ``norm`` are in levels of 1/255. ``linf``: the largest change
of any value. ``l2``: the root-mean-square of the change over all H*W*3 values (size-independent:
``||delta||_2 = rms * sqrt(H*W*3)``). ``label`` is the class the attack moves away from (1 = NSFW,
0 = safe); the oracle decides NSFW iff its answer is at least ``oracle.threshold``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from .remote import ServiceBlocked

if TYPE_CHECKING:
    from .differentiable import Oracle

__all__ = ["NORMS", "BlackBoxResult", "hopskipjump", "square"]

#: The threat models' norms.
NORMS = ("linf", "l2")
#: The smallest side ART's Square can place its squares in.
_MIN_SIDE = 8


@dataclass(frozen=True)
class BlackBoxResult:
    """One black-box attack on one image.

    ``adversarial``: HxWx3 uint8, an image the oracle answered on the other side of the threshold
    (within the ball for Square; the smallest one found for HopSkipJump), or ``None`` when none was
    found. ``success``: the oracle's answer on that uint8 image flips ``label`` (and, for
    HopSkipJump given ``eps``, its norm is within ``eps``). ``queries``: images the oracle
    answered for this attack. ``blocked_at_query``: the query count when the service refused
    further queries, else ``None``. ``norm``: the adversarial's perturbation in /255 units (linf:
    largest change; l2: root-mean-square change), ``nan`` without one. ``score``: the oracle's
    answer on the returned image, or on the candidate closest to flipping when none flipped
    (0.0/1.0 from a labels-only oracle; ``nan`` when nothing was answered)."""

    adversarial: np.ndarray | None
    success: bool
    queries: int
    blocked_at_query: int | None
    norm: float
    score: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the adversarial pixels left out)."""
        return {"success": self.success, "queries": self.queries, "blocked_at_query": self.blocked_at_query,
                "norm": None if math.isnan(self.norm) else round(self.norm, 4),
                "score": None if math.isnan(self.score) else round(self.score, 6)}


class _Stop(Exception):
    """The query budget is spent, or the service refused: end ART's loop."""


def perturbation_norm(adversarial: np.ndarray, image: np.ndarray, norm: str) -> float:
    """The perturbation between two uint8 images in /255 units: the largest change (``linf``) or the
    root-mean-square change over all values (``l2``)."""
    delta = adversarial.astype(np.float64) - image.astype(np.float64)
    if norm == "linf":
        return float(np.abs(delta).max()) if delta.size else 0.0
    return float(np.sqrt(np.mean(delta**2))) if delta.size else 0.0


def _ball(image: np.ndarray, norm: str, eps: float | None) -> Callable[[np.ndarray], np.ndarray]:
    """Rounded pixels (float, 0..255) -> uint8 within ``eps`` of ``image`` (no ball: just [0, 255]).

    linf: each value within ``floor(eps)`` levels. l2: a rounded change whose RMS exceeds ``eps`` is
    scaled down, by the largest factor (found by bisection) whose rounded change is within ``eps``."""
    base = image.astype(np.int16)
    if eps is None:
        return lambda x: np.clip(x, 0, 255).astype(np.uint8)
    if norm == "linf":
        k = math.floor(eps + 1e-9)
        lo, hi = np.clip(base - k, 0, 255), np.clip(base + k, 0, 255)
        return lambda x: np.clip(x, lo, hi).astype(np.uint8)

    def rms(delta: np.ndarray) -> float:
        return float(np.sqrt(np.mean(delta**2)))

    def one(x: np.ndarray) -> np.ndarray:
        delta = np.clip(x, 0, 255) - base
        if rms(delta) <= eps:
            return (base + delta).astype(np.uint8)
        lo, hi = 0.0, eps / rms(delta)  # rms(rint(delta * lo)) == 0 <= eps
        for _ in range(20):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if rms(np.rint(delta * mid)) <= eps else (lo, mid)
        return (base + np.rint(delta * lo)).astype(np.uint8)

    return lambda x: np.stack([one(v) for v in x]) if x.ndim == 4 else one(x)


class _Queries:
    """ART's predictions answered by the oracle: candidates rounded to uint8 and projected, each
    distinct image asked once, the budget enforced, the best adversarial kept."""

    def __init__(self, oracle: Oracle, image: np.ndarray, label: int, budget: int, norm: str,
                 project: Callable[[np.ndarray], np.ndarray], transpose: bool = False) -> None:
        self.oracle, self.image, self.label, self.budget, self.norm = oracle, image, label, budget, norm
        self.project, self.transpose = project, transpose
        base = image.transpose(1, 0, 2) if transpose else image
        self.base = base.astype(np.float64) / 255.0  # the image as ART sees it
        self.threshold = float(oracle.threshold)
        self.cache: dict[bytes, float] = {}
        self.used = 0
        self.blocked_at: int | None = None
        self.best: tuple[float, np.ndarray, float] | None = None  # (norm, pixels, answer) of the best adversarial
        self.closest: tuple[float, np.ndarray, float] | None = None  # (margin, pixels, answer) of any answer
        self.within: float | None = None  # stop once an adversarial is this close (HopSkipJump given eps)

    def flips(self, answer: float) -> bool:
        return int(answer >= self.threshold) != self.label

    def margin(self, answer: float) -> float:
        """How far the answer is from flipping (negative once flipped)."""
        return answer - self.threshold if self.label == 1 else self.threshold - answer

    def pixels(self, x: np.ndarray) -> np.ndarray:
        """ART's float candidates (N, H, W, 3) in [0, 1] -> the uint8 images the oracle is asked."""
        arr = np.asarray(x, np.float64)
        bad = ~np.isfinite(arr)
        if bad.any():  # a degenerate ART step (0/0): ask the unchanged image instead
            arr = np.where(bad, self.base[None], arr)
        if self.transpose:
            arr = arr.transpose(0, 2, 1, 3)
        return self.project(np.rint(arr * 255.0))

    def answers(self, x: np.ndarray) -> np.ndarray:
        imgs = self.pixels(x)
        keys = [hashlib.blake2b(img.tobytes(), digest_size=16).digest() for img in imgs]
        todo: dict[bytes, int] = {}
        for i, key in enumerate(keys):
            if key not in self.cache and key not in todo:
                todo[key] = i
        ask = list(todo.items())[: max(0, self.budget - self.used)]
        if ask:
            self._ask([k for k, _ in ask], imgs[[i for _, i in ask]])
        if len(ask) < len(todo):
            raise _Stop
        return np.array([self.cache[k] for k in keys], np.float64)

    def ask_one(self, img: np.ndarray) -> float:
        """Answer for one uint8 image (through the cache and the budget)."""
        key = hashlib.blake2b(img.tobytes(), digest_size=16).digest()
        if key not in self.cache:
            if self.used >= self.budget:
                raise _Stop
            self._ask([key], img[None])
        return self.cache[key]

    def _ask(self, keys: list[bytes], imgs: np.ndarray) -> None:
        try:
            got = np.asarray(self.oracle.scores(imgs), np.float64)
        except ServiceBlocked as exc:
            partial = np.asarray(exc.answered if exc.answered is not None else [], np.float64)
            self._record(keys, imgs, partial)
            self.blocked_at = self.used
            raise _Stop from None
        self._record(keys, imgs, got)

    def _record(self, keys: list[bytes], imgs: np.ndarray, got: np.ndarray) -> None:
        for key, img, answer in zip(keys, imgs, got, strict=False):
            answer = float(answer)
            self.cache[key] = answer
            self.used += 1
            margin = self.margin(answer)
            if self.closest is None or margin < self.closest[0]:
                self.closest = (margin, img, answer)
            if self.flips(answer):
                dist = perturbation_norm(img, self.image, self.norm)
                if self.best is None or dist < self.best[0]:
                    self.best = (dist, img, answer)
        if self.within is not None and self.best is not None and self.best[0] <= self.within + 1e-9:
            raise _Stop

    def result(self, success_within: float | None = None) -> BlackBoxResult:
        if self.best is not None:
            dist, img, answer = self.best
            ok = success_within is None or dist <= success_within + 1e-9
            return BlackBoxResult(img.copy(), ok, self.used, self.blocked_at, dist, answer)
        score = self.closest[2] if self.closest is not None else math.nan
        return BlackBoxResult(None, False, self.used, self.blocked_at, math.nan, score)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """ART draws from numpy's and Python's global generators: seed them, and restore them after."""
    np_state, py_state = np.random.get_state(), random.getstate()
    np.random.seed(seed % 2**32)
    random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


@contextlib.contextmanager
def _quiet_art() -> Iterator[None]:
    logger = logging.getLogger("art")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check(image: np.ndarray, label: int, norm: str, queries: int) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ConfigError("image must be an HxWx3 uint8 RGB array", param="image")
    if min(arr.shape[:2]) < _MIN_SIDE:
        raise ConfigError(f"image must be at least {_MIN_SIDE} pixels on each side, got {arr.shape[1]}x"
                          f"{arr.shape[0]}", param="image")
    if label not in (0, 1):
        raise ConfigError(f"label must be 0 (safe) or 1 (NSFW), got {label!r}", param="label")
    if norm not in NORMS:
        raise ConfigError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}", param="norm")
    if not isinstance(queries, int) or isinstance(queries, bool) or queries < 1:
        raise ConfigError(f"queries must be a positive integer, got {queries!r}", param="queries")
    return arr


def _classifier(predict: Callable[[np.ndarray], np.ndarray], shape: tuple[int, ...]) -> Any:
    from art.estimators.classification import BlackBoxClassifierNeuralNetwork

    return BlackBoxClassifierNeuralNetwork(predict, input_shape=shape, nb_classes=2, channels_first=False,
                                           clip_values=(0.0, 1.0))


def square(oracle: Oracle, image: np.ndarray, label: int, *, norm: str = "linf", eps: float, queries: int,
           seed: int = 0, p_init: float = 0.8) -> BlackBoxResult:
    """ART's Square attack on ``oracle``'s scores: moves ``image`` (HxWx3 uint8) away from ``label``
    within ``eps`` (/255; linf or l2 as RMS), spending at most ``queries`` answers.

    Needs scores: an oracle answering labels only gives no signal to a random search, so it is
    refused (``ConfigError``): a service that hides its scores defeats score-based attacks.
    ``p_init``: the share of the image the first squares cover (ART's default 0.8, lowered for
    narrow images so a square fits). The loss is the margin to ``oracle.threshold``; ART keeps a
    candidate when it lowers it. An image the oracle already puts on the other side is returned
    as it is (norm 0, one query)."""
    arr = _check(image, label, norm, queries)
    if oracle.labels_only:
        raise ConfigError(f"square needs scores, but {oracle.name} answers labels only: a score-based attack "
                          "cannot run against it (use hopskipjump)", param="oracle")
    if not eps > 0:
        raise ConfigError(f"eps must be positive (in /255), got {eps}", param="eps")
    if norm == "linf" and eps < 1:
        raise ConfigError(f"a linf eps below 1 (in /255) leaves no change of uint8 pixels, got {eps}", param="eps")
    h, w = arr.shape[:2]
    # ART's l2 Square lays its first tiles along the height: attack the transpose of a tall image.
    transpose = norm == "l2" and h > w
    x = (arr.transpose(1, 0, 2) if transpose else arr).astype(np.float32)[None] / 255.0
    hh, ww = x.shape[1:3]
    qs = _Queries(oracle, arr, label, queries, norm, _ball(arr, norm, eps), transpose)

    def predict(batch: np.ndarray) -> np.ndarray:
        s = qs.answers(batch)
        return np.stack([1.0 - s, s], axis=1)

    clf = _classifier(predict, x.shape[1:])

    def loss(batch: np.ndarray, y: np.ndarray) -> np.ndarray:
        s = clf.predict(batch)[:, 1]
        return np.where(np.argmax(y, axis=1) == 1, s - qs.threshold, qs.threshold - s)

    def criterion(y_pred: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (y_pred[:, 1] >= qs.threshold).astype(int) != np.argmax(y, axis=1)

    side = min(hh, ww)
    p = min(p_init, (side - 3) ** 2 / (hh * ww), 0.999)  # a square (made odd for l2) fits
    art_eps = eps / 255.0 if norm == "linf" else eps / 255.0 * math.sqrt(arr.size)
    attack = _square_class()(clf, norm=np.inf if norm == "linf" else 2, adv_criterion=criterion, loss=loss,
                          max_iter=max(1, queries - 2), eps=art_eps, p_init=p, nb_restarts=1, batch_size=1,
                          verbose=False)
    y = np.eye(2, dtype=np.float32)[[label]]
    with _seeded(seed), _quiet_art(), contextlib.suppress(_Stop):
        attack.generate(x, y)
    return qs.result()


def _pseudo_gaussian(side: int, rng: Any) -> np.ndarray:
    """Square's l2 window: two opposite-signed halves of nested squares, unit norm (ART's and the
    authors' ``meta_pseudo_gaussian_pert``), randomly transposed and negated."""
    delta = np.zeros([side, side])
    half = np.zeros([side // 2, side])
    x_c, y_c = side // 4, side // 2
    for i_y in range(y_c):
        half[max(x_c, 0):min(x_c + (2 * i_y + 1), side // 2), max(0, y_c):min(y_c + (2 * i_y + 1), side)] += (
            1.0 / ((i_y + 1) ** 2))
        x_c -= 1
        y_c -= 1
    half /= np.sqrt(np.sum(half**2))
    delta[: side // 2] = half
    delta[side // 2: side // 2 + half.shape[0]] = -half
    delta /= np.sqrt(np.sum(delta**2))
    if rng.random() > 0.5:
        delta = delta.T
    if rng.random() > 0.5:
        delta = -delta
    return delta


def _square_class() -> type:
    from art.attacks.evasion import SquareAttack

    class _Square(SquareAttack):  # type: ignore[misc]
        """ART's SquareAttack with its l2 window update as the paper and the authors' code have it.

        ART 1.20.1 divides each new window by ``norm(window) * sqrt(budget_left / c + norm_old**2)``;
        the authors' code divides by the first factor and *multiplies* by the second. ART's new
        windows are then far too small, and after the final rescaling to ``eps`` its l2 search barely
        moves. This ``generate`` is ART's l2 branch for one channels-last image with that one line
        corrected (linf runs ART's own code)."""

        def generate(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs: Any) -> np.ndarray:
            if self.norm != 2:
                return np.asarray(super().generate(x, y, **kwargs))
            assert y is not None and x.shape[0] == 1 and not self.estimator.channels_first
            rng = random.Random(int(np.random.randint(0, 2**31)))
            x_init = x.astype(np.float32)
            _, h, w, c = x.shape
            lo, hi = self.estimator.clip_values
            if self.adv_criterion(self.estimator.predict(x_init), y).all():
                return x_init
            loss_best = self.loss(x_init, y)
            tile = h // 5  # the first perturbation: 5 x 5 tiles of windows (w >= h: the caller transposes)
            delta0 = np.zeros_like(x_init)
            for i in range(5):
                for j in range(5):
                    pert = _pseudo_gaussian(tile, rng).reshape(1, tile, tile, 1)
                    delta0[:, i * tile:(i + 1) * tile, j * tile:(j + 1) * tile, :] += (
                        pert * np.random.choice([-1, 1], size=(1, 1, 1, c)))
            x_best = np.clip(x_init + delta0 / np.sqrt(np.sum(delta0**2)) * self.eps, lo, hi).astype(np.float32)
            loss_new = self.loss(x_best, y)
            if not (loss_new - loss_best < 0.0).all():
                x_best = x_init.copy()
            else:
                loss_best = loss_new
            for i_iter in range(self.max_iter):
                if self.adv_criterion(self.estimator.predict(x_best), y).all():
                    break
                p = self._get_percentage_of_elements(i_iter)
                delta = x_best - x_init
                s = max(round(math.sqrt(p * h * w)), 3)
                s += 1 - s % 2  # odd
                h1, w1 = np.random.randint(0, h - s), np.random.randint(0, w - s)
                h2, w2 = np.random.randint(0, h - s), np.random.randint(0, w - s)
                mask1 = np.zeros_like(x_init)
                mask1[:, h1:h1 + s, w1:w1 + s, :] = 1.0
                mask2 = np.zeros_like(x_init)
                mask2[:, h2:h2 + s, w2:w2 + s, :] = 1.0
                norm_window = np.sqrt(np.sum(delta[:, h1:h1 + s, w1:w1 + s, :] ** 2, axis=(1, 2), keepdims=True))
                norm_image = np.sqrt(np.sum(delta**2))
                norm_windows = np.sqrt(np.sum((delta * np.maximum(mask1, mask2)) ** 2))
                new = (_pseudo_gaussian(s, rng).reshape(1, s, s, 1)
                       * np.random.choice([-1, 1], size=(1, 1, 1, c)))
                new = new + delta[:, h1:h1 + s, w1:w1 + s, :] / np.maximum(1e-9, norm_window)
                budget = max(self.eps**2 - norm_image**2, 0.0)
                new = new / np.sqrt(np.sum(new**2, axis=(1, 2), keepdims=True)) * np.sqrt(
                    budget / c + norm_windows**2)
                delta[:, h2:h2 + s, w2:w2 + s, :] = 0.0
                delta[:, h1:h1 + s, w1:w1 + s, :] = new
                cand = np.clip(x_init + self.eps * delta / np.sqrt(np.sum(delta**2)), lo, hi).astype(np.float32)
                loss_new = self.loss(cand, y)
                if (loss_new - loss_best < 0.0).all():
                    x_best, loss_best = cand, loss_new
            return x_best

    return _Square


def _hsj_class() -> type:
    from art.attacks.evasion import HopSkipJump

    class _UintHopSkipJump(HopSkipJump):  # type: ignore[misc]
        """HopSkipJump whose gradient probes stay visible after rounding to uint8.

        ART's probe size after the first iteration is ``0.01 * distance`` (in L2 over the image):
        for a perturbation of a few levels, each probe's change per value is far below half a
        level, every probe rounds back to the current point and the gradient estimate is noise.
        The probe's size is kept at least one level RMS."""

        def _compute_delta(self, current_sample: np.ndarray, original_sample: np.ndarray, clip_min: float,
                           clip_max: float) -> float:
            delta = float(super()._compute_delta(current_sample, original_sample, clip_min, clip_max))
            floor = math.sqrt(float(np.prod(self.estimator.input_shape))) * (clip_max - clip_min) / 255.0
            return max(delta, floor)

    return _UintHopSkipJump


def hopskipjump(oracle: Oracle, image: np.ndarray, label: int, *, norm: str = "l2", queries: int, seed: int = 0,
                eps: float | None = None, start: np.ndarray | None = None, init_tries: int = 100) -> BlackBoxResult:
    """ART's HopSkipJump on ``oracle``'s labels: the smallest change of ``image`` (HxWx3 uint8, linf
    or l2 as RMS, in /255) the oracle puts on the other side of ``label``, within ``queries`` answers.

    HopSkipJump needs a first image on the other side: ``start`` (any image the attacker has of the
    other class, same size), else up to ``init_tries`` random uniform images (each a query; a
    classifier rarely calls noise NSFW, so moving a safe image to NSFW usually needs ``start``).
    It then walks along the boundary toward ``image`` until the budget is spent, keeping the
    smallest adversarial answered; ``success`` is finding one (within ``eps`` when given: the walk
    then stops at the first adversarial within ``eps``, and ``queries`` are the queries to success).
    An image the oracle already puts on the other side is returned as it is (norm 0, one query).
    The oracle's answers are used as labels only, whether or not it reveals scores."""
    arr = _check(image, label, norm, queries)
    if eps is not None and not eps >= 0:
        raise ConfigError(f"eps must not be negative (in /255), got {eps}", param="eps")
    if start is not None:
        start = np.asarray(start)
        if start.shape != arr.shape or start.dtype != np.uint8:
            raise ConfigError(f"start must be a uint8 image of the attacked image's shape {arr.shape}, got "
                              f"{start.shape} {start.dtype}", param="start")
    if not isinstance(init_tries, int) or init_tries < 1:
        raise ConfigError(f"init_tries must be a positive integer, got {init_tries!r}", param="init_tries")
    qs = _Queries(oracle, arr, label, queries, norm, _ball(arr, norm, None))
    qs.within = eps
    x = arr.astype(np.float32)[None] / 255.0

    def predict(batch: np.ndarray) -> np.ndarray:
        decided = (qs.answers(batch) >= qs.threshold).astype(np.float32)
        return np.stack([1.0 - decided, decided], axis=1)

    # ART's own first image comes from an unseeded generator: draw it here, seeded, and hand it over.
    rng = np.random.default_rng(seed)
    with contextlib.suppress(_Stop):
        if qs.flips(qs.ask_one(arr)):
            return qs.result(eps)
        first = None
        candidates = [start] if start is not None else (
            rng.integers(0, 256, arr.shape, dtype=np.uint8) for _ in range(init_tries))
        for cand in candidates:
            if qs.flips(qs.ask_one(cand)):
                first = cand
                break
        if first is not None:
            init_eval = int(np.clip(queries // 20, 10, 100))
            attack = _hsj_class()(_classifier(predict, x.shape[1:]), targeted=True,
                                  norm=2 if norm == "l2" else np.inf, max_iter=max(1, queries),
                                  max_eval=max(init_eval, 10000), init_eval=init_eval, init_size=1, batch_size=64,
                                  verbose=False)
            y = np.eye(2, dtype=np.float32)[[1 - label]]
            with _seeded(seed), _quiet_art():
                attack.generate(x, y, x_adv_init=first.astype(np.float32)[None] / 255.0)
    return qs.result(eps)
