"""Second networks (``also``) and generators for synthesis, loaded without running their files' code.

A model file that is a program is not weights. A TorchScript archive carries its own code, and
that code runs when the module is called: it can read and write any file the user can
(``torch.from_file(..., shared=True)`` maps a file and rewrites it). So TorchScript loads only with
``trust_code=True``. The formats that need no trust:

- a tensors-only network file, :func:`save_network`: ``torch.save`` of
  ``{"format": "nsfwlab-network-v1", "arch": NAME, "config": {...}, "state_dict": {...}}``, read back
  with ``torch.load(weights_only=True)`` into one of the architectures of :data:`NETWORKS`
  (``convnet``: a small classifier; ``mlp-generator`` and ``conv-generator``: codes to images);
- an nsfwlab checkpoint (a fine-tuned open_nsfw or VGG-16, :mod:`nsfwlab.checkpoint`) as a second
  network: it is wrapped with its own preprocessing, so it takes RGB in [0, 1] like every other;
- an ``.onnx`` graph, converted to torch by onnx2torch when it is installed (an optional package:
  onnxruntime gives no gradients).

Every second network takes ``(N, 3, S, S)`` RGB in [0, 1] and returns logits ``(N, classes)``; every
generator takes codes ``(N, code_dim)`` and returns ``(N, 3, H, W)`` in [0, 1].
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelError

__all__ = [
    "NETWORKS",
    "NETWORK_FORMAT",
    "AlsoNetwork",
    "AlsoSpec",
    "build_network",
    "is_torchscript",
    "load_also",
    "load_generator",
    "load_network",
    "parse_also",
    "save_network",
]

NETWORK_FORMAT = "nsfwlab-network-v1"


# -- the architectures a tensors-only file may name -------------------------------------------------
class _Standardise:
    """``(x - 0.5) / 0.25``: RGB in [0, 1] to roughly zero mean and unit spread, as classifiers see it."""

    def __new__(cls) -> Any:
        from torch import Tensor, nn

        class Standardise(nn.Module):
            def forward(self, x: Tensor) -> Tensor:
                return (x - 0.5) * 4.0

        return Standardise()


def _conv_net(classes: int = 2, channels: Sequence[int] = (16, 32), kernel: int = 3) -> Any:
    """Input standardised (``(x - 0.5) / 0.25``), strided ``kernel``-square convolutions with ReLU,
    global average pool, a linear head."""
    from torch import nn

    layers: list[nn.Module] = [_Standardise()]
    width = 3
    for c in channels:
        layers += [nn.Conv2d(width, int(c), int(kernel), stride=2, padding=int(kernel) // 2), nn.ReLU()]
        width = int(c)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, int(classes))]
    return nn.Sequential(*layers)


def _mlp_generator(code_dim: int = 64, size: int = 64, hidden: Sequence[int] = (256,)) -> Any:
    """Codes through ReLU layers to ``3 * size * size`` values, a sigmoid, an image."""
    from torch import nn

    layers: list[nn.Module] = []
    width = int(code_dim)
    for h in hidden:
        layers += [nn.Linear(width, int(h)), nn.ReLU()]
        width = int(h)
    layers += [nn.Linear(width, 3 * int(size) * int(size)), nn.Sigmoid(), nn.Unflatten(1, (3, int(size), int(size)))]
    return nn.Sequential(*layers)


def _conv_generator(code_dim: int = 64, channels: Sequence[int] = (128, 64, 32)) -> Any:
    """Codes to a 4x4 map, then per width a x2 nearest upsampling, a 3x3 convolution and ReLU; a 3x3
    convolution to RGB and a sigmoid: images of side ``4 * 2 ** len(channels)``."""
    from torch import nn

    first = int(channels[0]) if channels else 3
    layers: list[nn.Module] = [nn.Linear(int(code_dim), first * 16), nn.Unflatten(1, (first, 4, 4))]
    width = first
    for c in channels:
        layers += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(width, int(c), 3, padding=1), nn.ReLU()]
        width = int(c)
    layers += [nn.Conv2d(width, 3, 3, padding=1), nn.Sigmoid()]
    return nn.Sequential(*layers)


#: name -> factory of an untrained module from the file's ``config`` keywords.
NETWORKS: dict[str, Callable[..., Any]] = {
    "convnet": _conv_net,
    "mlp-generator": _mlp_generator,
    "conv-generator": _conv_generator,
}


def build_network(arch: str, config: dict[str, Any] | None = None) -> Any:
    """A new, randomly initialised module of ``arch`` (a :data:`NETWORKS` name) built from ``config``.
    It records ``arch`` and ``config`` (for :func:`save_network`); generators also ``code_dim``."""
    if arch not in NETWORKS:
        raise ConfigError(f"unknown network architecture {arch!r}; known: {', '.join(sorted(NETWORKS))}",
                          param="arch")
    config = dict(config or {})
    try:
        module = NETWORKS[arch](**config)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"network architecture {arch!r}: bad config {config}: {exc}", param="config") from None
    module.arch, module.config = arch, config
    if arch.endswith("-generator"):
        module.code_dim = int(config.get("code_dim", 64))
    return module


def save_network(path: str | os.PathLike, module: Any) -> Path:
    """Write a module built by :func:`build_network` as a tensors-only file (atomically)."""
    import torch

    arch, config = getattr(module, "arch", None), getattr(module, "config", None)
    if arch not in NETWORKS or not isinstance(config, dict):
        raise ConfigError("module was not built by build_network (it records no arch and config)", param="module")
    path = Path(path)
    payload = {"format": NETWORK_FORMAT, "arch": arch, "config": config,
               "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()}}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


# -- loading ----------------------------------------------------------------------------------------
def is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip whose record holds ``constants.pkl`` and code).
    Reads only the zip's directory; nothing in the file runs."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in names)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def load_network(path: str | os.PathLike, *, param: str = "path", trust_code: bool = False,
                 device: str = "cpu") -> Any:
    """The module in a model file, in eval mode with frozen parameters, on ``device``.

    Tensors-only files (:func:`save_network`, nsfwlab checkpoints) and ``.onnx`` need no trust; a
    TorchScript archive is refused unless ``trust_code`` (a :class:`ModelError` about
    ``trust_code``), before any of its code is loaded. ``param`` names the caller's parameter in errors.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{param} {p}: no such file", param=param)
    if p.suffix.lower() == ".onnx":
        module = _onnx_module(p, param)
    elif is_torchscript(p):
        if not trust_code:
            raise ModelError(f"{p} is a TorchScript program: its own code runs when it is called and can "
                             "read and write your files. Load it only if you trust it (trust_code), or save "
                             "its weights tensors-only (nsfwlab.lab.networks.save_network) or as ONNX",
                             param="trust_code")
        try:
            module = torch.jit.load(str(p), map_location=device)
        except Exception as exc:  # torch raises RuntimeError/ValueError on bad archives
            raise ModelError(f"{param} {p}: not a loadable TorchScript module ({_first_line(exc)})",
                             param=param) from None
    else:
        module = _tensors_only_module(p, param)
    module = module.to(device).eval()
    for weight in module.parameters():
        weight.requires_grad_(False)
    return module


