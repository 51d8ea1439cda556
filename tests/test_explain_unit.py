"""Explain: hand-computed results on fake backends and tiny fixed-weight models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from nsfwlab import ConfigError, Detector, ImageError, PreprocessConfig
from nsfwlab.explain import (
    Deconvnet,
    GradCAM,
    GuidedBackprop,
    IntegratedGradients,
    LogitMargin,
    NsfwLogit,
    NsfwProbability,
    Occlusion,
    SlidingWindow,
    make_target,
)
from nsfwlab.explain._windows import average_over_boxes, window_grid, window_starts
from nsfwlab.explain.gradients import DifferentiablePreprocess, TargetModel, reduce_channels, resized_tensor
from nsfwlab.explain.overlay import attach_scale, blend, colorize, labelled_grid, normalize, overlay_with_scale
from nsfwlab.preprocess import finish_resized, preprocess_rgb
from synthetic import RedFraction

#: No JPEG round trip: with a 256x256 image the network input is exactly the central crop.
NOJPEG = PreprocessConfig(jpeg_roundtrip=False)
RED = np.array([230, 20, 20], dtype=np.uint8)
GREY = np.array([128, 128, 128], dtype=np.uint8)




def red_square_image(top: int = 64, left: int = 64, size: int = 32) -> np.ndarray:
    img = np.broadcast_to(GREY, (256, 256, 3)).copy()
    img[top : top + size, left : left + size] = RED
    return img


@pytest.fixture
def fake_detector():
    det = Detector(RedFraction(), preprocess=NOJPEG, batch_size=8, workers=2)
    yield det
    det.close()


# -- targets -------------------------------------------------------------------------------------
def test_targets_by_hand():
    logits = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    p = 1 / (1 + np.exp(-2.0))
    assert NsfwProbability()(logits).tolist() == pytest.approx([p, 0.5], abs=1e-6)
    assert NsfwLogit()(logits).tolist() == [3.0, 0.0]
    assert LogitMargin()(logits).tolist() == [2.0, 0.0]
    assert LogitMargin().from_probabilities(np.array([p, 0.5])) == pytest.approx([2.0, 0.0], abs=1e-9)
    assert NsfwProbability().from_probabilities(np.array([0.25])) == pytest.approx([0.25])
    composed = -(2.0 * LogitMargin()) + NsfwLogit()
    assert composed(logits).tolist() == pytest.approx([-4.0 + 3.0, 0.0])
    assert (-NsfwProbability()).from_probabilities(np.array([0.3])) == pytest.approx([-0.3])


def test_target_errors():
    with pytest.raises(ConfigError, match="needs the model's logits"):
        NsfwLogit().from_probabilities(np.array([0.5]))
    with pytest.raises(ConfigError, match="unknown target"):
        make_target("porn-score")
    assert isinstance(make_target("logit-margin"), LogitMargin)
    assert isinstance(make_target(None), NsfwProbability)


# -- window geometry -----------------------------------------------------------------------------
def test_window_starts_cover_the_edge():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(10, 4, 4) == [0, 4, 6]
    assert window_starts(3, 8, 2) == [0]
    boxes = window_grid(5, 7, 4, 3)
    covered = np.zeros((5, 7), bool)
    for t, left, b, r in boxes:
        covered[t:b, left:r] = True
    assert covered.all()
    with pytest.raises(ConfigError, match="at least 1 pixel"):
        window_grid(5, 5, 0, 1)


def test_average_over_boxes_by_hand():
    heat = average_over_boxes([1.0, 3.0], [(0, 0, 2, 2), (1, 1, 3, 3)], 3, 3)
    expected = np.array([[1, 1, 0], [1, 2, 3], [0, 3, 3]], dtype=np.float32)
    np.testing.assert_array_equal(heat, expected)


# -- black-box methods on a fake backend ---------------------------------------------------------
def test_occlusion_by_hand(fake_detector):
    img = red_square_image(64, 64, 32)
    before = img.copy()
    p0 = 32 * 32 / 224**2
    assert fake_detector.nsfw_score(img) == pytest.approx(p0, abs=1e-6)
    heat = Occlusion(fake_detector, box=32, stride=32, fill="black").explain(img)
    expected = np.zeros((256, 256), np.float32)
    expected[64:96, 64:96] = p0
    np.testing.assert_allclose(heat, expected, atol=1e-6)
    np.testing.assert_array_equal(img, before)  # the input is not modified


def test_occlusion_half_covered_square(fake_detector):
    # Stride 16, box 32, square at 64..96. Along each axis a pixel in 72..80 is covered by the
    # boxes starting at 48 and 64, which overlap the square by 16 and 32 pixels (80..88: 64 and 80,
    # 32 and 16). So 4 boxes cover it, hiding 16x16, 16x32, 32x16 and 32x32 red pixels: the mean
    # drop is ((16 + 32) / 2)^2 / 224^2 = p0 * (24 / 32)^2.
    img = red_square_image(64, 64, 32)
    p0 = 32 * 32 / 224**2
    heat = Occlusion(fake_detector, box=32, stride=16, fill="black").explain(img)
    assert heat[72:88, 72:88] == pytest.approx(np.full((16, 16), p0 * (24 / 32) ** 2), abs=1e-6)
    assert heat[0:40, 0:40].max() == 0.0
    assert heat[200:, 200:].max() == 0.0


def test_occlusion_counts_and_progress(fake_detector):
    calls: list[int] = []
    occ = Occlusion(fake_detector, box=64, stride=64)
    occ.explain(red_square_image(), progress=calls.append)
    assert sum(calls) == occ.count(256, 256) + 1 == 17


def test_sliding_window_by_hand(fake_detector):
    # Four 128-crops; only the top-left one holds the square, which the 2x upscale makes 64x64
    # at (128..192, 128..192) of the 256 canvas: inside the 224 crop, so p = 64^2 / 224^2.
    img = red_square_image(64, 64, 32)
    heat = SlidingWindow(fake_detector, window=128, stride=128).explain(img)
    p = 64 * 64 / 224**2
    assert heat[:128, :128] == pytest.approx(np.full((128, 128), p), rel=0.02)
    assert heat[128:, :].max() == 0.0 and heat[:, 128:].max() == 0.0


@pytest.mark.parametrize("size", [(1200, 800), (512, 512), (100, 70), (300, 257)])
def test_occluded_copies_are_exact(photos, size):
    # The occlusion path (in-place scratch copy, resized, restored) must give exactly the network
    # input of the fully preprocessed occluded image, at random boxes (including the edges).
    from PIL import Image

    from nsfwlab.explain.occlusion import LocalResizer

    img = Image.fromarray(photos["coffee"]).resize(size, Image.Resampling.BICUBIC)
    filler = Image.new("RGB", img.size, (123, 117, 104))
    resizer = LocalResizer(img, filler, 256)
    base = np.asarray(img)
    rng = np.random.default_rng(sum(size))
    w, h = size
    boxes = [(0, 0, min(h, 20), min(w, 20)), (h - 15, w - 15, h, w)]
    for _ in range(25):
        bh, bw = int(rng.integers(1, h // 2)), int(rng.integers(1, w // 2))
        t, left = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        boxes.append((t, left, t + bh, left + bw))
    for t, left, b, r in boxes:
        occluded = base.copy()
        occluded[t:b, left:r] = (123, 117, 104)
        expected = preprocess_rgb(Image.fromarray(occluded))
        np.testing.assert_array_equal(finish_resized(resizer((t, left, b, r)), PreprocessConfig()), expected)
    np.testing.assert_array_equal(np.asarray(img), base)  # the source image is restored/untouched


def test_black_box_errors(fake_detector):
    with pytest.raises(ConfigError, match="box must be at least 1 pixel"):
        Occlusion(fake_detector, box=0)
    with pytest.raises(ConfigError, match="unknown fill 'purple'; choose one of: mean, black, grey, blur"):
        Occlusion(fake_detector, fill="purple")
    with pytest.raises(ConfigError, match="window must be at least 1 pixel"):
        SlidingWindow(fake_detector, window=0)
    with pytest.raises(ConfigError, match="logits"):
        Occlusion(fake_detector).explain(red_square_image(), target="nsfw-logit")
    with pytest.raises(ImageError) as info:
        SlidingWindow(fake_detector).explain(b"not an image at all")
    assert "bytes" in str(info.value)


# -- tiny fixed-weight torch models --------------------------------------------------------------
class OneConv(nn.Module):
    """x -> relu(conv1x1(x)) (K channels) -> spatial mean -> nsfw logit = v . mean, sfw logit = 0."""

    def __init__(self, w: list[list[float]], b: list[float], v: list[float], relu: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, len(w), 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor(w).view(len(w), 3, 1, 1))
            self.conv.bias.copy_(torch.tensor(b))
        self.relu = nn.ReLU() if relu else nn.Identity()
        self.v = torch.tensor(v)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x))

    def forward_head(self, a: torch.Tensor) -> torch.Tensor:
        nsfw = (a.mean(dim=(2, 3)) * self.v).sum(dim=1)
        return torch.stack([torch.zeros_like(nsfw), nsfw], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _net_input(img: np.ndarray) -> np.ndarray:
    """The network input (224, 224, 3) BGR of a 256x256 image under NOJPEG, by hand."""
    return img[16:240, 16:240, ::-1].astype(np.float64) - np.array([104.0, 117.0, 123.0])


def _two_tone_image() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    img[:, :128] = (200, 60, 30)
    return img


def test_differentiable_preprocess_matches_the_exact_pipeline(photos):
    from PIL import Image

    for name in ("astronaut", "coffee"):
        img = Image.fromarray(photos[name])
        exact = preprocess_rgb(img)
        ours = DifferentiablePreprocess()(resized_tensor(img, PreprocessConfig()))
        np.testing.assert_array_equal(ours[0].permute(1, 2, 0).numpy(), exact)


def test_straight_through_jpeg_gradient_is_identity():
    x = (torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 255).requires_grad_()
    (g,) = torch.autograd.grad(DifferentiablePreprocess()(x).sum(), x)
    expected = torch.zeros_like(x)
    expected[:, :, 16:240, 16:240] = 1.0
    torch.testing.assert_close(g, expected)


def test_gradcam_by_hand():
    # One channel, no ReLU in features: A = w.x + b; dT/dA = v / HW; cam = relu(v/HW * A).
    w, b, v = [[0.02, -0.01, 0.005]], [0.3], [2.0]
    model = OneConv(w, b, v, relu=False)
    img = _two_tone_image()
    cam = GradCAM(model, preprocess=NOJPEG).cam(resized_tensor(_pil(img), NOJPEG), NsfwLogit())
    a = _net_input(img) @ np.array(w[0]) + b[0]
    expected = np.zeros((256, 256))
    expected[16:240, 16:240] = np.maximum(a * v[0] / 224**2, 0)
    np.testing.assert_allclose(cam, expected, rtol=1e-4, atol=1e-9)
    heat = GradCAM(model, preprocess=NOJPEG).explain(img, target="nsfw-logit")
    assert heat.shape == (256, 256)


def _pil(img: np.ndarray):
    from PIL import Image

    return Image.fromarray(img)


def _bgr_grad_to_rgb(g_bgr: np.ndarray) -> np.ndarray:
    """(224, 224, 3) gradient w.r.t. the BGR crop -> (3, 256, 256) w.r.t. the RGB canvas."""
    out = np.zeros((3, 256, 256))
    out[:, 16:240, 16:240] = g_bgr[:, :, ::-1].transpose(2, 0, 1)
    return out


def test_guided_backprop_and_deconvnet_by_hand():
    # Two channels with v = (+1, -1). At the ReLU output dT/dA_k = v_k / HW.
    # guided backprop keeps positive gradients where the unit was active: channel 0 where z_0 > 0;
    # deconvnet keeps positive gradients regardless of the forward pass: channel 0 everywhere.
    # Powers of two: float32 computes z exactly on integer pixels, so the signs match float64.
    w = [[2**-5, -(2**-6), 2**-7], [2**-7, 2**-7, 2**-7]]
    b, v = [0.0, 0.5], [1.0, -1.0]
    model = OneConv(w, b, v)
    img = _two_tone_image()
    x = _net_input(img)
    z0 = x @ np.array(w[0]) + b[0]
    assert (z0 > 0).any() and (z0 < 0).any()  # both cases occur
    hw = 224**2
    guided = (z0 > 0)[:, :, None] * np.array(w[0]) / hw
    deconv = np.broadcast_to(np.array(w[0]) / hw, x.shape)
    got_g = GuidedBackprop(model, preprocess=NOJPEG).attributions(img, target="nsfw-logit")
    got_d = Deconvnet(model, preprocess=NOJPEG).attributions(img, target="nsfw-logit")
    np.testing.assert_allclose(got_g, _bgr_grad_to_rgb(guided), atol=1e-10)
    np.testing.assert_allclose(got_d, _bgr_grad_to_rgb(deconv), atol=1e-10)


def test_integrated_gradients_of_a_linear_model_by_hand():
    # T(x) = v . mean(Wx + b) is linear: IG = (x - baseline) * gradient exactly, and sums to
    # T(x) - T(baseline) (completeness).
    w, b, v = [[0.02, -0.01, 0.005]], [0.3], [2.0]
    model = OneConv(w, b, v, relu=False)
    img = _two_tone_image()
    ig = IntegratedGradients(model, preprocess=NOJPEG, steps=4, baseline="black")
    attr = ig.attributions(img, target="nsfw-logit")
    grad = _bgr_grad_to_rgb(np.broadcast_to(np.array(w[0]) * v[0] / 224**2, (224, 224, 3)))
    expected = img.transpose(2, 0, 1).astype(np.float64) * grad
    np.testing.assert_allclose(attr, expected, rtol=1e-4, atol=1e-9)
    t_x = ig.score(img, "nsfw-logit")
    t_0 = ig.score(np.zeros_like(img), "nsfw-logit")
    assert attr.sum() == pytest.approx(t_x - t_0, rel=1e-4)
    assert reduce_channels(attr, "signed").shape == (256, 256)


def test_gradient_heatmaps_have_the_image_size_and_leave_parameters_alone():
    model = OneConv([[0.02, -0.01, 0.005]], [0.1], [1.0])
    img = np.random.default_rng(1).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    for cls in (GradCAM, GuidedBackprop, Deconvnet):
        heat = cls(model).explain(img)
        assert heat.shape == (90, 130) and heat.dtype == np.float32 and np.isfinite(heat).all()
    heat = IntegratedGradients(model, steps=3).explain(img)
    assert heat.shape == (90, 130)
    assert all(p.grad is None for p in model.parameters())


def test_target_model_matches_detector(detector, torch_model, photos):
    wrapped = TargetModel(torch_model, NsfwProbability())
    for name in ("astronaut", "chelsea"):
        img = _pil(photos[name])
        with torch.no_grad():
            ours = float(wrapped(resized_tensor(img, PreprocessConfig()))[0, 0])
        assert ours == pytest.approx(detector.nsfw_score(img), abs=1e-5)


def test_gradcam_needs_forward_features():
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ConfigError, match="forward_features"):
        GradCAM(model).explain(np.zeros((32, 32, 3), np.uint8))


# -- overlays ------------------------------------------------------------------------------------
def test_normalize_and_blend():
    heat = np.array([[0.0, 1.0], [2.0, 4.0]])
    norm, lo, hi = normalize(heat)
    assert (lo, hi) == (0.0, 4.0)
    np.testing.assert_allclose(norm, [[0, 0.25], [0.5, 1.0]])
    assert normalize(np.ones((2, 2)))[0].max() == 0.0
    img = np.full((2, 2, 3), 100, np.uint8)
    np.testing.assert_array_equal(blend(img, heat, alpha=0.0), img)
    np.testing.assert_array_equal(blend(img, heat, alpha=1.0, cmap="gray"), colorize(norm, "gray"))
    assert blend(img, heat, alpha=1.0, cmap="gray")[1, 1].tolist() == [255, 255, 255]
    with pytest.raises(ConfigError):
        blend(img, np.zeros((3, 3)))
    with pytest.raises(ConfigError, match="colormap"):
        blend(img, heat, cmap="no-such-map")
    with pytest.raises(ConfigError, match="NaN"):
        normalize(np.array([[np.nan, 1.0]]))


def test_overlay_keeps_the_image_resolution():
    img = np.random.default_rng(0).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    heat = np.linspace(0, 1, 120 * 200).reshape(120, 200)
    pic = overlay_with_scale(img, heat, alpha=0.4)
    assert pic.shape[0] == 120 and pic.shape[1] > 200
    np.testing.assert_array_equal(pic[:, :200], blend(img, heat, alpha=0.4))
    grid = labelled_grid([("a", img), ("b", img), ("c", img)], columns=2)
    assert grid.shape[1] == 400 and grid.shape[0] > 240
    tiny = img[:7, :5]
    pic = attach_scale(tiny, 0.0, 1.0)  # shorter than the scale: padded, pixels kept
    assert pic.shape[0] == 64
    np.testing.assert_array_equal(pic[:7, :5], tiny)
    assert (pic[7:, :5] == 255).all()


# -- public names and import cost ----------------------------------------------------------------
def test_public_names():
    import nsfwlab.explain as ex

    assert set(ex.__all__) == {
        "ALL_METHODS", "Baseline", "Censor", "CensorResult", "CensorStep", "Deconvnet", "ExplainCaps", "ExplainOptions",
        "Explainer", "Fill", "GradCAM", "GuidedBackprop", "IntegratedGradients", "LogitMargin", "Method",
        "NsfwLogit", "NsfwProbability", "Occlusion", "Reduction", "SlidingWindow", "Style", "Target",
        "TargetName", "blend", "explain_many", "hide", "labelled_grid", "make_explainer", "make_target",
        "overlay_with_scale", "torch_model_for",
    }
    for name in ex.__all__:
        assert getattr(ex, name) is not None
    with pytest.raises(AttributeError):
        ex.no_such_name  # noqa: B018


def test_gradient_explainers_apply_decode_limits():
    from nsfwlab import DecodeLimits, ImageTooLargeError

    model = OneConv([[0.02, -0.01, 0.005]], [0.1], [1.0])
    with pytest.raises(ImageTooLargeError):
        GradCAM(model, limits=DecodeLimits(max_pixels=100)).explain(np.zeros((20, 20, 3), np.uint8))


# -- the module given is never changed -----------------------------------------------------------
class LayeredConv(OneConv):
    """OneConv with named intermediate outputs (``conv``, ``relu``) for layer targets."""

    def forward_intermediates(self, x: torch.Tensor, names):
        from nsfwlab.model import forward_intermediates

        return forward_intermediates(self, x, names)


def _module_state(model: nn.Module) -> dict:
    """Everything an explainer could change on a module: tensors (identity, device, dtype,
    values, requires_grad, .grad), train/eval mode, and hooks of every kind on every submodule."""
    hooks = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return {
        "tensors": [(name, t.data_ptr(), t.device, t.dtype, t.requires_grad, t.grad, t.detach().clone())
                    for name, t in [*model.named_parameters(), *model.named_buffers()]],
        "modes": [m.training for m in model.modules()],
        "hooks": [len(getattr(m, h)) for m in model.modules() for h in hooks],
    }


def _assert_same_state(before: dict, after: dict) -> None:
    assert before["modes"] == after["modes"] and before["hooks"] == after["hooks"]
    for (n1, p1, d1, t1, r1, g1, v1), (n2, p2, d2, t2, r2, g2, v2) in zip(before["tensors"], after["tensors"],
                                                                          strict=True):
        assert (n1, p1, d1, t1, r1, g1) == (n2, p2, d2, t2, r2, g2)
        assert torch.equal(v1, v2)


def test_explaining_leaves_the_detectors_own_module_alone():
    from nsfwlab.backends import TorchBackend
    from nsfwlab.explain import ExplainOptions, make_explainer
    from nsfwlab.explain.methods import GRADIENT_METHODS
    from nsfwlab.objectives import Channel

    own = LayeredConv([[2**-5, -(2**-6), 2**-7], [2**-7, 2**-7, 2**-7]], [0.0, 0.5], [1.0, -1.0])
    det = Detector(TorchBackend(own), preprocess=NOJPEG)
    assert det.torch_model() is own  # the Detector hands out its own module (fp32, on the CPU)
    before = _module_state(own)
    img = _two_tone_image()
    score = det.nsfw_score(img)
    opts = ExplainOptions(steps=3)
    for method in sorted(GRADIENT_METHODS):
        explainer = make_explainer(method, det, options=opts)
        assert explainer.model is not own  # a private view ...
        assert all(p is q for p, q in zip(explainer.model.parameters(), own.parameters(), strict=True))  # ... sharing
        heat = explainer.explain(img, target="nsfw-logit")
        assert heat.shape == (256, 256) and np.isfinite(heat).all()
        if method != "gradcam":
            explainer.explain(img, target=Channel("relu", 0))  # forward hooks through forward_intermediates
        explainer.explain(img, target=ScoresMeanwhile(det, img, score))
        _assert_same_state(before, _module_state(own))
    assert det.nsfw_score(img) == score


class ScoresMeanwhile(NsfwLogit):
    """The NSFW logit, and on each evaluation a Detector.score through the Detector's own module,
    while the explainer's hooks are registered: a server scoring while its module is explained."""

    def __init__(self, det: Detector, img: np.ndarray, expected: float) -> None:
        self.det, self.img, self.expected = det, img, expected

    def __call__(self, logits, activations=None):
        assert self.det.nsfw_score(self.img) == self.expected
        return super().__call__(logits, activations)


