"""Evolve images made of coloured shapes towards an NSFW score (a genetic algorithm, or CMA-ES).

A genome (see :mod:`nsfwlab.lab.render`) is drawn onto a canvas; a whole population is drawn in
one call and scored in batches through the exact pipeline (the Detector's preprocessing of the
uint8 pixels, JPEG round trip included), so the score of the best genome is the score of its PNG.

Fitness is the log-odds ``log(p / (1 - p))`` of the NSFW probability ``p`` (it keeps rising where
``p`` saturates near 1): maximised for ``to = 1``, minimised for ``to = 0``, and
``-|logit(p) - logit(to)|`` for any other target. Optimisers come from well-kept libraries:

- ``ga``: DEAP operators as in the seed (two-point crossover, tournament of 3, Gaussian mutation),
  plus one elite;
- ``cmaes``: pycma's CMA-ES (full covariance);
- ``sep-cmaes``: pycma's separable (diagonal) CMA-ES, linear in the genome length.

Both libraries draw from global generators (``random``, ``numpy.random``); :func:`evolve` seeds
them and restores their state afterwards, so runs are reproducible and callers undisturbed.
"""

from __future__ import annotations

import io
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import numpy as np

from ..errors import ConfigError
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
        genome_length(self.shape, self.count)
        if not 0.0 <= self.to <= 1.0:
            raise ConfigError(f"--to must lie in [0, 1], got {self.to}")
        if self.population is not None and self.population < 4:
            raise ConfigError(f"the population must be at least 4, got {self.population}")
        if self.budget < 1:
            raise ConfigError(f"the evaluation budget must be at least 1, got {self.budget}")
        if not 8 <= self.size <= 2048:
            raise ConfigError(f"the canvas size must lie in 8..2048, got {self.size}")
        if self.stop_at is not None and not 0.0 <= self.stop_at <= 1.0:
            raise ConfigError(f"--stop-at must lie in [0, 1], got {self.stop_at}")
        if not 0.0 < self.tolerance < 1.0:
            raise ConfigError(f"the tolerance must lie in (0, 1), got {self.tolerance}")
        if not 0.0 < self.sigma <= 1.0:
            raise ConfigError(f"sigma must lie in (0, 1], got {self.sigma}")
        if self.frames_every < 0:
            raise ConfigError(f"frames_every must not be negative, got {self.frames_every}")
        if len(self.background) != 3 or not all(0 <= c <= 255 for c in self.background):
            raise ConfigError(f"the background must be three values 0..255, got {self.background}")

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
    """The best image found. ``score`` is ``Detector.score`` of ``png`` (when a verifier was given)."""

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
    """Score uint8 RGB images with a Detector's own preprocessing and model, batched."""
    from ..preprocess import stack_batch

    def score(images: np.ndarray) -> np.ndarray:
        arrays = [detector.preprocess(img) for img in images]
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


def _make_strategy(config: EvolveConfig, rng: random.Random) -> _Strategy:
    if config.algorithm is Algorithm.GA:
        return _GeneticAlgorithm(config, rng)
    x0 = np.asarray([rng.random() for _ in range(config.genome_length)])
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


def evolve(config: EvolveConfig, scorer: Scorer, *, verify: Callable[[bytes], float] | None = None,
           progress: Callable[[Generation], None] | None = None) -> EvolveResult:
    """Run the optimiser until the budget is spent or the goal is reached.

    Ctrl-C (KeyboardInterrupt) after the first generation ends the run early with the best so
    far (``interrupted``, not ``reached``) instead of losing it.

    ``scorer`` scores a batch of uint8 images (:func:`detector_scorer`). ``verify`` scores a PNG
    file's bytes (``Detector.score``): a candidate that seems to reach the goal is confirmed with
    it before the run stops, and the returned score is its verdict on the returned PNG.
    """
    saved_random, saved_np = random.getstate(), np.random.get_state()
    try:
        random.seed(config.seed)
        np.random.seed(config.seed)
        return _run(config, scorer, verify, progress)
    finally:
        random.setstate(saved_random)
        np.random.set_state(saved_np)


def _run(config: EvolveConfig, scorer: Scorer, verify: Callable[[bytes], float] | None,
         progress: Callable[[Generation], None] | None) -> EvolveResult:
    strategy = _make_strategy(config, random.Random(config.seed))
    best, history, frames = _Best(), [], []
    frames_every = config.frames_every
    evaluations, generation, reached = 0, 0, False
    start = time.perf_counter()
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
        row = Generation(generation, evaluations, time.perf_counter() - start, best.score, best.fitness,
                         float(np.mean(fitness)), config.budget)
        history.append(row)
        if frames_every and generation % frames_every == 0:
            frames.append((generation, best.image.copy()))  # type: ignore[union-attr]
            if len(frames) > MAX_FRAMES:
                frames, frames_every = frames[1::2], frames_every * 2
        if progress is not None:
            progress(row)
    assert best.genome is not None and best.image is not None
    png = png_bytes(best.image)
    score = verify(png) if verify is not None else best.score
    if frames_every and (not frames or frames[-1][0] != generation):
        frames.append((generation, best.image.copy()))
    done = config.reached(score) or (config.goal != "target" and config.stop_at is None)
    return EvolveResult(config, best.genome, best.image, png, score, best.fitness, evaluations,
                        time.perf_counter() - start, done and not interrupted, history, frames, interrupted)



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
