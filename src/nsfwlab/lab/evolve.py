"""Evolve images made of coloured shapes towards an NSFW score (a genetic algorithm, or CMA-ES).

A genome (see :mod:`nsfwlab.lab.render`) is drawn onto a canvas; a whole population is drawn in
one call and scored in batches through the exact pipeline (the Detector's preprocessing of the
uint8 pixels, JPEG round trip included), so the score of the best genome is the score of its PNG.

Fitness is the log-odds ``log(p / (1 - p))`` of the NSFW probability ``p`` (it keeps rising where
``p`` saturates near 1): maximised for ``to = 1``, minimised for ``to = 0``, and
``-|logit(p) - logit(to)|`` for any other target. Optimisers come from well-kept libraries:

- ``ga``: DEAP operators as in Play_NSFW's genetic experiment (two-point crossover, tournament of 3, Gaussian mutation),
  plus one elite;
- ``cmaes``: pycma's CMA-ES (full covariance);
- ``sep-cmaes``: pycma's separable (diagonal) CMA-ES, linear in the genome length.

Both libraries draw from global generators (``random``, ``numpy.random``); :func:`evolve` seeds
them and restores their state afterwards, so runs are reproducible and callers undisturbed.

>>> result = evolve(None, Detector(), budget=2000, stop_at=0.99)      # doctest: +SKIP
>>> result.score, result.to_dict()["evaluations"]                     # doctest: +SKIP
"""

from __future__ import annotations

import io
import math
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import numpy as np

from ..errors import ConfigError
from ..progress import ProgressCallback, notify
from .options import configure
from .render import ShapeKind, describe_shapes, genome_length, render_population

__all__ = [
    "Algorithm",
    "EvolveConfig",
    "EvolveResult",
    "Generation",
    "Scorer",
    "detector_scorer",
    "evolve",
    "fitness_from_scores",
    "history_plot_png",
    "png_bytes",
    "population_size",
]

#: uint8 images (P, H, W, 3) -> NSFW probabilities (P,).
Scorer = Callable[[np.ndarray], np.ndarray]


class Algorithm(StrEnum):
    GA = "ga"
    CMAES = "cmaes"
    SEP_CMAES = "sep-cmaes"


#: Most frames kept in memory; past it every second frame is dropped and the interval doubles.
MAX_FRAMES = 240