def _tensors_only_module(p: Path, param: str) -> Any:
    import torch

    from ..checkpoint import CHECKPOINT_FORMAT

    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{param} {p}: not a tensors-only network file, an nsfwlab checkpoint, ONNX or "
                         f"TorchScript ({_first_line(exc).split('. ', 1)[0]})", param=param) from None
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        return _checkpoint_module(p, param)
    if not isinstance(payload, dict) or payload.get("format") != NETWORK_FORMAT:
        raise ModelError(f"{param} {p}: a tensors-only file must be a dictionary with format "
                         f"{NETWORK_FORMAT!r} (nsfwlab.lab.networks.save_network)", param=param)
    config = payload.get("config") or {}
    if not isinstance(config, dict):
        raise ModelError(f"{param} {p}: config must be a dictionary", param=param)
    try:
        module = build_network(str(payload.get("arch")), config)
    except ConfigError as exc:
        raise ModelError(f"{param} {p}: {exc}", param=param) from None
    try:
        module.load_state_dict(payload.get("state_dict") or {})
    except (RuntimeError, KeyError, TypeError) as exc:
        raise ModelError(f"{param} {p}: the weights do not fit {payload.get('arch')!r} "
                         f"({_first_line(exc)})", param=param) from None
    return module


def _checkpoint_module(p: Path, param: str) -> Any:
    """A fine-tuned nsfwlab model behind its own preprocessing: RGB in [0, 1] -> its logits."""
    import torch
    import torch.nn.functional as F

    from ..checkpoint import load_model, load_torch_module
    from ..preprocess.differentiable import DifferentiablePreprocess

    _, pre = load_model(p, "cpu")  # the checkpoint's own preprocessing record, validated
    model = load_torch_module(p)

    class _FromRgb(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model, self.pre, self.side = model, DifferentiablePreprocess(pre), pre.resize

        def forward(self, x01: torch.Tensor) -> torch.Tensor:
            x = F.interpolate(x01 * 255.0, size=(self.side, self.side), mode="bilinear", antialias=True,
                              align_corners=False)
            return self.model(self.pre(x))

    return _FromRgb()


def _onnx_module(path: Path, param: str) -> Any:
    try:
        from onnx2torch import convert
    except ImportError:
        raise ConfigError(
            f"{param} {path}: an .onnx network needs onnx2torch (onnxruntime has no gradients); "
            "`pip install onnx2torch` with the torchvision built for your torch, or save the network tensors-only",
            param=param) from None
    try:
        return convert(str(path))
    except Exception as exc:
        raise ModelError(f"{param} {path}: onnx2torch cannot convert it: {_first_line(exc)}", param=param) from None


# -- second networks and generators -----------------------------------------------------------------
@dataclass(frozen=True)
class AlsoSpec:
    """A second network's file, the class to raise and its weight (``MODEL:CLASS[:WEIGHT]``)."""

    path: Path
    class_index: int
    weight: float = 1.0

    def __str__(self) -> str:
        return f"{self.path}:{self.class_index}:{self.weight:g}"


def parse_also(text: str) -> AlsoSpec:
    """Read ``MODEL:CLASS[:WEIGHT]`` (the model path may itself hold colons)."""
    parts = text.rsplit(":", 2)
    try:
        if len(parts) == 3 and parts[1].strip().isdigit():
            return AlsoSpec(Path(parts[0]), int(parts[1]), float(parts[2]))
        head, _, cls = text.rpartition(":")
        if head and cls.strip().isdigit():
            return AlsoSpec(Path(head), int(cls))
    except ValueError:
        pass
    raise ConfigError(f"also {text!r}: expected MODEL:CLASS[:WEIGHT], e.g. places.pt:17:0.5", param="also")


@dataclass
class AlsoNetwork:
    """A loaded second network: (N, 3, size, size) RGB in [0, 1] -> logits; its class's
    log-probability joins the objective with ``weight``."""

    module: Any
    class_index: int
    weight: float = 1.0
    size: int = 224
    name: str = "also"


def load_also(spec: AlsoSpec, *, size: int = 224, device: str = "cpu", trust_code: bool = False) -> AlsoNetwork:
    """Load a second network (see :func:`load_network`) and check it on a grey image: logits of shape
    ``(N, classes)`` and ``spec.class_index`` among them."""
    import torch

    module = load_network(spec.path, param="also", trust_code=trust_code, device=device)
    with torch.no_grad():
        try:
            out = module(torch.full((1, 3, size, size), 0.5, device=device))
        except Exception as exc:
            raise ModelError(f"also {spec.path}: failed on a (1, 3, {size}, {size}) input: {_first_line(exc)}",
                             param="also") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"also {spec.path}: expected logits of shape (N, classes), got {got}", param="also")
    if not 0 <= spec.class_index < out.shape[1]:
        raise ConfigError(f"also {spec.path}: class {spec.class_index} out of range (the model has "
                          f"{out.shape[1]})", param="also")
    return AlsoNetwork(module, spec.class_index, spec.weight, size, spec.path.name)


def load_generator(path: str | os.PathLike, device: str = "cpu", *, trust_code: bool = False) -> Any:
    """A generator: codes (N, D) -> images (N, 3, H, W) in [0, 1] (see :func:`load_network`)."""
    return load_network(path, param="generator", trust_code=trust_code, device=device)