def test_a_callers_module_is_copied_not_moved():
    # A float64 module in train mode: explanations run on an fp32, eval-mode copy; the caller's
    # module keeps its dtype, mode and tensors.
    args = ([[0.02, -0.01, 0.005]], [0.3], [2.0])
    model = OneConv(*args, relu=False).double().train()
    before = _module_state(model)
    ig = IntegratedGradients(model, preprocess=NOJPEG, steps=4)
    assert next(ig.model.parameters()).dtype == torch.float32 and not ig.model.training
    got = ig.attributions(_two_tone_image(), target="nsfw-logit")
    ref = IntegratedGradients(OneConv(*args, relu=False), preprocess=NOJPEG, steps=4)
    np.testing.assert_allclose(got, ref.attributions(_two_tone_image(), target="nsfw-logit"), rtol=1e-6)
    _assert_same_state(before, _module_state(model))


def test_another_device_gets_a_copy_there():
    # The "meta" device stands in for a GPU: nothing is computed on it, but every module that
    # must move lands there while the Detector's own module stays on the CPU.
    from nsfwlab.backends import TorchBackend
    from nsfwlab.explain import ExplainOptions, make_explainer, torch_model_for

    own = OneConv([[0.02, -0.01, 0.005]], [0.3], [2.0])
    det = Detector(TorchBackend(own), preprocess=NOJPEG)
    before = _module_state(own)
    on_meta = torch_model_for(det, "meta")
    assert on_meta is not own and next(on_meta.parameters()).device.type == "meta"
    assert torch_model_for(det, "meta") is on_meta  # one copy per device, kept by the Detector
    explainer = make_explainer("gradcam", det, options=ExplainOptions(device="meta"))
    assert next(explainer.model.parameters()).device.type == "meta"
    assert GradCAM(own, device="meta").model is not own
    _assert_same_state(before, _module_state(own))
    assert next(own.parameters()).device.type == "cpu"
    with pytest.raises(ConfigError, match="unknown device"):
        GradCAM(own, device="warp-drive")