@dataclass(frozen=True)
class EvolveConfig:
    """What to evolve and how. ``population`` ``None``: 50 for the GA, pycma's default for CMA-ES.

    ``stop_at``: stop once the verified score reaches it (``>=`` when maximising, ``<=`` when
    minimising); for a target ``0 < to < 1`` the run stops within ``tolerance`` of it.
    ``frames_every``: keep the best image every this many generations (0: none).
    """

    shape: ShapeKind = ShapeKind.CIRCLE
    count: int = 50
    to: float = 1.0
    algorithm: Algorithm = Algorithm.SEP_CMAES
    population: int | None = None
    budget: int = 20_000
    seed: int = 0
    size: int = 256
    stop_at: float | None = None
    tolerance: float = 1e-3
    sigma: float = 0.15
    frames_every: int = 0
    background: tuple[int, int, int] = (0, 0, 0)

    def __post_init__(self) -> None:
        if not isinstance(self.shape, ShapeKind):
            try:
                object.__setattr__(self, "shape", ShapeKind(self.shape))
            except ValueError:
                raise ConfigError(f"shape must be one of {', '.join(k.value for k in ShapeKind)}, got {self.shape!r}",
                                  param="shape") from None
        if not isinstance(self.algorithm, Algorithm):
            try:
                object.__setattr__(self, "algorithm", Algorithm(self.algorithm))
            except ValueError:
                raise ConfigError(f"algorithm must be one of {', '.join(a.value for a in Algorithm)}, "
                                  f"got {self.algorithm!r}", param="algorithm") from None
        if self.count < 1:
            raise ConfigError(f"count (shapes) must be at least 1, got {self.count}", param="count")
        if not 0.0 <= self.to <= 1.0:
            raise ConfigError(f"to must lie in [0, 1], got {self.to}", param="to")
        if self.population is not None and self.population < 4:
            raise ConfigError(f"population must be at least 4, got {self.population}", param="population")
        if self.budget < 1:
            raise ConfigError(f"budget (images scored) must be at least 1, got {self.budget}", param="budget")
        if not 8 <= self.size <= 2048:
            raise ConfigError(f"size (the canvas side) must lie in 8..2048, got {self.size}", param="size")
        if self.stop_at is not None and not 0.0 <= self.stop_at <= 1.0:
            raise ConfigError(f"stop_at must lie in [0, 1], got {self.stop_at}", param="stop_at")
        if not 0.0 < self.tolerance < 1.0:
            raise ConfigError(f"tolerance must lie in (0, 1), got {self.tolerance}", param="tolerance")
        if not 0.0 < self.sigma <= 1.0:
            raise ConfigError(f"sigma must lie in (0, 1], got {self.sigma}", param="sigma")
        if self.frames_every < 0:
            raise ConfigError(f"frames_every must not be negative, got {self.frames_every}", param="frames_every")
        if len(self.background) != 3 or not all(0 <= c <= 255 for c in self.background):
            raise ConfigError(f"background must be three values 0..255, got {self.background}", param="background")

    @property
    def goal(self) -> str:
        return "maximise" if self.to >= 1.0 else "minimise" if self.to <= 0.0 else "target"

    @property
    def genome_length(self) -> int:
        return genome_length(self.shape, self.count)

    def reached(self, score: float) -> bool:
        """Whether ``score`` ends the run (always False when maximising/minimising without stop_at)."""
        if self.goal == "target":
            return abs(score - self.to) <= self.tolerance
        if self.stop_at is None:
            return False
        return score >= self.stop_at if self.goal == "maximise" else score <= self.stop_at


@dataclass(frozen=True)
class Generation:
    """Progress after one generation (also one row of the history)."""

    generation: int
    evaluations: int
    seconds: float
    best_score: float
    best_fitness: float
    mean_fitness: float
    budget: int

    @property
    def rate(self) -> float:
        return self.evaluations / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds until the budget is spent at the current rate."""
        return (self.budget - self.evaluations) / self.rate if self.rate > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {"generation": self.generation, "evaluations": self.evaluations, "seconds": round(self.seconds, 3),
                "best_score": self.best_score, "best_fitness": self.best_fitness,
                "mean_fitness": self.mean_fitness}


@dataclass
class EvolveResult:
    """The best image found. ``score`` is ``Detector.nsfw_score`` of ``png`` (when a verifier was given)."""

    config: EvolveConfig
    genome: np.ndarray
    image: np.ndarray
    png: bytes
    score: float
    fitness: float
    evaluations: int
    seconds: float
    reached: bool
    history: list[Generation] = field(default_factory=list)
    frames: list[tuple[int, np.ndarray]] = field(default_factory=list)
    interrupted: bool = False

    @property
    def shapes(self) -> list[dict[str, Any]]:
        return describe_shapes(self.genome, self.config.shape, self.config.size)

    def report(self) -> dict[str, Any]:
        """The same as :meth:`to_dict`."""
        return self.to_dict()

    def to_dict(self) -> dict[str, Any]:
        """The configuration, the verified score, the shapes and the history (JSON-safe)."""
        c = self.config
        return {
            "shape": c.shape.value, "count": c.count, "to": c.to, "goal": c.goal, "algorithm": c.algorithm.value,
            "population": population_size(c), "budget": c.budget, "seed": c.seed, "size": c.size,
            "stop_at": c.stop_at, "score": self.score, "reached": self.reached, "interrupted": self.interrupted,
            "fitness": self.fitness,
            "evaluations": self.evaluations, "seconds": round(self.seconds, 3),
            "shapes": self.shapes, "history": [h.to_dict() for h in self.history],
        }


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) in float64, p clipped to float32's open unit interval."""
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1.0 - 2.0**-24)
    return np.log(q) - np.log1p(-q)


