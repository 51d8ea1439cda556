"""Hostile model files: ONNX graphs whose output is not class probabilities, preprocessing sidecars and
checkpoints with absurd fields, pickles that are not tensors-only. Each is refused with one line
(a ModelError; exit 3 on the command line), never a traceback, a NaN score or a runaway allocation.
The hostile graphs are tiny and built here with ``onnx.helper``; none is committed."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from nsfwlab.backends import OnnxRuntimeBackend, check_probabilities
from nsfwlab.checkpoint import CHECKPOINT_FORMAT, load_model, load_torch_module, preprocess_record, read_checkpoint
from nsfwlab.cli import app
from nsfwlab.config import PreprocessConfig
from nsfwlab.errors import ModelError


def _graph(path: Path, row: list[float], *, one_row: bool = False, huge: bool = False) -> Path:
    """An NHWC image graph whose output is ``row`` for every image (``one_row``: a single row whatever
    the batch; ``huge``: it first expands its input to petabytes)."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 224, 224, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])  # whatever it returns
    k = len(row)

    def const(name: str, values: list, dtype: int = TensorProto.FLOAT, dims: list[int] | None = None):
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(
            name + "_v", dtype, dims if dims is not None else [len(values)], values))

    nodes = [const("row", row + [0.0] * (3 - k)), const("zero", [0.0], dims=[]),
             const("starts", [0], TensorProto.INT64), const("k", [float(k)]), const("ax1", [1], TensorProto.INT64),
             helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2], keepdims=0),  # (N, 3)
             helper.make_node("Mul", ["m", "zero"], ["m0"]), helper.make_node("Add", ["m0", "row"], ["full"]),
             # The column count is computed from the data, so the graph's declared shape cannot give it away.
             helper.make_node("ReduceMax", ["x"], ["mx"], keepdims=0),
             helper.make_node("Mul", ["mx", "zero"], ["mx0"]), helper.make_node("Add", ["mx0", "k"], ["kf"]),
             helper.make_node("Cast", ["kf"], ["ends"], to=TensorProto.INT64),
             helper.make_node("Slice", ["full", "starts", "ends", "ax1"], ["s"])]  # (N, k)
    if one_row:
        nodes.append(helper.make_node("ReduceMean", ["s"], ["y0"], axes=[0], keepdims=1))
    else:
        nodes.append(helper.make_node("Identity", ["s"], ["y0"]))
    if huge:
        nodes += [const("shape", [100_000, 100_000, 1, 1, 1, 1], TensorProto.INT64),
                  helper.make_node("Expand", ["x", "shape"], ["big"]),
                  helper.make_node("ReduceMean", ["big"], ["bigm"], keepdims=0),
                  helper.make_node("Mul", ["bigm", "zero"], ["bigz"]),
                  helper.make_node("Add", ["y0", "bigz"], ["y"])]
    else:
        nodes.append(helper.make_node("Identity", ["y0"], ["y"]))
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _image(tmp_path: Path) -> Path:
    image = tmp_path / "img.png"
    Image.new("RGB", (40, 30), (120, 80, 60)).save(image)
    return image


