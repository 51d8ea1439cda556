"""Scan modes: ``exact`` (bit-faithful to the core) and ``fast`` (stated drift, more images/s).

- ``exact``: the core's preprocessing (``PreprocessConfig()``, or a checkpoint's own) and the fp32
  model; scores equal ``nsfwlab score``'s. On CUDA the torch backend runs fp32 (fp16 would drift).
- ``fast`` on CPU: libjpeg DCT-scaled decoding (``PreprocessConfig(draft=True)``) and the model
  statically quantised to int8 with onnxruntime (QDQ, per-channel weights, calibrated on generated
  images). The int8 graph is built once from the ONNX graph, offline, and cached under
  ``~/.cache/nsfwlab/int8`` (or a given directory) keyed by the source graph's sha256.
- ``fast`` on CUDA: GPU JPEG decoding and resizing into the fp16 model (:mod:`nsfwlab.scan.gpu`).

Fast mode on a CPU never changes a label: a still image whose fast score lies within
:data:`FAST_GUARD_MARGIN` of a band boundary (:func:`needs_exact`) is scored again the exact way
(:class:`ExactGuard`), and that score is the one recorded. A ``.pt`` checkpoint scanned on a CPU runs
as its ONNX export (:func:`model_for_cpu`), which onnxruntime runs several times faster than torch.

Scores of different modes never mix: each mode has its own model and preprocessing versions.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DecodeLimits, PreprocessConfig
from ..errors import ConfigError, ModelError, NsfwlabError
from ..hashing import model_file_sha256

__all__ = [
    "FAST_GUARD_MARGIN",
    "QUANT_VERSION",
    "ExactGuard",
    "ScanMode",
    "calibration_batches",
    "default_cache_dir",
    "fast_preprocess",
    "int8_model_path",
    "model_for_cpu",
    "needs_exact",
    "quantize_int8",
]

#: Bumped whenever the quantisation recipe or the calibration images change.
QUANT_VERSION = "int8q1"


class ScanMode(StrEnum):
    EXACT = "exact"
    FAST = "fast"


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "nsfwlab"


def fast_preprocess(base: PreprocessConfig) -> PreprocessConfig:
    """The fast mode's preprocessing: the base pipeline with DCT-scaled JPEG decoding."""
    return replace(base, draft=True)


