"""PyTorch execution of a plan (:mod:`nsfwlab.zoo.plan`): ``PlanNet(plan, output)`` holds one
standard module per operation (``Conv2d``, ``BatchNorm2d``, ``Linear``), so its state dict is the
plan's tensors and it exports to ONNX as an ordinary network.

Input: NCHW float32 RGB in [0, 1] at the model's size; output: the model's last operation (the
class probabilities for nsfwjs: its Keras and graph models end in a softmax).

TensorFlow's ``SAME`` padding puts the odd pixel after (bottom/right), and its average pooling
over ``SAME`` padding divides by the count of real pixels; both are reproduced here.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError
from .plan import OPS

__all__ = ["PlanNet"]


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's SAME padding (before, after). At stride 1 it does not depend on the size, and is
    computed without it so that an ONNX export keeps it static."""
    if stride == 1:
        return (kernel - 1) // 2, kernel - 1 - (kernel - 1) // 2
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _key(index: int, name: str) -> str:
    return f"op{index}_" + re.sub(r"\W", "_", name)[-40:]


class PlanNet(nn.Module):
    """A network that runs ``plan`` (a list of operation dicts) and returns tensor ``output``."""

    def __init__(self, plan: list[dict[str, Any]], output: str, shapes: dict[str, tuple[int, ...]]) -> None:
        super().__init__()
        self.plan = plan
        self.output = output
        self.layers = nn.ModuleDict()
        self.keys: list[str] = []
        for index, op in enumerate(plan):
            if op.get("op") not in OPS:
                raise WeightsError(f"plan operation {op.get('op')!r} is not known")
            key = _key(index, str(op["name"]))
            self.keys.append(key)
            module = self._module(op, shapes)
            if module is not None:
                self.layers[key] = module

    @staticmethod
    def _module(op: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> nn.Module | None:
        name = op["name"]
        try:
            if op["op"] == "conv":
                out_ch, in_per_group, kh, kw = shapes[f"{name}.weight"]
                return nn.Conv2d(in_per_group * op["groups"], out_ch, (kh, kw), stride=tuple(op["stride"]),
                                 groups=op["groups"], bias=op["bias"])
            if op["op"] == "bn":
                return nn.BatchNorm2d(shapes[f"{name}.mean"][0], eps=op["eps"])
            if op["op"] == "dense":
                out_f, in_f = shapes[f"{name}.weight"]
                return nn.Linear(in_f, out_f, bias=op["bias"])
        except KeyError as exc:
            raise WeightsError(f"the weights hold no tensor {exc.args[0]!r} that the plan needs") from None
        return None

    def tensor_names(self) -> dict[str, str]:
        """Plan tensor name (``"<op>.weight"``) -> state-dict key, for loading converted weights."""
        out: dict[str, str] = {}
        for key, op in zip(self.keys, self.plan, strict=True):
            if key not in self.layers:
                continue
            suffixes = {"bn": ("weight", "bias", "mean", "var")}.get(op["op"], ("weight", "bias"))
            for suffix in suffixes:
                attr = {"mean": "running_mean", "var": "running_var"}.get(suffix, suffix)
                if getattr(self.layers[key], attr, None) is not None:
                    out[f"{op['name']}.{suffix}"] = f"layers.{key}.{attr}"
        return out

    @staticmethod
    def _act(x: torch.Tensor, fn: str) -> torch.Tensor:
        if fn == "relu":
            return F.relu(x)
        if fn == "relu6":
            return F.hardtanh(x, 0.0, 6.0)
        if fn == "softmax":
            return F.softmax(x, dim=1)
        return x

    def _pool(self, x: torch.Tensor, op: dict[str, Any]) -> torch.Tensor:
        (kh, kw), (sh, sw) = op["size"], op["stride"]
        if op["padding"] == "valid":
            return (F.max_pool2d if op["kind"] == "max" else F.avg_pool2d)(x, (kh, kw), (sh, sw))
        top, bottom = _same_pad(x.shape[2], kh, sh)
        left, right = _same_pad(x.shape[3], kw, sw)
        if op["kind"] == "max":
            return F.max_pool2d(F.pad(x, (left, right, top, bottom), value=float("-inf")), (kh, kw), (sh, sw))
        if top == bottom and left == right:
            return F.avg_pool2d(x, (kh, kw), (sh, sw), padding=(top, left), count_include_pad=False)
        summed = F.avg_pool2d(F.pad(x, (left, right, top, bottom)), (kh, kw), (sh, sw), divisor_override=1)
        ones = torch.ones_like(x[:1, :1])
        count = F.avg_pool2d(F.pad(ones, (left, right, top, bottom)), (kh, kw), (sh, sw), divisor_override=1)
        return summed / count

    def _conv(self, x: torch.Tensor, op: dict[str, Any], module: nn.Module) -> torch.Tensor:
        if op["padding"] == "same":
            kh, kw = module.kernel_size  # type: ignore[misc]
            top, bottom = _same_pad(x.shape[2], kh, op["stride"][0])
            left, right = _same_pad(x.shape[3], kw, op["stride"][1])
            if top or bottom or left or right:
                x = F.pad(x, (left, right, top, bottom))
        return self._act(module(x), op["act"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, torch.Tensor] = {"input": x}
        for key, op in zip(self.keys, self.plan, strict=True):
            args = [env[i] for i in op["inputs"]]
            kind = op["op"]
            if kind == "conv":
                y = self._conv(args[0], op, self.layers[key])
            elif kind == "bn":
                y = self.layers[key](args[0])
            elif kind == "dense":
                y = self._act(self.layers[key](args[0]), op["act"])
            elif kind == "act":
                y = self._act(args[0], op["fn"])
            elif kind == "zeropad":
                top, bottom, left, right = op["pad"]
                y = F.pad(args[0], (left, right, top, bottom))
            elif kind == "pool":
                y = self._pool(args[0], op)
            elif kind == "add":
                y = args[0]
                for other in args[1:]:
                    y = y + other
            elif kind == "concat":
                y = torch.cat(args, dim=1)
            elif kind == "flatten":
                y = args[0].permute(0, 2, 3, 1).flatten(1)
            else:  # affine
                y = args[0] * op["mul"] - op["sub"]
            env[op["name"]] = y
        return env[self.output]