# -- layer targets in gradient methods -----------------------------------------------------------
def test_integrated_gradients_of_a_channel_by_hand():
    # Channel 0 of the (linear) conv: T(x) = mean(w . x + b) over the 224 crop, so as for the
    # logit IG = (x - baseline) * w / 224^2 on the crop, and the attributions sum to T(x) - T(0).
    from nsfwlab.objectives import Channel, Neuron

    w = [[0.02, -0.01, 0.005], [0.5, 0.5, 0.5]]
    model = LayeredConv(w, [0.3, 0.0], [0.0, 0.0], relu=False)
    img = _two_tone_image()
    ig = IntegratedGradients(model, preprocess=NOJPEG, steps=4, baseline="black")
    target = Channel("conv", 0)
    attr = ig.attributions(img, target=target)
    grad = _bgr_grad_to_rgb(np.broadcast_to(np.array(w[0]) / 224**2, (224, 224, 3)))
    np.testing.assert_allclose(attr, img.transpose(2, 0, 1).astype(np.float64) * grad, rtol=1e-4, atol=1e-9)
    t_x = ig.score(img, target)
    assert t_x == pytest.approx(float((_net_input(img) @ np.array(w[0])).mean() + 0.3), rel=1e-5)
    assert attr.sum() == pytest.approx(t_x - ig.score(np.zeros_like(img), target), rel=1e-4)
    # A neuron: the centre position only (112, 112 of the crop), so only that pixel is attributed.
    attr = ig.attributions(img, target=Neuron("conv", 0))
    assert np.count_nonzero(np.abs(attr).sum(axis=0)) == 1 and np.abs(attr[:, 16 + 112, 16 + 112]).sum() > 0


