"""Synthesis: parameterisations round-trip, the objective rises on the real model, a second
network's class rises under --also, generators plug in, and every reported number is the exact
pipeline's. Images are small and steps few; nothing generated is kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nsfwlab.cli import app
from nsfwlab.errors import ConfigError, ModelError
from nsfwlab.lab.augment import robustness_transforms
from nsfwlab.lab.imageparam import FourierImage, PixelImage
from nsfwlab.lab.networks import build_network, is_torchscript, load_network, save_network
from nsfwlab.lab.synthesize import (
    BALANCED_SETTLE,
    AlsoNetwork,
    AlsoSpec,
    Param,
    SynthConfig,
    Synthesizer,
    load_also,
    load_generator,
    parse_also,
    synthesize,
)

# TorchScript is deprecated from torch 2.13 on, but it is the format --also and --generator take.
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")


class _MeanColour(torch.nn.Module):
    """A tiny second network: 4 classes from the mean colour (fixed weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 4)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [-1.0, -1.0, -1.0]]) * 4)
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))


class _Generator(torch.nn.Module):
    """A tiny generator: code (N, 8) -> (N, 3, 16, 16) in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.code_dim = 8  # kept by TorchScript: the synthesizer reads it
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(8, 3 * 16 * 16)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc(z)).view(-1, 3, 16, 16)


class _WritesFiles(torch.nn.Module):
    """A TorchScript program whose forward rewrites a file (what a model file that is code can do)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.fc = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mapped = torch.from_file(self.path, shared=True, size=4, dtype=torch.uint8)
        mapped.fill_(88)  # b"XXXX" over the file's first bytes
        return self.fc(x.mean((2, 3))) + mapped[:1].float() * 0


@pytest.fixture(scope="module")
def tiny_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("nets") / "mean_colour.pt"
    torch.jit.save(torch.jit.script(_MeanColour()), str(path))
    return path


def test_torchscript_is_refused_without_trust_and_nothing_is_written(tmp_path: Path) -> None:
    """A TorchScript file is a program: loading it as a second network or a generator is refused
    (before its code runs) unless the caller trusts it; trusted, it loads and its code does run."""
    canary = tmp_path / "canary.txt"
    canary.write_bytes(b"safe")
    evil = tmp_path / "evil.pt"
    torch.jit.save(torch.jit.script(_WritesFiles(str(canary))), str(evil))
    assert is_torchscript(evil)
    with pytest.raises(ModelError, match="TorchScript") as info:
        load_also(AlsoSpec(evil, 0), size=8)
    assert info.value.param == "trust_code"
    with pytest.raises(ModelError, match="TorchScript"):
        load_generator(evil)
    res = CliRunner().invoke(app, ["synthesize", "--out", str(tmp_path / "x.png"), "--also", f"{evil}:0",
                                   "--steps", "1", "--size", "32", "--device", "cpu", "--no-progress"])
    assert res.exit_code == 3 and "--trust-code" in res.output and "trust_code" not in res.output, res.output
    assert canary.read_bytes() == b"safe"
    net = load_also(AlsoSpec(evil, 1), size=8, trust_code=True)  # the probe call runs its code
    assert net.class_index == 1 and canary.read_bytes() == b"XXXX"


