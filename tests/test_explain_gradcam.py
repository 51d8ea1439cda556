"""Grad-CAM's default target and its layer choice, on the real model and safe public photos."""

from __future__ import annotations

import numpy as np
import pytest

from nsfwlab.errors import ConfigError
from nsfwlab.explain import ExplainOptions, GradCAM, make_explainer
from nsfwlab.explain.gradients import predicted_class_target
from nsfwlab.objectives import LogitMargin


@pytest.fixture(scope="module")
def safe_photo(photos):
    return photos["coffee"]  # open_nsfw scores it about 0.013


def test_gradcam_default_is_not_blank_on_a_safe_photo(torch_model, safe_photo):
    cam = GradCAM(torch_model)
    # the NSFW class has no positive evidence here: its map is zero everywhere after the ReLU ...
    assert cam.explain(safe_photo, target="nsfw-logit").max() == 0.0
    # ... so the default explains the predicted class (safe), which the network does find
    heat = cam.explain(safe_photo)
    assert heat.max() > 0
    assert (heat > 0).mean() > 0.05


def test_predicted_class_target_follows_the_score():
    import torch

    assert isinstance(predicted_class_target(torch.tensor([[0.0, 2.0]])), LogitMargin)
    neg = predicted_class_target(torch.tensor([[2.0, 0.0]]))
    assert float(neg(torch.tensor([[2.0, 0.0]]))[0]) == pytest.approx(2.0)


def test_gradcam_on_a_named_layer(torch_model, safe_photo):
    last = GradCAM(torch_model).explain(safe_photo)
    early = make_explainer("gradcam", options=ExplainOptions(layer="stage2"), model=torch_model).explain(safe_photo)
    assert early.shape == last.shape
    assert early.max() > 0
    assert not np.allclose(early / early.max(), last / last.max())


def test_gradcam_unknown_layer_names_the_parameter(torch_model):
    with pytest.raises(ConfigError, match="unknown layer 'stage9'") as info:
        GradCAM(torch_model, layer="stage9")
    assert info.value.param == "layer"


def test_cli_layer_flag(tmp_path, photos):
    from PIL import Image
    from typer.testing import CliRunner

    from nsfwlab.cli import app

    src = tmp_path / "coffee.png"
    Image.fromarray(photos["coffee"]).resize((160, 120)).save(src)
    res = CliRunner().invoke(app, ["explain", str(src), "-m", "gradcam", "--layer", "stage9", "--device", "cpu",
                                   "--out", str(tmp_path / "o.png")])
    assert res.exit_code == 2 and "unknown --layer 'stage9'" in res.output
    res = CliRunner().invoke(app, ["explain", str(src), "-m", "gradcam", "--layer", "stage2", "--device", "cpu",
                                   "--out", str(tmp_path / "o.png")])
    assert res.exit_code == 0, res.output
    assert "predicted class explained" in res.output
