"""Synthesise images that maximise an objective on open_nsfw (activation maximisation, seed 003).

The image comes from a parameterisation (:mod:`nsfwlab.lab.fourier`: a decorrelated Fourier
spectrum, plain pixels, or a TorchScript generator's code), passes random robustness transforms
(except in a final settling phase, by default for balanced sums only), then the exact pipeline's
torch twin (:class:`~nsfwlab.preprocess.differentiable.DifferentiablePreprocess`: Pillow's real
JPEG round trip forward, identity backward) into the model; Adam raises the objective: a
:class:`~nsfwlab.objectives.Target` (``nsfw``, ``sfw``, ``nsfw+sfw``, ``channel:LAYER:K`` ...)
plus, per second network, ``weight * log_softmax(logits)[class]``, minus the optional
total-variation and L2 penalties, plus a diversity term across the batch.

Nothing the optimiser estimates is reported: every number in :class:`SynthResult` is computed on
the final uint8 images through the exact pipeline (``Detector.score`` of the PNG bytes, and the
Detector's own preprocessing into the torch model for the logits and objective values).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..objectives import Target, parse_objective
from .evolve import png_bytes
from .networks import AlsoNetwork, AlsoSpec, load_also, load_generator, parse_also

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
]

#: The layer whose Gram matrices the diversity term spreads apart (lucid uses a mid layer).
DIVERSITY_LAYER = "stage1"
#: The default settling fraction (:attr:`SynthConfig.settle_fraction`) of a balanced objective: its
#: last fifth runs without the robustness transforms (measured in docs/lab-synthesis.md).
BALANCED_SETTLE = 0.2


class Param(str, Enum):
    FFT = "fft"
    PIXELS = "pixels"


@dataclass(frozen=True)
class SynthConfig:
    """How to synthesise. ``diversity`` ``None``: 1.0 when ``batch > 1``, else 0."""

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
    #: With a sum of several terms (``nsfw+sfw``), maximise a soft minimum of their gains over the
    #: start image, so that every term rises ("both at once", seed 003), not only the cheapest one.
    balance: bool = True
    #: The fraction of the last steps that run without the robustness transforms, so that the final
    #: image is tuned to the exact, un-transformed pipeline its numbers are measured on. ``None``:
    #: :data:`BALANCED_SETTLE` for a balanced sum of several terms, else 0 (see :attr:`settle_fraction`).
    settle: float | None = None

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ConfigError(f"--steps must not be negative, got {self.steps}")
        if not 0.0 < self.lr <= 10.0:
            raise ConfigError(f"--lr must lie in (0, 10], got {self.lr}")
        if not 32 <= self.size <= 1024:
            raise ConfigError(f"--size must lie in 32..1024, got {self.size}")
        if not 1 <= self.batch <= 64:
            raise ConfigError(f"--batch must lie in 1..64, got {self.batch}")
        if min(self.tv, self.l2, self.diversity or 0.0) < 0.0:
            raise ConfigError("penalty and diversity weights must not be negative")
        if self.settle is not None and not 0.0 <= self.settle <= 1.0:
            raise ConfigError(f"--settle must lie in [0, 1], got {self.settle}")
        parse_objective(self.objective)  # a typo is a usage error before any model loads

    @property
    def diversity_weight(self) -> float:
        return (1.0 if self.batch > 1 else 0.0) if self.diversity is None else self.diversity

    @property
    def balanced(self) -> bool:
        """Whether the objective is optimised as a balanced minimum of several summed terms."""
        return self.balance and len(parse_objective(self.objective).summands()) > 1

    @property
    def settle_fraction(self) -> float:
        """``settle``, or by default :data:`BALANCED_SETTLE` for a balanced objective and 0 otherwise.

        One term's robust optimum already moves its exact logit far (``nsfw`` +12, ``sfw`` +9 in 200
        steps with the transforms throughout), and lucid keeps the transforms to the end. The terms of
        ``nsfw+sfw`` pull towards conflicting robust features, and with the transforms throughout both
        exact logits gained only 0.8-2.2 in 200 steps (seeds 0-4); a settling phase lets the final image
        raise each term on the exact pipeline: +3.0 to +4.7 for both (docs/lab-synthesis.md)."""
        if self.settle is not None:
            return self.settle
        return BALANCED_SETTLE if self.balanced else 0.0

    @property
    def robust_steps(self) -> int:
        """How many of the first steps apply the robustness transforms."""
        return self.steps - round(self.settle_fraction * self.steps) if self.transforms else 0


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

    def report(self, config: SynthConfig) -> dict[str, Any]:
        items = [{"score": s, "logits_start": a, "logits_end": b, "objectives_start": o0, "objectives_end": o1}
                 for s, a, b, o0, o1 in zip(self.scores, self.logits_start, self.logits_end,
                                            self.objectives_start, self.objectives_end, strict=True)]
        return {"objective": config.objective, "param": config.param.value, "steps": self.steps, "lr": config.lr,
                "size": config.size, "batch": config.batch, "seed": config.seed, "tv": config.tv, "l2": config.l2,
                "diversity": config.diversity_weight, "transforms": config.transforms,
                "balance": config.balanced, "settle": config.settle_fraction if config.transforms else 0.0,
                "seconds": round(self.seconds, 3), "interrupted": self.interrupted, **items[0], "images": items,
                "loss_history": self.history}


class Synthesizer:
    """Gradient ascent on an image parameterisation through the exact pipeline's torch twin.

    ``detector`` supplies the weights (``torch_model``), its preprocessing configuration, and the
    final verdicts (``score`` of each PNG). ``also``: second networks; ``generator``: a module
    from codes to images (replaces the Fourier/pixel parameterisation)."""

    def __init__(self, detector: Any, config: SynthConfig, *, also: Sequence[AlsoNetwork] = (),
                 generator: Any = None, device: str = "cpu") -> None:
        from ..preprocess.differentiable import DifferentiablePreprocess

        self.detector, self.config, self.also, self.device = detector, config, list(also), device
        self.target: Target = parse_objective(config.objective)
        summands = self.target.summands()
        #: The summed terms optimised together (balanced), by report name; empty for one term.
        self.summands: dict[str, Target] = ({f"term{i}:{t.name}": t for i, t in enumerate(summands)}
                                            if config.balanced else {})
        self._base: dict[str, Any] = {}
        self.model = detector.torch_model(device)
        self.preprocess = DifferentiablePreprocess(detector.preprocess_config)
        self.generator = generator
        if generator is not None and config.code_dim is None and not hasattr(generator, "code_dim"):
            raise ConfigError("the generator does not say its code size (no code_dim attribute); pass --code-dim")
        self._check_layers()

    def _check_layers(self) -> None:
        names = set(self.model.layer_names()) if hasattr(self.model, "layer_names") else set()
        for layer in self._layers():
            if layer not in names:
                raise ConfigError(f"the model has no layer {layer!r}; see OpenNSFW.layer_names()")

    def _layers(self) -> tuple[str, ...]:
        extra = (DIVERSITY_LAYER,) if self.config.diversity_weight > 0 and self.config.batch > 1 else ()
        return tuple(dict.fromkeys(self.target.layers + extra))

    # -- parameterisation ---------------------------------------------------------------------
    def _make_param(self, rng: Any) -> tuple[list[Any], Callable[[], Any]]:
        import torch

        from .fourier import FourierImage, PixelImage

        c = self.config
        if self.generator is not None:
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
            terms[f"also{i}:{net.name}:{net.class_index}"] = log_probs[:, net.class_index]
        if self.config.tv:
            terms["tv"] = ((x01[..., 1:, :] - x01[..., :-1, :]).abs().mean((1, 2, 3))
                           + (x01[..., :, 1:] - x01[..., :, :-1]).abs().mean((1, 2, 3)))
        if self.config.l2:
            terms["l2"] = ((x01 - 0.5) ** 2).mean((1, 2, 3))
        if DIVERSITY_LAYER in acts and x01.shape[0] > 1 and DIVERSITY_LAYER not in self.target.layers:
            terms["diversity"] = _gram_similarity(acts[DIVERSITY_LAYER])
        return logits, terms

    def _weights(self) -> dict[str, float]:
        w = {f"also{i}:{n.name}:{n.class_index}": n.weight for i, n in enumerate(self.also)}
        return {**w, "tv": -self.config.tv, "l2": -self.config.l2, "diversity": -self.config.diversity_weight}

    def _objective(self, terms: dict[str, Any]) -> Any:
        import torch

        weights = self._weights()
        total = terms[self.target.name]
        if self.summands and self._base:
            # A soft minimum (temperature 1, in logit units) of each term's gain over the start image.
            gains = torch.stack([terms[name] - self._base[name] for name in self.summands])
            total = -torch.logsumexp(-gains, dim=0)
        for name, value in terms.items():
            if name != self.target.name and name not in self.summands:
                total = total + weights[name] * value
        return total

    # -- run ----------------------------------------------------------------------------------
    def run(self, progress: Callable[[int, float], None] | None = None) -> SynthResult:
        """Optimise for ``config.steps`` steps; ``progress(step, loss)`` after each. Ctrl-C stops
        early and returns the images as they are (``interrupted``)."""
        import torch

        from .fourier import robustness_transforms

        c = self.config
        torch.manual_seed(c.seed)
        rng = torch.Generator().manual_seed(c.seed)
        params, image = self._make_param(rng)
        opt = torch.optim.Adam(params, lr=c.lr)
        start = time.perf_counter()
        with torch.no_grad():
            first = _to_uint8(image())
            if self.summands:
                _, at_start = self._terms(image())
                self._base = {name: at_start[name] for name in self.summands}
        history: list[float] = []
        interrupted = False
        for step in range(c.steps):
            try:
                opt.zero_grad(set_to_none=True)
                x01 = image()
                if step < c.robust_steps:  # then settle: the exact, un-transformed pipeline
                    x01 = robustness_transforms(x01, rng)
                _, terms = self._terms(x01)
                loss = -self._objective(terms).mean()
                loss.backward()
                opt.step()
            except KeyboardInterrupt:
                interrupted = True  # stop with the images as they are: the caller writes them
                break
            history.append(float(loss.detach()))
            if progress is not None:
                progress(step + 1, history[-1])
        with torch.no_grad():
            final = _to_uint8(image())
        start_logits, start_obj = self.exact(first)
        end_logits, end_obj = self.exact(final)
        pngs = [png_bytes(img) for img in final]
        scores = [float(self.detector.score(p)) for p in pngs]
        return SynthResult(list(final), pngs, scores, start_logits, end_logits, start_obj, end_obj,
                           time.perf_counter() - start, len(history), history, interrupted)

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
