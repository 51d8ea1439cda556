"""Synthesise images that maximise an objective on open_nsfw (activation maximisation).

>>> result = synthesize(None, Detector(), objective="nsfw+sfw", steps=100)     # doctest: +SKIP
>>> result.scores, result.to_dict()["logits_end"]                            # doctest: +SKIP

The image comes from a parameterisation (:mod:`nsfwlab.lab.imageparam`: a decorrelated Fourier
spectrum or plain pixels, optionally set from a start image; or a generator's code), passes random
robustness transforms (:mod:`nsfwlab.lab.augment`; except in a final settling phase, by default for
balanced objectives only), then the exact pipeline's torch twin
(:class:`~nsfwlab.preprocess.differentiable.DifferentiablePreprocess`: Pillow's real JPEG round
trip forward, identity backward) into the model; Adam raises the objective: a
:class:`~nsfwlab.objectives.Target` (``nsfw``, ``sfw``, ``nsfw+sfw``, ``channel:LAYER:K`` ...)
plus, per second network, ``weight * log_softmax(logits)[class]``, minus the optional
total-variation and L2 penalties, plus a diversity term across the batch.

An objective of several terms (a sum, or any second network) is *balanced* by default: each step,
every term's gradient with respect to the image is normalised to unit length per image and weighted
by the term's weight, so that a term with a small or bounded range (a second network's
log-probability, a weakly scaled logit) moves as surely as the strongest one, and to first order
every term rises.

Nothing the optimiser estimates is reported: every number in :class:`SynthResult` is computed on
the final uint8 images through the exact pipeline (``Detector.nsfw_score`` of the PNG bytes, and the
Detector's own preprocessing into the torch model for the logits and objective values).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..objectives import Negated, Scaled, Target, parse_objective
from ..progress import ProgressCallback, notify
from .evolve import png_bytes
from .networks import AlsoNetwork, AlsoSpec, load_also, load_generator, parse_also
from .options import configure

__all__ = [
    "BALANCED_SETTLE",
    "AlsoNetwork",
    "AlsoSpec",
    "Param",
    "SynthConfig",
    "SynthResult",
    "Synthesizer",
    "load_also",
    "load_generator",
    "parse_also",
    "synthesize",
]

#: The layer whose Gram matrices the diversity term spreads apart (lucid uses a mid layer).
DIVERSITY_LAYER = "stage1"
#: The default settling fraction (:attr:`SynthConfig.settle_fraction`) of a balanced objective: its
#: last fifth runs without the robustness transforms (measured in docs/lab-synthesis.md).
BALANCED_SETTLE = 0.2
_EPS = 1e-12


class Param(StrEnum):
    FFT = "fft"
    PIXELS = "pixels"


@dataclass(frozen=True)
class SynthConfig:
    """How to synthesise. ``diversity`` ``None``: 1.0 when ``batch > 1``, else 0.

    ``also``: second networks, as files (:class:`AlsoSpec`, loaded at the start of the run with
    ``also_size`` and ``trust_code``) or loaded (:class:`AlsoNetwork`). ``generator``: a generator's
    file or module, whose codes are optimised instead of an image; ``trust_code`` allows TorchScript
    files (code that runs: see :mod:`nsfwlab.lab.networks`). ``device``: where the optimisation runs.
    """

    objective: str = "nsfw"
    param: Param = Param.FFT
    steps: int = 200
    lr: float = 0.05
    size: int = 256
    batch: int = 1
    seed: int = 0
    tv: float = 0.0
    l2: float = 0.0
    diversity: float | None = None
    transforms: bool = True
    code_dim: int | None = None
    #: With several terms (``nsfw+sfw``, or any ``also``), give every term an equal share of each step
    #: (its unit-length image gradient times its weight), so that every term rises, not only the cheapest.
    balance: bool = True
    #: The fraction of the last steps that run without the robustness transforms, so that the final
    #: image is tuned to the exact, un-transformed pipeline its numbers are measured on. ``None``:
    #: :data:`BALANCED_SETTLE` for a balanced objective, else 0 (see :attr:`settle_fraction`).
    settle: float | None = None
    also: tuple[AlsoSpec | AlsoNetwork, ...] = ()
    also_size: int = 224
    generator: str | os.PathLike[str] | Any = None
    trust_code: bool = False
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ConfigError(f"steps must not be negative, got {self.steps}", param="steps")
        if not 0.0 < self.lr <= 10.0:
            raise ConfigError(f"lr must lie in (0, 10], got {self.lr}", param="lr")
        if not 32 <= self.size <= 1024:
            raise ConfigError(f"size must lie in 32..1024, got {self.size}", param="size")
        if not 1 <= self.batch <= 64:
            raise ConfigError(f"batch must lie in 1..64, got {self.batch}", param="batch")
        for name in ("tv", "l2", "diversity"):
            if (getattr(self, name) or 0.0) < 0.0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}", param=name)
        if self.settle is not None and not 0.0 <= self.settle <= 1.0:
            raise ConfigError(f"settle must lie in [0, 1], got {self.settle}", param="settle")
        if not 8 <= self.also_size <= 1024:
            raise ConfigError(f"also_size must lie in 8..1024, got {self.also_size}", param="also_size")
        if self.code_dim is not None and self.code_dim < 1:
            raise ConfigError(f"code_dim must be >= 1, got {self.code_dim}", param="code_dim")
        if not isinstance(self.param, Param):
            object.__setattr__(self, "param", _param(self.param))
        if not isinstance(self.also, tuple):
            object.__setattr__(self, "also", tuple(self.also))
        for item in self.also:
            if not isinstance(item, (AlsoSpec, AlsoNetwork)):
                raise ConfigError(f"also takes AlsoSpec or AlsoNetwork items, got {type(item).__name__}",
                                  param="also")
        parse_objective(self.objective)  # a typo is a usage error before any model loads

    @property
    def diversity_weight(self) -> float:
        return (1.0 if self.batch > 1 else 0.0) if self.diversity is None else self.diversity

    @property
    def balanced(self) -> bool:
        """Whether several terms (summands of the objective and second networks) are balanced."""
        return self.balance and len(parse_objective(self.objective).summands()) + len(self.also) > 1

    @property
    def settle_fraction(self) -> float:
        """``settle``, or by default :data:`BALANCED_SETTLE` for a balanced objective and 0 otherwise
        (measured in docs/lab-synthesis.md)."""
        if self.settle is not None:
            return self.settle
        return BALANCED_SETTLE if self.balanced else 0.0

    @property
    def robust_steps(self) -> int:
        """How many of the first steps apply the robustness transforms."""
        return self.steps - round(self.settle_fraction * self.steps) if self.transforms else 0

    def to_dict(self) -> dict[str, Any]:
        generator = self.generator
        return {"objective": self.objective, "param": self.param.value, "steps": self.steps, "lr": self.lr,
                "size": self.size, "batch": self.batch, "seed": self.seed, "tv": self.tv, "l2": self.l2,
                "diversity": self.diversity_weight, "transforms": self.transforms, "balance": self.balanced,
                "settle": self.settle_fraction if self.transforms else 0.0,
                "also": [{"model": str(a.path) if isinstance(a, AlsoSpec) else a.name, "class": a.class_index,
                          "weight": a.weight} for a in self.also],
                "generator": None if generator is None else str(generator)
                if isinstance(generator, (str, os.PathLike)) else type(generator).__name__}


def _param(value: Any) -> Param:
    try:
        return Param(value)
    except ValueError:
        raise ConfigError(f"param must be one of {', '.join(p.value for p in Param)}, got {value!r}",
                          param="param") from None


@dataclass
class SynthResult:
    """Final images and their exact-pipeline verdicts (index i: batch member i)."""

    images: list[np.ndarray]
    pngs: list[bytes]
    scores: list[float]
    logits_start: list[list[float]]
    logits_end: list[list[float]]
    objectives_start: list[dict[str, float]]
    objectives_end: list[dict[str, float]]
    seconds: float
    steps: int
    history: list[float] = field(default_factory=list)
    interrupted: bool = False
    config: SynthConfig = field(default_factory=SynthConfig)

    def to_dict(self) -> dict[str, Any]:
        """The configuration and every measured number (JSON-safe; the images stay in ``pngs``)."""
        items = [{"score": s, "logits_start": a, "logits_end": b, "objectives_start": o0, "objectives_end": o1}
                 for s, a, b, o0, o1 in zip(self.scores, self.logits_start, self.logits_end,
                                            self.objectives_start, self.objectives_end, strict=True)]
        return {**self.config.to_dict(), "steps": self.steps, "seconds": round(self.seconds, 3),
                "interrupted": self.interrupted, **items[0], "images": items, "loss_history": self.history}

    def report(self, config: SynthConfig | None = None) -> dict[str, Any]:
        """Deprecated: :meth:`to_dict` (the result carries its configuration)."""
        warnings.warn("SynthResult.report() is deprecated; use to_dict()", DeprecationWarning, stacklevel=2)
        return self.to_dict() if config is None else replace(self, config=config).to_dict()


def synthesize(start: Any = None, detector: Any = None, config: SynthConfig | None = None, *,
               progress: ProgressCallback | None = None, **overrides: Any) -> SynthResult:
    """Optimise images for ``config.objective`` on ``detector``'s model; see the module notes.

    ``start``: ``None`` to start from the parameterisation's random initialisation, or an image (a
    path, bytes, a PIL image or an RGB array) that every batch member starts from (resized to
    ``size``; not with a generator). ``detector``: a :class:`~nsfwlab.Detector` (default: the
    stock model on the CPU), which supplies the weights, the preprocessing and the final verdicts.
    ``config`` with ``overrides`` (``steps=50``): a :class:`SynthConfig`. ``progress`` gets one event
    per step (``stage`` ``"synthesize"``, ``item`` the step's objective value). Ctrl-C stops early
    and returns the images as they are (``interrupted``).
    """
    config = configure(SynthConfig, config, overrides)
    if detector is None:
        from ..detector import Detector

        with Detector(device="cpu") as own:
            return _Synthesis(own, config).run(start, progress)
    return _Synthesis(detector, config).run(start, progress)


class Synthesizer:
    """Deprecated: ``synthesize(None, detector, config, also=..., generator=..., device=...)``."""

    def __init__(self, detector: Any, config: SynthConfig, *, also: Sequence[AlsoNetwork] = (),
                 generator: Any = None, device: str = "cpu") -> None:
        warnings.warn("Synthesizer(detector, config).run() is deprecated; call "
                      "nsfwlab.lab.synthesize(None, detector, config)", DeprecationWarning, stacklevel=2)
        self.detector = detector
        self.config = replace(config, also=(*config.also, *also), generator=generator or config.generator,
                              device=device)
        self._run = _Synthesis(detector, self.config)  # errors (unknown layer, no code size) at once

    def run(self, progress: Callable[[int, float], None] | None = None) -> SynthResult:
        """``progress(step, loss)`` after each step."""
        callback = None if progress is None else (lambda ev: progress(ev.done, -float(ev.item)))
        return self._run.run(None, callback)


def _share(term: Target) -> float:
    """The weight of one summand: the product of its scale factors (the sign stays in its gradient)."""
    if isinstance(term, Scaled):
        return abs(term.factor) * _share(term.inner)
    if isinstance(term, Negated):
        return _share(term.inner)
    return 1.0


class _Synthesis:
    """One run: the parameterisation, the objective's terms and Adam, on ``config.device``."""

    def __init__(self, detector: Any, config: SynthConfig) -> None:
        from ..preprocess.differentiable import DifferentiablePreprocess

        zoo = getattr(detector, "zoo", None)
        if zoo is not None:
            raise ConfigError(f"synthesis optimises open_nsfw's classes, layers and channels; model {zoo.model_id} "
                              f"is not open_nsfw (`nsfwlab evolve --model {zoo.model_id}` evolves an image for it, "
                              f"`nsfwlab attack --model {zoo.model_id}` moves a given one)", param="model")
        self.detector, self.config, self.device = detector, config, config.device
        self.also = [a if isinstance(a, AlsoNetwork) else
                     load_also(a, size=config.also_size, device=config.device, trust_code=config.trust_code)
                     for a in config.also]
        gen = config.generator
        if isinstance(gen, (str, os.PathLike)):
            gen = load_generator(Path(gen), config.device, trust_code=config.trust_code)
        self.generator = gen
        self.target: Target = parse_objective(config.objective)
        summands = self.target.summands()
        #: The balanced terms, by report name -> their share of each step; empty when not balanced.
        self.shares: dict[str, float] = {}
        self.summands: dict[str, Target] = {}
        if config.balanced:
            self.summands = {f"term{i}:{t.name}": t for i, t in enumerate(summands)} if len(summands) > 1 else {}
            terms = self.summands or {self.target.name: self.target}
            self.shares = {name: _share(t) for name, t in terms.items()}
            self.shares.update({self._also_name(i, n): abs(n.weight) for i, n in enumerate(self.also)})
        self.model = detector.torch_model(self.device)
        self.preprocess = DifferentiablePreprocess(detector.preprocess_config)
        if gen is not None and config.code_dim is None and not hasattr(gen, "code_dim"):
            raise ConfigError("the generator does not say its code size (no code_dim attribute); pass code_dim",
                              param="code_dim")
        self._check_layers()

    @staticmethod
    def _also_name(i: int, net: AlsoNetwork) -> str:
        return f"also{i}:{net.name}:{net.class_index}"

    def _check_layers(self) -> None:
        names = set(self.model.layer_names()) if hasattr(self.model, "layer_names") else set()
        for layer in self._layers():
            if layer not in names:
                raise ConfigError(f"the model has no layer {layer!r}; see OpenNSFW.layer_names()", param="objective")

    def _layers(self) -> tuple[str, ...]:
        extra = (DIVERSITY_LAYER,) if self.config.diversity_weight > 0 and self.config.batch > 1 else ()
        return tuple(dict.fromkeys(self.target.layers + extra))

    # -- parameterisation ---------------------------------------------------------------------
    def _make_param(self, rng: Any, start: Any) -> tuple[list[Any], Callable[[], Any]]:
        import torch

        from .imageparam import FourierImage, PixelImage

        c = self.config
        if self.generator is not None:
            if start is not None:
                raise ConfigError("a start image needs the fft or pixels parameterisation, not a generator",
                                  param="start")
            dim = int(c.code_dim or self.generator.code_dim)
            code = torch.nn.Parameter(torch.randn(c.batch, dim, generator=rng).to(self.device))
            size = c.size

            def image() -> Any:
                import torch.nn.functional as F

                out = self.generator(code).clamp(0, 1)
                if out.shape[-1] != size or out.shape[-2] != size:
                    out = F.interpolate(out, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
                return out

            return [code], image
        cls = FourierImage if c.param is Param.FFT else PixelImage
        param = cls(c.batch, c.size, generator=rng).to(self.device)
        if start is not None:
            param.set_image(_start_tensor(start, c.size, c.batch).to(self.device))
        return list(param.parameters()), param

    # -- objective ----------------------------------------------------------------------------
    def _network_input(self, x01: Any) -> Any:
        import torch.nn.functional as F

        side = self.detector.preprocess_config.resize
        x = x01 * 255.0
        if x.shape[-1] != side:
            x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        return self.preprocess(x)

    def _terms(self, x01: Any, *, jpeg_exact: Any = None) -> tuple[Any, dict[str, Any]]:
        """Per-image objective terms on images in [0, 1]; ``jpeg_exact``: a ready network input."""
        import torch
        import torch.nn.functional as F

        inp = self._network_input(x01) if jpeg_exact is None else jpeg_exact
        layers = self._layers()
        if layers:
            logits, acts = self.model.forward_intermediates(inp, layers)
        else:
            logits, acts = self.model(inp), {}
        terms: dict[str, Any] = {self.target.name: self.target(logits, acts)}
        terms.update({name: t(logits, acts) for name, t in self.summands.items()})
        for i, net in enumerate(self.also):
            small = F.interpolate(x01, size=(net.size, net.size), mode="bilinear", antialias=True, align_corners=False)
            log_probs = torch.log_softmax(net.module(small), dim=1)
            terms[self._also_name(i, net)] = log_probs[:, net.class_index]
        if self.config.tv:
            terms["tv"] = ((x01[..., 1:, :] - x01[..., :-1, :]).abs().mean((1, 2, 3))
                           + (x01[..., :, 1:] - x01[..., :, :-1]).abs().mean((1, 2, 3)))
        if self.config.l2:
            terms["l2"] = ((x01 - 0.5) ** 2).mean((1, 2, 3))
        if DIVERSITY_LAYER in acts and x01.shape[0] > 1 and DIVERSITY_LAYER not in self.target.layers:
            terms["diversity"] = _gram_similarity(acts[DIVERSITY_LAYER])
        return logits, terms

    def _weights(self) -> dict[str, float]:
        w = {self._also_name(i, n): n.weight for i, n in enumerate(self.also)}
        return {**w, "tv": -self.config.tv, "l2": -self.config.l2, "diversity": -self.config.diversity_weight}

    def _plain(self, terms: dict[str, Any]) -> Any:
        """The objective per image as the weighted sum of its terms (what an unbalanced run maximises)."""
        weights = self._weights()
        total = terms[self.target.name]
        for name, value in terms.items():
            if name != self.target.name and name not in self.summands:
                total = total + weights[name] * value
        return total

    def _backward(self, x01: Any, terms: dict[str, Any]) -> float:
        """Put one step's gradient into the parameters; return the loss (the negated batch mean of the
        weighted sum). Balanced: each term's image gradient at unit length per image times its share,
        rescaled by the terms' mean gradient length (so that the penalties keep their strength)."""
        import torch

        loss = -self._plain(terms).mean()
        if not self.shares:
            loss.backward()
            return float(loss.detach())
        combined, lengths = torch.zeros_like(x01), []
        for name, share in self.shares.items():
            (grad,) = torch.autograd.grad(terms[name].sum(), x01, retain_graph=True)
            length = grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            lengths.append(length)
            combined = combined + share * grad / (length + _EPS)
        combined = combined * torch.stack(lengths).mean(0)
        weights = self._weights()
        penalties = [weights[n] * terms[n] for n in ("tv", "l2", "diversity") if n in terms]
        if penalties:
            (grad,) = torch.autograd.grad(torch.stack(penalties).sum(), x01, retain_graph=True)
            combined = combined + grad
        x01.backward(-combined / x01.shape[0])
        return float(loss.detach())

    # -- run ----------------------------------------------------------------------------------
    def run(self, start: Any, progress: ProgressCallback | None) -> SynthResult:
        import torch

        from .augment import robustness_transforms

        c = self.config
        torch.manual_seed(c.seed)
        rng = torch.Generator().manual_seed(c.seed)
        params, image = self._make_param(rng, start)
        opt = torch.optim.Adam(params, lr=c.lr)
        began = time.perf_counter()
        with torch.no_grad():
            first = _to_uint8(image())
        history: list[float] = []
        interrupted = False
        for step in range(c.steps):
            try:
                opt.zero_grad(set_to_none=True)
                x01 = image()
                # The robustness transforms, then settling: the exact, un-transformed pipeline.
                seen = robustness_transforms(x01, rng) if step < c.robust_steps else x01
                _, terms = self._terms(seen)
                loss = self._backward(x01, terms)
                opt.step()
            except KeyboardInterrupt:
                interrupted = True  # stop with the images as they are: the caller writes them
                break
            history.append(loss)
            notify(progress, "synthesize", step + 1, c.steps, -loss)
        with torch.no_grad():
            final = _to_uint8(image())
        start_logits, start_obj = self.exact(first)
        end_logits, end_obj = self.exact(final)
        pngs = [png_bytes(img) for img in final]
        scores = [float(self.detector.nsfw_score(p)) for p in pngs]
        return SynthResult(list(final), pngs, scores, start_logits, end_logits, start_obj, end_obj,
                           time.perf_counter() - began, len(history), history, interrupted, c)

    def exact(self, images: np.ndarray) -> tuple[list[list[float]], list[dict[str, float]]]:
        """``[sfw, nsfw]`` logits and objective terms of uint8 images through the exact pipeline
        (the Detector's numpy preprocessing, then the torch model); no transforms."""
        import torch

        from ..preprocess import stack_batch

        arrays = stack_batch([self.detector.preprocess(img) for img in images])
        inp = torch.from_numpy(arrays).permute(0, 3, 1, 2).to(self.device)
        x01 = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(self.device, torch.float32) / 255.0
        with torch.no_grad():
            logits, terms = self._terms(x01, jpeg_exact=inp)
        values = [{name: round(float(v[i]), 6) for name, v in terms.items()} for i in range(len(images))]
        for i, row in enumerate(values):
            for j, net in enumerate(self.also):
                small = torch.nn.functional.interpolate(x01[i : i + 1], size=(net.size, net.size), mode="bilinear",
                                                        antialias=True, align_corners=False)
                with torch.no_grad():
                    row[f"also{j}:top_class"] = int(net.module(small).argmax(1)[0])
        return [[float(a), float(b)] for a, b in logits.tolist()], values


def _gram_similarity(acts: Any) -> Any:
    """Per image, the mean cosine similarity of its Gram matrix to the others' (lucid's diversity)."""
    import torch

    n, ch = acts.shape[:2]
    flat = acts.reshape(n, ch, -1)
    gram = torch.bmm(flat, flat.transpose(1, 2)).reshape(n, -1)
    gram = gram / (gram.norm(dim=1, keepdim=True) + 1e-8)
    sim = gram @ gram.T
    return (sim.sum(1) - sim.diagonal()) / (n - 1)


def _to_uint8(x01: Any) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> (N, H, W, 3) uint8, rounded."""
    arr = (x01.detach().clamp(0, 1) * 255.0).round().to("cpu").numpy().astype(np.uint8)
    return np.ascontiguousarray(arr.transpose(0, 2, 3, 1))


def _start_tensor(start: Any, size: int, batch: int) -> Any:
    """A start image as ``(batch, 3, size, size)`` in [0, 1], decoded under the default limits."""
    import torch
    from PIL import Image

    from ..imageio import load_image

    img = load_image(start).resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).expand(batch, -1, -1, -1).contiguous()