def fitness_from_scores(scores: np.ndarray, to: float) -> np.ndarray:
    """The fitness (higher is better) of NSFW probabilities for the goal ``to``."""
    z = logit(scores)
    if to >= 1.0:
        return z
    if to <= 0.0:
        return -z
    return -np.abs(z - float(logit(np.asarray(to))))


def png_bytes(image: np.ndarray) -> bytes:
    """The PNG file of a uint8 RGB array (its pixels are exactly the array)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def detector_scorer(detector: Any) -> Scorer:
    """Score uint8 RGB images with a Detector's own preprocessing and model, batched: open_nsfw's exact
    pipeline, or a zoo model's own (its card's input; a detector's NSFW score from its boxes)."""
    from ..preprocess import stack_batch

    zoo = getattr(detector, "zoo", None)

    def score(images: np.ndarray) -> np.ndarray:
        arrays = [detector.preprocess(img) for img in images]
        if zoo is not None:
            return np.asarray(zoo.nsfw_scores(zoo.run_images(arrays)[0]), dtype=np.float64)
        return np.asarray(detector.predict_arrays(stack_batch(arrays)), dtype=np.float64)

    return score


# -- optimisers -------------------------------------------------------------------------------
class _Strategy(Protocol):
    def ask(self) -> np.ndarray: ...

    def tell(self, genomes: np.ndarray, fitness: np.ndarray) -> None: ...


def population_size(config: EvolveConfig) -> int:
    """The population a configuration runs with (its own, else the algorithm's default)."""
    if config.population is not None:
        return config.population
    if config.algorithm is Algorithm.GA:
        return 50
    return 4 + int(3 * math.log(config.genome_length))  # pycma's default


class _GeneticAlgorithm:
    """A simple GA on DEAP's operators, one elite kept; only changed genomes are re-scored."""

    CXPB, MUTPB, SIGMA, TOURNAMENT = 0.5, 0.3, 0.1, 3

    def __init__(self, config: EvolveConfig, rng: random.Random) -> None:
        from deap import base, tools

        class Fitness(base.Fitness):
            weights = (1.0,)

        self._fitness_class = Fitness
        self.size = population_size(config)
        length = config.genome_length
        self.indpb = min(1.0, 8.0 / length)
        self.toolbox = base.Toolbox()
        self.toolbox.register("mate", tools.cxTwoPoint)
        self.toolbox.register("mutate", tools.mutGaussian, mu=0.0, sigma=self.SIGMA, indpb=self.indpb)
        self.toolbox.register("select", tools.selTournament, tournsize=self.TOURNAMENT)
        self.population = [self._individual([rng.random() for _ in range(length)]) for _ in range(self.size)]
        self._pending: list[Any] = []

    def _individual(self, genes: list[float]) -> Any:
        ind = _Individual(genes)
        ind.fitness = self._fitness_class()
        return ind

    def ask(self) -> np.ndarray:
        from deap import algorithms, tools

        if self._pending:
            raise RuntimeError("ask() twice without tell()")
        while not self._pending:  # a generation where nothing changed needs no scoring: breed again
            if all(ind.fitness.valid for ind in self.population):
                elite = tools.selBest(self.population, 1)
                offspring = algorithms.varAnd(self.toolbox.select(self.population, self.size - 1), self.toolbox,
                                              self.CXPB, self.MUTPB)
                for ind in offspring:
                    ind[:] = np.clip(ind, 0.0, 1.0).tolist()
                self.population = [self.toolbox.clone(elite[0]), *offspring]
            self._pending = [ind for ind in self.population if not ind.fitness.valid]
        return np.asarray(self._pending, dtype=np.float64)

    def tell(self, genomes: np.ndarray, fitness: np.ndarray) -> None:
        for ind, f in zip(self._pending, fitness, strict=True):
            ind.fitness.values = (float(f),)
        self._pending = []


class _Individual(list):  # type: ignore[type-arg]
    fitness: Any


