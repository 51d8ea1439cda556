"""NudeNet 3.4.2's detector (``nudenet-320n``): our own pre- and post-processing around the
``320n.onnx`` file of the installed ``nudenet`` package, reproducing ``NudeDetector.detect``.

The weights are read from the installed package (``pip install 'nsfwlab[nudenet]'``), never
copied into nsfwlab: the wheel's LICENSE file is AGPL-3.0 (its metadata says MIT). The same
extra installs OpenCV (``opencv-python-headless``), whose resize and NMS are called here as
NudeNet calls them, so that boxes and scores agree exactly.

``NudeDetector.detect`` on a file, step by step (and here, from the same decoded RGB pixels):

1. ``cv2.imread`` (BGR), then ``cvtColor(COLOR_RGBA2BGR)``, which on three channels swaps them
   (RGB), then ``blobFromImage(swapRB=True)`` swaps them back: the network sees **BGR**.
2. Letterbox: zero padding at the bottom and right to a square of the longer side.
3. ``cv2.resize`` to 320x320 with ``INTER_LINEAR`` (OpenCV's fixed-point bilinear for uint8;
   an exact 2x reduction is OpenCV's area average), then float32 times ``float32(1/255)``,
   NCHW, no mean or std.
4. Output (1, 22, 2100): per anchor a centre box (cx, cy, w, h) in 320-px units and 18 class
   scores. An anchor is kept when its best score is >= 0.2; its box is converted to the top-left
   corner, scaled by ``side / 320``, clipped to the image, all in float32.
5. ``cv2.dnn.NMSBoxes(boxes, scores, 0.25, 0.45)``: class-agnostic, so 0.25 is the effective
   score threshold; boxes are truncated to ints ``[x, y, w, h]``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import WeightsError

__all__ = ["CLASSES", "CONFIDENCE", "EXPOSED", "INPUT_SIZE", "NMS_IOU", "NMS_SCORE", "NudeNetRunner", "class_maxima",
           "letterbox", "nsfw_score", "package_file", "postprocess"]

#: The detector's 18 classes, in the order of its outputs (NudeNet's ``__labels``).
CLASSES = (
    "FEMALE_GENITALIA_COVERED", "FACE_FEMALE", "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED", "ANUS_EXPOSED", "FEET_EXPOSED", "BELLY_COVERED",
    "FEET_COVERED", "ARMPITS_COVERED", "ARMPITS_EXPOSED", "FACE_MALE", "BELLY_EXPOSED", "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED", "FEMALE_BREAST_COVERED", "BUTTOCKS_COVERED",
)
#: The exposed sexual body parts whose highest confidence is the NSFW score. Exposed male chests,
#: bellies, feet and armpits are ordinary in safe photos (a beach) and are reported, not scored.
EXPOSED = ("BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "ANUS_EXPOSED",
           "MALE_GENITALIA_EXPOSED")
INPUT_SIZE = 320
CONFIDENCE = 0.2
NMS_SCORE = 0.25
NMS_IOU = 0.45
PACKAGE = "nudenet"
VERSION = "3.4.2"
FILE = "320n.onnx"
SHA256 = "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f"
SIZE_BYTES = 12150158
_INSTALL = "pip install 'nsfwlab[nudenet]' (nudenet 3.4.2, AGPL-3.0)"

Detection = dict[str, Any]


def package_file() -> Path:
    """The path of ``320n.onnx`` inside the installed ``nudenet`` package (a one-line
    :class:`WeightsError` when it is not installed)."""
    from importlib import metadata, resources

    try:
        version = metadata.version(PACKAGE)
        path = Path(str(resources.files(PACKAGE).joinpath(FILE)))
    except (ImportError, metadata.PackageNotFoundError):
        raise WeightsError(f"nudenet-320n needs the nudenet package, which is not installed: {_INSTALL}") from None
    if version != VERSION:
        raise WeightsError(f"nudenet-320n needs nudenet {VERSION}, but {version} is installed: {_INSTALL}")
    return path


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:
        raise WeightsError(f"nudenet-320n needs OpenCV (installed with nudenet): {_INSTALL}") from None
    return cv2


def letterbox(rgb: np.ndarray) -> np.ndarray:
    """The network input (1, 3, 320, 320) float32 of one HxWx3 uint8 RGB image: zero padding at the
    bottom and right to a square, OpenCV's ``INTER_LINEAR`` resize, BGR, times ``float32(1/255)``.

    The square is never built whole (a 100000x1000 image would make a 30 GB one): OpenCV resizes
    row by row and column by column from a scale, so the image plus a margin of zeros wide enough
    for the last output pixel that touches it, resized with the square's scale (``fx = fy =
    320 / side``), gives the same output pixels; the rest of the output samples only zeros.
    """
    cv2 = _cv2()
    height, width = rgb.shape[:2]
    side = max(height, width)
    scale = INPUT_SIZE / side
    margin = 2 * math.ceil(side / INPUT_SIZE) + 2
    rows, cols = min(side, height + margin), min(side, width + margin)
    padded = np.zeros((rows, cols, 3), np.uint8)
    padded[:height, :width] = rgb
    resized = cv2.resize(padded, (0, 0), fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    square = np.zeros((INPUT_SIZE, INPUT_SIZE, 3), np.uint8)
    square[:resized.shape[0], :resized.shape[1]] = resized[:INPUT_SIZE, :INPUT_SIZE]
    bgr = np.ascontiguousarray(square[:, :, ::-1].transpose(2, 0, 1), dtype=np.float32)
    return (bgr * np.float32(1 / 255))[None]


def postprocess(output: np.ndarray, width: int, height: int) -> list[Detection]:
    """The detections of one image from its output (22, anchors): threshold, box conversion to the
    original image (float32, as NudeNet computes it), NMS, ints. Sorted by score, highest first."""
    rows = np.asarray(output, dtype=np.float32).T
    class_scores = rows[:, 4:]
    best = class_scores.max(axis=1)
    keep = best >= np.float32(CONFIDENCE)
    if not keep.any():
        return []
    best, class_ids = best[keep], class_scores[keep].argmax(axis=1)
    cx, cy, w, h = (rows[keep, i] for i in range(4))
    side = max(width, height)  # image size + padding, on both axes
    x = (cx - w / np.float32(2)) * np.float32(side) / np.float32(INPUT_SIZE)
    y = (cy - h / np.float32(2)) * np.float32(side) / np.float32(INPUT_SIZE)
    w = w * np.float32(side) / np.float32(INPUT_SIZE)
    h = h * np.float32(side) / np.float32(INPUT_SIZE)
    x = np.maximum(np.float32(0), np.minimum(x, np.float32(width)))
    y = np.maximum(np.float32(0), np.minimum(y, np.float32(height)))
    w = np.minimum(w, np.float32(width) - x)
    h = np.minimum(h, np.float32(height) - y)
    boxes = np.stack([x, y, w, h], axis=1)
    picked = _cv2().dnn.NMSBoxes(boxes.tolist(), best.tolist(), NMS_SCORE, NMS_IOU)
    ints = boxes.astype(np.int64)  # truncation toward zero, as int() in NudeNet
    return [{"class": CLASSES[int(class_ids[i])], "score": float(best[i]), "box": [int(v) for v in ints[i]]}
            for i in np.asarray(picked, dtype=np.int64).reshape(-1)]


def nsfw_score(detections: list[Detection], exposed: tuple[str, ...] = EXPOSED) -> float:
    """The highest confidence among ``exposed`` classes; 0 when none is detected."""
    return max((float(d["score"]) for d in detections if d["class"] in exposed), default=0.0)


def class_maxima(detections: list[Detection]) -> np.ndarray:
    """(18,) float32: each class's highest detection confidence (0 where none)."""
    out = np.zeros(len(CLASSES), np.float32)
    for d in detections:
        i = CLASSES.index(d["class"])
        out[i] = max(out[i], d["score"])
    return out


class NudeNetRunner:
    """Runs ``320n.onnx`` on onnxruntime: ``detect(items)`` -> per image a list of
    ``{"class", "score", "box": [x, y, w, h]}``; calling it -> (N, 18) per-class highest confidence,
    the detector's "probabilities" for :class:`~nsfwlab.zoo.runtime.ZooModel`."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.input = session.get_inputs()[0].name

    def detect(self, items: list[np.ndarray]) -> list[list[Detection]]:
        from ..errors import ModelError

        out = []
        for rgb in items:  # one image per run, as NudeDetector.detect
            try:
                (raw,) = self.session.run(None, {self.input: letterbox(rgb)})[:1]
            except Exception as exc:  # onnxruntime's own error types
                raise ModelError(f"onnxruntime could not run nudenet-320n: {str(exc).splitlines()[0][:200]}") \
                    from None
            out.append(postprocess(np.asarray(raw)[0], rgb.shape[1], rgb.shape[0]))
        return out

    def __call__(self, items: list[np.ndarray]) -> np.ndarray:
        return np.stack([class_maxima(d) for d in self.detect(items)])