def test_a_tensors_only_network_loads_without_trust(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = build_network("convnet", {"classes": 5, "channels": [4, 8]})
    path = save_network(tmp_path / "net.pt", net)
    assert not is_torchscript(path)
    loaded = load_also(AlsoSpec(path, 4), size=16)
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(loaded.module(x), net(x)) and not any(p.requires_grad for p in loaded.module.parameters())
    gen = build_network("mlp-generator", {"code_dim": 4, "size": 8, "hidden": [16]})
    back = load_generator(save_network(tmp_path / "gen.pt", gen))
    assert back.code_dim == 4 and back(torch.zeros(1, 4)).shape == (1, 3, 8, 8)
    conv = build_network("conv-generator", {"code_dim": 4, "channels": [8, 4]})
    assert conv(torch.zeros(2, 4)).shape == (2, 3, 16, 16)
    bad = tmp_path / "bad.pt"
    torch.save({"format": "nsfwlab-network-v1", "arch": "convnet", "config": {"classes": 3},
                "state_dict": net.state_dict()}, bad)
    with pytest.raises(ModelError, match="do not fit"):
        load_network(bad, param="also")
    with pytest.raises(ModelError, match="unknown network architecture"):
        torch.save({"format": "nsfwlab-network-v1", "arch": "nope", "state_dict": {}}, bad)
        load_network(bad, param="also")


def test_an_nsfwlab_checkpoint_is_a_second_network_behind_its_preprocessing(tmp_path: Path) -> None:
    from nsfwlab.checkpoint import build_architecture, save_checkpoint

    torch.manual_seed(0)
    model = build_architecture("open_nsfw").eval()
    path = save_checkpoint(tmp_path / "ft.pt", model)
    net = load_also(AlsoSpec(path, 1), size=64)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert net.module(x).shape == (1, 2)


@pytest.mark.parametrize("cls", [FourierImage, PixelImage])
def test_parameterisation_round_trips(cls: type) -> None:
    g = torch.Generator().manual_seed(0)
    param = cls(2, 32, generator=g)
    start = param().detach()
    assert start.shape == (2, 3, 32, 32) and 0.0 <= float(start.min()) and float(start.max()) <= 1.0
    image = torch.rand(2, 3, 32, 32, generator=g) * 0.98 + 0.01
    param.set_image(image)
    assert float((param().detach() - image).abs().max()) < 1e-4


def test_the_fourier_spectrum_dc_term_receives_a_gradient() -> None:
    param = FourierImage(1, 32, generator=torch.Generator().manual_seed(0))
    param().mean().backward()
    grad = param.spectrum.grad
    assert grad is not None and float(grad[0, :, 0, 0].abs().sum()) > 0  # the DC term moves the mean


def test_robustness_transforms_keep_the_size_and_follow_the_generator() -> None:
    x = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    a = robustness_transforms(x, torch.Generator().manual_seed(5))
    b = robustness_transforms(x, torch.Generator().manual_seed(5))
    c = robustness_transforms(x, torch.Generator().manual_seed(6))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)


def test_parse_also() -> None:
    assert parse_also("net.pt:3") == AlsoSpec(Path("net.pt"), 3, 1.0)
    assert parse_also("dir:x/net.pt:3:0.5") == AlsoSpec(Path("dir:x/net.pt"), 3, 0.5)
    for bad in ("net.pt", "net.pt:x", "net.pt:1:heavy", ":"):
        with pytest.raises(ConfigError):
            parse_also(bad)


def test_load_also_checks_its_input(tiny_pt: Path, tmp_path: Path) -> None:
    net = load_also(AlsoSpec(tiny_pt, 2), size=16, trust_code=True)
    assert net.class_index == 2 and not any(p.requires_grad for p in net.module.parameters())
    with pytest.raises(ConfigError, match="out of range"):
        load_also(AlsoSpec(tiny_pt, 9), size=16, trust_code=True)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelError):
        load_also(AlsoSpec(junk, 0))
    with pytest.raises(ConfigError):
        load_also(AlsoSpec(tmp_path / "missing.pt", 0))
    onnx = tmp_path / "net.onnx"
    onnx.write_bytes(b"x")
    try:
        import onnx2torch  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="onnx2torch"):
            load_also(AlsoSpec(onnx, 0))
    else:  # pragma: no cover - depends on the environment
        with pytest.raises(ModelError):
            load_also(AlsoSpec(onnx, 0))


def test_config_errors_name_the_parameter_not_a_flag() -> None:
    for kwargs in ({"steps": -1}, {"lr": 0.0}, {"size": 8}, {"batch": 0}, {"tv": -1.0}, {"settle": 2.0},
                   {"also_size": 1}, {"param": "voxels"}):
        with pytest.raises(ConfigError) as info:
            SynthConfig(**kwargs)  # type: ignore[arg-type]
        (name,) = kwargs
        assert info.value.param == name and "--" not in str(info.value) and name in str(info.value)
    with pytest.raises(ConfigError, match="unknown SynthConfig field"):
        synthesize(None, None, stepz=3)
    assert SynthConfig(batch=3).diversity_weight == 1.0 and SynthConfig().diversity_weight == 0.0
    for settle in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="settle"):
            SynthConfig(settle=settle)


