"""The hash bank: near-duplicates of a banked photo match, unrelated photos do not; the quality floor;
persistence shared between processes; CSV import/export through the CLI; `score --bank`."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from nsfwlab.bank import QUALITY_FLOOR, Bank, Decision, Match, hamming, parse_hash, pdq_hash
from nsfwlab.cli import app
from nsfwlab.errors import ConfigError, ImageError

pytest.importorskip("pdqhash")
runner = CliRunner()


def _near_copy(arr: np.ndarray) -> bytes:
    """The photo resized to 90% and re-encoded as JPEG quality 80."""
    img = Image.fromarray(arr)
    img = img.resize((int(img.width * 0.9), int(img.height * 0.9)), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=80)
    return buf.getvalue()


def _flat() -> np.ndarray:
    return np.full((120, 160, 3), 128, dtype=np.uint8)


@pytest.fixture()
def bank(tmp_path: Path):
    with Bank(tmp_path / "bank.sqlite3") as b:
        yield b


def test_near_duplicate_matches_and_unrelated_does_not(bank: Bank, photos: dict[str, np.ndarray]) -> None:
    added = bank.add_image(photos["astronaut"], "nsfw", "review:abc123", reviewer="ann")
    assert added.skipped is None and added.hash.quality is not None and added.hash.quality >= QUALITY_FLOOR
    match = bank.match(_near_copy(photos["astronaut"]))
    assert isinstance(match, Match)
    assert match.decision is Decision.NSFW and match.source == "review:abc123" and 0 <= match.distance <= 31
    assert match.to_dict() == {"decision": "nsfw", "distance": match.distance, "source": "review:abc123"}
    for other in ("chelsea", "coffee", "rocket"):
        assert bank.match(photos[other]) is None, other
    assert bank.match(added.hash.hex, max_distance=0) == Match(Decision.NSFW, 0, "review:abc123")


def test_quality_floor(bank: Bank, photos: dict[str, np.ndarray]) -> None:
    flat = pdq_hash(_flat())
    assert flat.quality is not None and flat.quality < QUALITY_FLOOR and not flat.usable
    result = bank.add_image(_flat(), "nsfw", "review:1")
    assert result.skipped is not None and "quality" in result.skipped and len(bank) == 0
    bank.add(flat.hex, "nsfw", "list:x")  # a bare hash of unknown quality is banked...
    looked = bank.lookup(_flat())
    assert looked.match is None and looked.skipped is not None  # ...never matched
    assert "below the floor" in looked.skipped
    with pytest.raises(ConfigError, match="floor"):
        bank.add(pdq_hash(photos["astronaut"]).hex, "nsfw", "list:x", quality=QUALITY_FLOOR - 1)


def test_later_decision_replaces_and_other_processes_see_adds(tmp_path: Path, photos: dict[str, np.ndarray]) -> None:
    h = pdq_hash(photos["coffee"]).hex
    with Bank(tmp_path / "b.sqlite3") as writer, Bank(tmp_path / "b.sqlite3") as reader:
        writer.add(h, "nsfw", "review:1")
        assert reader.match(h) == Match(Decision.NSFW, 0, "review:1")  # added after the reader opened
        writer.add(h.upper(), "SAFE", "review:2", reviewer="bob")
        assert reader.match(h) == Match(Decision.SAFE, 0, "review:2") and len(reader) == 1
    with Bank(tmp_path / "b.sqlite3") as again:
        assert again.stats().to_dict() == {"total": 1, "decisions": {"nsfw": 0, "safe": 1}, "sources": {"review": 1}}


def test_bad_arguments_are_config_errors(bank: Bank, tmp_path: Path) -> None:
    good = "ab" * 32
    for call in (lambda: bank.add("xyz", "nsfw", "list:a"), lambda: bank.add(good, "maybe", "list:a"),
                 lambda: bank.add(good, "nsfw", "somewhere"), lambda: bank.add(good, "nsfw", "list:"),
                 lambda: bank.match(good, max_distance=-1)):
        with pytest.raises(ConfigError):
            call()
    with pytest.raises(ImageError):
        bank.match(b"not an image")
    (tmp_path / "text.sqlite3").write_text("hello, not a database " * 100)
    with pytest.raises(ConfigError, match="not a usable SQLite database"):
        Bank(tmp_path / "text.sqlite3")
    assert parse_hash(" " + good.upper() + "\n") == good and hamming(good, "ab" * 31 + "aa") == 1


def test_cli_import_export_round_trip(tmp_path: Path, photos: dict[str, np.ndarray]) -> None:
    hashes = [pdq_hash(photos[n]).hex for n in ("astronaut", "chelsea", "coffee")]
    src = tmp_path / "meta list.csv"
    src.write_text("pdq,decision,source\n"
                   f"{hashes[0]},nsfw,\n"
                   "nothex,nsfw,list:a\n"
                   f"{hashes[1]},safe,review:42\n"
                   f"{hashes[2]},perhaps,list:a\n"
                   f"{hashes[2]},NSFW,list:partner\n", encoding="utf-8")
    bank = tmp_path / "bank.sqlite3"
    res = runner.invoke(app, ["bank", "import", str(src), "--bank", str(bank), "--name", "meta"])
    assert res.exit_code == 1, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "row 3:" in errors[0] and "row 5:" in errors[1], res.output
    assert "imported 3 hash(es)" in res.output
    out = tmp_path / "export.csv"
    assert runner.invoke(app, ["bank", "export", "--bank", str(bank), "--out", str(out)]).exit_code == 0
    rows = list(csv.DictReader(out.open()))
    assert [(r["pdq"], r["decision"], r["source"]) for r in rows] == [
        (hashes[0], "nsfw", "list:meta"), (hashes[1], "safe", "review:42"), (hashes[2], "nsfw", "list:partner")]
    again = tmp_path / "again.sqlite3"
    assert runner.invoke(app, ["bank", "import", str(out), "--bank", str(again)]).exit_code == 0
    out2 = tmp_path / "export2.csv"
    assert runner.invoke(app, ["bank", "export", "--bank", str(again), "--out", str(out2)]).exit_code == 0
    assert out2.read_text() == out.read_text()
    stats = runner.invoke(app, ["bank", "stats", "--bank", str(again), "--json"])
    assert json.loads(stats.stdout) == {"total": 3, "decisions": {"nsfw": 2, "safe": 1},
                                        "sources": {"list:meta": 1, "list:partner": 1, "review": 1}}


def test_cli_bank_usage_errors(tmp_path: Path) -> None:
    res = runner.invoke(app, ["bank", "stats", "--bank", str(tmp_path / "none.sqlite3")])
    assert res.exit_code == 2 and "no bank at" in res.output
    res = runner.invoke(app, ["bank", "import", str(tmp_path / "missing.csv"), "--bank", str(tmp_path / "b.sqlite3")])
    assert res.exit_code == 2 and "cannot read" in res.output
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00garbage")
    res = runner.invoke(app, ["bank", "import", str(tmp_path / "bin.csv"), "--bank", str(tmp_path / "b.sqlite3")])
    assert res.exit_code == 2 and "not a UTF-8 CSV" in res.output and "Traceback" not in res.output


def test_score_with_a_bank(tmp_path: Path, photos: dict[str, np.ndarray], detector) -> None:
    bank_path = tmp_path / "bank.sqlite3"
    with Bank(bank_path) as bank:
        bank.add_image(photos["astronaut"], "nsfw", "review:r1")
    near = tmp_path / "near.jpg"
    near.write_bytes(_near_copy(photos["astronaut"]))
    other = tmp_path / "chelsea.png"
    Image.fromarray(photos["chelsea"]).save(other)
    res = runner.invoke(app, ["score", "-f", "jsonl", "--bank", str(bank_path), str(near), str(other)])
    assert res.exit_code == 0, res.output
    rows = {Path(r["path"]).name: r for r in map(json.loads, res.stdout.splitlines())}
    assert rows["near.jpg"]["label"] == "nsfw" and rows["near.jpg"]["match"]["source"] == "review:r1"
    assert rows["near.jpg"]["match"]["distance"] <= 31
    assert rows["near.jpg"]["score"] == detector.nsfw_score(near)  # the model's score is still the exact one
    assert rows["chelsea.png"]["match"] is None and rows["chelsea.png"]["label"] == detector.classify(other).label.value
    res = runner.invoke(app, ["score", "-f", "csv", "--bank", str(bank_path), "-"], input=near.read_bytes())
    row = next(csv.DictReader(io.StringIO(res.stdout)))
    assert res.exit_code == 0 and row["label"] == "nsfw" and row["match_source"] == "review:r1"
    res = runner.invoke(app, ["score", "--bank", str(tmp_path / "nope.sqlite3"), str(near)])
    assert res.exit_code == 2 and "no bank at" in res.output


def test_public_names() -> None:
    import nsfwlab.bank
    import nsfwlab.calibration

    assert sorted(nsfwlab.bank.__all__) == sorted([
        "CSV_COLUMNS", "DEFAULT_MAX_DISTANCE", "QUALITY_FLOOR", "Bank", "BankEntry", "BankStats", "BankWriteError",
        "Decision",
        "HashIndex", "IndexKind", "LinearIndex", "Lookup", "Match", "MultiIndex", "PdqHash", "RowError",
        "check_source", "create_index", "export_rows", "hamming", "parse_hash", "parse_rows", "pdq_hash"])
    assert sorted(nsfwlab.calibration.__all__) == ["CALIBRATION_FORMAT", "Calibration", "CalibrationMethod",
                                                   "load_calibration"]
    for mod in (nsfwlab.bank, nsfwlab.calibration):
        assert all(hasattr(mod, name) for name in mod.__all__)
