"""``Detector(model=ID)`` with a zoo model: the zoo's own output through the verdict, rows that carry
``model`` and ``classes``, the card's bands, calibrations refused across models, frames.

The nsfwjs tests need the converted weights in NSFWLAB_HOME (setup.sh fetches them with npm);
they are skipped otherwise. Photos: scikit-image's; animations: synthetic.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skimage.data
from PIL import Image

from nsfwlab import zoo
from nsfwlab.calibration import Calibration
from nsfwlab.detector import Detector
from nsfwlab.errors import ConfigError
from nsfwlab.modelsource import is_model_file

MODEL = "nsfwjs-mobilenetv2"


def _photos() -> list[np.ndarray]:
    return [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]


def _need(model_id: str = MODEL) -> None:
    if not zoo.installed(model_id):
        pytest.skip(f"{model_id} weights are not in NSFWLAB_HOME: run setup.sh or `nsfwlab models fetch {model_id}`")


@pytest.fixture(scope="module")
def det() -> Detector:
    _need()
    return Detector(model=MODEL)


def test_score_many_equals_the_zoo_models_output(det: Detector) -> None:
    photos = _photos()
    model = zoo.load(MODEL)
    probs = model.predict(photos)
    results = det.score_many(photos)
    for res, row, score in zip(results, probs, model.nsfw_score(probs), strict=True):
        assert res.model == MODEL
        assert res.classes is not None and list(res.classes) == list(model.card.classes)
        np.testing.assert_allclose(list(res.classes.values()), row, atol=1e-6)
        assert res.score == pytest.approx(float(score), abs=1e-6)


def test_rows_carry_model_and_classes(det: Detector) -> None:
    row = det.classify(skimage.data.coffee()).to_dict()
    assert row["model"] == MODEL
    assert set(row["classes"]) == {"Drawing", "Hentai", "Neutral", "Porn", "Sexy"}
    assert row["score"] == pytest.approx(row["classes"]["Porn"] + row["classes"]["Hentai"], abs=1e-6)
    assert row["label"] == "safe"


def test_nsfw_score_and_classify_agree(det: Detector) -> None:
    photo = skimage.data.astronaut()
    assert det.nsfw_score(photo) == pytest.approx(det.classify(photo).score, abs=1e-6)


def test_identity_names_the_zoo_model(det: Detector) -> None:
    card = zoo.get_card(MODEL)
    assert det.model_id == MODEL
    assert det.model_version == f"{MODEL}-{card.weights.sha256[:12]}"
    assert det.preprocess_version != Detector().preprocess_version
    assert det.describe()["model"] == MODEL
    assert det.thresholds == card.bands


def test_a_calibration_fitted_for_open_nsfw_is_refused() -> None:
    _need()
    plain = Detector()
    cal = Calibration("platt", plain.model_version, plain.preprocess_version, {"a": 1.0, "b": 0.0})
    with pytest.raises(ConfigError, match="fitted for model"):
        Detector(model=MODEL, calibration=cal)


def test_a_calibration_fitted_for_the_zoo_model_applies(det: Detector) -> None:
    cal = Calibration("platt", det.model_version, det.preprocess_version, {"a": 1.0, "b": 2.0})
    calibrated = Detector(model=MODEL, calibration=cal).classify(skimage.data.coffee())
    assert calibrated.raw_score == pytest.approx(det.classify(skimage.data.coffee()).score, abs=1e-6)
    assert calibrated.score is not None and calibrated.score > calibrated.raw_score


def test_frames_of_an_animation_are_scored_by_the_zoo_model(det: Detector) -> None:
    frames = [Image.fromarray(skimage.data.astronaut()).resize((64, 64)),
              Image.fromarray(skimage.data.coffee()).resize((64, 64))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=200, loop=0)
    res = det.score_frames(buf.getvalue())
    assert res.ok and res.kind == "animation" and res.frames == 2
    assert res.model == MODEL and res.to_dict()["model"] == MODEL


def test_the_open_nsfw_id_is_the_default_model_with_identical_rows() -> None:
    photo = skimage.data.coffee()
    assert Detector(model="open_nsfw").classify(photo).to_dict() == Detector().classify(photo).to_dict()
    assert "model" not in Detector().classify(photo).to_dict()


def test_an_unknown_id_is_one_line_listing_the_ids() -> None:
    with pytest.raises(ConfigError) as info:
        Detector(model="no-such-model")
    assert "\n" not in info.value.message
    assert "nsfwjs-mobilenetv2" in info.value.message and "open_nsfw" in info.value.message


def test_a_zoo_model_refuses_cuda_and_fp16() -> None:
    with pytest.raises(ConfigError, match="CPU"):
        Detector(model=MODEL, device="cuda")
    with pytest.raises(ConfigError, match="fp32"):
        Detector(model=MODEL, precision="fp16")


def test_gradient_methods_refuse_a_zoo_model(det: Detector) -> None:
    with pytest.raises(ConfigError, match="open_nsfw"):
        det.torch_model()


def test_checkpoint_files_and_zoo_ids_are_told_apart(tmp_path: Path) -> None:
    existing = tmp_path / "weights.bin"
    existing.write_bytes(b"x")
    assert is_model_file("missing.pt") and is_model_file("missing.ONNX") and is_model_file(str(existing))
    assert is_model_file(existing)
    assert not is_model_file(MODEL) and not is_model_file("ensemble:open_nsfw+nsfwjs-mobilenetv2")
    assert not is_model_file("card.json") and not is_model_file(tmp_path / "card.json")


# -- nsfwlab score --model --------------------------------------------------------------------------
DATA = Path(__file__).parent / "data"
#: A PNG decoded by pngjs (nsfwjs's golden) and by Pillow here: the same pixels (tests/test_zoo_nsfwjs.py).
PNG_TOLERANCE = 1e-3


def _cli(*args: str) -> Any:
    from typer.testing import CliRunner

    from nsfwlab.cli import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_cli_jsonl_prints_the_classes_of_nsfwjs_golden() -> None:
    _need()
    golden = json.loads((DATA / "nsfwjs_golden.json").read_text())
    files = ["nsfwjs_chelsea.png", "nsfwjs_rocket.png"]
    out = _cli("score", "--model", MODEL, "-f", "jsonl", *(str(DATA / f) for f in files))
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    for row, name in zip(rows, files, strict=True):
        assert row["model"] == MODEL and list(row["classes"]) == golden["classes"]
        expected = golden["models"]["MobileNetV2"]["files"][name]
        assert np.abs(np.array(list(row["classes"].values())) - expected).max() <= PNG_TOLERANCE
        assert row["score"] == pytest.approx(row["classes"]["Porn"] + row["classes"]["Hentai"], abs=1e-6)


def test_cli_csv_has_model_and_class_columns() -> None:
    _need()
    out = _cli("score", "--model", MODEL, "-f", "csv", str(DATA / "nsfwjs_rocket.png"))
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert rows[0]["model"] == MODEL
    assert float(rows[0]["Drawing"]) > 0.5  # a rocket photo: nsfwjs says Drawing (golden: 0.865)


def test_cli_open_nsfw_csv_has_no_model_column(photo_paths: list[Path]) -> None:
    out = _cli("score", "-f", "csv", str(photo_paths[0]))
    assert out.exit_code == 0, out.output
    assert out.stdout.splitlines()[0] == "path,score,label,error"


def test_cli_unknown_model_is_one_line_exit_2(tmp_path: Path) -> None:
    out = _cli("score", "--model", "no-such-model", str(tmp_path / "x.jpg"))
    assert out.exit_code == 2
    assert out.stderr.strip().count("\n") == 0 and "--model" in out.stderr and "nsfwjs-mobilenetv2" in out.stderr


# -- nsfwlab scan --model ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store, scanned by open_nsfw and by nsfwjs: two PNG photos and a synthetic animation."""
    from nsfwlab.scan import ResultStore, ScanConfig, scan

    _need()
    root = tmp_path_factory.mktemp("zoo_scan")
    images = root / "images"
    images.mkdir()
    for name in ("nsfwjs_chelsea.png", "nsfwjs_rocket.png"):
        (images / name).write_bytes((DATA / name).read_bytes())
    frames = [Image.fromarray(skimage.data.astronaut()).resize((48, 48)),
              Image.fromarray(skimage.data.coffee()).resize((48, 48))]
    frames[0].save(images / "anim.gif", save_all=True, append_images=frames[1:], duration=200, loop=0)
    db = root / "results.db"
    with ResultStore(db) as store:
        scan([images], store, ScanConfig(executor="thread", workers=1))
        scan([images], store, ScanConfig(executor="process", workers=1, model=MODEL))
    return db