class _CMA:
    def __init__(self, config: EvolveConfig, x0: np.ndarray, separable: bool) -> None:
        import cma

        opts = {
            "bounds": [0.0, 1.0], "popsize": population_size(config), "seed": config.seed + 1,
            "verbose": -9, "CMA_diagonal": separable, "maxfevals": float("inf"),
            "tolfun": 0.0, "tolfunhist": 0.0, "tolx": 0.0, "tolstagnation": 10**9, "tolflatfitness": 10**9,
        }
        self.es = cma.CMAEvolutionStrategy(x0.tolist(), config.sigma, opts)

    def ask(self) -> np.ndarray:
        self._asked = self.es.ask()
        return np.asarray(self._asked, dtype=np.float64)

    def tell(self, genomes: np.ndarray, fitness: np.ndarray) -> None:
        self.es.tell(self._asked, (-np.asarray(fitness, dtype=np.float64)).tolist())  # pycma minimises


def _make_strategy(config: EvolveConfig, rng: random.Random, start: np.ndarray | None = None) -> _Strategy:
    if config.algorithm is Algorithm.GA:
        ga = _GeneticAlgorithm(config, rng)
        if start is not None:
            ga.population[0][:] = start.tolist()
        return ga
    x0 = np.asarray([rng.random() for _ in range(config.genome_length)]) if start is None else start
    return _CMA(config, x0, separable=config.algorithm is Algorithm.SEP_CMAES)


# -- the loop ---------------------------------------------------------------------------------
class _Best:
    def __init__(self) -> None:
        self.fitness = -math.inf
        self.genome: np.ndarray | None = None
        self.image: np.ndarray | None = None
        self.score = math.nan

    def update(self, genomes: np.ndarray, images: np.ndarray, scores: np.ndarray, fitness: np.ndarray) -> bool:
        i = int(np.argmax(fitness))
        if fitness[i] <= self.fitness:
            return False
        self.fitness, self.genome = float(fitness[i]), genomes[i].copy()
        self.image, self.score = images[i].copy(), float(scores[i])
        return True


def evolve(start: Any = None, detector: Any = None, config: EvolveConfig | None = None, *,
           progress: ProgressCallback | None = None, scorer: Scorer | None = None,
           verify: Callable[[bytes], float] | None = None, **overrides: Any) -> EvolveResult:
    """Evolve an image of shapes towards ``config.to``; stop when the budget is spent or the goal
    is reached (verified on the PNG).

    ``start``: ``None`` for a random first genome, or a genome (``config.genome_length`` genes in
    [0, 1], e.g. an earlier result's ``genome``) that the search starts from. ``detector``: the
    :class:`~nsfwlab.Detector` whose exact pipeline scores every candidate (default: the stock
    model on the CPU). ``config`` with ``overrides`` (``budget=2000``): an :class:`EvolveConfig`.
    ``progress`` gets one event per generation (``stage`` ``"evolve"``, ``done`` the images scored
    out of the budget, ``item`` the :class:`Generation`).

    Advanced: ``scorer`` replaces the detector's batch scorer (uint8 images -> NSFW probabilities)
    and ``verify`` its PNG verdict. Ctrl-C after the first generation ends the run early with the
    best so far (``interrupted``, not ``reached``). DEAP and pycma draw from the global generators
    (``random``, ``numpy.random``): they are seeded from ``config.seed`` and restored afterwards.
    """
    if isinstance(start, EvolveConfig):  # the old call: evolve(config, scorer, verify=, progress=)
        return _deprecated_evolve(start, detector, verify, progress)
    config = configure(EvolveConfig, config, overrides)
    genome = _start_genome(start, config)
    if scorer is None:
        if detector is None:
            from ..detector import Detector

            with Detector(device="cpu") as own:
                return evolve(genome, own, config, progress=progress, verify=verify)
        scorer = detector_scorer(detector)
        verify = verify or detector.nsfw_score
    saved_random, saved_np = random.getstate(), np.random.get_state()
    try:
        random.seed(config.seed)
        np.random.seed(config.seed)
        return _run(config, scorer, verify, progress, genome)
    finally:
        random.setstate(saved_random)
        np.random.set_state(saved_np)


