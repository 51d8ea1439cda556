r"""The networks as PyTorch modules: open_nsfw (ResNet-50 "1by2", v1) with the pure weight remap
from the bundled ONNX graph, and the VGG-16 baseline of the "Yahoo's Not Safe For Work" tutorial. Both are
:class:`StagedNetwork`\ s: ``stages()`` lists their parameters group by group in forward order
(what fine-tuning freezes and unfreezes) and ``forward_intermediates`` returns named activations
with the logits. :mod:`nsfwlab.architectures` names them for checkpoints.

Module names follow the Caffe layer names: Caffe's ``conv_stage1_block0_branch2a`` is
``stage1_block0.branch2a`` here, ``conv_1`` is ``conv_1`` and ``fc_nsfw`` is ``fc_nsfw``
(:func:`caffe_layer_name` converts). Batch-norm is folded into the convolutions (as in the ONNX
file), so every convolution has a bias.

Input: NCHW float32, BGR, mean-subtracted, 224x224 (an NHWC batch from
:mod:`nsfwlab.preprocess` permuted with ``.permute(0, 3, 1, 2)``). Output of ``forward``: the
logits ``[sfw, nsfw]``; apply softmax for probabilities (:meth:`OpenNSFW.probabilities`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import ConfigError, WeightsError

__all__ = [
    "STAGES",
    "VGG16",
    "VGG16_BLOCKS",
    "Bottleneck",
    "OnnxConv",
    "OpenNSFW",
    "StagedNetwork",
    "caffe_layer_name",
    "forward_intermediates",
    "layer_names",
    "load_open_nsfw",
    "read_onnx_graph",
    "remap_onnx_weights",
]

#: (blocks, bottleneck width, output width) of each stage.
STAGES: tuple[tuple[int, int, int], ...] = ((3, 32, 128), (4, 64, 256), (6, 128, 512), (3, 256, 1024))


class Bottleneck(nn.Module):
    """A v1 bottleneck: 1x1 (stride here) -> 3x3 -> 1x1, plus identity or projection shortcut."""

    def __init__(self, in_ch: int, mid: int, out: int, stride: int, project: bool) -> None:
        super().__init__()
        self.branch2a = nn.Conv2d(in_ch, mid, 1, stride=stride)
        self.branch2b = nn.Conv2d(mid, mid, 3, padding=1)
        self.branch2c = nn.Conv2d(mid, out, 1)
        self.proj_shortcut = nn.Conv2d(in_ch, out, 1, stride=stride) if project else None
        # One ReLU module per call site (no parameters: state_dict keys are unchanged), so that
        # explainers (guided backprop, deconvnet) can hook every rectification.
        self.relu_a = nn.ReLU()
        self.relu_b = nn.ReLU()
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu_a(self.branch2a(x))
        y = self.relu_b(self.branch2b(y))
        y = self.branch2c(y)
        shortcut = self.proj_shortcut(x) if self.proj_shortcut is not None else x
        return self.relu_out(y + shortcut)


class StagedNetwork(nn.Module):
    """A classifier of 224x224 NCHW BGR mean-subtracted input to logits ``[sfw, nsfw]``, grouped
    into named stages. Subclasses define ``stages()``: ``(name, modules)`` pairs in forward order
    whose modules hold every parameter exactly once, the last group named ``head``. The output of
    each stage other than ``stem`` and ``head`` (the output of its last module) is addressable by
    the stage's name in :meth:`forward_intermediates`."""

    def stages(self) -> list[tuple[str, list[nn.Module]]]:
        raise NotImplementedError

    def layer_names(self) -> list[str]:
        """Every name :meth:`forward_intermediates` accepts, in forward order: the stage names
        (``stage2`` = the output of its last block) and every submodule (``stage2_block3``,
        ``stage2_block3.branch2b``, ``conv_1``, ``pool1``, ``fc_nsfw`` ...)."""
        return layer_names(self, self._stage_outputs())

    def forward_intermediates(self, x: torch.Tensor,
                              names: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(logits, {name: activation})`` for the named layers (see :meth:`layer_names`), in one
        forward pass; the activations keep their graph, so objectives can take gradients."""
        return forward_intermediates(self, x, names, self._stage_outputs())

    def _stage_outputs(self) -> dict[str, nn.Module]:
        return {name: mods[-1] for name, mods in self.stages() if name not in ("stem", "head")}


class OpenNSFW(StagedNetwork):
    """Yahoo's open_nsfw ResNet-50-1by2 with folded batch-norm. 5.89 M parameters, 1.07 GMAC."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        self.relu_1 = nn.ReLU()
        # Caffe rounds pooled sizes up: 112 -> 56.
        self.pool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        in_ch = 64
        self.block_names: list[str] = []
        for s, (blocks, mid, out) in enumerate(STAGES):
            for b in range(blocks):
                stride = 2 if (b == 0 and s > 0) else 1
                name = f"stage{s}_block{b}"
                self.add_module(name, Bottleneck(in_ch, mid, out, stride, project=(b == 0)))
                self.block_names.append(name)
                in_ch = out
        self.fc_nsfw = nn.Linear(1024, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW input -> the last stage's (N, 1024, 7, 7) feature map."""
        x = self.pool1(self.relu_1(self.conv_1(x)))
        for name in self.block_names:
            x = getattr(self, name)(x)
        return x

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Feature map -> logits ``[sfw, nsfw]`` (7x7 average pool, then fc)."""
        pooled = torch.flatten(nn.functional.adaptive_avg_pool2d(features, 1), 1)
        return self.fc_nsfw(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities ``[sfw, nsfw]``."""
        return torch.softmax(self.forward(x), dim=1)

    def stages(self) -> list[tuple[str, list[nn.Module]]]:
        """The network in order, as timm groups it: ``stem`` (conv_1), ``stage0`` .. ``stage3``
        (their bottleneck blocks), ``head`` (fc_nsfw). Fine-tuning unfreezes from the end."""
        groups: list[tuple[str, list[nn.Module]]] = [("stem", [self.conv_1])]
        for s, (blocks, _, _) in enumerate(STAGES):
            groups.append((f"stage{s}", [getattr(self, f"stage{s}_block{b}") for b in range(blocks)]))
        groups.append(("head", [self.fc_nsfw]))
        return groups


#: (convolutions, channels) of each VGG-16 block.
VGG16_BLOCKS: tuple[tuple[int, int], ...] = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))