def test_one_store_holds_two_models_rows(two_model_store: Path, det: Detector) -> None:
    import sqlite3

    with sqlite3.connect(two_model_store) as conn:
        rows = conn.execute("SELECT path, model, model_version, preprocess_version, score, status, kind "
                            "FROM results").fetchall()
    assert {r[1] for r in rows} == {"open_nsfw", MODEL}
    assert len(rows) == 6 and all(r[5] == "ok" for r in rows)
    ours = {Path(r[0]).name: r for r in rows if r[1] == MODEL}
    chelsea = ours["nsfwjs_chelsea.png"]
    assert chelsea[2] == det.model_version and chelsea[3] == det.preprocess_version
    # the scan's score is the Detector's (the same decoded pixels, the same model)
    assert chelsea[4] == pytest.approx(det.nsfw_score(DATA / "nsfwjs_chelsea.png"), abs=1e-6)
    assert ours["anim.gif"][6] == "animation"


def test_export_selects_a_models_rows(two_model_store: Path, det: Detector) -> None:
    from nsfwlab.scan import ExportFilter, ResultStore, iter_records

    with ResultStore(two_model_store) as store:
        records = list(iter_records(store, ExportFilter(model_version=det.model_version)))
    assert len(records) == 3 and {r["model"] for r in records} == {MODEL}


