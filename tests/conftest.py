"""Shared fixtures: public safe photos from scikit-image, written to disk once per session, and
models loaded once per session (loading is the slow part)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

#: scikit-image's bundled colour photos (public domain / CC0; see skimage.data).
PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "camera", "immunohistochemistry", "hubble_deep_field")


def _photo(name: str) -> np.ndarray:
    import skimage.data

    return np.asarray(getattr(skimage.data, name)())


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """name -> uint8 array (RGB, or grey for 'camera')."""
    return {name: _photo(name) for name in PHOTO_NAMES}


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory: pytest.TempPathFactory, photos: dict[str, np.ndarray]) -> Path:
    """The photos as JPEG files (quality 90) in one directory."""
    d = tmp_path_factory.mktemp("photos")
    for name, arr in photos.items():
        Image.fromarray(arr).save(d / f"{name}.jpg", quality=90)
    return d


@pytest.fixture(scope="session")
def photo_paths(photo_dir: Path) -> list[Path]:
    return sorted(photo_dir.glob("*.jpg"))


@pytest.fixture(scope="session")
def detector():
    """The default (onnxruntime, CPU, exact) detector, shared by the whole session."""
    from nsfwlab import Detector

    det = Detector(device="cpu")
    yield det
    det.close()


@pytest.fixture(scope="session")
def torch_model():
    """The PyTorch port with the stock weights, eval mode, CPU."""
    from nsfwlab.model import load_open_nsfw

    return load_open_nsfw()


@pytest.fixture(scope="session")
def onnx_session():
    """The reference: the bundled ONNX graph on onnxruntime, untouched by nsfwlab."""
    import onnxruntime as ort

    from nsfwlab.weights import bundled_onnx_path

    return ort.InferenceSession(str(bundled_onnx_path()), providers=["CPUExecutionProvider"])
