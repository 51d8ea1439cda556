"""The public core: :class:`Detector` scores one image, many, or the frames of a video or animation;
the answers come from :mod:`nsfwlab.verdict` (calibration, bands, aggregation, the hash bank)."""

from __future__ import annotations

import itertools
import os
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from .backends import Backend, create_backend
from .calibration import Calibration, load_calibration
from .config import BackendName, DecodeLimits, Device, Label, Precision, PreprocessConfig, Settings, Thresholds
from .errors import ConfigError, ImageError, NsfwlabError
from .frames import FrameOptions, iter_frames, sniff_video
from .imageio import ImageInput, describe_source, load_image, read_bytes, read_head
from .modelsource import Detection, ZooBackend, check_file_backend, is_model_file, is_zoo_id, load_zoo_backend
from .preprocess import preprocess, preprocess_rgb, stack_batch
from .readahead import ordered_map
from .verdict import (
    BankCheck,
    FramesResult,
    Kind,
    Policy,
    ScoreResult,
    check_bank,
    decide_frames,
    decide_still,
    kind_of,
    may_hold_frames,
    stop_early,
)

if TYPE_CHECKING:
    from .bank import Bank

__all__ = ["Detector", "FramesResult", "ScoreResult", "nsfw_score"]


class Detector:
    """Loads the model once; scores images one at a time or in batches.

    >>> det = Detector()                       # onnxruntime on CPU, torch fp16 on CUDA
    >>> det.nsfw_score("photo.jpg")            # doctest: +SKIP
    0.0123
    >>> det.classify("photo.jpg").label        # doctest: +SKIP
    >>> [r.label for r in det.score_many(["a.jpg", "b.png"])]   # doctest: +SKIP

    ``backend`` is a name (``auto``, ``onnxruntime``, ``torch``) or a ready :class:`Backend`
    (for example a fine-tuned model in a ``TorchBackend``); ``model`` is the path of a fine-tuned
    checkpoint (``.pt``) or an exported ``.onnx`` (see :mod:`nsfwlab.checkpoint`), or a zoo id
    (``nsfwjs-mobilenetv2``, a card file, ``ensemble:A+B[:mean|max]``; :mod:`nsfwlab.modelsource`): a zoo
    model prepares its input as its card says, its bands are the card's unless ``thresholds`` is
    given, and its results carry ``model`` and ``classes``. ``preprocess`` defaults to Yahoo's
    exact pipeline; ``limits`` to the decode caps of :class:`~nsfwlab.config.Settings`.
    ``workers`` threads decode and preprocess while the model runs (Pillow releases the GIL).
    ``calibration`` (a ``calibration.json`` path or a :class:`~nsfwlab.calibration.Calibration`
    fitted for this model) makes every score the calibrated probability and keeps the model's
    in ``ScoreResult.raw_score``; :meth:`predict_arrays` stays raw. ``bank`` (a
    :class:`~nsfwlab.bank.Bank` or its path) is consulted for every still image: one within
    ``match_distance`` PDQ bits of a banked hash takes the human decision as its label
    (:mod:`nsfwlab.verdict`); a bank given as a path is closed by :meth:`close`.
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
        calibration: str | os.PathLike | Calibration | None = None,
        bank: Bank | str | os.PathLike | None = None,
        match_distance: int = 31,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        if workers is not None and workers < 1:
            raise ConfigError(f"workers must be at least 1, got {workers}")
        if not 0 <= match_distance <= 256:
            raise ConfigError(f"match_distance must be between 0 and 256, got {match_distance}")
        # A bad calibration file fails before the model is loaded.
        loaded_calibration = load_calibration(calibration) if calibration is not None else None
        settings = Settings.from_env()
        model_preprocess: PreprocessConfig | None = None
        self.backend: Backend
        self.zoo: ZooBackend | None = None
        if model is not None and is_zoo_id(model):
            if not isinstance(backend, (str, BackendName)):
                raise ConfigError("pass either a ready backend or model=..., not both")
            self.zoo = load_zoo_backend(os.fspath(model), backend, device, precision, threads or settings.threads,
                                        batch_size)
            self.backend = self.zoo
        elif model is not None and is_model_file(model):
            from .checkpoint import load_model

            check_file_backend(model, backend, precision)
            self.backend, model_preprocess = load_model(model, device, precision=precision,
                                                         threads=threads or settings.threads)
        elif isinstance(backend, (str, BackendName)):
            self.backend = create_backend(
                backend, device, precision=precision, threads=threads or settings.threads,
                onnx_path=settings.model_path,
            )
        else:
            self.backend = backend
        self.thresholds = thresholds or (self.zoo.thresholds if self.zoo is not None else Thresholds())
        self.batch_size = batch_size
        self.preprocess_config = preprocess or model_preprocess or PreprocessConfig()
        self.limits = limits or settings.limits
        self.workers = workers or 2
        self._model_path = model if model is not None and is_model_file(model) else None
        self.calibration = loaded_calibration
        if loaded_calibration is not None:
            loaded_calibration.check(self.model_version, self.preprocess_version)
        self.match_distance = match_distance
        self.bank, self._owns_bank = _open_bank(bank, self.limits)
        self._torch_models: dict[tuple[str, str], Any] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    # -- identity ---------------------------------------------------------------------------
    @property
    def model_version(self) -> str:
        return self.backend.model_version

    @property
    def preprocess_version(self) -> str:
        return self.zoo.preprocess_version if self.zoo is not None else self.preprocess_config.version

    @property
    def model_id(self) -> str:
        """The zoo id of the model: ``open_nsfw`` for the stock model and its checkpoints."""
        return self.zoo.model_id if self.zoo is not None else "open_nsfw"

    @property
    def _row_model(self) -> str | None:  # results of open_nsfw carry no model id: their rows stay as they were
        return self.zoo.model_id if self.zoo is not None else None

    def describe(self) -> dict[str, Any]:
        """What produced a score: model, preprocessing, backend, device, thresholds (and calibration, if any)."""
        out = {
            **({"model": self.zoo.model_id} if self.zoo is not None else {}),
            "model_version": self.model_version,
            "preprocess_version": self.preprocess_version,
            "backend": self.backend.name,
            "device": self.backend.device,
            "safe_below": self.thresholds.safe_below,
            "nsfw_above": self.thresholds.nsfw_above,
        }
        if self.calibration is not None:
            out["calibration"] = self.calibration.method.value
        return out

    # -- building blocks --------------------------------------------------------------------
    def policy(self, frames: FrameOptions | None = None) -> Policy:
        """The :class:`~nsfwlab.verdict.Policy` of this Detector's answers (``frames``: how frame scores combine)."""
        return Policy(self.thresholds, self.calibration, frames or FrameOptions(), self.match_distance)

    def label(self, score: float) -> Label:
        return self.policy().band(score)

    def calibrate(self, raw: float) -> float:
        """The score reported for a raw model score: calibrated when a calibration is set, else itself."""
        return self.policy().calibrate(raw)

    def result(self, source: str, raw: float, check: BankCheck | None = None,
               classes: dict[str, float] | None = None, boxes: list[Detection] | None = None) -> ScoreResult:
        """The :class:`ScoreResult` of a still image's raw score, bank check, (a zoo model's) class
        probabilities and (a detector's) boxes: calibrated, labelled, the raw score kept
        (:func:`nsfwlab.verdict.decide_still`)."""
        return ScoreResult.from_verdict(source, decide_still(raw, self.policy(), check), check,
                                        model=self._row_model, classes=classes, boxes=boxes)

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

        if self.zoo is not None:
            raise ConfigError(f"gradient methods run on open_nsfw; model {self.zoo.model_id} has its own input "
                              f"contract (use nsfwlab.zoo.load({self.zoo.model_id!r}).torch_model())", param="model")
        dev = torch.device(device or "cpu")
        if dev.type == "cuda" and dev.index is None:  # parameters report "cuda:0", never "cuda"
            dev = torch.device("cuda", torch.cuda.current_device())
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
        if torch_backend is not None and (torch_backend.dtype == torch.float32 or torch_backend.custom_model
                                          or self.backend.model_version != MODEL_VERSION):
            return copy.deepcopy(torch_backend.model).float().cpu()
        if self.backend.model_version == MODEL_VERSION:  # stock weights: fp32 from the file, not from fp16
            from .model import load_open_nsfw

            return load_open_nsfw(Settings.from_env().model_path)
        raise ConfigError(f"gradient methods need PyTorch weights, and model {self.model_version!r} runs on "
                          f"{self.backend.name} only; pass its .pt checkpoint (Detector(model=...))")

    def preprocess(self, source: ImageInput) -> np.ndarray:
        """Decode safely and preprocess one input into its (224, 224, 3) float32 array (a zoo model:
        its decoded HxWx3 uint8 pixels, which it prepares itself)."""
        if self.zoo is not None:
            return self.zoo.prepare_image(load_image(source, self.limits))
        return preprocess(source, self.preprocess_config, self.limits)

    def _prepare_decoded(self, img: Any) -> np.ndarray:
        """A decoded image as the model's input (see :meth:`preprocess`)."""
        return self.zoo.prepare_image(img) if self.zoo is not None else preprocess_rgb(img, self.preprocess_config)

    def _score(self, arrays: list[np.ndarray]) -> tuple[list[float], list[dict[str, float] | None], list[Any]]:
        """Raw NSFW scores of prepared inputs (one model call), a zoo model's class probabilities and
        a detector's boxes (``None`` where the model gives none)."""
        if self.zoo is None:
            return self.backend.predict(stack_batch(arrays))[:, 1].tolist(), [None] * len(arrays), [None] * len(arrays)
        probs, boxes = self.zoo.run_images(arrays)
        return (self.zoo.nsfw_scores(probs).tolist(), [self.zoo.class_dict(row) for row in probs],
                list(boxes) if boxes is not None else [None] * len(arrays))

    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """NSFW probabilities for an NHWC batch of preprocessed arrays, split by ``batch_size``."""
        if len(batch) == 0:
            return np.zeros((0,), dtype=np.float32)
        parts = [self.backend.predict(batch[i : i + self.batch_size])[:, 1]
                 for i in range(0, len(batch), self.batch_size)]
        return np.concatenate(parts).astype(np.float32)

    # -- one ----------------------------------------------------------------------------------
    def nsfw_score(self, source: ImageInput) -> float:
        """The NSFW probability of one image (calibrated when a calibration is set). Raises an
        ``ImageError`` naming bad input."""
        return self.calibrate(self._raw_score(source))

    def score(self, source: ImageInput) -> float:
        """Deprecated: :meth:`nsfw_score` (the float) or :meth:`classify` (a :class:`ScoreResult`,
        as :meth:`score_many` returns)."""
        warnings.warn("Detector.score() is deprecated: use nsfw_score() for the float, or classify() for a "
                      "ScoreResult like score_many()'s", DeprecationWarning, stacklevel=2)
        return self.nsfw_score(source)

    def _raw_score(self, source: ImageInput) -> float:
        try:
            arr = self.preprocess(source)
        except NsfwlabError as exc:
            raise exc.with_source(describe_source(source)) from None
        return float(self._score([arr])[0][0])

    def classify(self, source: ImageInput) -> ScoreResult:
        """Score and label one image, matched against the bank when the Detector has one (raises
        on bad input, like :meth:`nsfw_score`)."""
        prepared = self._prepare(source)
        if isinstance(prepared, NsfwlabError):
            raise prepared.with_source(describe_source(source))
        arr, check = prepared
        raws, classes, boxes = self._score([arr])
        return self.result(describe_source(source), float(raws[0]), check, classes[0], boxes[0])

    # -- many ---------------------------------------------------------------------------------
    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="nsfwlab-pre")
            return self._pool

    def _prepare(self, source: ImageInput | NsfwlabError) -> tuple[np.ndarray, BankCheck | None] | NsfwlabError:
        """A still image's network input and, with a bank, its bank check (the image decoded
        once for both); or the error."""
        if isinstance(source, NsfwlabError):
            return source
        try:
            if self.bank is None:
                return self.preprocess(source), None
            return self._prepare_matched(source)
        except NsfwlabError as exc:
            return exc
        except Exception as exc:
            return ImageError(f"unexpected {type(exc).__name__}: {exc}")

    def _prepare_matched(self, source: ImageInput) -> tuple[np.ndarray, BankCheck | None]:
        cfg = self.preprocess_config
        if isinstance(source, (str, os.PathLike, bytes, bytearray)) or hasattr(source, "read"):
            data = read_bytes(source, self.limits)  # type: ignore[arg-type]
            kind = kind_of(data)
            img = load_image(data, self.limits, draft_size=cfg.draft_size)
            # A draft decode is reduced: then the bank hashes the bytes at full size.
            hashed: Any = data if cfg.draft or kind is not Kind.IMAGE else img
        else:
            kind, img = Kind.IMAGE, load_image(source, self.limits, draft_size=cfg.draft_size)
            hashed = img
        arr = self._prepare_decoded(img)
        return arr, check_bank(self.bank, hashed, kind, self.match_distance)

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

        def named() -> Iterator[tuple[str, ImageInput | NsfwlabError]]:
            for source in sources:
                yield (next(name_iter) if name_iter is not None else describe_source(source)), source

        Prep = tuple[np.ndarray, BankCheck | None] | NsfwlabError

        def prepare(item: tuple[str, ImageInput | NsfwlabError]) -> tuple[str, Prep]:
            return item[0], self._prepare(item[1])

        def emit(batch: list[tuple[str, Prep]]) -> Iterator[ScoreResult]:
            arrays = [v[0] for _, v in batch if not isinstance(v, NsfwlabError)]
            scored = zip(*self._score(arrays), strict=True) if arrays else iter(())
            for name, value in batch:
                if isinstance(value, NsfwlabError):
                    res = ScoreResult(name, error=value.with_source(name))
                else:
                    raw, classes, boxes = next(scored)
                    res = self.result(name, float(raw), value[1], classes, boxes)
                if progress is not None:
                    progress(res)
                yield res

        batch: list[tuple[str, Prep]] = []
        # One batch decodes ahead while the model scores the one collected: at most 2 x batch_size
        # inputs are read beyond those yielded.
        for item in ordered_map(prepare, named(), ahead=self.batch_size, pool=self._executor()):
            batch.append(item)
            if len(batch) == self.batch_size:
                yield from emit(batch)
                batch = []
        if batch:
            yield from emit(batch)

    def score_many(self, sources: Sequence[ImageInput], names: Sequence[str] | None = None,
                   *, progress: Callable[[ScoreResult], None] | None = None) -> list[ScoreResult]:
        """Score many inputs (batched); one :class:`ScoreResult` per input, in input order."""
        return list(self.iter_score(sources, names, progress=progress))

    # -- frames -------------------------------------------------------------------------------
    def score_frames(self, source: str | os.PathLike | bytes | IO[bytes],
                     options: FrameOptions | None = None) -> FramesResult:
        """Score the frames of a video, an animation or a still image (one frame) and combine them
        (:mod:`nsfwlab.frames` samples and decodes them; :func:`nsfwlab.verdict.decide_frames`
        calibrates, aggregates and cuts segments). Never raises for bad input: the error is in the
        result, as in :meth:`score_many`."""
        opts = options or FrameOptions()
        policy = self.policy(opts)
        name = describe_source(source)
        times: list[float] = []
        durations: list[float] = []
        raws: list[float] = []
        pending: list[np.ndarray] = []
        stopped = False

        def flush() -> bool:
            """Score the pending frames; True when early stopping should end the file here."""
            if pending:
                raws.extend(self._score(pending)[0])
                pending.clear()
            return opts.early_stop and stop_early([policy.calibrate(r) for r in raws], policy)

        try:
            data = read_bytes(source, self.limits)  # type: ignore[arg-type]
            kind = kind_of(data)
            for frame in iter_frames(data, opts, self.limits):
                pending.append(self._prepare_decoded(frame.image()))
                times.append(frame.time)
                durations.append(frame.duration)
                if len(pending) >= self.batch_size and flush():
                    stopped = True
                    break
            if not stopped:
                flush()
            check = check_bank(self.bank, data, kind, self.match_distance)
        except NsfwlabError as exc:
            return FramesResult(name, error=exc.with_source(name))
        except Exception as exc:
            return FramesResult(name, error=ImageError(f"unexpected {type(exc).__name__}: {exc}").with_source(name))
        verdict = decide_frames(kind, times, durations, raws, policy, check)
        return FramesResult.from_verdict(name, verdict, stopped_early=stopped, check=check, model=self._row_model)

    # -- a mixed stream -------------------------------------------------------------------------
    def score_media(self, items: Iterable[tuple[str, object]],
                    options: FrameOptions | None = None) -> Iterator[ScoreResult | FramesResult]:
        """Score a stream of named inputs (a path, bytes, or the :class:`NsfwlabError` to report in
        its place), in input order, each routed by its content (:func:`nsfwlab.verdict.kind_of`):
        runs of still images batched (:meth:`iter_score`), videos and animations over their frames
        (:meth:`score_frames`). An animated GIF/PNG/WebP is read once, and its bytes passed on."""
        opts = options or FrameOptions()
        routed = (self._route(name, src) for name, src in items)
        held = next(routed, None)
        while held is not None:
            if held.frames:
                framed = self.score_frames(held.source, opts)  # type: ignore[arg-type]
                err = framed.error.with_source(held.name) if framed.error else None
                yield replace(framed, source=held.name, error=err)
                held = next(routed, None)
                continue
            run = _StillRun(itertools.chain([held], routed))
            for still in self.iter_score(run.sources(), run.names()):
                run.pulled.popleft()
                yield still
            held = run.held

    def _route(self, name: str, src: object) -> _Routed:
        if isinstance(src, NsfwlabError) or not isinstance(src, (bytes, Path)):
            return _Routed(name, src)
        head = src[:32] if isinstance(src, bytes) else read_head(src)
        if head is None or not may_hold_frames(head):
            return _Routed(name, src)  # reading it on the image path says what is wrong
        if sniff_video(head[:16]) is not None:
            return _Routed(name, src, frames=True)
        try:
            data = src if isinstance(src, bytes) else read_bytes(src, self.limits)
        except NsfwlabError as exc:
            return _Routed(name, exc)
        return _Routed(name, data, frames=kind_of(data) is Kind.ANIMATION)

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            if self._owns_bank and self.bank is not None:
                self.bank.close()
                self.bank = None

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class _Routed:
    """One input of :meth:`Detector.score_media`: ``frames`` goes through ``score_frames``."""

    name: str
    source: object  # a Path, the bytes already read, or the NsfwlabError to report
    frames: bool = False