def test_settling_defaults_to_balanced_objectives_only() -> None:
    """The last fifth of a balanced objective's steps (several summed terms, or any second network)
    runs without the transforms; a single term, the plain sum and an explicit settle keep what they ask for."""
    both = SynthConfig(objective="nsfw+sfw", steps=200)
    assert both.balanced and both.settle_fraction == BALANCED_SETTLE == 0.2 and both.robust_steps == 160
    assert SynthConfig(objective="nsfw", steps=200).robust_steps == 200
    assert SynthConfig(objective="nsfw+sfw", steps=200, balance=False).robust_steps == 200
    assert SynthConfig(objective="nsfw", steps=200, settle=0.5).robust_steps == 100
    assert SynthConfig(objective="nsfw+sfw", steps=200, settle=0.0).robust_steps == 200
    assert SynthConfig(objective="nsfw+sfw", steps=200, transforms=False).robust_steps == 0
    also = (AlsoSpec(Path("net.pt"), 1),)
    assert SynthConfig(objective="nsfw", also=also).balanced and not SynthConfig(objective="nsfw").balanced
    assert SynthConfig(objective="nsfw", also=also, steps=200).robust_steps == 160
    assert not SynthConfig(objective="nsfw", also=also, balance=False).balanced


@pytest.mark.slow
def test_synthesis_raises_its_objective_and_reports_the_exact_pipeline(detector) -> None:
    config = SynthConfig(objective="nsfw", steps=4, lr=0.1, size=64, transforms=False, tv=0.1)
    result = synthesize(None, detector, config)
    start, end = result.objectives_start[0], result.objectives_end[0]
    assert end["nsfw-logit"] > start["nsfw-logit"] + 0.5
    assert result.logits_end[0][1] == pytest.approx(end["nsfw-logit"], abs=1e-5)
    assert result.scores[0] == detector.nsfw_score(result.pngs[0])
    p = float(torch.softmax(torch.tensor(result.logits_end[0]), 0)[1])
    assert p == pytest.approx(result.scores[0], abs=1e-4)  # torch logits vs onnxruntime score
    assert "tv" in end and len(result.history) == 4


@pytest.mark.slow
def test_a_balanced_sum_raises_every_term(detector) -> None:
    """nsfw+sfw ("pareidolia"): with balance (the default) both logits rise over the start image,
    measured on the exact pipeline; each term is reported."""
    config = SynthConfig(objective="nsfw+sfw", steps=40, lr=0.05, transforms=False, param=Param.PIXELS)
    result = synthesize(None, detector, config)
    (sfw0, nsfw0), (sfw1, nsfw1) = result.logits_start[0], result.logits_end[0]
    assert sfw1 > sfw0 + 2 and nsfw1 > nsfw0 + 2, (result.logits_start, result.logits_end)
    assert {"term0:nsfw-logit", "term1:sfw-logit"} <= set(result.objectives_end[0])
    # The plain sum, on the same pixels, puts all the gain into the cheaper logit (measured: sfw +28, nsfw -4.7).
    plain = synthesize(None, detector, config, balance=False)
    assert plain.logits_end[0][1] < plain.logits_start[0][1] + 2


@pytest.mark.slow
def test_the_default_balanced_sum_raises_both_logits_with_transforms(detector) -> None:
    """nsfw+sfw with the defaults (Fourier, transforms, balance, settling), shortened to 40 steps:
    both exact-pipeline logits rise (measured on seed 0: sfw +13.4, nsfw +5.5)."""
    result = synthesize(None, detector, objective="nsfw+sfw", steps=40)
    (sfw0, nsfw0), (sfw1, nsfw1) = result.logits_start[0], result.logits_end[0]
    assert sfw1 > sfw0 + 1.0 and nsfw1 > nsfw0 + 1.0, (result.logits_start, result.logits_end)


@pytest.mark.slow
def test_synthesize_command_defaults_raise_both_logits_by_two(tmp_path: Path) -> None:
    """`nsfwlab synthesize --objective nsfw+sfw` with every default raises the sfw and the nsfw logit
    each by at least 2 over the start image, in the report's exact-pipeline logits (measured on seeds
    0, 1, 2: +23.3/+14.7, +25.4/+12.4, +21.1/+14.5)."""
    out, report = tmp_path / "both.png", tmp_path / "both.json"
    res = CliRunner().invoke(app, ["synthesize", "--objective", "nsfw+sfw", "--out", str(out),
                                   "--report", str(report), "--device", "cpu", "--no-progress"])
    assert res.exit_code == 0, res.output
    data = json.loads(report.read_text())
    assert data["steps"] == 200 and data["transforms"] and data["balance"] and data["settle"] == 0.2
    (sfw0, nsfw0), (sfw1, nsfw1) = data["logits_start"], data["logits_end"]
    assert sfw1 >= sfw0 + 2 and nsfw1 >= nsfw0 + 2, (data["logits_start"], data["logits_end"])


