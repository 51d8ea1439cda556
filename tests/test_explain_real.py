"""Explain and censor on the real open_nsfw model, on a synthetic image where one abstract,
optimised patch drives the score (an adversarial noise patch on a smooth synthetic background:
no real-world content at all). The localising methods must peak on that patch, and censor must
bring the image below the target."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from nsfwlab.explain import (
    ALL_METHODS,
    Censor,
    ExplainOptions,
    GradCAM,
    GuidedBackprop,
    Method,
    Occlusion,
    SlidingWindow,
    explain_many,
)
from nsfwlab.explain.gradients import TargetModel
from nsfwlab.explain.targets import LogitMargin

TOP, LEFT, SIZE = 40, 120, 80  # the patch, in pixels of the 256x256 image


def _background(rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:256, 0:256] / 255.0
    bg = np.stack([60 + 80 * xx, 110 + 60 * yy, 170 - 50 * xx * yy], axis=-1)
    return np.clip(bg + rng.normal(0, 3, bg.shape), 0, 255).astype(np.uint8)


def make_patched_image(model: torch.nn.Module, steps: int = 20, crops: int = 2, seed: int = 0) -> np.ndarray:
    """Optimise one SIZE x SIZE patch toward a high NSFW logit margin through the straight-through
    exact pipeline, averaged over random rescaled crops that contain the patch (so it also
    drives the score of sliding-window crops)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    base = _background(rng)
    wrapped = TargetModel(model, LogitMargin())
    param = torch.zeros(1, 3, SIZE, SIZE, requires_grad=True)
    opt = torch.optim.Adam([param], lr=0.5)
    x0 = torch.from_numpy(base.astype(np.float32)).permute(2, 0, 1)[None]
    for _ in range(steps):
        x = x0.clone()
        x[:, :, TOP : TOP + SIZE, LEFT : LEFT + SIZE] = 255 * torch.sigmoid(param)
        views = [x]
        for _ in range(crops):
            c = int(rng.integers(SIZE + 16, 257))
            t = int(rng.integers(max(0, TOP + SIZE - c), min(TOP, 256 - c) + 1))
            left = int(rng.integers(max(0, LEFT + SIZE - c), min(LEFT, 256 - c) + 1))
            views.append(torch.nn.functional.interpolate(x[:, :, t : t + c, left : left + c], size=(256, 256),
                                                         mode="bilinear", antialias=True, align_corners=False))
        loss = -wrapped(torch.cat(views)).mean()
        (param.grad,) = torch.autograd.grad(loss, [param])  # no gradients into the model's weights
        opt.step()
    out = base.copy()
    patch = (255 * torch.sigmoid(param.detach()))[0].permute(1, 2, 0).round().to(torch.uint8).numpy()
    out[TOP : TOP + SIZE, LEFT : LEFT + SIZE] = patch
    return out


@pytest.fixture(scope="module")
def patched(torch_model, detector) -> np.ndarray:
    img = make_patched_image(torch_model)
    assert all(p.grad is None for p in torch_model.parameters())  # the shared model is untouched
    return img


def _in_patch(y: int, x: int, margin: int = 0) -> bool:
    return TOP - margin <= y < TOP + SIZE + margin and LEFT - margin <= x < LEFT + SIZE + margin


def _peak(heat: np.ndarray) -> tuple[int, int]:
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return int(y), int(x)


def _contrast(heat: np.ndarray) -> float:
    inside = heat[TOP : TOP + SIZE, LEFT : LEFT + SIZE]
    outside_mean = (heat.sum() - inside.sum()) / (heat.size - inside.size)
    return float(inside.mean() / max(outside_mean, 1e-12))


def test_the_patch_drives_the_score(patched, detector):
    background = _background(np.random.default_rng(0))
    assert detector.nsfw_score(background) < 0.05
    assert detector.nsfw_score(patched) > 0.9


def test_occlusion_peaks_on_the_patch(patched, detector):
    heat = Occlusion(detector, box=32, stride=16).explain(patched)
    assert heat.shape == (256, 256)
    assert _in_patch(*_peak(heat))
    assert _contrast(heat) > 5


def test_sliding_window_peaks_on_the_patch(patched, detector):
    heat = SlidingWindow(detector, window=128, stride=32).explain(patched)
    assert _in_patch(*_peak(heat), margin=16)
    assert _contrast(heat) > 1.5