def test_scan_refuses_fast_mode_for_a_zoo_model(tmp_path: Path) -> None:
    from nsfwlab.scan import ResultStore, ScanConfig, scan

    with ResultStore(tmp_path / "r.db") as store, pytest.raises(ConfigError, match="only with mode exact"):
        scan([DATA / "nsfwjs_rocket.png"], store, ScanConfig(mode="fast", model=MODEL))


# -- evaluate with a zoo model ----------------------------------------------------------------------
def test_evaluation_of_a_zoo_model_records_its_versions(tmp_path: Path, det: Detector) -> None:
    from nsfwlab.evaluate import evaluate, load_labelled

    for label, names in (("safe", ("nsfwjs_rocket.png", "nsfwjs_coffee.jpg")),
                         ("nsfw", ("nsfwjs_chelsea.png", "nsfwjs_astronaut.jpg"))):
        (tmp_path / label).mkdir()
        for name in names:
            (tmp_path / label / name).write_bytes((DATA / name).read_bytes())
    result = evaluate(load_labelled(tmp_path), det, n_boot=10)
    assert result.model["model"] == MODEL and result.model["model_version"] == det.model_version
    chelsea = next(it for it in result.scored if it.path.endswith("nsfwjs_chelsea.png"))
    assert chelsea.score == pytest.approx(det.nsfw_score(DATA / "nsfwjs_chelsea.png"), abs=1e-6)


def test_cli_scan_with_an_unknown_model_is_one_line_exit_2(tmp_path: Path) -> None:
    out = _cli("scan", "--db", str(tmp_path / "r.db"), "--model", "no-such-model", str(DATA / "nsfwjs_rocket.png"))
    assert out.exit_code == 2
    assert out.stderr.strip().count("\n") == 0 and "--model" in out.stderr and "nsfwjs-mobilenetv2" in out.stderr


def test_cli_scan_fast_mode_with_a_zoo_model_names_the_flag(tmp_path: Path) -> None:
    out = _cli("scan", "--db", str(tmp_path / "r.db"), "--mode", "fast", "--model", MODEL,
               str(DATA / "nsfwjs_rocket.png"))
    assert out.exit_code == 2 and "only with --mode exact" in out.stderr


def test_model_names_are_checked_before_loading(tmp_path: Path) -> None:
    from nsfwlab.errors import ModelError
    from nsfwlab.modelsource import check_model_name

    check_model_name("open_nsfw")
    check_model_name(MODEL)  # a known id passes whether or not its weights are installed
    with pytest.raises(ConfigError, match="unknown"):
        check_model_name("no-such-model")
    with pytest.raises(ModelError, match="does not exist"):
        check_model_name(str(tmp_path / "gone.pt"))
    image = tmp_path / "x.png"
    Image.fromarray(_photos()[0]).save(image)
    explain = ["explain", str(image), "--out", str(tmp_path / "o.png")]
    for command in (["serve", "--model", "no-such-model"], [*explain, "--model", "no-such-model"]):
        res = _cli(*command)
        assert res.exit_code == 2 and "unknown --model 'no-such-model'" in res.output