class VGG16(StagedNetwork):
    """A from-scratch baseline: VGG-16 (13 3x3 convolutions in five blocks, each
    followed by 2x2 max-pooling; no batch-norm), then Flatten -> Dense 128 -> Dropout 0.5 ->
    Dense 64 -> Dropout 0.5 -> Dense 2. It takes open_nsfw's input and returns logits; the input is
    scaled by 1/128 inside the model so that training from random He-initialised weights starts
    with unit-scale activations. 14.7 M convolution weights, 15.4 GMAC per image (~14x open_nsfw).
    Stages: ``block1`` .. ``block5`` (slices of ``features``, each ending in its pooling) and
    ``head`` (``classifier``)."""

    input_scale = 1.0 / 128.0

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        self._block_ends: list[int] = []
        for convs, ch in VGG16_BLOCKS:
            for _ in range(convs):
                # Not in place: a forward hook on a convolution must see its own output.
                layers += [nn.Conv2d(in_ch, ch, 3, padding=1), nn.ReLU()]
                in_ch = ch
            layers.append(nn.MaxPool2d(2))
            self._block_ends.append(len(layers))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(512 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(128, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 2),
        )
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW 224x224 input -> the (N, 512, 7, 7) feature map."""
        return self.features(x * self.input_scale)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def stages(self) -> list[tuple[str, list[nn.Module]]]:
        layers = list(self.features)
        starts = [0, *self._block_ends[:-1]]
        groups = [(f"block{i + 1}", layers[a:b]) for i, (a, b) in enumerate(zip(starts, self._block_ends, strict=True))]
        return [*groups, ("head", [self.classifier])]


def layer_names(model: nn.Module, aliases: Mapping[str, nn.Module] | None = None) -> list[str]:
    """The names :func:`forward_intermediates` accepts for ``model``: ``aliases`` first, then
    every named submodule."""
    return [*(aliases or {}), *(name for name, _ in model.named_modules() if name)]


def forward_intermediates(model: nn.Module, x: torch.Tensor, names: Sequence[str],
                          aliases: Mapping[str, nn.Module] | None = None,
                          ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run ``model(x)`` once and return its output with the outputs of the named submodules
    (``named_modules()`` names, or keys of ``aliases``), captured by forward hooks that are
    removed afterwards. Unknown names are a :class:`~nsfwlab.errors.ConfigError`."""
    modules = dict(model.named_modules())
    wanted: dict[str, nn.Module] = {}
    for name in names:
        module = (aliases or {}).get(name) or (modules.get(name) if name else None)
        if module is None:
            known = layer_names(model, aliases)
            raise ConfigError(f"{type(model).__name__} has no layer {name!r}; layers include "
                              + ", ".join(known[:12]) + f" ... ({len(known)} in all)")
        wanted[name] = module
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in wanted.items():
        def hook(_m: nn.Module, _inp: object, out: torch.Tensor, name: str = name) -> None:
            captured[name] = out
        handles.append(module.register_forward_hook(hook))
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return logits, captured


