"""The lab's working-size cap: a 10000x10000 PNG of a few hundred KB (under the decode cap) is attacked and
measured on a downscaled working copy instead of taking gigabytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nsfwlab.errors import ImageTooLargeError
from nsfwlab.lab import AttackConfig, attack, robustness
from nsfwlab.lab.pgd import Engine


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("huge") / "solid.png"
    Image.new("RGB", (10000, 10000), (90, 140, 200)).save(path)  # solid: compresses to a few hundred KB
    assert path.stat().st_size < 1_000_000
    return path


def test_engine_works_on_a_working_copy_by_default(huge_png: Path, detector) -> None:
    arr, _, original = Engine(AttackConfig(device="cpu"), detector).load(huge_png)
    assert arr.shape == (2048, 2048, 3) and original == (10000, 10000)


def test_attack_on_a_huge_png_returns_the_working_copy_and_says_so(huge_png: Path, detector) -> None:
    res = attack(huge_png, detector, to=0.999, max_eps=1, steps=1, max_work_side=128, device="cpu")
    assert res.image.size == (128, 128) and res.original_size == (10000, 10000)
    assert res.note is not None and "10000x10000 is over max_work_side" in res.note
    assert res.to_dict()["original_size"] == [10000, 10000]


def test_robustness_on_a_huge_png_uses_the_working_copy(huge_png: Path, detector) -> None:
    rep = robustness([str(huge_png)], detector, perturbations=("jpeg:50", "scale:0.5"), attack=False,
                     max_work_side=256)
    (im,) = rep.images
    assert im.error is None and im.working_copy == "256x256 of 10000x10000"


def test_extreme_aspect_ratio_is_refused_with_the_parameter(tmp_path: Path, detector) -> None:
    path = tmp_path / "strip.png"
    Image.fromarray(np.zeros((10, 400, 3), np.uint8)).save(path)
    with pytest.raises(ImageTooLargeError, match="aspect ratio 40:1 is over the lab's cap") as info:
        attack(path, detector, to=0.5, device="cpu")
    assert info.value.param == "max_aspect"
