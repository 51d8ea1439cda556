"""Checkpoints and exported ONNX files load wherever a model is accepted and keep their scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nsfwlab import Detector, PreprocessConfig
from nsfwlab.checkpoint import export_onnx, load_model, read_checkpoint, save_checkpoint
from nsfwlab.errors import ModelError


@pytest.fixture(scope="module")
def stock_checkpoint(tmp_path_factory: pytest.TempPathFactory, torch_model) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "stock.pt", torch_model, meta={"note": "stock"})


def test_checkpoint_round_trip_scores(stock_checkpoint: Path, detector: Detector, photo_paths) -> None:
    det = Detector(model=stock_checkpoint)
    assert det.backend.name == "torch"
    assert det.model_version.startswith("stock-")
    for p in photo_paths[:3]:
        assert abs(det.nsfw_score(p) - detector.nsfw_score(p)) <= 1e-5
    payload = read_checkpoint(stock_checkpoint)
    assert payload["meta"] == {"note": "stock"} and payload["arch"] == "open_nsfw"


def test_checkpoint_carries_its_preprocessing(tmp_path: Path, torch_model) -> None:
    cfg = PreprocessConfig(jpeg_roundtrip=False)
    path = save_checkpoint(tmp_path / "nojpeg.pt", torch_model, preprocess=cfg)
    _, pre = load_model(path, "cpu")
    assert pre == cfg
    assert Detector(model=path).preprocess_config == cfg


def test_onnx_export_runs_on_onnxruntime(stock_checkpoint: Path, tmp_path: Path, detector, photo_paths) -> None:
    out = export_onnx(stock_checkpoint, tmp_path / "m.onnx")
    assert json.loads(out.with_suffix(".json").read_text())["arch"] == "open_nsfw"
    det = Detector(model=out)
    assert det.backend.name == "onnxruntime"
    a = np.asarray([det.nsfw_score(p) for p in photo_paths[:3]])
    b = np.asarray([detector.nsfw_score(p) for p in photo_paths[:3]])
    assert np.abs(a - b).max() <= 1e-5


def test_foreign_and_broken_files_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="not an nsfwlab checkpoint") as info:
        load_model(junk, "cpu")
    message = str(info.value)
    assert "\n" not in message and "weights_only" not in message  # one line, no unsafe advice
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ModelError, match="format"):
        load_model(other, "cpu")
    wrong = tmp_path / "wrong.pt"
    torch.save({"format": "nsfwlab-checkpoint-v1", "arch": "open_nsfw", "state_dict": {"x": torch.zeros(1)}}, wrong)
    with pytest.raises(ModelError, match="do not fit"):
        load_model(wrong, "cpu")
    unknown = tmp_path / "unknown.pt"
    torch.save({"format": "nsfwlab-checkpoint-v1", "arch": "alexnet", "state_dict": {}}, unknown)
    with pytest.raises(ModelError, match="unknown architecture 'alexnet'"):  # a bad model file: exit 3
        load_model(unknown, "cpu")


def _identity_onnx(path: Path, shape: list[int | None]) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_an_onnx_graph_of_another_shape_is_refused_at_load(tmp_path: Path) -> None:
    """A valid ONNX file that is not an image classifier used to load, then die on the first batch
    with an onnxruntime traceback (or read a (N, 224, 224, 3) output as scores)."""
    from typer.testing import CliRunner

    from nsfwlab.cli import app

    for name, shape in (("flat.onnx", [None, 5]), ("echo.onnx", [None, 224, 224, 3])):
        path = _identity_onnx(tmp_path / name, shape)
        with pytest.raises(ModelError, match="not an open_nsfw-shaped graph"):
            load_model(path, "cpu")
        image = tmp_path / "img.png"
        from PIL import Image

        Image.new("RGB", (8, 8)).save(image)
        result = CliRunner().invoke(app, ["score", "--no-progress", "--model", str(path), str(image)])
        assert result.exit_code == 3 and "not an open_nsfw-shaped graph" in result.output, result.output


def test_a_broken_preprocessing_sidecar_is_a_model_error(stock_checkpoint: Path, tmp_path: Path) -> None:
    out = export_onnx(stock_checkpoint, tmp_path / "m.onnx")
    sidecar = out.with_suffix(".json")
    for text, message in (("{junk", "preprocessing sidecar .* is not valid JSON"), ("[1, 2]", "must be a JSON object"),
                          ('{"arch": null}', "no 'preprocess' object"),
                          ('{"preprocess": {"crop": 999}}', r"field crop must lie in \[32, 256\]"),
                          ('{"preprocess": {"colour": 1}}', r"unknown preprocessing field\(s\) colour"),
                          ('{"preprocess": {"mean_bgr": "abc"}}', "mean_bgr must be a list of 3 numbers")):
        sidecar.write_text(text)
        with pytest.raises(ModelError, match=message):
            load_model(out, "cpu")


def test_a_vgg16_checkpoint_round_trips(tmp_path: Path) -> None:
    from nsfwlab.architectures import build_architecture
    from nsfwlab.checkpoint import load_torch_module

    torch.manual_seed(0)
    model = build_architecture("vgg16").eval()
    path = save_checkpoint(tmp_path / "vgg.pt", model, arch="vgg16")
    loaded = load_torch_module(path)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_a_checkpoint_scans_on_the_cpu_as_its_cached_onnx_export(stock_checkpoint: Path, tmp_path: Path,
                                                                 photo_paths) -> None:
    """The torch CPU backend is several times slower than onnxruntime: a scan runs a .pt as its ONNX
    export, made once per checkpoint content, with the checkpoint's scores and model_version."""
    from nsfwlab.scan import ScanConfig, build_scan_model
    from nsfwlab.scan.modes import model_for_cpu

    cache = tmp_path / "cache"
    exported = Path(model_for_cpu(str(stock_checkpoint), "cpu", cache) or "")
    assert exported.parent == cache / "onnx" and exported.suffix == ".onnx" and exported.with_suffix(".json").is_file()
    stamp = exported.stat().st_mtime_ns
    assert model_for_cpu(str(stock_checkpoint), "cpu", cache) == str(exported)  # cached, not exported again
    assert exported.stat().st_mtime_ns == stamp and sorted(p.name for p in exported.parent.iterdir()) == sorted(
        [exported.name, exported.with_suffix(".json").name])
    assert model_for_cpu(str(stock_checkpoint), "cuda", cache) == str(stock_checkpoint)
    model = build_scan_model(ScanConfig(model=str(stock_checkpoint), cache_dir=str(cache)))
    torch_det = Detector(model=stock_checkpoint)
    assert model.backend.name == "onnxruntime" and model.model_version == torch_det.model_version
    batch = np.stack([torch_det.preprocess(p) for p in photo_paths[:3]])
    assert np.abs(model.backend.predict(batch)[:, 1] - torch_det.predict_arrays(batch)).max() <= 1e-5
