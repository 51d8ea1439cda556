"""nudenet-320n: our pre- and post-processing around NudeNet's 320n.onnx against the real
``NudeDetector.detect`` on the same files (same classes, boxes within 1 px, scores within 1e-4),
and the NSFW score's derivation from detections."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nsfwlab import zoo
from nsfwlab.errors import ConfigError, ModelError, WeightsError
from nsfwlab.zoo import nudenet

HAVE_NUDENET = importlib.util.find_spec("nudenet") is not None and importlib.util.find_spec("cv2") is not None
needs_nudenet = pytest.mark.skipif(not HAVE_NUDENET, reason="nudenet 3.4.2 is not installed (setup.sh's opt-in step: "
                                                            "pip install 'nsfwlab[nudenet]')")


def _photos() -> dict[str, np.ndarray]:
    from skimage import data

    rng = np.random.default_rng(0)
    astronaut = data.astronaut()
    return {
        "astronaut": astronaut,  # FACE_FEMALE
        "camera": np.stack([data.camera()] * 3, axis=-1),  # FACE_MALE
        "colorwheel": data.colorwheel()[..., :3].copy(),  # an exposed-part box on a synthetic wheel: a score > 0
        "moon": np.stack([data.moon()] * 3, axis=-1),  # two overlapping boxes of one class: NMS
        "chelsea": data.chelsea(),  # wide, nothing detected
        "tall": astronaut[:, 100:300].copy(),  # letterbox on the right
        "double": np.asarray(Image.fromarray(astronaut).resize((640, 640))),  # an exact 2x reduction
        "noise": rng.integers(0, 256, (37, 101, 3), dtype=np.uint8),
        "tiny": rng.integers(0, 256, (3, 5, 3), dtype=np.uint8),
    }


@pytest.fixture(scope="module")
def model() -> zoo.ZooModel:
    loaded = zoo.load("nudenet-320n", threads=1)
    assert isinstance(loaded, zoo.ZooModel)
    return loaded


@pytest.mark.slow
@needs_nudenet
@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_detect_equals_nudedetector_on_the_same_files(model: zoo.ZooModel, tmp_path: Path, ext: str) -> None:
    from nudenet import NudeDetector

    reference = NudeDetector()
    seen: set[str] = set()
    for name, rgb in _photos().items():
        path = tmp_path / f"{name}.{ext}"
        Image.fromarray(rgb).save(path, quality=90) if ext == "jpg" else Image.fromarray(rgb).save(path)
        theirs = reference.detect(str(path))
        (ours,) = model.detect([np.asarray(Image.open(path).convert("RGB"))])
        assert [d["class"] for d in ours] == [d["class"] for d in theirs], name
        for a, b in zip(ours, theirs, strict=True):
            assert abs(a["score"] - b["score"]) <= 1e-4, name
            assert max(abs(u - v) for u, v in zip(a["box"], b["box"], strict=True)) <= 1, name
        seen.update(d["class"] for d in theirs)
    assert {"FACE_FEMALE", "FACE_MALE", "BUTTOCKS_EXPOSED"} <= seen  # the comparison covered real boxes


def _nudenet_blob(rgb: np.ndarray) -> np.ndarray:
    """NudeNet's own steps on a file's BGR pixels: cvtColor swaps three channels, the whole square is
    padded, blobFromImage resizes and swaps back."""
    import cv2

    side = max(rgb.shape[:2])
    mat = cv2.cvtColor(np.ascontiguousarray(rgb[..., ::-1]), cv2.COLOR_RGBA2BGR)
    padded = cv2.copyMakeBorder(mat, 0, side - rgb.shape[0], 0, side - rgb.shape[1], cv2.BORDER_CONSTANT)
    return cv2.dnn.blobFromImage(padded, 1 / 255.0, (320, 320), (0, 0, 0), swapRB=True, crop=False)


@needs_nudenet
@pytest.mark.parametrize("shape", [(512, 200), (3, 5), (1, 1), (1, 2000), (2000, 1), (30, 2000), (641, 320),
                                   (640, 320), (320, 640), (319, 320), (960, 17), (1280, 4), (50, 6400), (999, 1000)])
def test_letterbox_equals_opencv_blob_from_image(shape: tuple[int, int]) -> None:
    # the exact 2x (640) and 3x (960) reductions take OpenCV's other paths; thin ones pad far
    rgb = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3), dtype=np.uint8)
    np.testing.assert_array_equal(nudenet.letterbox(rgb), _nudenet_blob(rgb))


@needs_nudenet
def test_letterbox_of_a_thin_image_does_not_build_the_square() -> None:
    import tracemalloc

    rgb = np.full((200, 20_000, 3), 200, np.uint8)  # 12 MB; its square would take 1.2 GB
    tracemalloc.start()
    try:
        blob = nudenet.letterbox(rgb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20
    # output rows 0-2 sample the image (side / 320 = 62.5 source rows each), the rest only padding
    assert blob.shape == (1, 3, 320, 320) and blob[0, :, :3].min() > 0 and blob[0, :, 4:].max() == 0


@needs_nudenet
def test_score_and_predict_follow_the_detections(model: zoo.ZooModel) -> None:
    photos = _photos()
    images = [photos["astronaut"], photos["colorwheel"], photos["chelsea"]]
    detections = model.detect(images)
    probs = model.predict(images)
    assert probs.shape == (3, len(nudenet.CLASSES))
    face = nudenet.CLASSES.index("FACE_FEMALE")
    assert probs[0, face] == pytest.approx(max(d["score"] for d in detections[0] if d["class"] == "FACE_FEMALE"))
    scores = model.score(images)
    assert scores[0] == 0.0  # a face is not an exposed part
    assert scores[1] == pytest.approx(nudenet.nsfw_score(detections[1])) and scores[1] >= nudenet.NMS_SCORE
    assert scores[2] == 0.0 and detections[2] == []


def test_nsfw_score_is_the_highest_exposed_confidence_else_zero() -> None:
    found = [{"class": "FACE_FEMALE", "score": 0.9, "box": [0, 0, 5, 5]},
             {"class": "BELLY_EXPOSED", "score": 0.8, "box": [0, 0, 5, 5]},
             {"class": "BUTTOCKS_EXPOSED", "score": 0.4, "box": [1, 1, 5, 5]},
             {"class": "FEMALE_BREAST_EXPOSED", "score": 0.6, "box": [2, 2, 5, 5]},
             {"class": "FEMALE_BREAST_COVERED", "score": 0.95, "box": [2, 2, 5, 5]}]
    assert nudenet.nsfw_score(found) == pytest.approx(0.6)
    assert nudenet.nsfw_score(found[:2]) == 0.0
    assert nudenet.nsfw_score([]) == 0.0
    maxima = nudenet.class_maxima(found)
    assert maxima[nudenet.CLASSES.index("FACE_FEMALE")] == pytest.approx(0.9)
    card = zoo.get_card("nudenet-320n")
    assert card.kind == "detector" and set(card.nsfw_classes) == set(nudenet.EXPOSED)
    assert "BELLY_EXPOSED" not in card.nsfw_classes and "MALE_BREAST_EXPOSED" not in card.nsfw_classes


def _raw_output(rows: list[tuple[float, float, float, float, int, float]]) -> np.ndarray:
    """A (22, anchors) output with one anchor per row: centre box in 320-px units, class, score."""
    out = np.zeros((22, max(len(rows), 1)), np.float32)
    for i, (cx, cy, w, h, cls, score) in enumerate(rows):
        out[:4, i] = (cx, cy, w, h)
        out[4 + cls, i] = score
    return out


@needs_nudenet
def test_postprocess_scales_clips_thresholds_and_suppresses() -> None:
    buttocks = nudenet.CLASSES.index("BUTTOCKS_EXPOSED")
    face = nudenet.CLASSES.index("FACE_MALE")
    out = _raw_output([
        (160, 80, 100, 60, face, 0.9),  # kept; scaled by 640 / 320 (a 640x320 image padded to 640x640)
        (165, 82, 100, 60, buttocks, 0.5),  # overlaps the face box (IoU > 0.45): suppressed across classes
        (310, 300, 40, 40, buttocks, 0.7),  # below the image (y 560 > 320): clipped to it
        (20, 20, 10, 10, face, 0.22),  # >= 0.2 but under NMS's 0.25: dropped
        (60, 20, 10, 10, face, 0.19),  # under 0.2
    ])
    found = nudenet.postprocess(out, width=640, height=320)
    assert found == [
        {"class": "FACE_MALE", "score": pytest.approx(0.9), "box": [220, 100, 200, 120]},
        {"class": "BUTTOCKS_EXPOSED", "score": pytest.approx(0.7), "box": [580, 320, 60, 0]},
    ]
    assert nudenet.postprocess(_raw_output([]), width=10, height=10) == []


def test_a_classifier_has_no_boxes_and_nudenet_weights_are_not_imported() -> None:
    with pytest.raises(ConfigError, match="installed nudenet package, never fetched or imported"):
        zoo.import_weights("nudenet-320n", __file__)
    with pytest.raises(ConfigError, match=r"pip install 'nsfwlab\[nudenet\]'"):
        zoo.fetch("nudenet-320n")
    classifier = zoo.ZooModel(zoo.get_card("nsfwjs-mobilenetv2"), lambda items: np.zeros((len(items), 5)), "torch")
    with pytest.raises(ModelError, match="not boxes"):
        classifier.detect([np.zeros((4, 4, 3), np.uint8)])


def test_missing_package_is_a_one_line_weights_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    def absent(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", absent)
    with pytest.raises(WeightsError, match=r"pip install 'nsfwlab\[nudenet\]'"):
        nudenet.package_file()
    assert zoo.installed("nudenet-320n") is False
    monkeypatch.setattr(metadata, "version", lambda name: "3.4.1")
    with pytest.raises(WeightsError, match=r"needs nudenet 3\.4\.2, but 3\.4\.1"):
        nudenet.package_file()


@needs_nudenet
def test_the_weights_are_read_from_the_installed_package_and_verified() -> None:
    path = nudenet.package_file()
    assert path.name == "320n.onnx" and path.parent.name == "nudenet" and path.is_file()
    assert zoo.installed("nudenet-320n")
    card = zoo.get_card("nudenet-320n")
    assert card.weights.sha256 == nudenet.SHA256 and card.licence.startswith("AGPL-3.0")
    assert "letterbox" in card.input.describe() and card.input.channel_order == "BGR"
    assert card.fidelity.describe().startswith("identical to NudeDetector.detect (nudenet 3.4.2)")
