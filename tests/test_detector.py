"""Detector: golden parity with the reference graph, inputs of every kind, batching, labels."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nsfwlab import Detector, Label, ScoreResult, Thresholds, nsfw_score
from nsfwlab.backends import OnnxRuntimeBackend, TorchBackend, create_backend
from nsfwlab.config import BackendName
from nsfwlab.errors import ConfigError, EmptyImageError, UnsupportedFormatError
from nsfwlab.preprocess import preprocess, stack_batch


def test_golden_parity_with_reference_graph(detector: Detector, onnx_session, photo_paths) -> None:
    """Scores equal the bundled ONNX graph fed with Yahoo's pipeline, to 1e-5, on every photo."""
    batch = stack_batch([preprocess(p) for p in photo_paths])
    ref = onnx_session.run(None, {"input:0": batch})[0][:, 1]
    ours = [detector.score(p) for p in photo_paths]
    assert np.abs(np.asarray(ours) - ref).max() <= 1e-5
    many = [r.score for r in detector.score_many(photo_paths)]
    assert np.abs(np.asarray(many) - ref).max() <= 1e-5


def test_torch_backend_agrees_with_onnxruntime(photo_paths) -> None:
    ort_det = Detector("onnxruntime", "cpu")
    torch_det = Detector("torch", "cpu")
    a = [r.score for r in ort_det.score_many(photo_paths)]
    b = [r.score for r in torch_det.score_many(photo_paths)]
    assert np.abs(np.asarray(a) - np.asarray(b)).max() <= 1e-5
    assert torch_det.describe()["backend"] == "torch"


def test_every_input_kind_gives_the_same_score(detector: Detector, photo_paths: list[Path]) -> None:
    path = photo_paths[0]
    data = path.read_bytes()
    img = Image.open(path)
    img.load()
    expected = detector.score(path)
    assert detector.score(str(path)) == expected
    assert detector.score(data) == expected
    assert detector.score(bytearray(data)) == expected
    assert detector.score(io.BytesIO(data)) == expected
    with path.open("rb") as fh:
        assert detector.score(fh) == expected
    assert detector.score(img) == expected
    assert detector.score(np.asarray(img.convert("RGB"))) == expected


def test_score_many_keeps_order_and_goes_past_bad_inputs(detector: Detector, photo_paths) -> None:
    inputs = [photo_paths[0], b"", photo_paths[1], b"GIF89a not really", b"%PDF-1.7", photo_paths[2]]
    results = detector.score_many(inputs)
    assert [r.ok for r in results] == [True, False, True, False, False, True]
    assert isinstance(results[1].error, EmptyImageError)
    assert isinstance(results[4].error, UnsupportedFormatError)
    assert results[2].score == pytest.approx(detector.score(photo_paths[1]), abs=1e-6)
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
    with pytest.raises(Exception) as info:
        detector.score(p)
    assert "broken.png" in str(info.value)


def test_nsfw_score_one_liner(photo_paths, detector: Detector) -> None:
    s = nsfw_score(photo_paths[0])
    assert isinstance(s, float) and 0.0 <= s <= 1.0
    assert s == pytest.approx(detector.score(photo_paths[0]), abs=1e-6)


def test_backend_selection_and_validation() -> None:
    assert isinstance(create_backend("auto", "cpu"), OnnxRuntimeBackend)
    assert isinstance(create_backend(BackendName.TORCH, "cpu"), TorchBackend)
    with pytest.raises(ConfigError):
        create_backend("torch", "cpu", precision="fp16")
    with pytest.raises(ConfigError):
        Detector(device="cpu", batch_size=0)
    with pytest.raises(ValueError):
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


def test_torch_backend_fp16_logic_on_cpu_inputs() -> None:
    """The CUDA path's layout logic (NHWC numpy -> NCHW channels-last view) is exercised on CPU."""
    import torch

    x = np.zeros((2, 224, 224, 3), np.float32)
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    assert t.shape == (2, 3, 224, 224)
    assert t.is_contiguous(memory_format=torch.channels_last)