HOSTILE = {
    "one_row": ([0.3, 0.7], {"one_row": True}, "shape"),
    "nan": ([math.nan, math.nan], {}, "not a finite number"),
    "huge_value": ([0.0, 1e30], {}, "not class probabilities"),
    "negative": ([53.1, -52.1], {}, "not class probabilities"),
    "three_columns": ([0.2, 0.3, 0.5], {}, "shape"),
    "petabytes": ([0.3, 0.7], {"huge": True}, "onnxruntime failed to run"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_onnx_model_is_refused_at_load_and_at_run(tmp_path: Path, name: str) -> None:
    row, kw, message = HOSTILE[name]
    path = _graph(tmp_path / f"{name}.onnx", row, **kw)
    with pytest.raises(ModelError, match=message) as info:
        load_model(path, "cpu")
    assert "\n" not in str(info.value)
    # Without the load-time probe, every run checks the output too.
    backend = OnnxRuntimeBackend(path, verify=False)
    with pytest.raises(ModelError, match=message):
        backend.predict(np.zeros((3, 224, 224, 3), np.float32))


def test_a_hostile_onnx_model_exits_3_with_one_line(tmp_path: Path) -> None:
    path = _graph(tmp_path / "nan.onnx", [math.nan, math.nan])
    for command in (["score", "--no-progress"], ["scan", "--db", str(tmp_path / "r.db")]):
        result = CliRunner().invoke(app, [*command, "--model", str(path), str(_image(tmp_path))])
        assert result.exit_code == 3, result.output
        assert "not a finite number" in result.output and "Traceback" not in result.output, result.output
        assert "NaN" not in result.output.replace("(NaN or infinity)", "")


def test_a_well_behaved_onnx_model_scores(tmp_path: Path) -> None:
    path = _graph(tmp_path / "ok.onnx", [0.25, 0.75])
    backend, pre = load_model(path, "cpu")
    assert pre == PreprocessConfig()
    assert np.allclose(backend.predict(np.zeros((5, 224, 224, 3), np.float32)), [[0.25, 0.75]] * 5)


def test_probabilities_are_checked_for_shape_range_and_sum() -> None:
    ok = np.array([[0.1, 0.9], [1.0, 0.0]], np.float32)
    assert np.array_equal(check_probabilities(ok, 2, "m"), ok)
    for bad in (ok[:1], np.ones((2, 3)), np.array([[0.5, 0.6], [0.5, 0.5]]), np.array([[1.5, -0.5]] * 2),
                np.array([[np.inf, 0.0]] * 2), np.array([["a", "b"]] * 2), None):
        with pytest.raises(ModelError):
            check_probabilities(bad, 2, "m")


SIDECARS = {
    "crop 0": ('{"preprocess": {"crop": 0}}', "crop must lie in"),
    "bool size": ('{"preprocess": {"resize": true}}', "resize must be a number, got bool"),
    "negative size": ('{"preprocess": {"resize": -256}}', "resize must lie in"),
    "string size": ('{"preprocess": {"crop": "224"}}', "crop must be a number, got str"),
    "float size": ('{"preprocess": {"resize": 256.5}}', "resize must be an integer"),
    "huge resize": ('{"preprocess": {"resize": 1000000}}', r"resize must lie in \[32, 4096\]"),
    "nan mean": ('{"preprocess": {"mean_bgr": [NaN, 1, 2]}}', "not valid JSON"),
    "huge mean": ('{"preprocess": {"mean_bgr": [1e308, 1, 2]}}', r"mean_bgr must lie in \[-1000, 1000\]"),
    "two means": ('{"preprocess": {"mean_bgr": [1, 2]}}', "mean_bgr must be a list of 3 numbers"),
    "string flag": ('{"preprocess": {"draft": "yes"}}', "draft must be true or false"),
    "quality": ('{"preprocess": {"jpeg_quality": 100}}', "jpeg_quality must lie in"),
    "not an object": ('{"preprocess": [1]}', "must be an object"),
    "deep": (  # 100,000 deep is refused by its size alone
        '{"preprocess": ' + "[" * 30_000 + "]" * 30_000 + "}", "nested too deeply"),
    "unknown arch": ('{"preprocess": {}, "arch": "alexnet"}', "unknown architecture 'alexnet'"),
    "arch type": ('{"preprocess": {}, "arch": [1]}', "unknown architecture list"),
}


@pytest.mark.parametrize("case", sorted(SIDECARS))
def test_a_hostile_sidecar_is_refused_with_one_line(tmp_path: Path, case: str) -> None:
    text, message = SIDECARS[case]
    path = _graph(tmp_path / "m.onnx", [0.25, 0.75])
    path.with_suffix(".json").write_text(text)
    with pytest.raises(ModelError, match=message) as info:
        load_model(path, "cpu")
    assert "\n" not in str(info.value)


def test_a_huge_sidecar_is_refused_unread(tmp_path: Path) -> None:
    path = _graph(tmp_path / "m.onnx", [0.25, 0.75])
    with open(path.with_suffix(".json"), "wb") as fh:
        fh.truncate(200 * 1024 * 1024)  # sparse: 200 MB that are never read
    with pytest.raises(ModelError, match="the limit is"):
        load_model(path, "cpu")
    path.with_suffix(".json").unlink()
    path.with_suffix(".json").mkdir()  # not a regular file: refused, not ignored
    with pytest.raises(ModelError, match="not a regular file"):
        load_model(path, "cpu")
    result = CliRunner().invoke(app, ["score", "--no-progress", "--model", str(path), str(_image(tmp_path))])
    assert result.exit_code == 3 and "not a regular file" in result.output


def test_a_valid_sidecar_sets_the_preprocessing(tmp_path: Path) -> None:
    path = _graph(tmp_path / "m.onnx", [0.25, 0.75])
    record = {"preprocess": {"resize": 300, "crop": 224, "jpeg_quality": 90, "mean_bgr": [1, 2.5, -3]}, "arch": "vgg16"}
    path.with_suffix(".json").write_text(json.dumps(record))
    _, pre = load_model(path, "cpu")
    assert pre == PreprocessConfig(resize=300, crop=224, jpeg_quality=90, mean_bgr=(1.0, 2.5, -3.0))
    # A crop the graph cannot take (it is fixed at 224) is refused at load, by the test batch.
    record["preprocess"]["crop"] = 256
    path.with_suffix(".json").write_text(json.dumps(record))
    with pytest.raises(ModelError, match="onnxruntime failed to run"):
        load_model(path, "cpu")
    assert preprocess_record(None, "x") == PreprocessConfig() == preprocess_record({}, "x")


def _checkpoint(path: Path, **fields) -> Path:
    torch.save({"format": CHECKPOINT_FORMAT, "arch": "open_nsfw", "state_dict": {}, **fields}, path)
    return path


@pytest.mark.parametrize(("fields", "message"), [
    ({"preprocess": {"resize": 10**6}}, r"resize must lie in \[32, 4096\]"),
    ({"preprocess": {"mean_bgr": (float("nan"), 0.0, 0.0)}}, "mean_bgr must lie in"),
    ({"arch": "alexnet"}, "unknown architecture 'alexnet'"),
    ({"arch": 7}, "unknown architecture int"),
    ({"model_version": "x" * 10_000}, "model_version must be a printable string"),
    ({"state_dict": [1, 2]}, "no state_dict"),
])
def test_a_checkpoint_with_absurd_fields_is_refused_at_load(tmp_path: Path, fields: dict, message: str) -> None:
    path = _checkpoint(tmp_path / "bad.pt", **fields)
    for load in (load_model, read_checkpoint, load_torch_module):
        with pytest.raises(ModelError, match=message):
            load(path)  # type: ignore[operator]
    result = CliRunner().invoke(app, ["score", "--no-progress", "--model", str(path), str(_image(tmp_path))])
    assert result.exit_code == 3 and "Traceback" not in result.output, result.output


class _Payload:
    def __reduce__(self):  # what a hostile pickle does: call a function when loaded
        return (print, ("this must never run",))


@pytest.mark.parametrize("kind", ["code", "numpy", "legacy"])
def test_a_pickle_that_is_not_tensors_only_gets_our_one_line(tmp_path: Path, kind: str, capsys) -> None:
    import pickle

    path = tmp_path / f"{kind}.pt"
    if kind == "code":
        torch.save({"format": CHECKPOINT_FORMAT, "x": _Payload()}, path)
    elif kind == "numpy":
        torch.save({"format": CHECKPOINT_FORMAT, "x": np.zeros(3)}, path)
    else:  # a plain pickle (protocol 4): torch warns about the protocol before refusing
        path.write_bytes(pickle.dumps({"a": Path}, protocol=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ModelError) as info:
            load_model(path, "cpu")
    message = str(info.value)
    assert "\n" not in message and "more than tensors" in message and "save_checkpoint" in message
    for torch_text in ("weights_only", "allowed global", "Unsupported", "WeightsUnpickler", "GLOBAL"):
        assert torch_text not in message
    assert not caught and "must never run" not in capsys.readouterr().out
    result = CliRunner().invoke(app, ["score", "--no-progress", "--model", str(path), str(_image(tmp_path))])
    assert result.exit_code == 3 and "weights_only" not in result.output, result.output
    assert "tensors-only" in result.output and "UserWarning" not in result.output