def _deprecated_evolve(config: EvolveConfig, scorer: Any, verify: Callable[[bytes], float] | None,
                       progress: Any) -> EvolveResult:
    warnings.warn("evolve(config, scorer) is deprecated; call evolve(None, detector, config) "
                  "(or evolve(None, config=config, scorer=scorer))", DeprecationWarning, stacklevel=3)
    callback = None if progress is None else (lambda event: progress(event.item))
    return evolve(None, None, config, progress=callback, scorer=scorer, verify=verify)


def _start_genome(start: Any, config: EvolveConfig) -> np.ndarray | None:
    if start is None:
        return None
    genome = np.asarray(start, dtype=np.float64).reshape(-1)
    if genome.size != config.genome_length or not np.all(np.isfinite(genome)):
        raise ConfigError(f"start must be a genome of {config.genome_length} finite genes for {config.count} "
                          f"{config.shape.value}s, got {genome.size} values", param="start")
    return np.clip(genome, 0.0, 1.0)


def _run(config: EvolveConfig, scorer: Scorer, verify: Callable[[bytes], float] | None,
         progress: ProgressCallback | None, start: np.ndarray | None) -> EvolveResult:
    strategy = _make_strategy(config, random.Random(config.seed), start)
    best, history, frames = _Best(), [], []
    frames_every = config.frames_every
    evaluations, generation, reached = 0, 0, False
    began = time.perf_counter()
    interrupted = False
    while evaluations < config.budget and not reached:
        try:
            asked = strategy.ask()
            genomes = asked[: config.budget - evaluations]  # the budget is a hard cap
            images = render_population(genomes, config.shape, config.size, config.background)
            scores = np.asarray(scorer(images), dtype=np.float64)
        except KeyboardInterrupt:
            if best.genome is None:
                raise
            interrupted = True  # keep the best so far: the caller writes it
            break
        fitness = fitness_from_scores(scores, config.to)
        if len(genomes) == len(asked):
            strategy.tell(genomes, fitness)
        evaluations += len(genomes)
        generation += 1
        if best.update(genomes, images, scores, fitness) and config.reached(best.score):
            reached = verify is None or config.reached(verify(png_bytes(best.image)))  # type: ignore[arg-type]
        row = Generation(generation, evaluations, time.perf_counter() - began, best.score, best.fitness,
                         float(np.mean(fitness)), config.budget)
        history.append(row)
        if frames_every and generation % frames_every == 0:
            frames.append((generation, best.image.copy()))  # type: ignore[union-attr]
            if len(frames) > MAX_FRAMES:
                frames, frames_every = frames[1::2], frames_every * 2
        notify(progress, "evolve", evaluations, config.budget, row)
    assert best.genome is not None and best.image is not None
    png = png_bytes(best.image)
    score = verify(png) if verify is not None else best.score
    if frames_every and (not frames or frames[-1][0] != generation):
        frames.append((generation, best.image.copy()))
    done = config.reached(score) or (config.goal != "target" and config.stop_at is None)
    return EvolveResult(config, best.genome, best.image, png, score, best.fitness, evaluations,
                        time.perf_counter() - began, done and not interrupted, history, frames, interrupted)



def history_plot_png(history: list[Generation], config: EvolveConfig) -> bytes:
    """A PNG plot of the best score and the best and mean fitness against evaluations."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    evals = [h.evaluations for h in history]
    fig = Figure(figsize=(7, 6))
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(evals, [h.best_score for h in history], color="tab:red")
    top.set_ylabel("best NSFW score")
    top.set_title(f"{config.count} {config.shape.value}s, {config.algorithm.value}, {config.goal} {config.to:g}")
    bottom.plot(evals, [h.best_fitness for h in history], label="best")
    bottom.plot(evals, [h.mean_fitness for h in history], label="population mean", alpha=0.7)
    bottom.set_ylabel("fitness (log-odds)")
    bottom.set_xlabel("evaluations")
    bottom.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()
