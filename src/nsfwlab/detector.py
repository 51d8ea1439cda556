"""The public core: :class:`Detector` scores one image or many, and labels scores by thresholds."""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .backends import Backend, create_backend
from .config import BackendName, DecodeLimits, Device, Label, Precision, PreprocessConfig, Settings, Thresholds
from .errors import ConfigError, ImageError, NsfwlabError
from .imageio import ImageInput, describe_source
from .preprocess import preprocess, stack_batch

__all__ = ["Detector", "ScoreResult", "nsfw_score"]


@dataclass(frozen=True)
class ScoreResult:
    """The outcome for one input: a score and label, or the error that stopped it."""

    source: str
    score: float | None = None
    label: Label | None = None
    error: NsfwlabError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"path": self.source, "error": self.error.message, "code": self.error.code}
        assert self.label is not None
        return {"path": self.source, "score": self.score, "label": self.label.value}


def _check_model_backend(model: str | os.PathLike, backend: BackendName | str | Backend,
                         precision: Precision | str) -> None:
    """Refuse a backend or precision that ``model`` cannot run on, instead of ignoring it.

    An exported ``.onnx`` runs on onnxruntime in fp32; a ``.pt`` checkpoint on torch.
    """
    if not isinstance(backend, (str, BackendName)):
        raise ConfigError("pass either a ready backend or model=..., not both")
    name = BackendName(backend)
    onnx = Path(model).suffix.lower() == ".onnx"
    if onnx and name is BackendName.TORCH:
        raise ConfigError(f"{model} is an exported ONNX graph, which runs on onnxruntime; pass the .pt "
                          "checkpoint for the torch backend")
    if onnx and Precision(precision) is Precision.FP16:
        raise ConfigError(f"{model} is an exported ONNX graph, which runs fp32; pass the .pt checkpoint for fp16")
    if not onnx and name is BackendName.ONNXRUNTIME:
        raise ConfigError(f"{model} is a PyTorch checkpoint, which runs on the torch backend; export it with "
                          "`nsfwlab export-onnx` for onnxruntime")


