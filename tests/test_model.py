"""The PyTorch port: the pure weight remap, the architecture, and parity with the reference graph."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from nsfwlab.errors import ConfigError, WeightsError
from nsfwlab.model import (
    STAGES,
    VGG16,
    OnnxConv,
    OpenNSFW,
    StagedNetwork,
    caffe_layer_name,
    read_onnx_graph,
    remap_onnx_weights,
)
from nsfwlab.preprocess import preprocess, stack_batch
from nsfwlab.weights import ONNX_SHA256, bundled_onnx_path, resolve_onnx_path, verify_sha256


def test_remap_on_a_tiny_hand_made_graph() -> None:
    w1, b1 = np.full((64, 3, 7, 7), 0.5, np.float32), np.arange(64, dtype=np.float32)
    w2, b2 = np.ones((32, 32, 3, 3), np.float32), np.zeros(32, np.float32)
    w3, b3 = np.ones((128, 64, 1, 1), np.float32), np.ones(128, np.float32)
    fc_w = np.arange(2048, dtype=np.float32).reshape(1024, 2)
    inits = {
        "Conv__1_weights_fused_bn": w1, "Conv__1_bias_fused_bn": b1,
        "Conv__2_w": w2, "Conv__2_b": b2,
        "p_w": w3, "p_b": b3,
        "fc_nsfw/MatMul/ReadVariableOp:0": fc_w,
        "fc_nsfw/BiasAdd/ReadVariableOp:0": np.array([1.0, -1.0], np.float32),
    }
    convs = [
        OnnxConv("bn_1/FusedBatchNormV3:0", "Conv__1_weights_fused_bn", "Conv__1_bias_fused_bn"),
        OnnxConv("bn_stage0_block0_branch2b/FusedBatchNormV3:0", "Conv__2_w", "Conv__2_b"),
        OnnxConv("bn_stage0_block0_proj_shortcut/FusedBatchNormV3:0", "p_w", "p_b"),
    ]
    state = remap_onnx_weights(convs, inits)
    assert set(state) == {
        "conv_1.weight", "conv_1.bias",
        "stage0_block0.branch2b.weight", "stage0_block0.branch2b.bias",
        "stage0_block0.proj_shortcut.weight", "stage0_block0.proj_shortcut.bias",
        "fc_nsfw.weight", "fc_nsfw.bias",
    }
    assert torch.equal(state["conv_1.bias"], torch.arange(64, dtype=torch.float32))
    # MatMul (in, out) becomes Linear (out, in)
    assert state["fc_nsfw.weight"].shape == (2, 1024)
    assert state["fc_nsfw.weight"][1, 3].item() == fc_w[3, 1]


def test_remap_reports_missing_tensors() -> None:
    with pytest.raises(WeightsError, match="missing"):
        remap_onnx_weights([OnnxConv("bn_1/FusedBatchNormV3:0", "a", "b")], {})
    with pytest.raises(WeightsError, match="unexpected"):
        remap_onnx_weights([OnnxConv("relu_1:0", "a", "b")], {"a": np.zeros(1), "b": np.zeros(1)})


def test_caffe_layer_names() -> None:
    assert caffe_layer_name("stage1_block0.branch2a") == "conv_stage1_block0_branch2a"
    assert caffe_layer_name("stage3_block0.proj_shortcut") == "conv_stage3_block0_proj_shortcut"
    assert caffe_layer_name("conv_1") == "conv_1"


def test_architecture_matches_the_prototxt() -> None:
    net = OpenNSFW().eval()
    assert sum(p.numel() for p in net.parameters()) == 5_891_266
    convs = [n for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 53
    proto = (Path(__file__).resolve().parents[2] / "shared/reference/open_nsfw_deploy.prototxt")
    if proto.is_file():  # every Caffe convolution has its module here
        text = proto.read_text()
        for name in convs:
            assert f'name: "{caffe_layer_name(name)}"' in text, name
    x = torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        stem = net.pool1(net.conv_1(x))
        assert stem.shape == (1, 64, 56, 56)  # Caffe's ceil rounding: 112 -> 56
        feats = net.forward_features(x)
        assert feats.shape == (1, 1024, 7, 7)
        assert net.forward_head(feats).shape == (1, 2)
    assert [b for b, _, _ in STAGES] == [3, 4, 6, 3]
    s1 = net.stage1_block0
    assert s1.branch2a.stride == (2, 2) and s1.proj_shortcut.stride == (2, 2)
    assert s1.branch2b.stride == (1, 1)


def test_bundled_weights_are_verified(tmp_path: Path) -> None:
    path = bundled_onnx_path()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == ONNX_SHA256
    assert resolve_onnx_path() == path
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(path.read_bytes()[:-1] + b"\x00")
    with pytest.raises(WeightsError, match="sha256"):
        verify_sha256(fake)
    with pytest.raises(WeightsError, match="does not exist"):
        verify_sha256(tmp_path / "missing.onnx")


def test_real_graph_remap_covers_every_parameter() -> None:
    convs, inits = read_onnx_graph(bundled_onnx_path())
    assert len(convs) == 53
    state = remap_onnx_weights(convs, inits)
    assert set(state) == set(OpenNSFW().state_dict())


def test_torch_port_matches_reference_graph_on_photos(torch_model, onnx_session, photo_paths) -> None:
    batch = stack_batch([preprocess(p) for p in photo_paths])
    ref = onnx_session.run(None, {"input:0": batch})[0]
    with torch.no_grad():
        ours = torch_model.probabilities(torch.from_numpy(batch).permute(0, 3, 1, 2)).numpy()
    assert np.abs(ours - ref).max() <= 1e-5
    np.testing.assert_allclose(ours.sum(axis=1), 1.0, atol=1e-6)


def test_torch_port_matches_on_random_inputs(torch_model, onnx_session) -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-123, 151, size=(3, 224, 224, 3)).astype(np.float32)
    ref = onnx_session.run(None, {"input:0": x})[0]
    with torch.no_grad():
        ours = torch_model.probabilities(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    assert np.abs(ours - ref).max() <= 1e-5


def _parameters_in_call_order(model: torch.nn.Module, x: torch.Tensor) -> list[torch.nn.Parameter]:
    """The parameters in the order the forward pass uses them (forward hooks on every module
    that holds parameters of its own)."""
    called: list[torch.nn.Module] = []
    handles = [m.register_forward_pre_hook(lambda mod, _inp: called.append(mod)) for m in model.modules()
               if any(True for _ in m.parameters(recurse=False))]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return [p for m in called for p in m.parameters(recurse=False)]


@pytest.mark.parametrize(("factory", "names"), [
    (OpenNSFW, ["stem", "stage0", "stage1", "stage2", "stage3", "head"]),
    (VGG16, ["block1", "block2", "block3", "block4", "block5", "head"]),
])
def test_stages_hold_every_parameter_once_in_forward_order(factory, names) -> None:
    model = factory().eval()
    assert isinstance(model, StagedNetwork)
    stages = model.stages()
    assert [name for name, _ in stages] == names
    by_stage = [p for _, modules in stages for m in modules for p in m.parameters()]
    assert len({id(p) for p in by_stage}) == len(by_stage) == len(list(model.parameters()))
    in_order = _parameters_in_call_order(model, torch.zeros(1, 3, 224, 224))
    assert [id(p) for p in by_stage] == [id(p) for p in in_order]


def test_vgg16_forward_intermediates_returns_its_logits() -> None:
    torch.manual_seed(0)
    model = VGG16().eval()
    x = torch.randn(2, 3, 224, 224) * 50
    logits, acts = model.forward_intermediates(x, ["block5", "block2", "features.0"])
    with torch.no_grad():
        assert torch.equal(logits.detach(), model(x))
        assert torch.equal(acts["block5"].detach(), model.forward_features(x))
    assert acts["block2"].shape == (2, 128, 56, 56)
    # the convolution's own output, not rectified in place by the ReLU after it
    assert float(acts["features.0"].detach().min()) < 0
    assert logits.requires_grad and acts["block2"].requires_grad
    assert model.layer_names()[:5] == ["block1", "block2", "block3", "block4", "block5"]
    with pytest.raises(ConfigError, match="no layer 'block6'"):
        model.forward_intermediates(x, ["block6"])