def test_also_raises_the_second_networks_class(detector, tiny_pt: Path) -> None:
    net = load_also(AlsoSpec(tiny_pt, 2, 10.0), size=16, trust_code=True)
    config = SynthConfig(objective="0.1*nsfw", steps=4, lr=0.5, size=32, param=Param.PIXELS)
    result = synthesize(None, detector, config, also=(net,))
    key = f"also0:{net.name}:2"
    assert result.objectives_end[0][key] > result.objectives_start[0][key] + 0.2


@pytest.mark.slow
def test_generator_and_batch_with_diversity(detector, tmp_path: Path) -> None:
    path = tmp_path / "gen.pt"
    torch.jit.save(torch.jit.script(_Generator()), str(path))
    gen = load_generator(path, trust_code=True)
    config = SynthConfig(objective="nsfw", steps=2, size=32, batch=2)
    result = synthesize(None, detector, config, generator=gen)
    assert len(result.images) == 2 and result.images[0].shape == (32, 32, 3)
    assert "diversity" in result.objectives_end[0]
    assert not np.array_equal(result.images[0], result.images[1])


def test_generator_without_code_size_is_refused(detector) -> None:
    class NoDim(torch.nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return z

    with pytest.raises(ConfigError, match="code_dim"):
        synthesize(None, detector, generator=NoDim())


def test_unknown_layer_in_objective_is_a_config_error(detector) -> None:
    with pytest.raises(ConfigError):
        synthesize(None, detector, objective="channel:nope:1")


@pytest.mark.slow
def test_synthesize_command_writes_images_report_and_blurred_gallery(tmp_path: Path, tiny_pt: Path,
                                                                    detector) -> None:
    out, report = tmp_path / "syn.png", tmp_path / "syn.json"
    res = CliRunner().invoke(app, ["synthesize", "--objective", "nsfw", "--steps", "1", "--size", "32",
                                   "--batch", "2", "--out", str(out), "--report", str(report),
                                   "--also", f"{tiny_pt}:1:0.5", "--also-size", "16", "--device", "cpu",
                                   "--trust-code"])
    assert res.exit_code == 0, res.output
    data = json.loads(report.read_text())
    assert set(data) >= {"score", "logits_start", "logits_end", "objectives_start", "objectives_end", "seconds"}
    paths = [tmp_path / "syn-0.png", tmp_path / "syn-1.png"]
    assert [d["score"] for d in data["images"]] == [detector.nsfw_score(p) for p in paths]
    page = (tmp_path / "syn.html").read_text()
    assert page.count("<figure>") == 2 and "score" in page


def test_gallery_blurs_high_scores_by_default() -> None:
    from nsfwlab.cli.lab_synth import _gallery_html

    page = _gallery_html(["a.png", "b.png"], [b"1", b"2"], [0.01, 0.95], "nsfw", blur=True).decode()
    assert page.count('class="thumb blurred"') == 1
    assert page.index('class="thumb blurred"') > page.index('alt="a.png"')  # b, the high score, is blurred
    assert "thumb blurred" not in _gallery_html(["b.png"], [b"2"], [0.95], "nsfw", blur=False).decode()


def test_synthesize_command_usage_errors(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["synthesize", "--out", str(tmp_path / "x.jpg")])
    assert res.exit_code == 2 and ".png" in res.output
    res = CliRunner().invoke(app, ["synthesize", "--out", str(tmp_path / "x.png"), "--objective", "nsfw++"])
    assert res.exit_code == 2
    res = CliRunner().invoke(app, ["synthesize", "--out", str(tmp_path / "x.png"), "--lr", "0"])
    assert res.exit_code == 2 and "--lr must lie in (0, 10]" in res.output, res.output
    res = CliRunner().invoke(app, ["synthesize", "--out", str(tmp_path / "x.png"), "--also", "missing.pt:1"])
    assert res.exit_code == 2 and "no such file" in res.output
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    res = CliRunner().invoke(app, ["synthesize", "--out", str(blocker / "x.png")])
    assert res.exit_code == 2 and "cannot write to" in res.output


def test_also_network_dataclass_defaults() -> None:
    net = AlsoNetwork(module=_MeanColour(), class_index=0)
    assert net.size == 224 and net.weight == 1.0


def _clipped(images: list[np.ndarray]) -> float:
    arr = np.stack(images)
    return float(((arr == 0) | (arr == 255)).mean())


@pytest.mark.parametrize("size", [64, 256])
def test_fourier_images_are_not_saturated(size: int) -> None:
    """The spectrum is scaled as lucid/lucent scale it (1/4 on the orthonormal FFT). Adam moves each
    coefficient by about lr per step, so after a few dozen steps they are of order 1: such a spectrum
    leaves no channel value at 0 or 255 (with the scale x size as well, 93% at 64 px and 98.5% at 256)."""
    param = FourierImage(1, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        param.spectrum.copy_(torch.randn(param.spectrum.shape, generator=torch.Generator().manual_seed(1)))
        image = [(param()[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()]
    assert _clipped(image) < 0.05


@pytest.mark.slow
def test_a_default_run_clips_under_five_percent_of_values(detector) -> None:
    """`synthesize --objective nsfw` with every default (measured: 0.0% clipped, NSFW logit -1.5 -> 51.8)."""
    result = synthesize(None, detector, objective="nsfw")
    assert _clipped(result.images) < 0.05 and result.scores[0] > 0.99


def test_a_start_image_is_where_the_run_begins(detector, photos: dict[str, np.ndarray]) -> None:
    from PIL import Image

    result = synthesize(photos["chelsea"], detector, steps=0, size=64, param="pixels")
    expected = np.asarray(Image.fromarray(photos["chelsea"]).resize((64, 64), Image.Resampling.BILINEAR))
    assert np.abs(result.images[0].astype(int) - expected.astype(int)).max() <= 1
    assert result.scores[0] == detector.nsfw_score(result.pngs[0]) and result.steps == 0
    with pytest.raises(ConfigError, match="start image"):
        synthesize(photos["chelsea"], detector, steps=1, generator=build_network("mlp-generator", {"size": 8}))


def test_the_result_is_json_safe_and_progress_has_one_shape(detector) -> None:
    events: list = []
    result = synthesize(None, detector, steps=2, size=32, progress=events.append)
    assert [(e.stage, e.done, e.total) for e in events] == [("synthesize", 1, 2), ("synthesize", 2, 2)]
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["steps"] == 2 and data["objective"] == "nsfw" and data["score"] == result.scores[0]


def test_the_old_entry_points_warn_and_forward(detector) -> None:
    with pytest.warns(DeprecationWarning, match="synthesize"):
        synth = Synthesizer(detector, SynthConfig(steps=1, size=32))
    seen: list = []
    result = synth.run(lambda step, loss: seen.append((step, loss)))
    assert result.steps == 1 and seen[0][0] == 1 and seen[0][1] == pytest.approx(result.history[0])
    with pytest.warns(DeprecationWarning, match="to_dict"):
        assert result.report(result.config)["steps"] == 1
    import importlib
    import sys

    sys.modules.pop("nsfwlab.lab.fourier", None)
    with pytest.warns(DeprecationWarning, match="imageparam"):
        fourier = importlib.import_module("nsfwlab.lab.fourier")
    assert fourier.FourierImage is FourierImage and fourier.robustness_transforms is robustness_transforms


@pytest.mark.slow
def test_also_makes_class_k_the_top_class_of_a_random_net_and_the_image_nsfw(detector, tmp_path: Path) -> None:
    """`synthesize --objective nsfw --also NET:K` with a randomly initialised small conv net (its
    logits span a few tenths): balanced by default, so class K becomes the net's top class while the
    NSFW score passes 0.9. The plain sum (--no-balance) leaves the net's class where it was (measured:
    class 0's log-probability -1.411 -> -1.386 against -1.293 balanced; class 3 stays on top)."""
    torch.manual_seed(0)
    path = save_network(tmp_path / "random.pt", build_network("convnet", {"classes": 4, "channels": [8, 16]}))
    report = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["synthesize", "--objective", "nsfw", "--also", f"{path}:0", "--steps", "60",
                                   "--size", "64", "--also-size", "64", "--out", str(tmp_path / "x.png"),
                                   "--report", str(report), "--device", "cpu", "--no-progress"])
    assert res.exit_code == 0, res.output
    data = json.loads(report.read_text())
    assert data["balance"] and data["objectives_start"]["also0:top_class"] != 0
    assert data["objectives_end"]["also0:top_class"] == 0 and data["score"] >= 0.9, data["objectives_end"]
    plain = synthesize(None, detector, objective="nsfw", also=(AlsoSpec(path, 0),), steps=60, size=64,
                       also_size=64, balance=False)
    assert plain.objectives_end[0]["also0:top_class"] != 0
