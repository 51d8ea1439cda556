"""`nsfwlab robustness` with the protocol: its argument errors are one line and come before any work, the
service's key is read as serve reads its own, and one run writes one robustness.json (per-image study and
protocol sections), the curve plots and one report.html. Public safe photos only, tiny budgets."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from nsfwlab import zoo
from nsfwlab.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def two_photos(tmp_path_factory: pytest.TempPathFactory, photos: dict[str, np.ndarray]) -> Path:
    d = tmp_path_factory.mktemp("two")
    for name in ("chelsea", "coffee"):
        Image.fromarray(photos[name]).resize((96, 64), Image.Resampling.BILINEAR).save(d / f"{name}.png")
    return d


def _usage_error(args: list[str], text: str, env: dict[str, str] | None = None) -> str:
    res = runner.invoke(app, ["robustness", *args], env=env)
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], res.output
    return lines[0]


def test_bad_eps_is_one_line(two_photos: Path, tmp_path: Path) -> None:
    for bad in ("1,x", ",", "eight"):
        _usage_error([str(two_photos), "--out", str(tmp_path / "o"), "--eps", bad], "--eps takes budgets")
    assert not (tmp_path / "o").exists()  # refused before any work or output


def test_unknown_model_is_one_line(two_photos: Path, tmp_path: Path) -> None:
    _usage_error([str(two_photos), "--out", str(tmp_path / "o"), "--model", "no-such-model"],
                 "'no-such-model'; known: open_nsfw")
    _usage_error([str(two_photos), "--out", str(tmp_path / "o"), "--model", "open_nsfw", "--model", "open_nsfw"],
                 "names a model twice")


def test_target_url_needs_a_key_and_a_key_needs_a_target(two_photos: Path, tmp_path: Path) -> None:
    base = [str(two_photos), "--out", str(tmp_path / "o")]
    url = ["--target-url", "http://127.0.0.1:9"]
    _usage_error([*base, *url], "--target-url needs the service's key", env={"NSFWLAB_API_KEY": None})  # type: ignore[dict-item]
    _usage_error([*base, *url, "--api-key", "  "], "empty or blank")
    _usage_error([*base, *url], "empty or blank", env={"NSFWLAB_API_KEY": ""})
    empty = tmp_path / "keys.txt"
    empty.write_text("# no key here\n\n")
    _usage_error([*base, *url, "--api-key-file", str(empty)], "holds no key")
    _usage_error([*base, "--api-key", "k"], "an API key is for --target-url")
    _usage_error([*base, *url, "--api-key", "k", "--evasions"], "score local models")
    _usage_error([*base, *url, "--api-key", "k", "--attacks", "apgd,minimal"], "only black-box attacks run")


def test_unreachable_service_is_one_line_and_a_model_error(two_photos: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["robustness", str(two_photos), "--out", str(tmp_path / "o"), "--target-url",
                              "http://127.0.0.1:9", "--queries", "10"], env={"NSFWLAB_API_KEY": "k"})
    lines = [line for line in res.output.splitlines() if line.strip() and not line.startswith("note:")]
    assert res.exit_code == 3 and len(lines) == 1 and "127.0.0.1:9" in lines[0], res.output


def test_key_in_the_environment_does_not_disturb_a_local_run(two_photos: Path, tmp_path: Path) -> None:
    """NSFWLAB_API_KEY is read for --target-url only: a local run with it set is no usage error."""
    res = runner.invoke(app, ["robustness", str(two_photos), "--out", str(tmp_path / "o"), "--no-protocol",
                              "--no-attack", "--perturb", "jpeg:50", "--no-thumbnails"],
                        env={"NSFWLAB_API_KEY": "secret"})
    assert res.exit_code == 0, res.output


def test_no_protocol_runs_the_per_image_study_alone(two_photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    res = runner.invoke(app, ["robustness", str(two_photos), "--out", str(out), "--no-protocol", "--no-attack",
                              "--perturb", "jpeg:50,flip"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "robustness.json").read_text())
    assert set(data) == {"images", "summary"} and len(data["images"]) == 2
    page = (out / "report.html").read_text()
    assert "Everyday perturbations" in page and "Threat model" not in page
    assert not list(out.glob("curves-*.png"))


def test_bad_threat_and_budget_are_one_line(two_photos: Path, tmp_path: Path) -> None:
    base = [str(two_photos), "--out", str(tmp_path / "o")]
    _usage_error([*base, "--threat", "l3"], "--threat must be linf or l2")
    _usage_error([*base, "--eps", "0.5"], "L-inf budget under 1 level")
    _usage_error([*base, "--eps", "300"], "--eps values must lie in (0, 255]")
    _usage_error([*base, "--attacks", "apgd,fgsm"], "--attacks")


def test_a_model_without_gradients_gets_the_study_without_its_attack(two_photos: Path, tmp_path: Path) -> None:
    """NudeNet's detector has no differentiable form: the per-image study scores its perturbations and says
    why its smallest-budget attack is left out, instead of failing the whole command."""
    if not zoo.installed("nudenet-320n"):
        pytest.skip("nudenet-320n is not installed")
    res = runner.invoke(app, ["robustness", str(two_photos / "chelsea.png"), "--out", str(tmp_path / "o"),
                              "--model", "nudenet-320n", "--no-protocol", "--perturb", "jpeg:50"])
    assert res.exit_code == 0, res.output
    assert "no smallest-budget attack on nudenet-320n" in res.output
    data = json.loads((tmp_path / "o" / "robustness.json").read_text())
    assert data["images"][0]["min_eps"] is None and "jpeg:50" in data["images"][0]["perturbations"]


class _Fake:
    """A library verb's stand-in: records its call, returns a report whose ``to_dict`` is ``data``."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data, self.calls = data, []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((args, kwargs))
        return SimpleNamespace(to_dict=lambda: json.loads(json.dumps(self.data)))


