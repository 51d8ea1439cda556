"""A detector model's boxes through the Detector (``ScoreResult.boxes``, ``nsfwlab score``) against
the real ``NudeDetector.detect`` on the same files (same classes, boxes within 1 px, scores within
1e-4), and censoring on boxes (:class:`~nsfwlab.explain.censor.BoxCensor`, ``nsfwlab censor``).

Photos: scikit-image's (astronaut and camera have a face; the synthetic colour wheel gets an
exposed-part box, so it has an NSFW score above 0). The nudenet tests are skipped when the package
is not installed; the rest use stand-in models.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import skimage.data
from PIL import Image
from typer.testing import CliRunner

from nsfwlab.cli import app
from nsfwlab.config import Label
from nsfwlab.detector import Detector, ScoreResult
from nsfwlab.errors import ConfigError, ModelError
from nsfwlab.explain.censor import BoxCensor, box_mask
from nsfwlab.modelsource import ZooBackend
from nsfwlab.zoo import get_card

MODEL = "nudenet-320n"
HAVE_NUDENET = importlib.util.find_spec("nudenet") is not None and importlib.util.find_spec("cv2") is not None
needs_nudenet = pytest.mark.skipif(not HAVE_NUDENET, reason="nudenet 3.4.2 is not installed (setup.sh's opt-in step: "
                                                            "pip install 'nsfwlab[nudenet]')")
runner = CliRunner()


def _photos() -> dict[str, np.ndarray]:
    return {
        "astronaut": skimage.data.astronaut(),  # FACE_FEMALE
        "camera": np.stack([skimage.data.camera()] * 3, axis=-1),  # FACE_MALE
        "wheel": skimage.data.colorwheel()[..., :3].copy(),  # an exposed-part box: score > 0
        "chelsea": skimage.data.chelsea(),  # nothing detected
    }


def _save(tmp_path: Path, ext: str = "png") -> dict[str, Path]:
    paths = {}
    for name, rgb in _photos().items():
        paths[name] = tmp_path / f"{name}.{ext}"
        Image.fromarray(rgb).save(paths[name], **({"quality": 90} if ext == "jpg" else {}))
    return paths


@pytest.fixture(scope="module")
def det() -> Detector:
    if not HAVE_NUDENET:
        pytest.skip("nudenet 3.4.2 is not installed (pip install 'nsfwlab[nudenet]')")
    return Detector(model=MODEL, threads=1)


def _assert_same_boxes(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> None:
    assert [d["class"] for d in ours] == [d["class"] for d in theirs]
    for a, b in zip(ours, theirs, strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)
        assert np.abs(np.subtract(a["box"], b["box"])).max() <= 1


# -- boxes through the Detector and the CLI ----------------------------------------------------------
@needs_nudenet
@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_score_jsonl_boxes_equal_nudedetector(tmp_path: Path, ext: str) -> None:
    from nudenet import NudeDetector

    paths = _save(tmp_path, ext)
    result = runner.invoke(app, ["score", "--model", MODEL, "-f", "jsonl", *map(str, paths.values())])
    assert result.exit_code == 0, result.output
    rows = {Path(r["path"]).stem: r for r in map(json.loads, result.stdout.splitlines())}
    reference = NudeDetector()
    found = set()
    for name, path in paths.items():
        theirs = sorted(reference.detect(str(path)), key=lambda d: -d["score"])
        _assert_same_boxes(rows[name]["boxes"], theirs)
        found |= {d["class"] for d in theirs}
    assert {"FACE_FEMALE", "FACE_MALE"} <= found  # the comparison saw real boxes
    assert rows["chelsea"]["boxes"] == []
    assert rows["wheel"]["score"] == pytest.approx(max(b["score"] for b in rows["wheel"]["boxes"]
                                                       if b["class"] in get_card(MODEL).nsfw_classes))


@needs_nudenet
def test_classify_score_many_and_iter_score_give_the_same_boxes(det: Detector) -> None:
    photos = list(_photos().values())
    one = [det.classify(p) for p in photos]
    many = det.score_many(photos)
    streamed = list(det.iter_score(iter(photos)))
    for a, b, c in zip(one, many, streamed, strict=True):
        assert a.boxes is not None and a.boxes == b.boxes == c.boxes
        assert a.score == b.score == c.score
        assert a.classes is not None
        for box in a.boxes:  # each class's probability is its highest box confidence
            assert a.classes[box["class"]] >= box["score"]
        assert a.to_dict()["boxes"] == a.boxes


def test_classifier_rows_carry_no_boxes() -> None:
    res = Detector(threads=1).classify(skimage.data.coffee())
    assert res.boxes is None and "boxes" not in res.to_dict()


def test_to_dict_emits_a_detectors_boxes_even_when_none_were_found() -> None:
    box = {"class": "FACE_FEMALE", "score": 0.5, "box": (1, 2, 3, 4)}
    row = ScoreResult("a.png", 0.0, Label.SAFE, model=MODEL, boxes=[box]).to_dict()
    assert row["boxes"] == [{"class": "FACE_FEMALE", "score": 0.5, "box": [1, 2, 3, 4]}]
    assert ScoreResult("b.png", 0.0, Label.SAFE, model=MODEL, boxes=[]).to_dict()["boxes"] == []


def _fake_zoo(detections: list[list[dict[str, Any]]]) -> ZooBackend:
    card = get_card(MODEL)
    model = SimpleNamespace(id=MODEL, card=card, classes=card.classes, backend="onnxruntime",
                            detect=lambda images: detections[: len(images)])
    return ZooBackend(model)


def test_run_images_takes_each_classes_highest_box_confidence() -> None:
    boxes = [[{"class": "FACE_FEMALE", "score": 0.7, "box": [0, 0, 1, 1]},
              {"class": "FACE_FEMALE", "score": 0.3, "box": [2, 2, 1, 1]},
              {"class": "FEET_EXPOSED", "score": 0.4, "box": [0, 0, 2, 2]}], []]
    zoo = _fake_zoo(boxes)
    probs, got = zoo.run_images([np.zeros((4, 4, 3), np.uint8)] * 2)
    assert got == boxes
    expected = np.zeros((2, len(zoo.classes)), np.float32)
    expected[0, zoo.classes.index("FACE_FEMALE")] = 0.7
    expected[0, zoo.classes.index("FEET_EXPOSED")] = 0.4
    np.testing.assert_array_equal(probs, expected)
    assert zoo.is_detector and zoo.nsfw_classes == get_card(MODEL).nsfw_classes


def test_run_images_refuses_a_box_score_that_is_not_finite() -> None:
    zoo = _fake_zoo([[{"class": "FACE_FEMALE", "score": float("nan"), "box": [0, 0, 1, 1]}]])
    with pytest.raises(ModelError, match="not a finite number"):
        zoo.run_images([np.zeros((4, 4, 3), np.uint8)])


# -- censoring on boxes -----------------------------------------------------------------------------
def test_box_mask_covers_the_boxes_clipped_to_the_image() -> None:
    mask = box_mask([{"box": [1, 2, 3, 1]}, {"box": [4, 3, 10, 10]}], 5, 6)
    expected = np.zeros((5, 6), bool)
    expected[2, 1:4] = True
    expected[3:5, 4:6] = True
    np.testing.assert_array_equal(mask, expected)


class _ScriptedDetector:
    """A stand-in detector model: ``classify`` answers from a script, in call order."""

    def __init__(self, answers: list[tuple[float, list[dict[str, Any]]]]) -> None:
        card = get_card(MODEL)
        self.zoo = SimpleNamespace(is_detector=True, classes=card.classes, nsfw_classes=card.nsfw_classes,
                                   model_id=MODEL)
        self.model_id, self.limits, self.answers, self.calls = MODEL, None, list(answers), 0

    def classify(self, image: Any) -> ScoreResult:
        score, boxes = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return ScoreResult("x", score, Label.SAFE, model=MODEL, boxes=boxes)


def _exposed(box: list[int], score: float = 0.9) -> dict[str, Any]:
    return {"class": "BUTTOCKS_EXPOSED", "score": score, "box": box}


def test_box_censor_never_returns_an_image_scoring_higher_than_the_input() -> None:
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    scripted = _ScriptedDetector([(0.5, [_exposed([0, 0, 10, 10], 0.5)]), (0.9, [])])
    res = BoxCensor(scripted, max_steps=1).censor(image)  # type: ignore[arg-type]
    assert res.kept_input and res.score_after == res.score_before == 0.5 and not res.mask.any()
    np.testing.assert_array_equal(res.image, image)


def test_box_censor_detects_again_and_hides_new_boxes_while_over_the_target() -> None:
    image = np.full((20, 30, 3), 200, np.uint8)
    face = {"class": "FACE_FEMALE", "score": 0.9, "box": [20, 0, 5, 5]}
    scripted = _ScriptedDetector([(0.9, [_exposed([0, 0, 5, 5]), face]), (0.6, [_exposed([10, 10, 5, 5], 0.6)]),
                                  (0.0, [])])
    res = BoxCensor(scripted, style="box").censor(image)  # type: ignore[arg-type]
    assert [s.score for s in res.steps] == [0.6, 0.0] and res.reached and res.best_step == 1
    np.testing.assert_array_equal(res.mask, box_mask([_exposed([0, 0, 5, 5]), _exposed([10, 10, 5, 5])], 20, 30))
    assert (res.image[res.mask] == 0).all() and (res.image[~res.mask] == 200).all()  # the face is not an NSFW class


def test_box_censor_refuses_a_classifier_and_unknown_classes() -> None:
    with pytest.raises(ConfigError, match="needs a detector model"):
        BoxCensor(SimpleNamespace(zoo=None, model_id="open_nsfw"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown box class 'NOPE'"):
        BoxCensor(_ScriptedDetector([]), classes=["NOPE"])  # type: ignore[arg-type]


@needs_nudenet
def test_box_censor_hides_the_nsfw_box_and_reports_the_saved_files_score(det: Detector, tmp_path: Path) -> None:
    wheel = _photos()["wheel"]
    before = wheel.copy()
    res = BoxCensor(det, style="pixelate").censor(wheel)
    np.testing.assert_array_equal(wheel, before)  # the input is not modified
    assert res.score_before > 0.5 and res.score_after < res.score_before and res.reached
    (box,) = [b for b in det.classify(wheel).boxes or [] if b["class"] in det.zoo.nsfw_classes]  # type: ignore[union-attr]
    np.testing.assert_array_equal(res.mask, box_mask([box], *wheel.shape[:2]))
    path = tmp_path / "out.png"
    Image.fromarray(res.image).save(path)
    assert det.nsfw_score(path) == res.score_after


@needs_nudenet
def test_box_censor_all_boxes_hides_a_face_and_nothing_else(det: Detector) -> None:
    astronaut = _photos()["astronaut"]
    assert BoxCensor(det).censor(astronaut).kept_input  # a face is not an NSFW class
    res = BoxCensor(det, all_boxes=True).censor(astronaut)
    faces = [b for b in det.classify(astronaut).boxes or [] if b["class"] == "FACE_FEMALE"]
    assert faces and res.mask.any()
    np.testing.assert_array_equal(res.mask, box_mask(faces, *astronaut.shape[:2]))
    np.testing.assert_array_equal(res.image[~res.mask], astronaut[~res.mask])
    assert (res.image[res.mask] != astronaut[res.mask]).any()


@needs_nudenet
def test_censor_command_hides_boxes_and_prints_the_saved_files_score(det: Detector, tmp_path: Path) -> None:
    paths = _save(tmp_path)
    out = tmp_path / "censored.png"
    result = runner.invoke(app, ["censor", str(paths["wheel"]), "--model", MODEL, "--style", "pixelate", "-o",
                                   str(out)])
    assert result.exit_code == 0, result.output
    assert "(detected boxes)" in result.stdout
    assert f"-> {det.nsfw_score(out):.4f}" in result.stdout
    bad = runner.invoke(app, ["censor", str(paths["wheel"]), "--model", MODEL, "--box", "5", "-o", str(out)])
    assert bad.exit_code == 2 and "is a detector" in bad.output


def test_censor_command_refuses_box_options_for_a_classifier(tmp_path: Path) -> None:
    path = tmp_path / "coffee.png"
    Image.fromarray(skimage.data.coffee()).save(path)
    result = runner.invoke(app, ["censor", str(path), "--all-boxes", "-o", str(tmp_path / "out.png")])
    assert result.exit_code == 2 and "need a detector model" in result.output


@needs_nudenet
def test_score_csv_and_table_show_a_detectors_boxes(tmp_path: Path) -> None:
    import csv
    import io

    paths = _save(tmp_path)
    args = ["score", "--model", MODEL, str(paths["astronaut"]), str(paths["chelsea"])]
    rows = list(csv.DictReader(io.StringIO(runner.invoke(app, [*args, "-f", "csv"]).stdout)))
    jsonl = [json.loads(line) for line in runner.invoke(app, [*args, "-f", "jsonl"]).stdout.splitlines()]
    assert [json.loads(r["boxes"]) for r in rows] == [r["boxes"] for r in jsonl]
    assert jsonl[0]["boxes"] and jsonl[1]["boxes"] == []
    table = runner.invoke(app, args, env={"COLUMNS": "1200"}).stdout
    assert "1: FACE_FEMALE 0.720" in table


def test_a_classifiers_csv_has_no_boxes_column(tmp_path: Path) -> None:
    path = tmp_path / "coffee.png"
    Image.fromarray(skimage.data.coffee()).save(path)
    header = runner.invoke(app, ["score", "-f", "csv", str(path)]).stdout.splitlines()[0]
    assert "boxes" not in header.split(",")
