"""nsfwlab.objectives: the parser, layer targets on hand-computed activations, composition, and
forward_target() through OpenNSFW.forward_intermediates against a hand-made forward hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nsfwlab.errors import ConfigError
from nsfwlab.model import OpenNSFW
from nsfwlab.objectives import (
    Channel,
    LogitMargin,
    Neuron,
    NsfwLogit,
    NsfwProbability,
    SfwLogit,
    evaluate,
    forward_target,
    parse_objective,
)

LOGITS = torch.tensor([[1.0, 3.0], [-2.0, 0.5]])  # [sfw, nsfw] of two images
SFW, NSFW = LOGITS[:, 0], LOGITS[:, 1]

#: (2 images, 3 channels, 3 rows, 4 columns) = 0, 1, 2 ... 71
ACT = torch.arange(72, dtype=torch.float32).reshape(2, 3, 3, 4)


@pytest.mark.parametrize(("expr", "expected"), [
    ("nsfw", NSFW),
    ("sfw", SFW),
    ("nsfw-logit", NSFW),
    ("sfw-logit", SFW),
    ("-nsfw", -NSFW),
    ("0.5*nsfw+sfw", 0.5 * NSFW + SFW),
    ("  nsfw * 2 - sfw ", 2 * NSFW - SFW),
    ("nsfw-sfw", NSFW - SFW),
    ("logit-margin", NSFW - SFW),
    ("nsfw-probability", torch.softmax(LOGITS, 1)[:, 1]),
    ("1e-1*nsfw + .5*sfw*4", 0.1 * NSFW + 2.0 * SFW),
    ("-2*nsfw-probability+logit-margin", -2 * torch.softmax(LOGITS, 1)[:, 1] + NSFW - SFW),
])
def test_parse_objective_values_on_logits(expr: str, expected: torch.Tensor) -> None:
    target = parse_objective(expr)
    assert target.layers == ()
    torch.testing.assert_close(target(LOGITS), expected, rtol=0, atol=1e-6)


def test_parse_objective_layer_terms() -> None:
    channel = parse_objective("channel:stage3_block2:17")
    assert isinstance(channel, Channel) and (channel.layer, channel.channel) == ("stage3_block2", 17)
    assert channel.layers == ("stage3_block2",)
    neuron = parse_objective("neuron:stage2_block0.branch2b:3")
    assert isinstance(neuron, Neuron) and (neuron.layer, neuron.channel) == ("stage2_block0.branch2b", 3)
    mixed = parse_objective("channel:a:1 + 2*neuron:b:2 - channel:a:0 + nsfw")
    assert mixed.layers == ("a", "b")  # each layer once, in order of appearance
    acts = {"a": ACT, "b": ACT + 1.0}
    expected = ACT[:, 1].mean((1, 2)) + 2 * (ACT[:, 2, 1, 2] + 1.0) - ACT[:, 0].mean((1, 2)) + NSFW
    torch.testing.assert_close(mixed(LOGITS, acts), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("expr", [
    "", "   ", "nsfw sfw", "nsfw+", "+", "foo", "nsfwx", "nsfw-logitx", "2*", "*nsfw", "nsfw++sfw",
    "nsfw+-sfw", "--nsfw", "channel:stage3:", "channel::3", "channel:stage3:-1", "channel:3x:1",
    "pixel:stage3:1", "nsfw*", "0.5*", "nsfw;sfw", "nsfw*x",
])
def test_parse_objective_refuses_bad_text_with_a_config_error(expr: str) -> None:
    with pytest.raises(ConfigError, match="cannot read the objective"):
        parse_objective(expr)


def test_channel_and_neuron_by_hand() -> None:
    acts = {"x": ACT}
    # channel 1 of image 0 holds 12..23 (mean 17.5); of image 1, 48..59 (mean 53.5)
    torch.testing.assert_close(Channel("x", 1)(LOGITS, acts), torch.tensor([17.5, 53.5]))
    # centre of a 3x4 map: row 3 // 2 = 1, column 4 // 2 = 2 -> offset 1 * 4 + 2 = 6 in the map
    torch.testing.assert_close(Neuron("x", 2)(LOGITS, acts), torch.tensor([24.0 + 6, 60.0 + 6]))
    fc = {"fc": torch.tensor([[1.0, 2.0], [3.0, 4.0]])}  # (N, C): a fully connected layer
    torch.testing.assert_close(Neuron("fc", 1)(LOGITS, fc), torch.tensor([2.0, 4.0]))
    torch.testing.assert_close(Channel("fc", 0)(LOGITS, fc), torch.tensor([1.0, 3.0]))
    assert Channel("x", 1).name == "channel:x:1" and Neuron("x", 2).layers == ("x",)


def test_layer_targets_refuse_what_they_cannot_read() -> None:
    with pytest.raises(ConfigError, match="channel must be >= 0"):
        Channel("x", -1)
    with pytest.raises(ConfigError, match="needs the activation"):
        Channel("x", 0)(LOGITS)
    with pytest.raises(ConfigError, match="needs the activation"):
        Neuron("x", 0)(LOGITS, {"y": ACT})
    with pytest.raises(ConfigError, match="channel 3 does not exist"):
        Channel("x", 3)(LOGITS, {"x": ACT})
    with pytest.raises(ConfigError, match="needs the model's logits"):
        Channel("x", 0).from_probabilities(np.array([0.5]))


def test_composition_with_layers_and_logits() -> None:
    target = Channel("a", 0) * 2.0 + -Neuron("b", 1) + 0.5 * NsfwLogit()
    assert target.layers == ("a", "b")
    acts = {"a": ACT, "b": 2 * ACT}
    expected = 2 * ACT[:, 0].mean((1, 2)) - 2 * ACT[:, 1, 1, 2] + 0.5 * NSFW
    torch.testing.assert_close(target(LOGITS, acts), expected)
    with pytest.raises(ConfigError, match="needs the model's logits"):
        target.from_probabilities(np.array([0.5]))
    # black-box forms of probability targets compose the same way
    p = np.array([0.25, 0.9])
    combo = -LogitMargin() + 3 * NsfwProbability()
    np.testing.assert_allclose(combo.from_probabilities(p), -np.log(p / (1 - p)) + 3 * p)
    torch.testing.assert_close((SfwLogit() + NsfwLogit())(LOGITS), SFW + NSFW)


@pytest.fixture(scope="module")
def net() -> OpenNSFW:
    """A randomly initialised OpenNSFW with frozen parameters (no state shared with other tests)."""
    torch.manual_seed(0)
    return OpenNSFW().eval().requires_grad_(False)


def test_forward_target_equals_a_manual_hook(net: OpenNSFW) -> None:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    target = Channel("stage3_block2", 17) + 0.5 * NsfwLogit() + -Neuron("stage1", 5)
    logits, values = forward_target(net, x, target)

    captured: dict[str, torch.Tensor] = {}
    handles = [net.stage3_block2.register_forward_hook(lambda _m, _i, out: captured.__setitem__("a", out)),
               net.stage1_block3.register_forward_hook(lambda _m, _i, out: captured.__setitem__("b", out))]
    try:
        with torch.no_grad():
            manual_logits = net(x)
    finally:
        for h in handles:
            h.remove()
    b = captured["b"]
    manual = (captured["a"][:, 17].mean((1, 2)) + 0.5 * manual_logits[:, 1]
              - b[:, 5, b.shape[2] // 2, b.shape[3] // 2])
    torch.testing.assert_close(logits, manual_logits, rtol=0, atol=0)
    torch.testing.assert_close(values, manual, rtol=1e-6, atol=1e-6)
    values.sum().backward()  # the activations keep their graph: the input gets a gradient
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert not net.stage3_block2._forward_hooks and not net.stage1_block3._forward_hooks  # hooks removed


def test_forward_target_without_layers_and_on_a_model_without_intermediates(net: OpenNSFW) -> None:
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    logits, values = forward_target(net, x, LogitMargin())
    torch.testing.assert_close(values, logits[:, 1] - logits[:, 0])
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    with pytest.raises(ConfigError, match="no forward_intermediates"):
        forward_target(plain, x, Channel("0", 0))


def test_targets_subtract() -> None:
    from nsfwlab.objectives import NsfwLogit, SfwLogit

    logits = torch.tensor([[1.0, 4.0], [2.0, -1.0]])
    assert (NsfwLogit() - SfwLogit())(logits).tolist() == [3.0, -3.0]


def test_unknown_backend_device_and_precision_are_typed_errors() -> None:
    from nsfwlab import ConfigError, Detector

    for kwargs in ({"backend": "tensorflow"}, {"device": "tpu"}, {"precision": "int4"}):
        with pytest.raises(ConfigError, match="choose one of"):
            Detector(**kwargs)


def test_evaluate_is_a_deprecated_alias_of_forward_target(net: OpenNSFW) -> None:
    """``evaluate`` collided with the ``nsfwlab.evaluate`` package; the old name still works, with a warning."""
    x = torch.zeros(1, 3, 224, 224)
    with pytest.warns(DeprecationWarning, match="forward_target"):
        _, values = evaluate(net, x, LogitMargin())
    assert torch.equal(values, forward_target(net, x, LogitMargin())[1])