class Detector:
    """Loads the model once; scores images one at a time or in batches.

    >>> det = Detector()                       # onnxruntime on CPU, torch fp16 on CUDA
    >>> det.score("photo.jpg")                 # doctest: +SKIP
    0.0123
    >>> [r.label for r in det.score_many(["a.jpg", "b.png"])]   # doctest: +SKIP

    ``backend`` is a name (``auto``, ``onnxruntime``, ``torch``) or a ready :class:`Backend`
    (for example a fine-tuned model in a ``TorchBackend``); ``model`` is the path of a fine-tuned
    checkpoint (``.pt``) or an exported ``.onnx`` (see :mod:`nsfwlab.checkpoint`). ``preprocess`` defaults to Yahoo's
    exact pipeline; ``limits`` to the decode caps of :class:`~nsfwlab.config.Settings`.
    ``workers`` threads decode and preprocess while the model runs (Pillow releases the GIL).
    """

    def __init__(
        self,
        backend: BackendName | str | Backend = BackendName.AUTO,
        device: Device | str = Device.AUTO,
        *,
        thresholds: Thresholds | None = None,
        batch_size: int = 16,
        preprocess: PreprocessConfig | None = None,
        limits: DecodeLimits | None = None,
        workers: int | None = None,
        precision: Precision | str = Precision.AUTO,
        threads: int | None = None,
        model: str | os.PathLike | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        if workers is not None and workers < 1:
            raise ConfigError(f"workers must be at least 1, got {workers}")
        settings = Settings.from_env()
        model_preprocess: PreprocessConfig | None = None
        self.backend: Backend
        if model is not None:
            from .checkpoint import load_model

            _check_model_backend(model, backend, precision)
            self.backend, model_preprocess = load_model(model, device, precision=precision,
                                                         threads=threads or settings.threads)
        elif isinstance(backend, (str, BackendName)):
            self.backend = create_backend(
                backend, device, precision=precision, threads=threads or settings.threads,
                onnx_path=settings.model_path,
            )
        else:
            self.backend = backend
        self.thresholds = thresholds or Thresholds()
        self.batch_size = batch_size
        self.preprocess_config = preprocess or model_preprocess or PreprocessConfig()
        self.limits = limits or settings.limits
        self.workers = workers or 2
        self._model_path = model
        self._torch_models: dict[tuple[str, str], Any] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    # -- identity ---------------------------------------------------------------------------
    @property
    def model_version(self) -> str:
        return self.backend.model_version

    @property
    def preprocess_version(self) -> str:
        return self.preprocess_config.version

    def describe(self) -> dict[str, Any]:
        """What produced a score: model, preprocessing, backend, device, thresholds."""
        return {
            "model_version": self.model_version,
            "preprocess_version": self.preprocess_version,
            "backend": self.backend.name,
            "device": self.backend.device,
            "safe_below": self.thresholds.safe_below,
            "nsfw_above": self.thresholds.nsfw_above,
        }

    # -- building blocks --------------------------------------------------------------------
    def label(self, score: float) -> Label:
        return self.thresholds.label(score)

    def torch_model(self, device: str | None = None, dtype: Any = None) -> Any:
        """A gradient-capable ``torch.nn.Module`` with this Detector's weights (stock, a ``.pt``
        checkpoint, or an ``.onnx`` exported from one), for explain, attacks and synthesis.

        It takes the NCHW BGR mean-subtracted input of :attr:`preprocess_config` (see
        :mod:`nsfwlab.preprocess.differentiable`) and returns logits ``[sfw, nsfw]``; eval mode,
        parameters frozen (``requires_grad=False``: gradients are for inputs), on ``device``
        (default: the CPU) in ``dtype`` (default float32). A torch backend's own module is returned
        when it already has that device and dtype; otherwise it is a copy (one kept per device and
        dtype), so moving the copy cannot change what the Detector scores. fp32 weights come from
        the model file, never from an fp16 backend's rounded ones.
        """
        import torch

        from .backends import TorchBackend

        dev = torch.device(device or "cpu")
        dt = dtype or torch.float32
        own = self.backend.model if isinstance(self.backend, TorchBackend) else None
        with self._lock:
            if own is not None and next(own.parameters()).device == dev and next(own.parameters()).dtype == dt:
                module = own
            else:
                key = (str(dev), str(dt))
                if key not in self._torch_models:
                    self._torch_models[key] = self._fp32_module().to(device=dev, dtype=dt).eval()
                module = self._torch_models[key]
            module.requires_grad_(False)
            return module

    def _fp32_module(self) -> Any:
        import copy

        import torch

        from .backends import TorchBackend
        from .weights import MODEL_VERSION

        if self._model_path is not None:
            from .checkpoint import load_torch_module

            return load_torch_module(self._model_path)
        torch_backend = self.backend if isinstance(self.backend, TorchBackend) else None
        if torch_backend is not None and (torch_backend.dtype == torch.float32
                                          or self.backend.model_version != MODEL_VERSION):
            return copy.deepcopy(torch_backend.model).float().cpu()
        if self.backend.model_version == MODEL_VERSION:  # stock weights: fp32 from the file, not from fp16
            from .model import load_open_nsfw

            return load_open_nsfw(Settings.from_env().model_path)
        raise ConfigError(f"gradient methods need PyTorch weights, and model {self.model_version!r} runs on "
                          f"{self.backend.name} only; pass its .pt checkpoint (Detector(model=...))")

    def preprocess(self, source: ImageInput) -> np.ndarray:
        """Decode safely and preprocess one input into its (224, 224, 3) float32 array."""
        return preprocess(source, self.preprocess_config, self.limits)

    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """NSFW probabilities for an NHWC batch of preprocessed arrays, split by ``batch_size``."""
        if len(batch) == 0:
            return np.zeros((0,), dtype=np.float32)
        parts = [self.backend.predict(batch[i : i + self.batch_size])[:, 1]
                 for i in range(0, len(batch), self.batch_size)]
        return np.concatenate(parts).astype(np.float32)

    # -- one ----------------------------------------------------------------------------------
    def score(self, source: ImageInput) -> float:
        """The NSFW probability of one image. Raises an ``ImageError`` naming bad input."""
        try:
            arr = self.preprocess(source)
        except NsfwlabError as exc:
            raise exc.with_source(describe_source(source)) from None
        return float(self.backend.predict(arr[None])[0, 1])

    def classify(self, source: ImageInput) -> ScoreResult:
        """Score and label one image (raises on bad input, like :meth:`score`)."""
        s = self.score(source)
        return ScoreResult(describe_source(source), s, self.label(s))

    # -- many ---------------------------------------------------------------------------------
    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="nsfwlab-pre")
            return self._pool

    def _prepare(self, source: ImageInput | NsfwlabError) -> np.ndarray | NsfwlabError:
        if isinstance(source, NsfwlabError):
            return source
        try:
            return self.preprocess(source)
        except NsfwlabError as exc:
            return exc
        except Exception as exc:
            return ImageError(f"unexpected {type(exc).__name__}: {exc}")

    def iter_score(
        self,
        sources: Iterable[ImageInput | NsfwlabError],
        names: Iterable[str] | None = None,
        *,
        progress: Callable[[ScoreResult], None] | None = None,
    ) -> Iterator[ScoreResult]:
        """Score a stream of inputs in order, batched, never stopping at a bad one.

        An input that is already an :class:`NsfwlabError` is reported as that error, in its place
        (edges use this for problems found before decoding, such as an empty directory).

        Decoding runs ahead in worker threads by at most ``2 x batch_size`` inputs, so memory
        stays bounded however long the stream is. ``progress`` is called once per result.
        """
        name_iter = iter(names) if names is not None else None
        pool = self._executor()
        window: deque[tuple[str, Future[np.ndarray | NsfwlabError]]] = deque()
        ahead = 2 * self.batch_size

        def emit(batch: list[tuple[str, np.ndarray | NsfwlabError]]) -> list[ScoreResult]:
            arrays = [v for _, v in batch if isinstance(v, np.ndarray)]
            scores = iter(self.backend.predict(stack_batch(arrays))[:, 1].tolist()) if arrays else iter(())
            out: list[ScoreResult] = []
            for name, value in batch:
                if isinstance(value, np.ndarray):
                    s = float(next(scores))
                    out.append(ScoreResult(name, s, self.label(s)))
                else:
                    out.append(ScoreResult(name, error=value.with_source(name)))
            return out

        def drain(n: int) -> Iterator[ScoreResult]:
            batch = [(name, fut.result()) for name, fut in (window.popleft() for _ in range(n))]
            for res in emit(batch):
                if progress is not None:
                    progress(res)
                yield res

        for source in sources:
            name = next(name_iter) if name_iter is not None else describe_source(source)
            window.append((name, pool.submit(self._prepare, source)))
            if len(window) >= ahead:
                yield from drain(self.batch_size)
        while window:
            yield from drain(min(self.batch_size, len(window)))

    def score_many(self, sources: Sequence[ImageInput], names: Sequence[str] | None = None,
                   *, progress: Callable[[ScoreResult], None] | None = None) -> list[ScoreResult]:
        """Score many inputs (batched); one :class:`ScoreResult` per input, in input order."""
        return list(self.iter_score(sources, names, progress=progress))

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_default: Detector | None = None
_default_lock = threading.Lock()


def nsfw_score(img: ImageInput) -> float:
    """The open_nsfw score (0..1) of one image: a path, bytes, file object, PIL image or array.

    The one-liner of the original ports. The model is loaded on first use and kept.
    """
    global _default
    with _default_lock:
        if _default is None:
            _default = Detector()
        det = _default
    return det.score(img)
