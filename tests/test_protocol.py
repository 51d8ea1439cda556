"""The robustness protocol (nsfwlab.lab.protocol): curves, worst case, verification, transfer, sanity.

Most tests run the protocol on "redness" models, a differentiable stand-in whose NSFW probability is a
logistic function of the mean red-minus-blue level: the budget that breaks each photo is known in advance
(half its distance to the model's boundary), and a run takes seconds. The exact Detector of a stand-in
decodes the PNG and computes the same function in float64, so verification goes through the same path
as for a real model. The tests on open_nsfw and nsfwjs run the real models (the full ensemble is slow).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nsfwlab import zoo
from nsfwlab.errors import ConfigError
from nsfwlab.lab import differentiable, protocol_attacks
from nsfwlab.lab.attack_options import Norm
from nsfwlab.lab.protocol import ProtocolConfig, robustness_protocol
from nsfwlab.lab.protocol_attacks import into_ball
from nsfwlab.lab.protocol_stats import interval

NAMES = ("astronaut", "chelsea", "coffee", "rocket")
#: Stand-in models: mean(R - B) in levels at which the probability is 0.5. Photos at 64x48: astronaut 45,
#: chelsea 61, coffee 107, rocket -30 levels, so "red50" breaks astronaut at eps 4 (distance 5, an L-inf
#: budget moves R - B by at most 2 eps), chelsea at 8 (distance 11) and neither of the others by 8.
BOUNDARIES = {"red50": 50.0, "red105": 105.0}
GAIN = 0.2  # logit per level


def _redness_prob(x: np.ndarray | torch.Tensor, boundary: float) -> float | torch.Tensor:
    """x in [0, 1], channels first (torch, N x 3 x H x W) or last (numpy, H x W x 3)."""
    if isinstance(x, torch.Tensor):
        r = (x[:, 0] - x[:, 2]).mean(dim=(1, 2)) * 255.0
        return torch.sigmoid(GAIN * (r - boundary))
    r = float((x[..., 0] - x[..., 2]).mean()) * 255.0
    return 1.0 / (1.0 + math.exp(-GAIN * (r - boundary)))


class RednessScorer(differentiable.Scorer):
    def __init__(self, model_id: str) -> None:
        super().__init__()
        self.model_id = model_id
        self.boundary = BOUNDARIES[model_id]
        self.dummy = torch.nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _redness_prob(x, self.boundary)  # type: ignore[return-value]


class RednessDetector:
    """The stand-in's exact Detector: PNG bytes (or pixels) -> the same function in float64."""

    def __init__(self, model: str = "red50", device: str = "cpu") -> None:
        from nsfwlab.config import Settings

        self.model_id = model
        self.boundary = BOUNDARIES[model]
        self.limits = Settings.from_env().limits
        self.scored = 0

    def nsfw_score(self, data: bytes | np.ndarray) -> float:
        self.scored += 1
        if isinstance(data, bytes):
            with Image.open(io.BytesIO(data)) as im:
                data = np.asarray(im.convert("RGB"))
        return float(_redness_prob(data.astype(np.float64) / 255.0, self.boundary))

    def torch_model(self, **_: object) -> None:
        raise ConfigError(f"gradient methods run on open_nsfw; model {self.model_id} has its own input",
                          param="model")

    def close(self) -> None:
        pass


@pytest.fixture
def redness(monkeypatch: pytest.MonkeyPatch) -> None:
    import nsfwlab.detector

    monkeypatch.setattr(nsfwlab.detector, "Detector", RednessDetector)
    monkeypatch.setattr(differentiable, "load_scorer", lambda model, detector=None: RednessScorer(model))