def _calibration_image(rng: np.random.Generator, size: int = 320) -> np.ndarray:
    """A seeded synthetic RGB image: smooth colour fields, blobs of skin-like and other tones,
    stripes and noise, so the activations cover what photos produce. No photo is needed."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.zeros((size, size, 3), np.float32)
    for c in range(3):
        a, b, ph = rng.uniform(-1, 1, 3)
        img[..., c] = 128 + 90 * np.sin(3 * a * xx * np.pi + 2 * b * yy * np.pi + ph * np.pi)
    for _ in range(int(rng.integers(3, 12))):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.4)
        mask = ((xx - cx) ** 2 + (yy - cy) ** 2) < r * r
        tone = rng.choice([np.array([224, 172, 140]), np.array([198, 134, 66]), np.array([141, 85, 36]),
                           rng.uniform(0, 255, 3)])
        img[mask] = 0.3 * img[mask] + 0.7 * tone
    if rng.uniform() < 0.5:
        img[:, :: int(rng.integers(4, 24))] *= 0.6
    img += rng.normal(0, rng.uniform(0, 20), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def calibration_batches(count: int = 48, batch: int = 8, seed: int = 0,
                        config: PreprocessConfig | None = None) -> list[np.ndarray]:
    """Preprocessed NHWC calibration batches from seeded synthetic images (deterministic)."""
    from PIL import Image

    from ..preprocess import preprocess_rgb, stack_batch

    rng = np.random.default_rng(seed)
    cfg = config or PreprocessConfig()
    arrays = [preprocess_rgb(Image.fromarray(_calibration_image(rng)), cfg) for _ in range(count)]
    return [stack_batch(arrays[i : i + batch]) for i in range(0, count, batch)]


def int8_model_path(source: Path, cache_dir: Path) -> Path:
    """Where the int8 graph of ``source`` is cached (keyed by content and recipe)."""
    return cache_dir / "int8" / f"{source.stem}-{model_file_sha256(source)[:16]}-{QUANT_VERSION}.onnx"


def quantize_int8(source: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None,
                  calibration: list[np.ndarray] | None = None) -> Path:
    """Build (or find in the cache) the int8 static quantisation of an ONNX graph; return its path.

    ``source`` defaults to the bundled, sha256-verified open_nsfw graph. The build is offline and
    deterministic: generated calibration images (:func:`calibration_batches`), QDQ format, per-channel
    int8 weights, uint8 activations, MinMax calibration. It is written to a temporary file and renamed,
    so concurrent builders never leave a half-written model.
    """
    from ..weights import resolve_onnx_path

    src = resolve_onnx_path(None) if source is None else Path(source)
    if not src.is_file():
        raise ModelError(f"ONNX model {src} does not exist")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = int8_model_path(src, cache)
    if out.is_file():
        return out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the model cache {out.parent}: {exc.strerror or exc}") from None

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    model = onnx.load(str(src))
    input_name = model.graph.input[0].name
    if max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0) < 13:
        # Per-channel QDQ needs DequantizeLinear's axis attribute (opset >= 13).
        from onnx import version_converter

        model = version_converter.convert_version(model, 13)
    batches = calibration if calibration is not None else calibration_batches()

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            nxt = next(self._it, None)
            return None if nxt is None else {input_name: nxt}

    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    upgraded = out.with_name(f"{out.name}.{os.getpid()}.src.onnx")
    previous = logging.root.manager.disable
    try:
        onnx.save(model, str(upgraded))
        # onnxruntime.quantization logs advice on the root logger ("consider pre-processing"); the
        # recipe here is fixed and measured, so keep the user's console quiet while it runs.
        logging.disable(logging.WARNING)
        quantize_static(
            str(upgraded), str(tmp), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        os.replace(tmp, out)
    except Exception as exc:
        raise ModelError(f"int8 quantisation of {src} failed: {type(exc).__name__}: {exc}") from None
    finally:
        logging.disable(previous)
        for leftover in (tmp, upgraded):
            if leftover.exists():
                leftover.unlink()
    return out


#: How far fast mode's score may be from the exact one, as the guard assumes: a fast score within
#: this distance of a band boundary is re-scored exactly (:func:`needs_exact`). The largest
#: ``|fast - exact|`` measured on a varied corpus of 527 images was 0.173, on a painting-like image
#: (photos and crops: 0.059; ``benchmarks/bench_fast_drift.py``, docs/scan.md), rounded up. The cost
#: rises steeply past it: with the 0.2 boundary, a margin of 0.18 re-scores fast scores from 0.02 up
#: (16.5% of that corpus), 0.2 every score from 0 (all of it). ``ScanConfig`` takes it as
#: ``guard_margin`` (0 turns the guard off).
FAST_GUARD_MARGIN = 0.18


def needs_exact(score: float, margin: float, label: Callable[[float], object]) -> bool:
    """Whether a fast raw ``score`` could carry another label than the exact score: some score within
    ``margin`` of it gets another ``label`` (the band labels of the thresholds in use, after any
    calibration; labels are monotone in the score, so the two ends of the interval and the score
    itself decide)."""
    if margin <= 0:
        return False
    lo, hi = max(0.0, score - margin), min(1.0, score + margin)
    first = label(score)
    return label(lo) != first or label(hi) != first


class ExactGuard:
    """Fast mode's guard: re-scores the still images whose fast scores :func:`needs_exact` flags with
    the exact pipeline (``preprocess`` and the fp32 backend ``exact``, built on first use), so that fast
    mode never changes a label. The file is read again and must still hash to the content scored; a
    file that changed or cannot be read keeps its fast score (the next scan scores it again anyway).
    ``checked`` and ``rescored`` count images."""

    def __init__(self, exact: Callable[[], Any], preprocess: PreprocessConfig, limits: DecodeLimits,
                 label: Callable[[float], object], margin: float = FAST_GUARD_MARGIN) -> None:
        if not 0.0 <= margin <= 1.0:
            raise ConfigError(f"guard_margin must lie in [0, 1], got {margin}", param="guard_margin")
        self._make: Callable[[], Any] = exact
        self._backend: Any = None
        self.preprocess, self.limits, self.label, self.margin = preprocess, limits, label, margin
        self.checked = self.rescored = 0

    def review(self, items: Sequence[tuple[str | None, str]], scores: Sequence[float]) -> list[float]:
        """``scores`` of ``items`` (``(path, sha256)``; path ``None``: not a still image, left as is),
        with the flagged ones replaced by their exact scores (one model call for the batch's flagged)."""
        out = [float(s) for s in scores]
        flagged: list[tuple[int, np.ndarray]] = []
        for i, ((path, sha), score) in enumerate(zip(items, out, strict=True)):
            if path is None:
                continue
            self.checked += 1
            if needs_exact(score, self.margin, self.label) and (array := self._exact_input(path, sha)) is not None:
                flagged.append((i, array))
        if flagged:
            from ..preprocess import stack_batch

            if self._backend is None:
                self._backend = self._make()
            exact = self._backend.predict(stack_batch([a for _, a in flagged]))[:, 1]
            for (i, _), score in zip(flagged, exact, strict=True):
                out[i] = float(score)
            self.rescored += len(flagged)
        return out

    def _exact_input(self, path: str, sha: str) -> np.ndarray | None:
        """The exact network input of the file at ``path`` if it still holds the content ``sha``."""
        from ..imageio import read_bytes
        from ..preprocess import preprocess

        try:
            data = read_bytes(path, self.limits)
            if hashlib.sha256(data).hexdigest() != sha:
                return None
            return preprocess(data, self.preprocess, self.limits)
        except NsfwlabError:
            return None


def model_for_cpu(model: str | None, device: str, cache_dir: str | os.PathLike | None) -> str | None:
    """The model file a scan runs on ``device``: a ``.pt`` checkpoint on a CPU becomes its cached ONNX
    export (:func:`nsfwlab.checkpoint.cached_onnx_export`, under ``cache_dir``/onnx), which onnxruntime
    runs several times faster than torch does on a CPU, with the same scores to ~1e-6 and the
    checkpoint's model_version; anything else is returned as it is."""
    if model is None or device != "cpu" or Path(model).suffix.lower() == ".onnx":
        return model
    from ..checkpoint import cached_onnx_export

    exported = cached_onnx_export(model, Path(cache_dir) if cache_dir is not None else default_cache_dir())
    if exported is None:
        logging.getLogger(__name__).warning("%s: its ONNX export does not score as it does; the scan runs it on "
                                            "torch, several times slower", model)
        return model
    return str(exported)
