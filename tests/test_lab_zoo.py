"""The lab on zoo models: ``nsfwlab attack`` (the Engine) on an nsfwjs model, a class probability and an
ensemble, every result verified by the zoo Detector's score of the saved PNG; the models and options the
attack refuses, each in one line; open_nsfw's path as it was.

The nsfwjs tests need the converted weights in NSFWLAB_HOME (setup.sh fetches them); they are skipped
otherwise. Images: scikit-image's photos, small.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from nsfwlab import Detector, zoo
from nsfwlab.cli import app
from nsfwlab.errors import ConfigError
from nsfwlab.lab.attack_options import AttackConfig, Goal, GoalKind, attackable_models, check_attackable
from nsfwlab.lab.attacks import attack
from nsfwlab.lab.differentiable import exact_score
from nsfwlab.lab.pgd import Engine

MOBILENET = "nsfwjs-mobilenetv2"
MID = "nsfwjs-mobilenetv2-mid"


def _need(*model_ids: str) -> None:
    for model_id in model_ids:
        if not zoo.installed(model_id):
            pytest.skip(f"{model_id} weights are not in NSFWLAB_HOME: run setup.sh")


def _small(photos: dict[str, np.ndarray], name: str = "chelsea", size: tuple[int, int] = (48, 32)) -> np.ndarray:
    return np.asarray(Image.fromarray(photos[name]).convert("RGB").resize(size, Image.Resampling.BILINEAR))


def _saved(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def mobilenet() -> Detector:
    _need(MOBILENET)
    return Detector(model=MOBILENET)


def _cfg(**kw: object) -> AttackConfig:
    return AttackConfig(device="cpu", steps=8, **kw)  # type: ignore[arg-type]


def test_attack_raises_an_nsfwjs_score_verified_on_the_saved_png(mobilenet: Detector, photos) -> None:
    arr = _small(photos)
    before = exact_score(mobilenet, arr)
    assert before < 0.5
    res = attack(arr, mobilenet, _cfg(to=0.95))
    assert res.success and res.model == MOBILENET and res.target_class is None
    # the reported score is the zoo Detector's score of the written file, nothing estimated
    assert res.score_after == exact_score(mobilenet, np.asarray(res.image)) >= 0.95
    assert res.score_before == before
    assert 1 <= res.linf <= 8 and res.image.size == (48, 32)
    assert res.to_dict()["model"] == MOBILENET and res.to_dict()["score_of"] == "nsfw"


def test_the_engine_runs_a_goal_on_a_zoo_detector(mobilenet: Detector, photos) -> None:
    """What the robustness protocol calls: ``Engine(config, zoo_detector).run_goal(image, Goal)``, across a
    threshold and back."""
    engine = Engine(_cfg(), mobilenet)
    up = engine.run_goal(_small(photos, "coffee"), Goal(GoalKind.AT_LEAST, 0.6))
    assert up.success and up.score_after == exact_score(mobilenet, np.asarray(up.image)) >= 0.6
    down = engine.run_goal(np.asarray(up.image), Goal(GoalKind.AT_MOST, 0.2))
    assert down.success and down.score_after == exact_score(mobilenet, np.asarray(down.image)) <= 0.2


@pytest.mark.slow
def test_a_zoo_attack_survives_its_views(mobilenet: Detector, photos) -> None:
    """A re-save and a resize the result must survive: optimised together, each verified on the saved PNG."""
    arr = _small(photos, "coffee")
    engine = Engine(_cfg(survive_jpeg=(95,), survive_resize=(0.5,)), mobilenet)
    res = engine.run_goal(arr, Goal(GoalKind.AT_LEAST, 0.6), views=engine.survive_views())
    assert set(res.views) == {"image", "jpeg:95", "scale:0.5"}
    assert res.success and all(v >= 0.6 for v in res.views.values())
    assert res.score_after == exact_score(mobilenet, np.asarray(res.image))
    saved = Image.open(io.BytesIO(_saved(res.image)))
    assert res.views["scale:0.5"] == mobilenet.nsfw_score(saved.resize((24, 16), Image.Resampling.BILINEAR))


def test_a_class_probability_is_a_target(mobilenet: Detector, photos) -> None:
    arr = _small(photos, "rocket")
    res = attack(arr, mobilenet, _cfg(to=0.95, target_class="Drawing"))
    classes = mobilenet.classify(_saved(res.image)).classes
    assert classes is not None
    assert res.success and res.target_class == "Drawing" and res.score_after == classes["Drawing"] >= 0.95
    assert res.score_before == mobilenet.classify(arr).classes["Drawing"]  # type: ignore[index]
    assert res.to_dict()["score_of"] == "Drawing"


@pytest.mark.slow
def test_fewest_pixels_on_a_zoo_model(mobilenet: Detector, photos) -> None:
    arr = _small(photos, "astronaut", (32, 32))
    plain = attack(arr, mobilenet, _cfg(to=0.95))
    sparse = attack(arr, mobilenet, _cfg(to=0.95, fewest_pixels=True))
    assert plain.success and sparse.success and sparse.pixels_changed <= plain.pixels_changed
    assert sparse.score_after == exact_score(mobilenet, np.asarray(sparse.image)) >= 0.95
    assert int(np.any(np.asarray(sparse.image) != arr, axis=-1).sum()) == sparse.pixels_changed


@pytest.mark.slow
def test_resized_space_attacks_the_networks_own_input(mobilenet: Detector, photos) -> None:
    res = attack(_small(photos), mobilenet, _cfg(to=0.95, space="resized"))
    assert res.image.size == (224, 224) and res.success
    assert res.score_after == exact_score(mobilenet, np.asarray(res.image))


def test_an_ensemble_is_attacked_and_verified_as_one_model(photos) -> None:
    _need(MOBILENET, MID)
    model = f"ensemble:{MOBILENET}+{MID}:mean"
    det = Detector(model=model)
    arr = _small(photos, "coffee")
    res = attack(arr, det, _cfg(to=0.95))
    assert res.success and res.model == model
    assert res.score_after == exact_score(det, np.asarray(res.image)) >= 0.95
    members = [Detector(model=m).nsfw_score(_saved(res.image)) for m in (MOBILENET, MID)]
    assert res.score_after == pytest.approx(float(np.mean(members)), abs=1e-6)  # both members moved
    with pytest.raises(ConfigError, match="space original"):
        Engine(_cfg(space="resized"), Detector(model=f"ensemble:{MOBILENET}+nsfwjs-inceptionv3"))


def test_refusals_name_what_works() -> None:
    works = attackable_models()
    assert works[0] == "open_nsfw" and MOBILENET in works and "nudenet-320n" not in works
    with pytest.raises(ConfigError, match=r"nudenet-320n .*no differentiable form.*nsfwjs-mobilenetv2") as info:
        check_attackable("nudenet-320n")
    assert info.value.param == "model" and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="nudenet-320n"):
        check_attackable(f"ensemble:{MOBILENET}+nudenet-320n:max")
    with pytest.raises(ConfigError, match="needs one classifier") as info:
        check_attackable(f"ensemble:{MOBILENET}+{MID}", "Drawing")
    assert info.value.param == "target_class"
    with pytest.raises(ConfigError, match=r"no class 'drawing'.*Drawing"):
        check_attackable(MOBILENET, "drawing")
    with pytest.raises(ConfigError, match="open_nsfw's attack aims at its NSFW score"):
        check_attackable("open_nsfw", "Porn")
    check_attackable("open_nsfw", "nsfw")
    check_attackable("tuned.pt")  # an open_nsfw checkpoint
    with pytest.raises(ConfigError, match="target_class"):
        AttackConfig(target_class=" ")


def test_the_jpeg_modes_are_open_nsfws(mobilenet: Detector) -> None:
    with pytest.raises(ConfigError, match="JPEG step is open_nsfw's") as info:
        Engine(_cfg(jpeg="eot"), mobilenet)
    assert info.value.param == "jpeg"


def test_open_nsfw_keeps_its_own_pipeline(detector: Detector, photos) -> None:
    engine = Engine(_cfg(), detector)
    assert engine.scorer is None and engine.model_id == "open_nsfw" and engine.input_side == 256
    assert engine.model is detector.torch_model()
    arr = _small(photos, "chelsea", (32, 32))
    res = attack(arr, detector, _cfg(to=0.6, jpeg="straight-through"))
    assert res.model == "open_nsfw" and res.target_class is None
    assert res.score_after == exact_score(detector, np.asarray(res.image))


runner = CliRunner()


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_cli_attack_takes_a_zoo_model(tmp_path: Path, photos) -> None:
    _need(MOBILENET)
    src = tmp_path / "cat.png"
    Image.fromarray(_small(photos)).save(src)
    out, report = tmp_path / "up.png", tmp_path / "r.json"
    res = runner.invoke(app, ["attack", str(src), "--model", MOBILENET, "--target-class", "Drawing", "--to", "0.95",
                              "--steps", "8", "--device", "cpu", "--out", str(out), "--report", str(report),
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    data = json.loads(report.read_text())
    assert data["model"] == MOBILENET and data["score_of"] == "Drawing"
    row = data["results"][0]
    classes = Detector(model=MOBILENET).classify(out.read_bytes()).classes
    assert classes is not None and row["success"] and row["score_after"] == classes["Drawing"]


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "nudenet-320n"], "no differentiable form"),
    (["--model", "no-such-model"], "unknown --model"),
    (["--model", f"ensemble:{MOBILENET}+{MID}", "--target-class", "Porn"], "needs one classifier"),
    (["--target-class", "Porn"], "open_nsfw's attack aims at its NSFW score"),
])
def test_cli_refusals_are_one_line(tmp_path: Path, photos, args: list[str], message: str) -> None:
    src = tmp_path / "cat.png"
    Image.fromarray(_small(photos)).save(src)
    res = runner.invoke(app, ["attack", str(src), "--to", "0.9", "--out", str(tmp_path / "o.png"), *args])
    assert res.exit_code == 2, res.output
    assert len(_lines(res.output)) == 1 and message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o.png").exists()


# -- the other lab verbs on zoo models ------------------------------------------------------------------
def test_evolve_scores_candidates_with_the_zoo_model(mobilenet: Detector) -> None:
    from nsfwlab.lab.evolve import detector_scorer, png_bytes
    from nsfwlab.lab.render import render_population

    rng = np.random.default_rng(0)
    images = render_population(rng.random((2, 5 * 7)), "circle", 32)
    batched = detector_scorer(mobilenet)(images)
    for img, score in zip(images, batched, strict=True):
        assert score == pytest.approx(mobilenet.nsfw_score(png_bytes(img)), abs=1e-6)


def test_cli_evolve_takes_a_zoo_model(tmp_path: Path) -> None:
    _need(MOBILENET)
    out = tmp_path / "e.png"
    res = runner.invoke(app, ["evolve", "--model", MOBILENET, "--out", str(out), "--budget", "16", "--size", "32",
                              "--count", "4", "--population", "8", "--no-progress"])
    assert res.exit_code == 0, res.output
    printed = float(res.output.split("score ")[1].split()[0])
    assert printed == pytest.approx(Detector(model=MOBILENET).nsfw_score(out.read_bytes()), abs=1e-6)


def test_occlusion_and_sliding_window_explain_a_zoo_model(mobilenet: Detector, photos) -> None:
    from nsfwlab.explain import Occlusion, SlidingWindow

    arr = _small(photos, "coffee", (48, 48))
    occ = Occlusion(mobilenet, box=24, stride=24).explain(arr)
    win = SlidingWindow(mobilenet, window=24, stride=24).explain(arr)
    assert occ.shape == win.shape == (48, 48) and np.isfinite(occ).all() and np.isfinite(win).all()
    before = mobilenet.nsfw_score(arr)
    hidden = arr.copy()
    hidden[:24, :24] = (123, 117, 104)  # the occlusion's default fill: the preprocessing's mean colour
    assert float(occ[0, 0]) == pytest.approx(before - mobilenet.nsfw_score(hidden), abs=1e-5)
    assert float(win[0, 0]) == pytest.approx(mobilenet.nsfw_score(arr[:24, :24]), abs=1e-5)


def test_synthesize_and_gradient_explanations_refuse_a_zoo_model_in_one_line(tmp_path: Path, photos) -> None:
    _need(MOBILENET)
    src = tmp_path / "cat.png"
    Image.fromarray(_small(photos)).save(src)
    for args, message in ((["synthesize", "--out", str(tmp_path / "s.png"), "--steps", "1"], "synthesis optimises"),
                          (["explain", str(src), "--method", "gradcam", "--out", str(tmp_path / "x.png")],
                           "gradient methods run on open_nsfw")):
        res = runner.invoke(app, [*args, "--model", MOBILENET])
        assert res.exit_code == 2, res.output
        assert len(_lines(res.output)) == 1 and message in res.output and "Traceback" not in res.output