def test_options_reach_the_protocol_and_sections_merge_into_one_json(two_photos: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The wiring, with the protocol and the evasions stubbed (their own tests run them): every option reaches
    the library, and their sections join the per-image study's in one JSON, one page and the plot files."""
    import nsfwlab.lab.evasions as evasions
    import nsfwlab.lab.protocol as protocol

    curve = [{"eps": 2.0, "robust_accuracy": 0.5, "n": 2, "ci95": [0.0, 1.0], "broken": 1}]
    proto = _Fake({"threat_model": {"norm": "l2", "eps": [2.0]}, "clean_accuracy": {},
                   "curves": {"open_nsfw": {"apgd": curve, "worst": curve},
                              "ensemble:open_nsfw+nsfwjs-mobilenetv2": {"apgd": curve, "worst": curve}},
                   "sanity": [{"check": "more steps change little", "passed": False, "detail": "drop 0.5"}],
                   "protocol_images": [], "warnings": ["protocol note"]})
    ev = _Fake({"evasions": {"grid2": {"open_nsfw": -0.2}}, "warnings": ["evasions note"]})
    monkeypatch.setattr(protocol, "robustness_protocol", proto)
    monkeypatch.setattr(evasions, "evasion_table", ev)
    out = tmp_path / "o"
    res = runner.invoke(app, ["robustness", str(two_photos), "--out", str(out), "--no-attack", "--perturb",
                              "jpeg:50", "--model", "open_nsfw", "--model", "ensemble:open_nsfw+nsfwjs-mobilenetv2",
                              "--attacks", "apgd", "--threat", "l2", "--eps", "2", "--steps", "7", "--restarts", "3",
                              "--queries", "40", "--work-side", "64", "--threshold", "0.4", "--seed", "5",
                              "--save-adversarial", "--no-sanity", "--tiles", "--start-images", str(two_photos)])
    assert res.exit_code == 0, res.output
    (args, kwargs), = proto.calls
    assert len(kwargs["starts"]) == 2
    config = args[2]
    assert list(args[1]) == ["open_nsfw", "ensemble:open_nsfw+nsfwjs-mobilenetv2"]
    assert (config.attacks, config.norm.value, config.eps, config.steps, config.restarts, config.queries,
            config.work_side, config.threshold, config.seed, config.sanity) == (
        ("apgd",), "l2", (2.0,), 7, 3, 40, 64, 0.4, 5, False)
    assert config.save_adversarial == out / "adversarial" and kwargs["oracle_factory"] is None
    assert kwargs["labels"] is None and len(args[0]) == 2
    (eargs, ekwargs), = ev.calls
    assert set(eargs[1]) == {"open_nsfw", "ensemble:open_nsfw+nsfwjs-mobilenetv2"} and ekwargs["tiles"] is True
    assert ekwargs["threshold"] == 0.4 and ekwargs["seed"] == 5
    data = json.loads((out / "robustness.json").read_text())
    assert {"images", "summary", "curves", "evasions"} <= set(data)
    assert data["warnings"] == ["protocol note", "evasions note"]  # merged, neither overwritten
    for name in ("curves-open_nsfw.png", "curves-ensemble_open_nsfw_nsfwjs-mobilenetv2.png", "jpeg_curve.png"):
        assert Image.open(out / name).format == "PNG"
    page = (out / "report.html").read_text()
    assert page.index("<h2>Threat model") < page.index("sanity check failed") < page.index("Per-image study")
    assert "sanity check failed: more steps change little" in res.output and "evasions note" in res.output


def test_one_run_writes_both_studies_into_one_json_and_one_page(two_photos: Path, tmp_path: Path) -> None:
    """The end-to-end run: the cheapest attack on tiny copies, no sanity reruns, the study's perturbations
    only; the sections, the plot and the page are all there."""
    out = tmp_path / "o"
    res = runner.invoke(app, ["robustness", str(two_photos), "--out", str(out), "--attacks", "hopskipjump",
                              "--queries", "20", "--work-side", "48", "--eps", "2,8", "--no-sanity", "--no-attack",
                              "--perturb", "jpeg:50"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "robustness.json").read_text())
    assert {"images", "summary", "threat_model", "clean_accuracy", "curves", "protocol_images"} <= set(data)
    assert data["threat_model"]["norm"] == "linf" and data["threat_model"]["eps"] == [2, 8]
    assert data["threat_model"]["labels"] == "model's own" and data["threat_model"]["work_side"] == 48
    curves = data["curves"]["open_nsfw"]
    assert set(curves) == {"hopskipjump", "worst"} and [p["eps"] for p in curves["worst"]] == [2, 8]
    assert all(q <= 20 for q in data["queries"]["open_nsfw"]["hopskipjump"]["per_image"])
    assert len(data["protocol_images"]) == 2 and "blocked_at_query" not in data
    assert any("fewer than 20" in w for w in data["warnings"])
    assert Image.open(out / "curves-open_nsfw.png").format == "PNG"
    assert not (out / "min_eps.png").exists() and not (out / "adversarial").exists()
    page = (out / "report.html").read_text()
    assert page.index("<h2>Threat model") < page.index("Robust accuracy against epsilon") < page.index("Per-image")
    assert "clean accuracy" in res.output and "worst-case robust accuracy" in res.output


@pytest.mark.slow
def test_two_models_every_attack_saved_adversarials_verified_and_evasions(two_photos: Path, tmp_path: Path,
                                                                          detector) -> None:
    """The full command on tiny copies: APGD, Square and HopSkipJump on open_nsfw and nsfwjs, a transfer
    matrix both ways, made-up labels, evasions with tiles, and every kept adversarial verified by scoring the
    saved file again."""
    if not zoo.installed("nsfwjs-mobilenetv2"):
        pytest.skip("nsfwjs-mobilenetv2 weights are not in NSFWLAB_HOME: run setup.sh or "
                    "`nsfwlab models fetch nsfwjs-mobilenetv2`")
    labels = tmp_path / "labels.csv"
    labels.write_text(f"path,label\n{two_photos / 'chelsea.png'},safe\n{two_photos / 'coffee.png'},nsfw\n")
    out = tmp_path / "o"
    res = runner.invoke(app, ["robustness", str(two_photos), "--out", str(out), "--labels", str(labels),
                              "--model", "open_nsfw", "--model", "nsfwjs-mobilenetv2", "--steps", "5",
                              "--queries", "30", "--work-side", "48", "--eps", "2,8", "--no-sanity", "--no-attack",
                              "--perturb", "jpeg:50", "--save-adversarial", "--evasions", "--tiles"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "robustness.json").read_text())
    assert data["threat_model"]["labels"] == "given"
    models = ["open_nsfw", "nsfwjs-mobilenetv2"]
    for m in models:
        assert set(data["curves"][m]) == {"apgd", "square", "hopskipjump", "worst"}
        assert (out / f"curves-{m}.png").is_file()
    assert set(data["transfer"]) == set(models) and data["transfer"]["open_nsfw"].keys() == {"nsfwjs-mobilenetv2"}
    assert {"evasions", "evasions_detail", "tiles"} <= set(data) and set(data["tiles"]) == set(models)
    from nsfwlab import Detector

    detectors = {"open_nsfw": detector, "nsfwjs-mobilenetv2": Detector(model="nsfwjs-mobilenetv2", device="cpu")}
    saved = []
    for im in data["protocol_images"]:
        for m, rec in im["models"].items():
            for attack in rec["attacks"].values():
                if attack.get("saved"):
                    path = Path(attack["saved"])
                    path = path if path.is_absolute() else out / path
                    score = detectors[m].nsfw_score(path)  # the kept file, scored again, is on the wrong side
                    assert (score >= 0.5) != (im["label"] == 1) and score == pytest.approx(attack["score"], abs=1e-4)
                    saved.append(path)
    assert saved and sorted(saved) == sorted((out / "adversarial").rglob("*.png"))
    page = (out / "report.html").read_text()
    assert "<h2>Transfer" in page and "Everyday evasions" in page and "Tiled scoring" in page


def test_attacking_a_live_service_counts_queries_and_records_blocks(two_photos: Path, tmp_path: Path) -> None:
    """--target-url against a real `nsfwlab serve` (open_nsfw, query-attack detection blocking): the white-box
    attack asked for is dropped with a note, the black-box ones count their queries, and blocked_at_query is
    recorded per image (a number where the service blocked, null where it never did)."""
    pytest.importorskip("fastapi")
    import socket
    import threading
    import time

    import uvicorn

    from nsfwlab import Detector
    from nsfwlab.serve import ServeConfig, create_app
    from nsfwlab.serve.sentinel import SentinelConfig

    config = ServeConfig(detect_attacks=SentinelConfig(), on_attack="block", api_keys=("k1",))  # type: ignore[arg-type]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(create_app(config, Detector(device="cpu")), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    out = tmp_path / "o"
    key = tmp_path / "key.txt"
    key.write_text("# the service's key\nk1\n")
    try:
        for _ in range(600):
            if server.started:
                break
            time.sleep(0.05)
        res = runner.invoke(app, ["robustness", str(two_photos), "--out", str(out), "--target-url",
                                  f"http://127.0.0.1:{port}", "--api-key-file", str(key), "--attacks",
                                  "apgd,square,hopskipjump", "--queries", "60", "--work-side", "48", "--eps", "4,8"])
    finally:
        server.should_exit = True
        thread.join(30)
    assert res.exit_code == 0, res.output
    assert "apgd need a local model's gradients and are skipped" in res.output
    data = json.loads((out / "robustness.json").read_text())
    assert "images" not in data and data["threat_model"]["target"] != "local"
    assert set(data["curves"]["open_nsfw"]) == {"square", "hopskipjump", "worst"}
    for attack in ("square", "hopskipjump"):
        per_image = data["blocked_at_query"]["open_nsfw"][attack]
        assert len(per_image) == 2 and all(b is None or 0 <= b <= 4 * 60 for b in per_image)
        assert all(0 <= q <= 2 * 60 for q in data["queries"]["open_nsfw"][attack]["per_image"])
    page = (out / "report.html").read_text()
    assert "blocked by the service" in page


def test_a_missing_start_image_is_one_line_before_any_work(two_photos: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["robustness", str(two_photos), "--out", str(tmp_path / "o"),
                              "--start-images", str(tmp_path / "none.png")])
    assert res.exit_code == 2 and "--start-images" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()