def caffe_layer_name(module_name: str) -> str:
    """``stage1_block0.branch2a`` -> ``conv_stage1_block0_branch2a``; ``conv_1``/``fc_nsfw`` as is."""
    if module_name in ("conv_1", "fc_nsfw"):
        return module_name
    return "conv_" + module_name.replace(".", "_")


@dataclass(frozen=True)
class OnnxConv:
    """One convolution of the ONNX graph: the output name (which carries the Caffe layer name),
    and the names of its weight and bias initializers."""

    output: str
    weight: str
    bias: str


def _module_name_from_onnx_output(output: str) -> str:
    # "bn_stage0_block0_branch2b/FusedBatchNormV3:0" -> "stage0_block0.branch2b"; "bn_1/..." -> "conv_1"
    layer = output.split("/", 1)[0]
    if not layer.startswith("bn_"):
        raise WeightsError(f"unexpected convolution output name {output!r} in the ONNX graph")
    stem = layer[3:]
    if stem == "1":
        return "conv_1"
    stage_block, _, branch = stem.rpartition("_")
    if stage_block.endswith("proj"):  # "..._proj_shortcut"
        stage_block, branch = stage_block[: -len("_proj")], "proj_shortcut"
    return f"{stage_block}.{branch}"


def remap_onnx_weights(
    convs: Iterable[OnnxConv],
    initializers: Mapping[str, np.ndarray],
    fc_weight: str = "fc_nsfw/MatMul/ReadVariableOp:0",
    fc_bias: str = "fc_nsfw/BiasAdd/ReadVariableOp:0",
) -> dict[str, torch.Tensor]:
    """Map the ONNX graph's tensors onto :class:`OpenNSFW`'s ``state_dict`` keys. Pure: no I/O.

    Convolution tensors are found through the Conv nodes (several initializers have anonymous
    names such as ``Conv__440_weights_fused_bn``); the fc weight is a MatMul operand of shape
    (1024, 2) and is transposed to PyTorch's (out, in).
    """
    state: dict[str, torch.Tensor] = {}
    for conv in convs:
        name = _module_name_from_onnx_output(conv.output)
        for suffix, key in (("weight", conv.weight), ("bias", conv.bias)):
            if key not in initializers:
                raise WeightsError(f"initializer {key!r} of {name} is missing from the ONNX graph")
            state[f"{name}.{suffix}"] = torch.from_numpy(np.array(initializers[key], dtype=np.float32))
    try:
        state["fc_nsfw.weight"] = torch.from_numpy(np.array(initializers[fc_weight], dtype=np.float32).T.copy())
        state["fc_nsfw.bias"] = torch.from_numpy(np.array(initializers[fc_bias], dtype=np.float32))
    except KeyError as exc:
        raise WeightsError(f"fc tensor {exc} is missing from the ONNX graph") from None
    return state


def read_onnx_graph(path: str | Path) -> tuple[list[OnnxConv], dict[str, np.ndarray]]:
    """Read the Conv nodes and the initializers of an ONNX file (needs the ``onnx`` package)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    convs = [
        OnnxConv(output=node.output[0], weight=node.input[1], bias=node.input[2])
        for node in model.graph.node
        if node.op_type == "Conv"
    ]
    initializers = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    return convs, initializers


def load_open_nsfw(onnx_path: str | Path | None = None) -> OpenNSFW:
    """The stock open_nsfw network with the verified bundled weights, in eval mode on the CPU."""
    from .weights import resolve_onnx_path

    path = resolve_onnx_path(onnx_path)
    convs, initializers = read_onnx_graph(path)
    model = OpenNSFW()
    state = remap_onnx_weights(convs, initializers)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsError(f"weight remap mismatch: missing {missing}, unexpected {unexpected}")
    return model.eval()
