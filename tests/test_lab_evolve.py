"""Evolved images of shapes: rendering, exact fitness, reproducibility, each optimiser improves,
and the ``nsfwlab evolve`` command. Stand-in scorers keep the optimiser tests cheap; the real
model is used where exactness is the point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from nsfwlab.cli import app
from nsfwlab.errors import ConfigError
from nsfwlab.lab.evolve import (
    Algorithm,
    EvolveConfig,
    detector_scorer,
    evolve,
    fitness_from_scores,
    png_bytes,
)
from nsfwlab.lab.render import ShapeKind, describe_shapes, genome_length, render, render_population


def _redness(images: np.ndarray) -> np.ndarray:
    """A cheap stand-in model: 'probability' = mean of (red - green/2 - blue/2) mapped to (0, 1)."""
    x = images.astype(np.float64) / 255.0
    z = (x[..., 0] - 0.5 * x[..., 1] - 0.5 * x[..., 2]).mean(axis=(1, 2))
    return 1.0 / (1.0 + np.exp(-8.0 * z))


@pytest.mark.parametrize("kind", list(ShapeKind))
def test_population_rendered_at_once_equals_each_genome_alone(kind: ShapeKind) -> None:
    rng = np.random.default_rng(1)
    genomes = rng.random((5, genome_length(kind, 12)))
    together = render_population(genomes, kind, size=48)
    assert together.shape == (5, 48, 48, 3) and together.dtype == np.uint8
    for i, g in enumerate(genomes):
        np.testing.assert_array_equal(together[i], render(g, kind, size=48))
    assert len({together[i].tobytes() for i in range(5)}) == 5


def test_render_draws_shapes_in_order_with_alpha() -> None:
    # One opaque red circle at the centre, then a half-transparent blue one over it.
    red = [0.5, 0.5, 1.0, 1.0, 0.0, 0.0, 1.0]  # radius 16 px (a quarter of 64)
    blue = [0.5, 0.5, 0.5, 0.0, 0.0, 1.0, 0.5]  # radius 8 px
    img = render(red + blue, ShapeKind.CIRCLE, size=64, background=(255, 255, 255))
    assert tuple(img[0, 0]) == (255, 255, 255)  # background in the corner
    assert tuple(img[20, 32]) == (255, 0, 0)  # inside red only
    r, g, b = (int(v) for v in img[32, 32])  # blue at alpha 0.5 over red
    assert abs(r - 127) <= 1 and g == 0 and abs(b - 128) <= 1
    tri = render([0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0], ShapeKind.TRIANGLE, size=32)
    assert tuple(tri[2, 2]) == (0, 255, 0) and tuple(tri[30, 30]) == (0, 0, 0)


def test_describe_shapes_in_pixels() -> None:
    shapes = describe_shapes([0.25, 0.5, 1.0, 1.0, 0.5, 0.0, 0.8], ShapeKind.CIRCLE, size=200)
    assert shapes == [{"type": "circle", "center": [50.0, 100.0], "radius": 50.0, "rgb": [255.0, 127.5, 0.0],
                       "alpha": 0.8}]
    assert len(describe_shapes(np.zeros(30), ShapeKind.TRIANGLE)) == 3


def test_bad_genomes_and_configs_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        render_population(np.zeros((2, 8)), ShapeKind.CIRCLE)  # not a multiple of 7
    with pytest.raises(ConfigError):
        EvolveConfig(to=1.5)
    with pytest.raises(ConfigError):
        EvolveConfig(count=0)
    with pytest.raises(ConfigError):
        EvolveConfig(population=2)


def test_fitness_is_log_odds_for_each_goal() -> None:
    p = np.array([0.5, 0.9, 0.999])
    up = fitness_from_scores(p, 1.0)
    np.testing.assert_allclose(up, np.log(p / (1 - p)))
    np.testing.assert_allclose(fitness_from_scores(p, 0.0), -up)
    target = fitness_from_scores(p, 0.9)
    assert int(np.argmax(target)) == 1 and target[1] == 0.0


@pytest.mark.slow
def test_fitness_equals_detector_score_of_the_saved_png(detector, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    images = render_population(rng.random((3, genome_length(ShapeKind.TRIANGLE, 20))), ShapeKind.TRIANGLE, 96)
    batched = detector_scorer(detector)(images)
    for i, img in enumerate(images):
        path = tmp_path / f"{i}.png"
        path.write_bytes(png_bytes(img))
        np.testing.assert_array_equal(np.asarray(Image.open(path)), img)
        assert abs(detector.nsfw_score(path) - batched[i]) < 1e-5


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_each_algorithm_improves_on_a_stand_in_model(algorithm: Algorithm) -> None:
    config = EvolveConfig(shape=ShapeKind.CIRCLE, count=6, algorithm=algorithm, population=10, budget=300,
                          size=24, seed=1)
    result = evolve(None, config=config, scorer=_redness)
    first, last = result.history[0], result.history[-1]
    assert result.evaluations == 300
    assert last.best_fitness > first.best_fitness + 0.5
    assert result.score == pytest.approx(float(_redness(result.image[None])[0]))
    assert result.image.shape == (24, 24, 3)


def test_fixed_seeds_reproduce_runs_and_leave_global_generators_alone() -> None:
    import random

    config = EvolveConfig(shape=ShapeKind.TRIANGLE, count=4, algorithm=Algorithm.GA, population=8, budget=60,
                          size=16, seed=7)
    random.seed(123)
    np.random.seed(123)
    a = evolve(None, config=config, scorer=_redness)
    after = (random.random(), np.random.random())
    random.seed(123)
    np.random.seed(123)
    b = evolve(None, config=config, scorer=_redness)
    assert after == (random.random(), np.random.random())
    np.testing.assert_array_equal(a.genome, b.genome)
    assert [h.best_fitness for h in a.history] == [h.best_fitness for h in b.history]
    for algorithm in (Algorithm.CMAES, Algorithm.SEP_CMAES):
        cfg = EvolveConfig(shape=ShapeKind.CIRCLE, count=3, algorithm=algorithm, budget=40, size=16, seed=2)
        first, again = (evolve(None, config=cfg, scorer=_redness) for _ in range(2))
        np.testing.assert_array_equal(first.genome, again.genome)
    other = evolve(None, config=config, scorer=_redness, seed=8)
    assert not np.array_equal(a.genome, other.genome)


def test_stop_at_ends_the_run_once_verified_and_frames_are_kept() -> None:
    calls: list[bytes] = []

    def verify(png: bytes) -> float:
        calls.append(png)
        return float(_redness(np.asarray(Image.open(__import__("io").BytesIO(png)))[None])[0])

    config = EvolveConfig(shape=ShapeKind.CIRCLE, count=5, population=8, budget=2000, size=16, seed=0,
                          stop_at=0.7, frames_every=2)
    result = evolve(None, config=config, scorer=_redness, verify=verify)
    assert result.reached and result.score >= 0.7 and result.evaluations < 2000
    assert calls and result.png == calls[-1]
    assert [g for g, _ in result.frames] == sorted({g for g, _ in result.frames}) and result.frames
    target = evolve(None, config=EvolveConfig(shape=ShapeKind.CIRCLE, count=5, population=8, budget=400, size=16,
                                              to=0.6, tolerance=0.05), scorer=_redness)
    assert target.reached == (abs(target.score - 0.6) <= 0.05)


@pytest.mark.slow
def test_evolve_command_writes_image_report_plot_and_frames(tmp_path: Path, detector) -> None:
    out, report, frames = tmp_path / "best.png", tmp_path / "run.json", tmp_path / "frames.gif"
    res = CliRunner().invoke(app, ["evolve", "--shape", "triangle", "--count", "4", "--budget", "24", "--size", "32",
                                   "--population", "8", "--out", str(out), "--report", str(report),
                                   "--frames", str(frames), "--frame-every", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    data = json.loads(report.read_text())
    assert set(data) >= {"shapes", "score", "evaluations", "seconds", "history", "reached"}
    assert len(data["shapes"]) == 4 and data["evaluations"] == 24
    assert data["score"] == detector.nsfw_score(out)
    assert (tmp_path / "run.history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(frames) as gif:
        assert 1 <= gif.n_frames <= 3  # Pillow merges identical consecutive frames
    # An unreachable --stop-at: the best image is still written, the report says so, exit 1.
    res = CliRunner().invoke(app, ["evolve", "--count", "2", "--budget", "8", "--size", "16", "--population", "4",
                                   "--stop-at", "0.9999", "--out", str(out), "--report", str(report)])
    assert res.exit_code == 1 and json.loads(report.read_text())["reached"] is False
    assert "NOT reached" in res.output


def test_evolve_command_usage_errors(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["evolve", "--out", str(tmp_path / "x.jpg")])
    assert res.exit_code == 2 and ".png" in res.output
    res = CliRunner().invoke(app, ["evolve", "--out", str(tmp_path / "x.png"), "--report", str(tmp_path / "r.txt")])
    assert res.exit_code == 2 and ".json" in res.output
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    for extra in (["--out", str(blocker / "x.png")], ["--out", str(tmp_path / "x.png"), "--frames", str(blocker / "f")],
                  ["--out", str(tmp_path / "x.png"), "--report", str(blocker / "r.json")]):
        res = CliRunner().invoke(app, ["evolve", *extra])
        assert res.exit_code == 2 and "cannot write to" in res.output, extra  # refused before any work


def test_ctrl_c_keeps_the_best_so_far() -> None:
    calls = {"n": 0}

    def scorer(images: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return _redness(images)

    config = EvolveConfig(shape=ShapeKind.CIRCLE, count=3, population=6, budget=1000, size=16)
    result = evolve(None, config=config, scorer=scorer)
    assert result.interrupted and not result.reached and result.evaluations == 12
    assert result.report()["interrupted"] is True
    with pytest.raises(KeyboardInterrupt):  # nothing to keep yet: the interrupt goes on
        evolve(None, config=config, scorer=lambda images: (_ for _ in ()).throw(KeyboardInterrupt))


def test_evolve_takes_a_detector_and_reports_progress_in_the_shared_shape(detector) -> None:
    from nsfwlab.progress import Progress

    events: list[Progress] = []
    result = evolve(None, detector, count=3, population=4, budget=8, size=32, progress=events.append)
    assert result.score == detector.nsfw_score(result.png) and result.evaluations == 8
    assert [(e.stage, e.done, e.total) for e in events] == [("evolve", 4, 8), ("evolve", 8, 8)]
    assert events[-1].item.generation == 2
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["evaluations"] == 8 and data["score"] == result.score


@pytest.mark.parametrize("algorithm", [Algorithm.GA, Algorithm.SEP_CMAES])
def test_evolve_starts_from_a_given_genome(algorithm: Algorithm) -> None:
    """The first generation holds the start genome (GA) or is drawn around it (CMA-ES, small sigma)."""
    config = EvolveConfig(count=4, population=6, budget=6, size=16, algorithm=algorithm, sigma=0.01)
    start = np.full(config.genome_length, 0.9)
    drawn = render(start, config.shape, size=16).astype(int)

    def first_batch_distance(begin: np.ndarray | None) -> float:
        seen: list[np.ndarray] = []
        evolve(begin, config=config, scorer=lambda images: (seen.append(images.copy()), _redness(images))[1])
        return min(float(np.abs(img.astype(int) - drawn).mean()) for img in seen[0])

    assert first_batch_distance(start) < 2.0 < first_batch_distance(None)
    with pytest.raises(ConfigError, match="start must be a genome") as info:
        evolve(np.zeros(3), config=config, scorer=_redness)
    assert info.value.param == "start"


def test_the_old_evolve_call_warns_and_forwards() -> None:
    config = EvolveConfig(count=3, population=4, budget=8, size=16)
    rows: list = []
    with pytest.warns(DeprecationWarning, match="evolve"):
        old = evolve(config, _redness, progress=rows.append)
    assert old.evaluations == 8 and [r.generation for r in rows] == [1, 2]
    np.testing.assert_array_equal(old.genome, evolve(None, config=config, scorer=_redness).genome)


def test_evolve_config_errors_name_the_parameter() -> None:
    for kwargs in ({"to": 2.0}, {"budget": 0}, {"stop_at": -1.0}, {"sigma": 0.0}, {"count": 0},
                   {"frames_every": -1}, {"shape": "hexagon"}):
        with pytest.raises(ConfigError) as info:
            EvolveConfig(**kwargs)  # type: ignore[arg-type]
        (name,) = kwargs
        assert info.value.param == name and "--" not in str(info.value)
    with pytest.raises(ConfigError, match="unknown EvolveConfig field"):
        evolve(None, config=None, scorer=_redness, budgett=3)