def test_gradcam_peaks_on_the_patch(patched, torch_model):
    heat = GradCAM(torch_model).explain(patched)
    assert _in_patch(*_peak(heat))
    assert _contrast(heat) > 5


def test_guided_backprop_concentrates_on_the_patch(patched, torch_model):
    heat = GuidedBackprop(torch_model).explain(patched)
    assert _contrast(heat) > 3


def test_censor_reaches_the_target(patched, detector):
    result = Censor(detector).censor(patched, target=0.2)
    assert result.score_before > 0.9
    assert result.reached and result.score_after < 0.2
    assert result.score_after == pytest.approx(detector.nsfw_score(result.image), abs=1e-6)
    # What was hidden is mostly the patch.
    assert result.mask[TOP : TOP + SIZE, LEFT : LEFT + SIZE].sum() > 0.6 * result.mask.sum()
    assert result.hidden_fraction < 0.2


def test_all_methods_at_the_image_resolution(photos, detector, torch_model):
    img = np.asarray(Image.fromarray(photos["chelsea"]).resize((120, 90)))
    opts = ExplainOptions(box=30, stride=15, window=45, window_stride=15, steps=4)
    heats = explain_many(img, [Method.ALL], detector, options=opts, model=torch_model)
    assert list(heats) == list(ALL_METHODS)
    for heat in heats.values():
        assert heat.shape == (90, 120) and heat.dtype == np.float32 and np.isfinite(heat).all()


# -- the CLI -------------------------------------------------------------------------------------
runner = CliRunner()


def _app():
    from nsfwlab.cli import app

    return app


