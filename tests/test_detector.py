"""Detector: scores pinned to an independent reference, inputs of every kind, batching, labels,
the torch backend's precision and memory layout."""

from __future__ import annotations

import importlib.util
import io
import json
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from nsfwlab import Detector, Label, ScoreResult, Thresholds, nsfw_score
from nsfwlab.backends import OnnxRuntimeBackend, TorchBackend, create_backend
from nsfwlab.config import BackendName, Precision
from nsfwlab.errors import ConfigError, CorruptImageError, EmptyImageError, UnsupportedFormatError
from nsfwlab.preprocess import stack_batch


def _reference_module() -> ModuleType:
    """tests/data/open_nsfw_reference.py: Yahoo's pipeline written independently of nsfwlab."""
    path = Path(__file__).parent / "data" / "open_nsfw_reference.py"
    spec = importlib.util.spec_from_file_location("open_nsfw_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def golden(photo_paths: list[Path]) -> dict[str, float]:
    """The expected open_nsfw score of each photo (file stem -> score).

    These are the scores stored in tests/data/golden_scores.json, computed once by
    tests/data/open_nsfw_reference.py (Yahoo's classify_nsfw.py preprocessing written without
    nsfwlab, on the bundled graph through onnxruntime directly). They depend on the photo files
    (scikit-image's data written by Pillow's JPEG encoder) and on libjpeg (the quality-75 round
    trip), so when the running libjpeg version or a photo file's sha256 differs from the recorded
    ones, the expected scores are the independent reference recomputed here instead: the test then
    still checks nsfwlab against Yahoo's pipeline, never skips, and says which it used.
    When the environment matches, the recomputed reference must equal the stored scores too.
    """
    ref = _reference_module()
    stored = json.loads(ref.GOLDEN_JSON.read_text(encoding="utf-8"))
    recomputed = ref.reference_scores(photo_paths)
    same_jpeg = stored["environment"]["libjpeg"] == ref.environment()["libjpeg"]
    same_photos = stored["photo_sha256"] == ref.photo_digests(photo_paths)
    assert set(recomputed) == set(stored["scores"])
    if same_jpeg and same_photos:
        for name, score in stored["scores"].items():
            assert recomputed[name] == pytest.approx(score, abs=1e-6), name
        return dict(stored["scores"])
    warnings.warn(f"libjpeg {ref.environment()['libjpeg']} / photo files differ from "
                  f"{ref.GOLDEN_JSON.name}'s; comparing with the recomputed independent reference", stacklevel=1)
    return dict(recomputed)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_scores_reproduce_the_pinned_reference(backend: str, golden: dict[str, float],
                                               photo_paths: list[Path]) -> None:
    """Every photo scores as Yahoo's pipeline does (see ``golden``), to 1e-5, one at a time and in
    batches, on both CPU backends."""
    det = Detector(backend, "cpu")
    expected = np.asarray([golden[p.stem] for p in photo_paths])
    one = np.asarray([det.nsfw_score(p) for p in photo_paths])
    many = np.asarray([r.score for r in det.score_many(photo_paths)])
    assert np.abs(one - expected).max() <= 1e-5
    assert np.abs(many - expected).max() <= 1e-5
    assert det.describe()["backend"] == backend


def test_every_input_kind_gives_the_same_score(detector: Detector, photo_paths: list[Path]) -> None:
    path = photo_paths[0]
    data = path.read_bytes()
    img = Image.open(path)
    img.load()
    expected = detector.nsfw_score(path)
    assert detector.nsfw_score(str(path)) == expected
    assert detector.nsfw_score(data) == expected
    assert detector.nsfw_score(bytearray(data)) == expected
    assert detector.nsfw_score(io.BytesIO(data)) == expected
    with path.open("rb") as fh:
        assert detector.nsfw_score(fh) == expected
    assert detector.nsfw_score(img) == expected
    assert detector.nsfw_score(np.asarray(img.convert("RGB"))) == expected


def test_score_many_keeps_order_and_goes_past_bad_inputs(detector: Detector, photo_paths) -> None:
    inputs = [photo_paths[0], b"", photo_paths[1], b"GIF89a not really", b"%PDF-1.7", photo_paths[2]]
    results = detector.score_many(inputs)
    assert [r.ok for r in results] == [True, False, True, False, False, True]
    assert isinstance(results[1].error, EmptyImageError)
    assert isinstance(results[4].error, UnsupportedFormatError)
    assert results[2].score == pytest.approx(detector.nsfw_score(photo_paths[1]), abs=1e-6)
    assert results[0].source == str(photo_paths[0])
    d = results[1].to_dict()
    assert set(d) == {"path", "error", "code"} and d["code"] == "empty"


def test_batch_size_does_not_change_scores(photo_paths) -> None:
    one = Detector(device="cpu", batch_size=1)
    four = Detector(device="cpu", batch_size=4, workers=3)
    a = [r.score for r in one.score_many(photo_paths)]
    b = [r.score for r in four.score_many(photo_paths)]
    assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-6


def test_iter_score_streams_with_bounded_read_ahead(detector: Detector) -> None:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    consumed = 0

    def source():
        nonlocal consumed
        for _ in range(100):
            consumed += 1
            yield small

    seen = 0
    for _ in detector.iter_score(source()):
        seen += 1
        # read-ahead is at most 2 batches beyond what was yielded
        assert consumed - seen <= 2 * detector.batch_size
    assert seen == 100


def test_labels_at_thresholds() -> None:
    t = Thresholds()
    assert t.label(0.0) is Label.SAFE
    assert t.label(0.1999) is Label.SAFE
    assert t.label(0.2) is Label.REVIEW
    assert t.label(0.8) is Label.REVIEW
    assert t.label(0.8001) is Label.NSFW
    custom = Thresholds(safe_below=0.01, nsfw_above=0.5)
    assert custom.label(0.02) is Label.REVIEW and custom.label(0.6) is Label.NSFW
    with pytest.raises(ConfigError):
        Thresholds(safe_below=0.9, nsfw_above=0.1)
    with pytest.raises(ConfigError):
        Thresholds(safe_below=-0.1)


def test_classify_labels_with_the_detector_thresholds(photo_paths) -> None:
    det = Detector(device="cpu", thresholds=Thresholds(safe_below=0.0, nsfw_above=0.0))
    res = det.classify(photo_paths[0])
    assert isinstance(res, ScoreResult) and res.label is Label.NSFW  # every score > 0


def test_score_raises_typed_error_naming_the_input(detector: Detector, tmp_path: Path) -> None:
    p = tmp_path / "broken.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(CorruptImageError) as info:
        detector.nsfw_score(p)
    assert "broken.png" in str(info.value)


def test_nsfw_score_one_liner(photo_paths, detector: Detector) -> None:
    s = nsfw_score(photo_paths[0])
    assert isinstance(s, float) and 0.0 <= s <= 1.0
    assert s == pytest.approx(detector.nsfw_score(photo_paths[0]), abs=1e-6)


def test_backend_selection_and_validation() -> None:
    assert isinstance(create_backend("auto", "cpu"), OnnxRuntimeBackend)
    assert isinstance(create_backend(BackendName.TORCH, "cpu"), TorchBackend)
    with pytest.raises(ConfigError):
        create_backend("torch", "cpu", precision="fp16")
    with pytest.raises(ConfigError):
        Detector(device="cpu", batch_size=0)
    with pytest.raises(ValueError, match="tensorflow"):
        create_backend("tensorflow", "cpu")


def test_model_refuses_a_backend_or_precision_it_cannot_run(tmp_path: Path) -> None:
    """An explicit --backend / --precision that the model file cannot honour is an error, not ignored."""
    pt, onnx = tmp_path / "m.pt", tmp_path / "m.onnx"
    with pytest.raises(ConfigError, match="export-onnx"):
        Detector("onnxruntime", "cpu", model=pt)
    with pytest.raises(ConfigError, match="onnxruntime"):
        Detector("torch", "cpu", model=onnx)
    with pytest.raises(ConfigError, match="fp32"):
        Detector("auto", "cpu", model=onnx, precision="fp16")
    with pytest.raises(ConfigError, match="not both"):
        Detector(create_backend("onnxruntime", "cpu"), model=onnx)


def test_cuda_request_without_gpu_is_a_clear_error() -> None:
    import torch

    from nsfwlab.errors import BackendUnavailableError

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(BackendUnavailableError, match="CUDA"):
        Detector("torch", "cuda")


def _cuda_runs_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make torch claim CUDA and send every ``.to('cuda')`` of a module or tensor to the CPU, so
    that TorchBackend's CUDA branch (fp16, channels-last) runs here unchanged (torch has CPU fp16)."""
    import torch

    def cpu(value: object) -> object:
        if isinstance(value, str) and value.startswith("cuda"):
            return "cpu"
        if isinstance(value, torch.device) and value.type == "cuda":
            return torch.device("cpu")
        return value

    for cls in (torch.nn.Module, torch.Tensor):
        def to(self: object, *args: object, _orig: object = cls.to, **kwargs: object) -> object:
            return _orig(self, *map(cpu, args), **{k: cpu(v) for k, v in kwargs.items()})  # type: ignore[operator]
        monkeypatch.setattr(cls, "to", to)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def _model_inputs(backend: TorchBackend) -> list:
    """Records the tensor the backend's network receives on each call."""
    seen: list = []
    backend.model.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    return seen


def test_torch_backend_on_cuda_runs_fp16_channels_last(monkeypatch: pytest.MonkeyPatch, detector: Detector,
                                                       photo_paths: list[Path]) -> None:
    """TorchBackend's CUDA branch for real (on the CPU): fp16 weights in channels-last memory, the
    NHWC batch handed to the network as fp16 channels-last, float32 probabilities out that agree
    with fp32 to fp16 accuracy; precision='fp32' keeps fp32 weights (still channels-last)."""
    import torch

    _cuda_runs_on_the_cpu(monkeypatch)
    backend = TorchBackend(device="cuda")
    assert backend.precision is Precision.FP16 and backend.dtype == torch.float16
    assert all(p.dtype == torch.float16 for p in backend.model.parameters())
    weight = backend.model.conv_1.weight  # 64x3x7x7: channels-last and NCHW-contiguous differ
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    seen = _model_inputs(backend)
    batch = stack_batch([detector.preprocess(p) for p in photo_paths[:2]])
    probs = backend.predict(batch)
    assert seen[0].dtype == torch.float16 and seen[0].is_contiguous(memory_format=torch.channels_last)
    assert probs.dtype == np.float32 and probs.shape == (2, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probs[:, 1], detector.backend.predict(batch)[:, 1], atol=1e-2)
    on_device = backend.predict_tensor(torch.from_numpy(batch).permute(0, 3, 1, 2))
    assert seen[-1].dtype == torch.float16
    np.testing.assert_allclose(on_device.numpy(), probs, atol=1e-6)

    fp32 = TorchBackend(device="cuda", precision="fp32")
    assert fp32.dtype == torch.float32 and fp32.model.conv_1.weight.dtype == torch.float32
    assert fp32.model.conv_1.weight.is_contiguous(memory_format=torch.channels_last)


def test_torch_backend_on_cpu_is_fp32_and_views_the_batch_without_a_copy(detector: Detector,
                                                                          photo_paths: list[Path]) -> None:
    """On the CPU: fp32, and the network reads the NHWC batch itself as an NCHW channels-last view."""
    import torch

    backend = TorchBackend(device="cpu")
    assert backend.precision is Precision.FP32 and backend.model.conv_1.weight.dtype == torch.float32
    seen = _model_inputs(backend)
    batch = stack_batch([detector.preprocess(photo_paths[0])])
    backend.predict(batch)
    assert seen[0].shape == (1, 3, 224, 224) and seen[0].dtype == torch.float32
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    assert seen[0].data_ptr() == batch.ctypes.data  # no copy
    with pytest.raises(ConfigError, match="fp16"):
        TorchBackend(device="cpu", precision="fp16")