def test_layer_targets_are_refused_where_they_cannot_work():
    from nsfwlab.objectives import Channel

    model = LayeredConv([[0.02, -0.01, 0.005]], [0.3], [2.0])
    with pytest.raises(ConfigError, match="Grad-CAM explains targets on the logits"):
        GradCAM(model, preprocess=NOJPEG).explain(_two_tone_image(), target=Channel("conv", 0))
    with pytest.raises(ConfigError, match="has no layer 'stage9'"):
        IntegratedGradients(model, preprocess=NOJPEG, steps=2).explain(_two_tone_image(),
                                                                       target=Channel("stage9", 0))
    with pytest.raises(ConfigError, match="forward_intermediates"):
        IntegratedGradients(OneConv([[0.02, -0.01, 0.005]], [0.3], [2.0]), steps=2).explain(
            _two_tone_image(), target=Channel("conv", 0))


# -- the preprocessing's own mean ----------------------------------------------------------------
class Recorder:
    """A fake backend that keeps every network input it is given (and scores 0.5)."""

    name = "fake-recorder"
    device = "cpu"
    model_version = "fake"

    def __init__(self) -> None:
        self.inputs: list[np.ndarray] = []

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.inputs.extend(batch.copy())
        return np.full((len(batch), 2), 0.5, np.float32)