@pytest.fixture(scope="module")
def small(photos: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The photos at 64x48 as PNG files."""
    folder = tmp_path_factory.mktemp("small")
    paths = []
    for n in NAMES:
        paths.append(folder / f"{n}.png")
        Image.fromarray(photos[n]).resize((64, 48), Image.Resampling.BILINEAR).save(paths[-1])
    return paths


def _has_blackbox() -> bool:
    try:
        from nsfwlab.lab import blackbox  # noqa: F401
    except ImportError:
        return False
    return True


needs_blackbox = pytest.mark.skipif(not _has_blackbox(), reason="nsfwlab.lab.blackbox is not on this branch yet")
FAST = {"steps": 10, "restarts": 1, "queries": 50, "work_side": 64, "bootstrap": 200}


# -- configuration ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("field", "value"), [
    ("attacks", ("apgd", "fgsm")), ("attacks", ()), ("norm", "l1"), ("eps", (0.5,)), ("eps", (300,)),
    ("eps", ("a",)), ("threshold", 1.0), ("steps", 0), ("restarts", 0), ("queries", 5), ("work_side", 16),
    ("bootstrap", 10), ("device", "tpu"),
])
def test_config_refuses_bad_values_naming_the_parameter(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        ProtocolConfig(**{field: value})  # type: ignore[arg-type]
    assert info.value.param == field


def test_config_sorts_budgets_and_orders_attacks() -> None:
    cfg = ProtocolConfig(attacks=("minimal", "apgd"), eps=(8, 1, 2, 2), norm="l2")  # type: ignore[arg-type]
    assert cfg.attacks == ("apgd", "minimal") and cfg.eps == (1.0, 2.0, 8.0) and cfg.norm is Norm.L2


def test_unknown_override_is_refused(redness: None, small: list[Path]) -> None:
    with pytest.raises(ConfigError, match="unknown ProtocolConfig"):
        robustness_protocol(small, ["red50"], epsilon=(1,))


# -- the ball ---------------------------------------------------------------------------------------------------
def test_into_ball_keeps_linf_and_l2_budgets() -> None:
    rng = np.random.default_rng(0)
    orig = rng.integers(0, 256, (20, 30, 3)).astype(np.uint8)
    adv = orig + rng.normal(0, 9, orig.shape)
    linf = into_ball(orig, adv, Norm.LINF, 3.7)
    assert linf.dtype == np.uint8 and np.abs(linf.astype(int) - orig).max() <= 3
    l2 = into_ball(orig, adv, Norm.L2, 2.0)
    rms = np.sqrt(np.mean((l2.astype(float) - orig) ** 2))
    assert 1.5 < rms <= 2.0


# -- intervals --------------------------------------------------------------------------------------------------
def test_interval_is_seeded_and_never_a_point_from_few_images() -> None:
    values = [True, False, True, True, False, True]
    assert interval(values, 500, 1) == interval(values, 500, 1)
    lo, hi = interval([True] * 4, 500, 0)  # type: ignore[misc]
    assert hi == 1.0 and lo < 0.6  # Wilson, not the bootstrap's [1, 1]
    assert interval([], 500, 0) is None


# -- the protocol on the stand-in models -----------------------------------------------------------------------
def test_apgd_curve_breaks_each_image_at_its_known_budget(redness: None, small: list[Path]) -> None:
    events = []
    report = robustness_protocol(small, ["red50"], attacks=("apgd",), progress=events.append, **FAST)
    out = report.to_dict()
    curve = out["curves"]["red50"]
    assert [p["robust_accuracy"] for p in curve["apgd"]] == [1.0, 1.0, 0.75, 0.5]
    assert [p["broken"] for p in curve["apgd"]] == [0, 0, 1, 2]
    assert all(p["n"] == 4 and p["ci95"][0] <= p["robust_accuracy"] <= p["ci95"][1] for p in curve["apgd"])
    assert curve["worst"] == curve["apgd"]
    broken = {Path(im["path"]).stem: im["models"]["red50"]["attacks"]["apgd"]["broken_at"]
              for im in out["protocol_images"]}
    assert broken == {"astronaut": 4.0, "chelsea": 8.0, "coffee": None, "rocket": None}
    assert [e.done for e in events] == [1, 2, 3, 4] and events[-1].total == 4
    assert out["clean_accuracy"]["red50"]["value"] == 1.0
    assert any("rest on 4 image(s)" in w for w in out["warnings"])
    json.dumps(out)


def test_a_success_the_exact_score_rejects_is_not_counted(redness: None, small: list[Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    real = protocol_attacks.Verifier.check
    calls = []

    def failing(self: protocol_attacks.Verifier, pixels: np.ndarray, label: int) -> tuple[bool, float]:
        calls.append(label)
        _, score = real(self, pixels, label)
        return False, score  # every adversarial "fails" verification

    monkeypatch.setattr(protocol_attacks.Verifier, "check", failing)
    out = robustness_protocol(small[:2], ["red50"], attacks=("apgd",), sanity=False, **FAST).to_dict()
    assert calls, "verification was never asked"
    assert [p["robust_accuracy"] for p in out["curves"]["red50"]["apgd"]] == [1.0] * 4
    assert any("claimed success(es) the exact score rejected" in w for w in out["warnings"])


def test_every_saved_adversarial_is_verified_and_nothing_is_written_without_the_option(
        redness: None, small: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    robustness_protocol(small[:2], ["red50"], attacks=("apgd",), sanity=False, **FAST)
    assert list(tmp_path.iterdir()) == []
    folder = tmp_path / "adv"
    out = robustness_protocol(small[:2], ["red50"], attacks=("apgd",), sanity=False, save_adversarial=folder,
                              **FAST).to_dict()
    saved = [a["saved"] for im in out["protocol_images"] for a in im["models"]["red50"]["attacks"].values()
             if a["saved"]]
    assert len(saved) == 2 and sorted(str(p) for p in folder.iterdir()) == sorted(saved)
    det = RednessDetector("red50")
    for src, path in zip(small[:2], saved, strict=True):
        pixels = np.asarray(Image.open(path).convert("RGB"))
        assert np.abs(pixels.astype(int) - np.asarray(Image.open(src).convert("RGB"))).max() <= 8
        clean = det.nsfw_score(Path(src).read_bytes())
        assert (det.nsfw_score(Path(path).read_bytes()) >= 0.5) != (clean >= 0.5)


def test_transfer_matrix_sanity_and_labels(redness: None, small: list[Path]) -> None:
    # astronaut (p < 0.5 on red50) is labelled NSFW: a clean error there
    labels = {str(small[0]): 1, str(small[1]): 1, str(small[2]): 1}
    sources = [small[0], small[1], small[2]]
    report = robustness_protocol(sources, ["red50", "red105"], attacks=("apgd", "minimal"), labels=labels,
                                 **FAST)
    out = report.to_dict()
    assert set(out["transfer"]) == {"red50", "red105"}
    assert set(out["transfer"]["red50"]) == {"red105"} and set(out["transfer"]["red105"]) == {"red50"}
    detail = out["transfer_detail"]["red50"]["red105"]
    assert set(detail) == {"n", "succeeded", "ci95", "eps"} and detail["eps"] == 8.0
    assert out["threat_model"]["labels"] == "given"
    assert any("minimal skipped" in w for w in out["warnings"])
    assert set(out["curves"]["red50"]) == {"apgd", "worst"}
    assert out["clean_accuracy"]["red50"]["value"] == pytest.approx(2 / 3)
    assert out["curves"]["red50"]["apgd"][-1]["robust_accuracy"] == pytest.approx(1 / 3)  # astronaut: clean error
    checks = {c["check"].split(": ", 1)[1].split(" (")[0] for c in out["sanity"]}
    assert any(c.startswith("APGD at an unbounded budget") for c in checks)
    assert any(c.startswith("APGD with 4x steps") for c in checks)
    assert all({"check", "passed", "detail"} == set(c) for c in out["sanity"])
    unbounded = [c for c in out["sanity"] if "unbounded" in c["check"] and c["check"].startswith("red50")]
    assert unbounded[0]["passed"] is True  # every survivor falls at 64/255
    json.dumps(out)


def test_a_bad_image_is_reported_and_the_rest_go_on(redness: None, small: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    out = robustness_protocol([bad, small[0]], ["red50"], attacks=("apgd",), sanity=False, **FAST).to_dict()
    assert out["protocol_images"][0]["error"] and not out["protocol_images"][0]["models"]
    assert out["curves"]["red50"]["apgd"][0]["n"] == 1
    assert any("broken.png" in w for w in out["warnings"])


@needs_blackbox
def test_worst_case_is_at_most_every_attack(redness: None, small: list[Path]) -> None:
    out = robustness_protocol(small, ["red50"], attacks=("apgd", "square", "hopskipjump"), sanity=True,
                              **FAST).to_dict()
    curves = out["curves"]["red50"]
    assert set(curves) == {"apgd", "square", "hopskipjump", "worst"}
    for a, points in curves.items():
        values = [p["robust_accuracy"] for p in points]
        assert values == sorted(values, reverse=True), a
    for i in range(4):
        assert curves["worst"][i]["robust_accuracy"] <= min(curves[a][i]["robust_accuracy"] for a in curves)
    q = out["queries"]["red50"]
    assert set(q) == {"square", "hopskipjump"} and len(q["square"]["per_image"]) == 4
    assert "blocked_at_query" not in out
    assert any("white-box" in c["check"] for c in out["sanity"])
    json.dumps(out)


@needs_blackbox
def test_against_a_service_white_box_attacks_are_skipped_and_blocks_recorded(
        redness: None, small: list[Path]) -> None:
    asked = []

    def factory(model: str) -> differentiable.LocalOracle:
        asked.append(model)
        return differentiable.LocalOracle(RednessScorer(model), labels_only=True)

    out = robustness_protocol(small[:2], ["red50"], attacks=("apgd", "hopskipjump"), oracle_factory=factory,
                              **FAST).to_dict()
    assert asked == ["red50"]
    assert set(out["curves"]["red50"]) == {"hopskipjump", "worst"}
    assert out["threat_model"]["target"] == "service" and "apgd" not in out["threat_model"]["attacks"]
    assert any("apgd skipped" in w for w in out["warnings"])
    assert out["blocked_at_query"] == {"red50": {"hopskipjump": [None, None]}}
    assert all(0 < q <= 50 for q in out["queries"]["red50"]["hopskipjump"]["per_image"])


def test_a_model_without_gradients_gets_the_black_box_attacks_on_its_exact_detector(
        redness: None, small: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    def no_gradients(model: str, detector: object = None) -> RednessScorer:
        raise ConfigError(f"{model} has no differentiable form here", param="model")

    monkeypatch.setattr(differentiable, "load_scorer", no_gradients)
    out = robustness_protocol(small[:2], ["red50"], attacks=("apgd", "hopskipjump"), sanity=False,
                              **FAST).to_dict()
    assert set(out["curves"]["red50"]) == {"hopskipjump", "worst"}
    assert any("apgd skipped: red50 has no differentiable form" in w for w in out["warnings"])
    assert all(q > 0 for q in out["queries"]["red50"]["hopskipjump"]["per_image"])


def test_hopskipjump_starts_from_an_image_the_model_decides_the_other_way(
        redness: None, small: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from nsfwlab.lab import blackbox

    seen: dict[int, float | None] = {}

    def fake(oracle: object, image: np.ndarray, label: int, *, start: np.ndarray | None = None,
             **_: object) -> blackbox.BlackBoxResult:
        seen[label] = None if start is None else float(_redness_prob(start / 255.0, 50.0))
        assert start is None or start.shape == image.shape
        return blackbox.BlackBoxResult(None, False, 1, None, math.nan)

    monkeypatch.setattr(blackbox, "hopskipjump", fake)
    robustness_protocol(small, ["red50"], attacks=("hopskipjump",), sanity=False, **FAST)
    # safe images (astronaut, rocket) start from coffee, the most confident NSFW one; NSFW ones from rocket
    assert seen[0] is not None and seen[0] > 0.99
    assert seen[1] is not None and seen[1] < 0.01



def test_hopskipjump_on_a_set_of_one_class_starts_from_a_given_start_image(
        redness: None, small: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nsfwlab.errors import NsfwlabError
    from nsfwlab.lab import blackbox

    seen: list[float | None] = []

    def fake(oracle: object, image: np.ndarray, label: int, *, start: np.ndarray | None = None,
             **_: object) -> blackbox.BlackBoxResult:
        seen.append(None if start is None else float(_redness_prob(start / 255.0, 50.0)))
        return blackbox.BlackBoxResult(None, False, 1, None, math.nan)

    monkeypatch.setattr(blackbox, "hopskipjump", fake)
    safe = [p for p in small if float(_redness_prob(np.asarray(Image.open(p).convert("RGB")) / 255.0, 50.0)) < 0.5]
    robustness_protocol(safe, ["red50"], attacks=("hopskipjump",), sanity=False, **FAST)
    assert seen and all(s is None for s in seen)  # one class only: no start
    red = tmp_path / "red.png"
    Image.fromarray(np.tile(np.array([230, 20, 20], np.uint8), (40, 50, 1))).save(red)
    seen.clear()
    out = robustness_protocol(safe, ["red50"], attacks=("hopskipjump",), sanity=False, starts=[red], **FAST)
    assert len(seen) == len(safe) and all(s is not None and s > 0.99 for s in seen)
    assert [im["path"] for im in out.to_dict()["protocol_images"]] == [str(p) for p in safe]  # starts not reported
    with pytest.raises(NsfwlabError, match="start image"):
        robustness_protocol(safe, ["red50"], attacks=("hopskipjump",), sanity=False, starts=[tmp_path / "no.png"],
                            **FAST)

# -- the real models -----------------------------------------------------------------------------------------
@pytest.mark.slow  # 15 s on an idle 2-core machine, 90 s under load; the stand-in tests above are the fast version
def test_apgd_on_open_nsfw_is_verified_on_the_exact_pipeline(photos: dict[str, np.ndarray], tmp_path: Path) -> None:
    # 128x96: a smaller working copy, upscaled 2.7x by the pipeline, leaves APGD too few degrees of freedom
    # to flip the label at 4/255 in 3 steps (measured: 64x48 needs 10)
    src = tmp_path / "astronaut.png"
    Image.fromarray(photos["astronaut"]).resize((128, 96), Image.Resampling.BILINEAR).save(src)
    out = robustness_protocol([src], ["open_nsfw"], attacks=("apgd",), eps=(4,), steps=3, restarts=1,
                              sanity=False, work_side=128, save_adversarial=tmp_path / "adv",
                              bootstrap=100).to_dict()
    rec = out["protocol_images"][0]["models"]["open_nsfw"]
    apgd = rec["attacks"]["apgd"]
    assert apgd["broken_at"] == 4.0
    from nsfwlab import Detector

    with Detector(device="cpu") as det:
        score = det.nsfw_score(Path(apgd["saved"]).read_bytes())
    assert score == pytest.approx(apgd["score"], abs=1e-6) and score >= 0.5
    assert "monotone" in out["threat_model"]["attacks"]["apgd"]["note"]


@pytest.mark.slow
@needs_blackbox
def test_full_ensemble_on_open_nsfw_and_nsfwjs(small: list[Path]) -> None:
    if not zoo.installed("nsfwjs-mobilenetv2"):
        pytest.skip("nsfwjs-mobilenetv2 weights are not in NSFWLAB_HOME: run setup.sh or "
                    "`nsfwlab models fetch nsfwjs-mobilenetv2`")
    models = ["open_nsfw", "nsfwjs-mobilenetv2"]
    out = robustness_protocol(small[:3], models, eps=(1, 2, 4, 8), steps=5, restarts=1, queries=50,
                              work_side=64, bootstrap=200).to_dict()
    assert set(out["curves"]["open_nsfw"]) == {"apgd", "square", "hopskipjump", "minimal", "worst"}
    assert set(out["curves"]["nsfwjs-mobilenetv2"]) >= {"apgd", "square", "hopskipjump", "worst"}
    assert set(out["transfer"]["open_nsfw"]) == {"nsfwjs-mobilenetv2"}
    for m in models:
        worst = [p["robust_accuracy"] for p in out["curves"][m]["worst"]]
        assert worst == sorted(worst, reverse=True)
    json.dumps(out)