def test_cli_explain_one_method(tmp_path, patched):
    src = tmp_path / "patched.png"
    Image.fromarray(patched).save(src)
    out, heat = tmp_path / "overlay.png", tmp_path / "heat.npy"
    res = runner.invoke(_app(), ["explain", str(src), "--method", "occlusion", "--box", "64", "--stride", "32",
                                 "--out", str(out), "--save-heatmap", str(heat), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "occlusion" in res.output and "score 0.9" in res.output
    with Image.open(out) as pic:
        assert pic.height == 256 and pic.width > 256  # the image at its resolution, plus a scale
    arr = np.load(heat)
    assert arr.shape == (256, 256) and _in_patch(*_peak(arr))


def test_cli_explain_all(tmp_path, photos):
    src = tmp_path / "cat.jpg"
    Image.fromarray(photos["chelsea"]).resize((100, 70)).save(src)
    out, heat = tmp_path / "grid.png", tmp_path / "heat.npz"
    res = runner.invoke(_app(), ["explain", str(src), "--out", str(out), "--save-heatmap", str(heat),
                                 "--box", "35", "--stride", "35", "--window", "50", "--window-stride", "25",
                                 "--steps", "2", "--no-progress"])
    assert res.exit_code == 0, res.output
    with np.load(heat) as z:
        assert sorted(z.files) == sorted(m.value for m in ALL_METHODS)
        assert all(z[k].shape == (70, 100) for k in z.files)
    with Image.open(out) as pic:
        assert pic.width > 4 * 100 and pic.height > 2 * 70  # 7 panels in a 4-column grid + scale


def test_cli_explain_errors(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    res = runner.invoke(_app(), ["explain", str(bad), "--out", str(tmp_path / "o.png"), "-m", "gradcam"])
    assert res.exit_code == 1
    assert "error:" in res.output and "bad.jpg" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o.png").exists()
    res = runner.invoke(_app(), ["censor", str(tmp_path / "missing.png"), "--out", str(tmp_path / "c.png")])
    assert res.exit_code == 1 and "missing.png" in res.output and "no such file" in res.output
    res = runner.invoke(_app(), ["explain", str(bad), "--out", str(tmp_path / "o.jpg")])
    assert res.exit_code == 2 and "PNG" in res.output
    res = runner.invoke(_app(), ["explain", str(bad), "--out", str(tmp_path / "o.png"),
                                 "--save-heatmap", str(tmp_path / "h.npy")])
    assert res.exit_code == 2 and ".npz" in res.output
    res = runner.invoke(_app(), ["explain", str(bad), "--out", str(tmp_path / "o.png"), "-m", "occlusion",
                                 "--target", "nsfw-logit"])
    assert res.exit_code == 2


def test_cli_censor(tmp_path, patched):
    src = tmp_path / "patched.png"
    Image.fromarray(patched).save(src)
    out, mask = tmp_path / "censored.png", tmp_path / "mask.png"
    res = runner.invoke(_app(), ["censor", str(src), "--out", str(out), "--target", "0.2", "--style", "pixelate",
                                 "--save-mask", str(mask), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "reached" in res.output and "NOT" not in res.output
    with Image.open(out) as pic:
        assert pic.size == (256, 256)
        censored = np.asarray(pic.convert("RGB"))
    from nsfwlab import Detector

    with Detector(device="cpu") as det:
        assert det.nsfw_score(censored) < 0.2
    with Image.open(mask) as m:
        assert m.size == (256, 256) and np.asarray(m).max() == 255


def test_censor_with_gradcam_and_box(patched, detector, torch_model):
    result = Censor(detector, explainer=GradCAM(torch_model), style="box").censor(patched, target=0.2)
    assert result.reached and result.score_after < 0.2
    assert result.mask[TOP : TOP + SIZE, LEFT : LEFT + SIZE].sum() > 0.5 * result.mask.sum()


def test_torch_model_for_follows_the_detector(tmp_path, torch_model):
    from nsfwlab import ConfigError, Detector
    from nsfwlab.backends import OnnxRuntimeBackend, TorchBackend
    from nsfwlab.explain import torch_model_for

    det = Detector(TorchBackend(torch_model))
    assert torch_model_for(det) is det.backend.model  # the detector's own fp32 CPU model

    class Foreign(OnnxRuntimeBackend):
        def __init__(self) -> None:
            self.model_version = "finetuned-abc"

    with pytest.raises(ConfigError, match=r"\.pt checkpoint"):
        torch_model_for(Detector(Foreign()))


def test_gradient_methods_refuse_a_missing_cuda(torch_model):
    from nsfwlab import BackendUnavailableError

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(BackendUnavailableError):
        GradCAM(torch_model, device="cuda")


def test_cli_censor_with_gradcam(tmp_path, patched):
    src = tmp_path / "patched.png"
    Image.fromarray(patched).save(src)
    res = runner.invoke(_app(), ["censor", str(src), "--out", str(tmp_path / "c.png"), "-m", "gradcam",
                                 "--style", "box", "--no-progress"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(_app(), ["censor", str(src), "--out", str(tmp_path / "c.png"), "-m", "all"])
    assert res.exit_code == 2


def test_progress_reports_every_unit_of_work(photos, detector, torch_model):
    from nsfwlab.explain.methods import work_units

    img = np.asarray(Image.fromarray(photos["chelsea"]).resize((80, 60)))
    opts = ExplainOptions(box=20, stride=10, window=30, window_stride=10, steps=2)
    from nsfwlab.explain import make_explainer

    for m in ALL_METHODS:
        e = make_explainer(m, detector, options=opts, model=torch_model)
        done: list[int] = []
        e.explain(img, progress=done.append)
        assert sum(done) == work_units(m, e, 60, 80) >= 1


def test_gradient_methods_explain_a_channel(photos, torch_model):
    from nsfwlab.explain import IntegratedGradients
    from nsfwlab.objectives import Channel

    img = np.asarray(Image.fromarray(photos["chelsea"]).resize((80, 60)))
    target = Channel("stage3", 5)
    heat = IntegratedGradients(torch_model, steps=2).explain(img, target=target)
    assert heat.shape == (60, 80) and np.isfinite(heat).all() and heat.max() > 0
    assert GuidedBackprop(torch_model).score(img, target) > 0  # a post-ReLU channel mean


def test_cli_explain_an_objective(tmp_path, photos):
    src = tmp_path / "cat.png"
    Image.fromarray(photos["chelsea"]).resize((64, 48)).save(src)
    res = runner.invoke(_app(), ["explain", str(src), "-m", "guided-backprop", "--target", "channel:stage3:5",
                                 "--out", str(tmp_path / "o.png"), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "channel:stage3:5 explained" in res.output
    res = runner.invoke(_app(), ["explain", str(src), "-m", "gradcam", "--target", "channel:stage3:5",
                                 "--out", str(tmp_path / "o.png"), "--no-progress"])
    assert res.exit_code == 2 and "Grad-CAM" in res.output