class _StillRun:
    """Consecutive still images of a routed stream, fed to ``iter_score`` (names in step); it ends
    at the first video or animation, kept in ``held`` for ``score_frames``."""

    def __init__(self, inputs: Iterator[_Routed]) -> None:
        self.inputs = inputs
        self.held: _Routed | None = None
        self.pulled: deque[_Routed] = deque()  # read ahead by iter_score, results not yet out

    def sources(self) -> Iterator[ImageInput | NsfwlabError]:
        for item in self.inputs:
            if item.frames:
                self.held = item
                return
            self.pulled.append(item)
            yield item.source  # type: ignore[misc]

    def names(self) -> Iterator[str]:
        while True:  # iter_score takes a name right after each source
            yield self.pulled[-1].name


def _open_bank(bank: Bank | str | os.PathLike | None, limits: DecodeLimits) -> tuple[Bank | None, bool]:
    """The bank to match against, and whether the Detector opened it (and so closes it)."""
    if bank is None or not isinstance(bank, (str, os.PathLike)):
        return bank, False
    from .bank import Bank

    if not os.path.isfile(bank):
        raise ConfigError(f"bank {os.fspath(bank)} does not exist (create one with `nsfwlab bank import`)",
                          param="bank")
    return Bank(bank, limits=limits), True


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
    return det.nsfw_score(img)
