"""`scan --bank` and `scan --calibration`, as `nsfwlab score` does them: a still image
matching a banked PDQ hash takes the human decision as its label (match columns kept); calibrated
scores with the model's raw score kept; identical content reused across calibrations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nsfwlab import PreprocessConfig
from nsfwlab.bank import Bank
from nsfwlab.calibration import Calibration
from nsfwlab.cli import app
from nsfwlab.errors import ConfigError
from nsfwlab.scan import ResultStore, ScanConfig, ScanMode, ScanModel, scan
from synthetic import HALF_UP, RedFraction


def _config(**kw: object) -> ScanConfig:
    return ScanConfig(workers=1, batch_size=2, chunk=1, **kw)  # type: ignore[arg-type]


def _rows(db: Path) -> dict[str, dict]:
    with ResultStore(db, readonly=True) as store:
        return {Path(r["path"]).name: r for r in store.iter_rows(with_frames=True)}


@pytest.fixture()
def two_photos(photo_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "t"
    root.mkdir()
    names = sorted(p.name for p in photo_dir.iterdir())[:2]
    for n in names:
        shutil.copy(photo_dir / n, root / n)
    return root


def test_a_banked_image_takes_the_human_decision(two_photos: Path, tmp_path: Path) -> None:
    banked, other = sorted(p.name for p in two_photos.iterdir())
    with Bank(tmp_path / "bank.sqlite") as bank:
        assert bank.add_image(two_photos / banked, "nsfw", "list:case-17").skipped is None
    db = tmp_path / "r.sqlite"
    with ResultStore(db) as store:
        summary = scan([two_photos], store, _config(bank=str(tmp_path / "bank.sqlite")), backend=RedFraction())
    rows = _rows(db)
    hit = rows[banked]
    assert hit["label"] == "nsfw" and hit["score"] < 0.2  # the model's score is kept
    assert (hit["match_decision"], hit["match_distance"], hit["match_source"]) == ("nsfw", 0, "list:case-17")
    assert rows[other]["label"] == "safe" and rows[other]["match_decision"] is None
    assert summary.matched == 1 and summary.labels["nsfw"] == 1
    # A copy of the banked file: reused content, matched too.
    shutil.copy(two_photos / banked, two_photos / "again.jpg")
    with ResultStore(db) as store:
        again = scan([two_photos], store, _config(bank=str(tmp_path / "bank.sqlite")), backend=RedFraction())
    assert again.reused == 1 and _rows(db)["again.jpg"]["match_source"] == "list:case-17"


def test_a_missing_bank_is_a_usage_error(two_photos: Path, tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as store, pytest.raises(ConfigError, match=r"bank .* does not exist"):
        scan([two_photos], store, _config(bank=str(tmp_path / "nope.sqlite")), backend=RedFraction())


def test_calibrated_scores_keep_the_raw_score_and_reuse_raw_scores(two_photos: Path, tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    with ResultStore(db) as store:
        scan([two_photos], store, _config(), backend=RedFraction())  # uncalibrated first
    first = sorted(two_photos.iterdir())[0]
    raw = _rows(db)[first.name]["score"]
    shutil.copy(first, two_photos / "copy.jpg")
    model = ScanModel(RedFraction(), PreprocessConfig(), ScanMode.EXACT)  # type: ignore[arg-type]
    with ResultStore(db) as store:
        summary = scan([two_photos], store, _config(calibration=HALF_UP), model=model)
    row = _rows(db)["copy.jpg"]
    assert summary.reused == 1 and row["reused"] == 1
    # The cache hands back the model's raw score, calibrated again: never a calibrated score twice.
    assert row["raw_score"] == raw and row["score"] == pytest.approx(0.5 + raw / 2)
    assert row["label"] == "review"
    wrong = Calibration("isotonic", "another-model", "yahoo-exact-v1", {"x": [0.0, 1.0], "y": [0.0, 1.0]})
    with ResultStore(db) as store, pytest.raises(ConfigError, match="fitted for model"):
        scan([two_photos], store, _config(calibration=wrong), model=model)


def test_cli_bank_and_calibration(two_photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nsfwlab.scan.pipeline as scan_pipeline

    monkeypatch.setattr(scan_pipeline, "build_scan_model",
                        lambda config: ScanModel(RedFraction(), PreprocessConfig(), ScanMode.EXACT))  # type: ignore[arg-type]
    banked = sorted(two_photos.iterdir())[0]
    with Bank(tmp_path / "bank.sqlite") as bank:
        bank.add_image(banked, "safe", "review:42")
    cal = tmp_path / "cal.json"
    cal.write_text(HALF_UP.dumps())
    db = tmp_path / "r.sqlite"
    res = CliRunner().invoke(app, ["scan", str(two_photos), "--db", str(db), "--no-progress", "--no-count",
                                   "--bank", str(tmp_path / "bank.sqlite"), "--match-distance", "10",
                                   "--calibration", str(cal), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["matched"] == 1
    rows = _rows(db)
    assert rows[banked.name]["label"] == "safe" and rows[banked.name]["match_decision"] == "safe"
    other = next(r for n, r in rows.items() if n != banked.name)
    assert other["label"] == "review" and other["score"] == pytest.approx(0.5 + other["raw_score"] / 2)
    out = tmp_path / "o.jsonl"
    assert CliRunner().invoke(app, ["export", "--db", str(db), "-f", "jsonl", "-o", str(out)]).exit_code == 0
    exported = {Path(r["path"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert exported[banked.name]["match_source"] == "review:42"
    assert exported[other_name(rows, banked)]["raw_score"] == other["raw_score"]
    bad = CliRunner().invoke(app, ["scan", str(two_photos), "--db", str(db), "--no-progress", "--no-count",
                                   "--bank", str(tmp_path / "none.sqlite")])
    assert bad.exit_code == 2 and "--bank" in bad.output and "does not exist" in bad.output


def other_name(rows: dict[str, dict], banked: Path) -> str:
    return next(n for n in rows if n != banked.name)
