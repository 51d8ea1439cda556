"""OpenNSFW.stages() and OpenNSFW.forward_intermediates(): the groups cover the network exactly,
the captured activations are the layers' real outputs, and hooks never outlive the call."""

from __future__ import annotations

import pytest
import torch

from nsfwlab.errors import ConfigError
from nsfwlab.model import STAGES, OpenNSFW


@pytest.fixture(scope="module")
def net() -> OpenNSFW:
    torch.manual_seed(0)
    return OpenNSFW().eval().requires_grad_(False)


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))


def test_stages_cover_every_parameter_exactly_once(net: OpenNSFW) -> None:
    groups = net.stages()
    assert [name for name, _ in groups] == ["stem", "stage0", "stage1", "stage2", "stage3", "head"]
    assert [len(mods) for name, mods in groups[1:-1]] == [blocks for blocks, _, _ in STAGES]
    grouped = [id(p) for _, mods in groups for m in mods for p in m.parameters()]
    assert len(grouped) == len(set(grouped))  # no parameter in two groups
    assert set(grouped) == {id(p) for p in net.parameters()}  # and none left out


def test_forward_intermediates_logits_equal_forward(net: OpenNSFW, x: torch.Tensor) -> None:
    logits, acts = net.forward_intermediates(x, ["conv_1", "stage2", "fc_nsfw"])
    assert torch.equal(logits, net(x))
    assert torch.equal(acts["fc_nsfw"], logits)
    assert acts["conv_1"].shape == (2, 64, 32, 32)
    assert set(acts) == {"conv_1", "stage2", "fc_nsfw"}


def test_stage_aliases_are_the_last_blocks_outputs(net: OpenNSFW, x: torch.Tensor) -> None:
    # by hand: run the blocks one at a time and keep each stage's last output
    h = net.pool1(net.relu_1(net.conv_1(x)))
    expected = {}
    for s, (blocks, _, _) in enumerate(STAGES):
        for b in range(blocks):
            h = getattr(net, f"stage{s}_block{b}")(h)
        expected[f"stage{s}"] = h
    names = [f"stage{s}" for s in range(len(STAGES))]
    _, acts = net.forward_intermediates(x, [*names, "stage2_block5", "stage1_block0.branch2b"])
    for name in names:
        assert torch.equal(acts[name], expected[name]), name
    assert torch.equal(acts["stage2_block5"], acts["stage2"])
    assert acts["stage1_block0.branch2b"].shape == (2, 64, 8, 8)
    assert "stage3" in net.layer_names() and "stage3_block2.relu_out" in net.layer_names()


@pytest.mark.parametrize("name", ["stage4", "nope", "", "stage2_block9", "stage2_block0.branch3"])
def test_unknown_layer_is_a_config_error_and_leaves_no_hook(net: OpenNSFW, x: torch.Tensor, name: str) -> None:
    with pytest.raises(ConfigError, match="has no layer"):
        net.forward_intermediates(x, ["stage1", name])
    assert all(not m._forward_hooks for m in net.modules())


def test_hooks_are_removed_when_the_forward_pass_fails(net: OpenNSFW) -> None:
    with pytest.raises(RuntimeError):
        net.forward_intermediates(torch.zeros(1, 4, 32, 32), ["stage1", "conv_1"])  # 4 channels: conv fails
    assert all(not m._forward_hooks for m in net.modules())