def test_mean_fill_is_the_preprocessings_mean():
    # A checkpoint with its own mean: the occluded boxes must reach the network as exact zeros.
    config = PreprocessConfig(jpeg_roundtrip=False, mean_bgr=(20.0, 140.0, 230.0))
    rec = Recorder()
    det = Detector(rec, preprocess=config, batch_size=4)
    img = np.random.default_rng(2).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    occ = Occlusion(det, box=64, stride=64, fill="mean")
    occ.explain(img)
    boxes = window_grid(256, 256, 64, 64)
    assert len(rec.inputs) == len(boxes) + 1
    np.testing.assert_array_equal(rec.inputs[0], preprocess_rgb(_pil(img), config))
    for (t, left, b, r), x in zip(boxes, rec.inputs[1:], strict=True):
        inside = x[max(t - 16, 0) : b - 16, max(left - 16, 0) : r - 16]
        assert inside.size and not inside.any()
        assert x.any()  # the rest of the image is still there
    det.close()


def test_integrated_gradients_mean_baseline_is_the_preprocessings_mean():
    from nsfwlab.explain import ExplainOptions, make_explainer

    config = PreprocessConfig(jpeg_roundtrip=False, mean_bgr=(20.0, 140.0, 230.0))
    det = Detector(RedFraction(), preprocess=config)
    ig = make_explainer("integrated-gradients", det, options=ExplainOptions(baseline="mean"),
                        model=OneConv([[0.02, -0.01, 0.005]], [0.3], [2.0]))
    x = resized_tensor(_pil(_two_tone_image()), config)
    baseline = ig.baseline_tensor(x)
    assert baseline[0, :, 0, 0].tolist() == [230.0, 140.0, 20.0]
    assert not DifferentiablePreprocess(config)(baseline).any()


def test_unknown_options_are_config_errors(fake_detector):
    from nsfwlab.explain import make_explainer

    model = OneConv([[0.02, -0.01, 0.005]], [0.3], [2.0])
    with pytest.raises(ConfigError, match="unknown method 'x-ray'"):
        make_explainer("x-ray", fake_detector)
    with pytest.raises(ConfigError, match="unknown reduction 'median'"):
        GuidedBackprop(model, reduction="median")
    with pytest.raises(ConfigError, match="unknown baseline 'white'; choose one of: black, mean"):
        IntegratedGradients(model, baseline="white")
