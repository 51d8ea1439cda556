"""The model zoo's core on tiny hand-checked cases: the TF.js literal reader and dequantisation,
TensorFlow's SAME padding in the plan network, converted files, cards, ensembles, the verified
weight cache, and a user's own ONNX classifier registered by a card file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nsfwlab import zoo
from nsfwlab.config import Settings
from nsfwlab.errors import ConfigError, ModelError, WeightsError
from nsfwlab.zoo.cards import card_from_dict
from nsfwlab.zoo.convert import read_converted, write_converted
from nsfwlab.zoo.net import PlanNet
from nsfwlab.zoo.registry import BUILTIN, parse_ensemble
from nsfwlab.zoo.store import import_file, read_verified
from nsfwlab.zoo.tfjs import bundle_export, parse_js_literal, read_weights


def test_js_literal_subset_is_read_as_data() -> None:
    literal = '{a:!0,b:!1,c:.5,"d e":[1,-2e3,null,"x\\"y"],f:{}}'
    value, end = parse_js_literal(literal + "rest")
    assert value == {"a": True, "b": False, "c": 0.5, "d e": [1, -2000.0, None, 'x"y'], "f": {}}
    assert end == len(literal)


@pytest.mark.parametrize("text", ["{a:alert(1)}", "{a:1;b:2}", "[1,2", "{a:function(){}}"])
def test_js_code_is_refused(text: str) -> None:
    with pytest.raises(WeightsError):
        parse_js_literal(text)


def test_bundle_export_finds_the_exported_literal() -> None:
    text = '!function(e){module.exports=e()}(function(){a.exports={modelTopology:{x:1}}});'
    assert bundle_export(text, "model") == {"modelTopology": {"x": 1}}


def test_dequantisation_is_tfjs_q_times_scale_plus_min_in_double_then_float32() -> None:
    manifest = [{"paths": ["s"], "weights": [
        {"name": "w", "shape": [3], "dtype": "float32", "quantization": {"dtype": "uint8", "scale": 0.1, "min": -1.0}},
        {"name": "v", "shape": [1], "dtype": "float32"},
    ]}]
    data = bytes([0, 10, 255]) + np.float32(2.5).tobytes()
    out = read_weights(manifest, data)
    expected = np.array([0 * 0.1 - 1.0, 10 * 0.1 - 1.0, 255 * 0.1 - 1.0], dtype=np.float64).astype(np.float32)
    assert out["w"].dtype == np.float32 and np.array_equal(out["w"], expected)
    assert out["v"].tolist() == [2.5]
    with pytest.raises(WeightsError, match="truncated"):
        read_weights(manifest, data[:-1])
    with pytest.raises(WeightsError, match="more than"):
        read_weights(manifest, data + b"\0")


def _single_op_net(op: dict, tensors: dict[str, np.ndarray]) -> PlanNet:
    net = PlanNet([op], op["name"], {k: v.shape for k, v in tensors.items()})
    names = net.tensor_names()
    net.load_state_dict({names[k]: torch.from_numpy(v) for k, v in tensors.items()})
    return net.eval()


def test_same_padding_puts_the_odd_pixel_after_as_tensorflow_does() -> None:
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    op = {"op": "conv", "name": "c", "inputs": ["input"], "stride": [2, 2], "padding": "same", "groups": 1,
          "bias": False, "act": "linear"}
    net = _single_op_net(op, {"c.weight": np.ones((1, 1, 3, 3), np.float32)})
    out = net(x)[0, 0]
    grid = x[0, 0]
    # TF: out = ceil(4/2) = 2, pad total 1, all of it after: windows start at rows/cols 0 and 2.
    assert out[0, 0] == grid[0:3, 0:3].sum() and out[1, 1] == grid[2:4, 2:4].sum()


def test_same_average_pooling_divides_by_real_pixels_only() -> None:
    x = torch.arange(9, dtype=torch.float32).view(1, 1, 3, 3)
    op = {"op": "pool", "name": "p", "inputs": ["input"], "kind": "avg", "size": [2, 2], "stride": [2, 2],
          "padding": "same"}
    out = _single_op_net(op, {})(x)[0, 0]
    assert out.tolist() == [[(0 + 1 + 3 + 4) / 4, (2 + 5) / 2], [(6 + 7) / 2, 8.0]]


def test_flatten_follows_keras_nhwc_order() -> None:
    x = torch.arange(8, dtype=torch.float32).view(1, 2, 2, 2)  # NCHW
    out = _single_op_net({"op": "flatten", "name": "f", "inputs": ["input"]}, {})(x)
    assert out[0].tolist() == x.permute(0, 2, 3, 1).flatten().tolist()


def test_converted_file_round_trips_and_is_deterministic() -> None:
    plan = [{"op": "dense", "name": "d", "inputs": ["input"], "bias": True, "act": "softmax"}]
    tensors = {"d.weight": np.eye(2, dtype=np.float32), "d.bias": np.zeros(2, np.float32)}
    data = write_converted(plan, tensors, "d")
    assert data == write_converted(plan, dict(reversed(tensors.items())), "d")
    plan2, tensors2, output = read_converted(data, "test file")
    assert plan2 == plan and output == "d" and np.array_equal(tensors2["d.weight"], tensors["d.weight"])
    with pytest.raises(WeightsError, match="truncated"):
        read_converted(data[:4], "test file")


def test_nsfwjs_score_is_porn_plus_hentai_with_sexy_beside() -> None:
    card = BUILTIN["nsfwjs-mobilenetv2"]
    model = zoo.ZooModel(card, runner=None, backend="torch")
    probs = np.array([[0.1, 0.2, 0.1, 0.3, 0.3]], np.float32)  # Drawing Hentai Neutral Porn Sexy
    assert model.nsfw_score(probs)[0] == pytest.approx(0.5)
    assert model.reported(probs)["Sexy"].tolist() == pytest.approx([0.3])
    assert card.score_rule == "Porn + Hentai (Sexy reported beside)"
    with pytest.raises(ConfigError, match="shape"):
        model.nsfw_score(np.zeros((1, 2)))


def test_every_builtin_card_states_licence_source_and_fidelity() -> None:
    for card in BUILTIN.values():
        assert card.licence and card.weights.sha256 and card.fidelity.describe()
    nsfwjs = [c for c in BUILTIN.values() if c.weights.package == "npm:nsfwjs"]
    assert {c.input.size for c in nsfwjs} == {224, 299} and all(c.licence == "MIT" for c in nsfwjs)


@pytest.mark.parametrize(("model_id", "members", "combine"), [
    ("ensemble:a+b", ("a", "b"), "mean"), ("ensemble:a+b+c:max", ("a", "b", "c"), "max")])
def test_ensemble_ids_parse(model_id: str, members: tuple[str, ...], combine: str) -> None:
    assert parse_ensemble(model_id) == zoo.Ensemble(members, combine)


@pytest.mark.parametrize("bad", ["ensemble:a", "ensemble:a+a", "ensemble:a+b:median", "ensemble:a++b"])
def test_bad_ensemble_ids_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_ensemble(bad)


def _card(**overrides: object) -> dict:
    card: dict = {"id": "mine", "classes": ["safe", "nsfw"], "nsfw_classes": ["nsfw"], "licence": "MIT",
                  "input": {"size": 8}, "weights": {"format": "onnx", "file": "m.onnx", "sha256": "0" * 64}}
    card.update(overrides)
    return card


@pytest.mark.parametrize(("overrides", "message"), [
    ({"colour": 1}, "unknown field"),
    ({"nsfw_classes": ["porn"]}, "not one of its classes"),
    ({"kind": "detector"}, "classifier only"),
    ({"weights": {"format": "onnx", "file": "m.onnx", "sha256": "abc"}}, "64 hex"),
    ({"input": {"size": 0}}, "size"),
    ({"input": {"size": 8, "std": [1, 0, 1]}}, "positive"),
    ({"bands": {"safe_below": 0.9, "nsfw_above": 0.1}}, "must not exceed"),
])
def test_card_files_are_checked_field_by_field(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        card_from_dict(_card(**overrides))


def test_nsfwlab_home_is_read_in_settings() -> None:
    assert Settings.from_env({"NSFWLAB_HOME": "/x/y"}).home == "/x/y"
    assert Settings.from_env({"XDG_CACHE_HOME": "/c"}).home == "/c/nsfwlab"


def test_tampered_or_truncated_weights_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"weights")
    good = hashlib.sha256(b"weights").hexdigest()
    assert read_verified(path, good, "weights") == b"weights"
    path.write_bytes(b"weightz")
    with pytest.raises(WeightsError, match="tampered") as err:
        read_verified(path, good, "weights")
    assert "\n" not in str(err.value)
    path.write_bytes(b"weigh")
    with pytest.raises(WeightsError, match="truncated"):
        read_verified(path, good, "weights")
    with pytest.raises(WeightsError, match="not installed"):
        read_verified(tmp_path / "absent", good, "weights")


def test_an_unknown_file_is_not_imported(tmp_path: Path) -> None:
    other = tmp_path / "other.tgz"
    other.write_bytes(b"not nsfwjs")
    with pytest.raises(WeightsError, match="neither"):
        import_file(BUILTIN["nsfwjs-mobilenetv2"], other, root=tmp_path)
    assert not (tmp_path / "models").exists()


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def _user_model(folder: Path) -> tuple[Path, _Tiny]:
    net = _Tiny().eval()
    onnx_path = folder / "tiny.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 8, 8),), str(onnx_path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
    sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    card = _card(id="tiny", output="logits", input={"size": 8, "resize": "bilinear-half-pixel", "mean": [0.5] * 3,
                                                     "std": [0.25] * 3},
                 weights={"format": "onnx", "file": "tiny.onnx", "sha256": sha})
    card_path = folder / "cards" / "tiny.json"
    card_path.parent.mkdir()
    card_path.write_text(json.dumps(card))
    (folder / "cards" / "tiny.onnx").write_bytes(onnx_path.read_bytes())
    return card_path, net


def test_a_users_onnx_classifier_registers_with_a_card_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    card_path, net = _user_model(tmp_path)
    monkeypatch.setenv("NSFWLAB_HOME", str(tmp_path))
    assert "tiny" in zoo.all_cards() and zoo.installed("tiny")
    model = zoo.load("tiny")
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), rng.integers(0, 256, (13, 11, 3), dtype=np.uint8)]
    probs = model.predict(images)
    with torch.no_grad():
        expected = torch.softmax(net(zoo.prepare(images, model.card.input)), dim=1).numpy()
    assert probs.shape == (2, 2) and np.allclose(probs, expected, atol=1e-6)
    assert np.allclose(model.score(images), probs[:, 1])
    ensemble = zoo.load("ensemble:tiny+" + str(card_path) + ":max")
    assert np.allclose(ensemble.score(images), probs[:, 1])
    wrong = json.loads(card_path.read_text())
    wrong["input"]["size"] = 9  # the graph takes 8x8: a card that misstates its input fails in one line
    wrong["id"] = "tiny-wrong"
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    (tmp_path / "tiny.onnx").write_bytes((tmp_path / "cards" / "tiny.onnx").read_bytes())
    with pytest.raises(ModelError, match="could not run"):
        zoo.load(str(tmp_path / "wrong.json")).predict(images)
    (tmp_path / "cards" / "tiny.onnx").write_bytes(b"tampered")
    with pytest.raises(WeightsError, match="tampered"):
        zoo.load("tiny")


def test_prepare_resizes_with_aligned_corners_and_skips_the_model_size() -> None:
    spec = zoo.InputSpec(size=3)
    line = np.array([[[0, 0, 0], [255, 255, 255]]], dtype=np.uint8)  # 1x2
    out = zoo.prepare([line], spec)[0, 0]
    assert out.shape == (3, 3) and out[0].tolist() == pytest.approx([0.0, 0.5, 1.0])
    same = np.full((3, 3, 3), 51, np.uint8)
    assert torch.equal(zoo.prepare([same], spec), torch.full((1, 3, 3, 3), 51 / 255))
    with pytest.raises(ConfigError, match="uint8"):
        zoo.prepare([np.zeros((3, 3), np.uint8)], spec)


def test_importing_the_zoo_loads_no_framework() -> None:
    import subprocess
    import sys

    code = "import sys, nsfwlab.zoo; print([m for m in ('torch', 'onnxruntime', 'safetensors') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_open_nsfw_in_the_zoo_scores_as_the_detector(detector, photos: dict[str, np.ndarray]) -> None:
    from PIL import Image

    model = zoo.load("open_nsfw")
    images = [photos["astronaut"], photos["coffee"]]
    expected = [detector.nsfw_score(Image.fromarray(a)) for a in images]
    assert np.allclose(model.score(images), expected, atol=1e-6)
    assert model.card.id == zoo.DEFAULT_MODEL and model.backend == "onnxruntime"


def test_an_ensemble_combines_member_scores_by_mean_or_max() -> None:
    a = zoo.ZooModel(BUILTIN["open_nsfw"], runner=lambda items: np.array([[0.9, 0.1]] * len(items)),
                     backend="onnxruntime")
    b = zoo.ZooModel(BUILTIN["nsfwjs-mobilenetv2"], backend="torch",
                     runner=lambda items: np.array([[0.0, 0.2, 0.1, 0.5, 0.2]] * len(items)))
    images = [np.zeros((4, 4, 3), np.uint8)]
    assert zoo.EnsembleModel("e", [a, b], "mean").score(images)[0] == pytest.approx(0.4)
    assert zoo.EnsembleModel("e", [a, b], "max").predict(images)[0] == pytest.approx([0.1, 0.7])
    assert zoo.EnsembleModel("e", [a, b], "max").score(images)[0] == pytest.approx(0.7)


def _tiny_nsfwjs_package(kernel_q: np.ndarray, dense: np.ndarray) -> bytes:
    """An npm tarball shaped like nsfwjs's: one Keras layers model as browserify-style bundles."""
    import base64
    import io
    import tarfile

    layers = [
        {"name": "input_1", "class_name": "InputLayer", "config": {"batch_input_shape": [None, 4, 4, 3]},
         "inbound_nodes": []},
        {"name": "conv", "class_name": "Conv2D", "config": {"strides": [2, 2], "padding": "same",
         "activation": "linear", "use_bias": False, "dilation_rate": [1, 1]},
         "inbound_nodes": [[["input_1", 0, 0, {}]]]},
        {"name": "relu", "class_name": "ReLU", "config": {"max_value": 6, "negative_slope": 0, "threshold": 0},
         "inbound_nodes": [[["conv", 0, 0, {}]]]},
        {"name": "flat", "class_name": "Flatten", "config": {}, "inbound_nodes": [[["relu", 0, 0, {}]]]},
        {"name": "out", "class_name": "Dense", "config": {"units": 2, "activation": "softmax", "use_bias": False},
         "inbound_nodes": [[["flat", 0, 0, {}]]]},
    ]
    manifest = [{"paths": ["group1-shard1of1"], "weights": [
        {"name": "conv/kernel", "shape": [3, 3, 3, 2], "dtype": "float32",
         "quantization": {"dtype": "uint8", "scale": 0.01, "min": -1.0}},
        {"name": "out/kernel", "shape": [8, 2], "dtype": "float32"}]}]
    model = {"modelTopology": {"model_config": {"class_name": "Model", "config": {
        "layers": layers, "input_layers": [["input_1", 0, 0]], "output_layers": [["out", 0, 0]]}}},
        "weightsManifest": manifest}
    # JavaScript literal style, as the minified bundles write it: true as !0.
    model_js = "!function(e){module.exports=e()}(function(){a.exports=" + json.dumps(model).replace("true", "!0") \
        + "});"
    shard = base64.b64encode(kernel_q.tobytes() + dense.astype("<f4").tobytes()).decode()
    shard_js = f'!function(e){{module.exports=e()}}(function(){{a.exports="{shard}"}});'
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in (("model.min.js", model_js), ("group1-shard1of1.min.js", shard_js)):
            data = text.encode()
            info = tarfile.TarInfo(f"package/dist/models/tiny/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_a_tfjs_package_converts_to_a_network_with_tensorflow_semantics() -> None:
    import torch.nn.functional as F

    from nsfwlab.zoo.convert import convert_package
    from nsfwlab.zoo.runtime import build_plan_net

    rng = np.random.default_rng(3)
    kernel_q = rng.integers(0, 256, (3, 3, 3, 2), dtype=np.uint8)
    dense = rng.normal(size=(8, 2)).astype(np.float32)
    net = build_plan_net(convert_package(_tiny_nsfwjs_package(kernel_q, dense), "tiny", 1), "tiny")
    x = torch.from_numpy(rng.random((1, 3, 4, 4), dtype=np.float32))
    kernel = torch.from_numpy((kernel_q.astype(np.float64) * 0.01 - 1.0).astype(np.float32)).permute(3, 2, 0, 1)
    hidden = F.conv2d(F.pad(x, (0, 1, 0, 1)), kernel, stride=2).clamp(0, 6)  # SAME: the odd pixel after
    expected = torch.softmax(hidden.permute(0, 2, 3, 1).flatten(1) @ torch.from_numpy(dense), dim=1)
    with torch.no_grad():
        assert torch.allclose(net(x), expected, atol=1e-6)
    with pytest.raises(WeightsError, match="no package/dist/models/other"):
        convert_package(_tiny_nsfwjs_package(kernel_q, dense), "other", 1)


def _package_card(archive: bytes, converted: bytes) -> zoo.ModelCard:
    from dataclasses import replace

    base = BUILTIN["nsfwjs-mobilenetv2"]
    weights = replace(base.weights, sha256=hashlib.sha256(converted).hexdigest(), archive="tiny-1.0.0.tgz",
                      archive_sha256=hashlib.sha256(archive).hexdigest(), package="npm:tiny", version="1.0.0",
                      size_bytes=len(converted))
    return replace(base, id="tiny-package", weights=weights, classes=("a", "b"), nsfw_classes=("b",),
                   report_classes=())


def test_fetch_uses_a_verified_cached_package_and_refuses_without_npm(tmp_path: Path) -> None:
    from nsfwlab.zoo.convert import convert_package
    from nsfwlab.zoo.store import fetch, installed, weights_path

    rng = np.random.default_rng(4)
    archive = _tiny_nsfwjs_package(rng.integers(0, 256, (3, 3, 3, 2), dtype=np.uint8),
                                   rng.normal(size=(8, 2)).astype(np.float32))
    converted = convert_package(archive, "tiny", 1)
    card = _package_card(archive, converted)

    def convert(_card: zoo.ModelCard, data: bytes) -> bytes:
        return convert_package(data, "tiny", 1)

    with pytest.raises(WeightsError, match="npm is not installed"):
        fetch(card, convert, root=tmp_path, npm="no-such-npm-client")
    (tmp_path / "packages").mkdir()
    (tmp_path / "packages" / "tiny-1.0.0.tgz").write_bytes(archive)
    path = fetch(card, convert, root=tmp_path, npm="no-such-npm-client")  # the cached package: no client run
    assert path == weights_path(card, tmp_path) and path.read_bytes() == converted and installed(card, tmp_path)
