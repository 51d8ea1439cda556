"""Detector.torch_model(): the gradient-capable module scores what the Detector scores, is the torch
backend's own module only when device and dtype match, never leaves parameters requiring grad, and
carries a fine-tuned model's weights whether the Detector was given the .pt or its ONNX export."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from nsfwlab import Detector
from nsfwlab.backends import TorchBackend
from nsfwlab.checkpoint import export_onnx, load_torch_module, save_checkpoint
from nsfwlab.errors import ConfigError, ModelError
from nsfwlab.weights import bundled_onnx_path


def _scores(module: torch.nn.Module, det: Detector, paths: list[Path]) -> np.ndarray:
    """NSFW probabilities of ``module`` on the Detector's own preprocessing of ``paths``."""
    x = torch.from_numpy(np.stack([det.preprocess(p) for p in paths])).permute(0, 3, 1, 2)
    with torch.no_grad():
        return torch.softmax(module(x.to(next(module.parameters()).dtype)).double(), dim=1)[:, 1].numpy()


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def _frozen(module: torch.nn.Module) -> bool:
    return not any(p.requires_grad for p in module.parameters())


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_scores_equal_the_detectors(backend: str, photo_paths: list[Path]) -> None:
    det = Detector(backend, "cpu")
    module = det.torch_model()
    assert not module.training and _frozen(module)
    assert next(module.parameters()).dtype == torch.float32
    paths = photo_paths[:4]
    expected = np.asarray([det.nsfw_score(p) for p in paths])
    assert np.abs(_scores(module, det, paths) - expected).max() <= 1e-5


def test_the_torch_backends_own_module_only_when_device_and_dtype_match(photo_paths: list[Path]) -> None:
    det = Detector("torch", "cpu")
    assert isinstance(det.backend, TorchBackend)
    own = det.backend.model
    assert det.torch_model() is own and det.torch_model("cpu", torch.float32) is own
    double = det.torch_model(dtype=torch.float64)
    assert double is not own and next(double.parameters()).dtype == torch.float64
    assert det.torch_model(dtype=torch.float64) is double  # one copy kept per device and dtype
    before = det.nsfw_score(photo_paths[0])
    with torch.no_grad():
        double.fc_nsfw.bias.add_(5.0)  # changing the copy cannot change what the Detector scores
    assert det.nsfw_score(photo_paths[0]) == before
    assert next(own.parameters()).dtype == torch.float32


def test_an_onnxruntime_detector_gets_a_module_of_its_own(detector: Detector, torch_model) -> None:
    module = detector.torch_model()
    assert module is not torch_model and detector.torch_model() is module
    for key, value in _state(torch_model).items():
        assert torch.equal(_state(module)[key], value), key  # the stock fp32 weights


def test_parameters_never_stay_requiring_grad() -> None:
    det = Detector("torch", "cpu")
    for args in ((), ("cpu", torch.float64)):
        module = det.torch_model(*args)
        module.requires_grad_(True)  # a caller fine-tunes it, or a method forgets to freeze it
        assert det.torch_model(*args) is module and _frozen(module)


def test_an_fp16_backend_hands_out_the_file_weights_not_rounded_ones(torch_model) -> None:
    backend = TorchBackend(device="cpu")
    backend.model, backend.dtype = backend.model.half(), torch.float16  # as on CUDA
    det = Detector(backend)
    fp32 = det.torch_model()
    assert fp32 is not backend.model and next(fp32.parameters()).dtype == torch.float32
    for key, value in _state(torch_model).items():
        assert torch.equal(_state(fp32)[key], value), key
    assert det.torch_model(dtype=torch.float16) is backend.model


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory: pytest.TempPathFactory, torch_model) -> tuple[Path, Path]:
    """A .pt whose weights differ from the stock ones (as after fine-tuning), and its ONNX export."""
    model = copy.deepcopy(torch_model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.fc_nsfw.weight.add_(0.05 * torch.randn(model.fc_nsfw.weight.shape, generator=generator))
        model.stage3_block2.branch2c.bias.add_(0.01)
    d = tmp_path_factory.mktemp("fine_tuned")
    pt = save_checkpoint(d / "tuned.pt", model)
    return pt, export_onnx(pt, d / "tuned.onnx")


def test_a_fine_tuned_pt_and_its_onnx_export_give_the_same_weights(fine_tuned: tuple[Path, Path], torch_model,
                                                                   photo_paths: list[Path]) -> None:
    pt, onnx = fine_tuned
    from_pt, from_onnx = Detector(model=pt, device="cpu"), Detector(model=onnx, device="cpu")
    assert from_onnx.backend.name == "onnxruntime"
    a, b = _state(from_pt.torch_model()), _state(from_onnx.torch_model())
    assert a.keys() == b.keys() == _state(torch_model).keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not torch.equal(a["fc_nsfw.weight"], _state(torch_model)["fc_nsfw.weight"])  # really fine-tuned
    expected = np.asarray([from_onnx.nsfw_score(p) for p in photo_paths[:3]])
    assert np.abs(_scores(from_onnx.torch_model(), from_onnx, photo_paths[:3]) - expected).max() <= 1e-5


def test_a_foreign_onnx_graph_has_no_torch_weights(tmp_path: Path) -> None:
    """The bundled graph under another name runs on onnxruntime, but its initializers are not an
    nsfwlab export's: asking for the torch module is a typed error, not a KeyError."""
    foreign = tmp_path / "someone_elses.onnx"
    shutil.copyfile(bundled_onnx_path(), foreign)
    det = Detector(model=foreign, device="cpu")
    with pytest.raises((ModelError, ConfigError), match="cannot be mapped"):
        det.torch_model()
    with pytest.raises(ModelError):
        load_torch_module(foreign)
    with pytest.raises(ModelError, match="does not exist"):
        load_torch_module(tmp_path / "missing.onnx")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_fp16_backend_module_is_handed_out_for_cuda_and_cuda0() -> None:
    """Parameters report ``cuda:0``; a request for ``cuda`` must still find the backend's module
    (it used to compare ``cuda`` with ``cuda:0`` and build a second copy on the GPU)."""
    det = Detector("torch", "cuda")
    own = det.backend.model
    assert det.torch_model("cuda", torch.float16) is own
    assert det.torch_model("cuda:0", torch.float16) is own
    fp32 = det.torch_model("cuda")
    assert fp32 is not own and det.torch_model("cuda:0") is fp32  # one copy, whichever spelling
