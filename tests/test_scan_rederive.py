"""The store keeps raw model output and derives answers from it: a re-scan with another calibration,
bank, thresholds or aggregation re-derives every unchanged row without running the model, and says
so; export writes one model version; an older store migrates with its raw scores."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nsfwlab import PreprocessConfig, Thresholds
from nsfwlab.cli import app
from nsfwlab.frames import FrameOptions
from nsfwlab.scan import ResultStore, ScanConfig, ScanMode, ScanModel, scan
from nsfwlab.scan.schema import SCHEMA_VERSION, results_ddl
from synthetic import HALF_UP, RED, RedFraction, animation

runner = CliRunner()


class NoModel(RedFraction):
    """The fake model's versions, but running it is a test failure: answers must come from the store."""

    def predict(self, batch: np.ndarray) -> np.ndarray:
        raise AssertionError("the model ran")


def _config(**kw: object) -> ScanConfig:
    return ScanConfig(workers=1, batch_size=2, chunk=1, **kw)  # type: ignore[arg-type]


def _rows(db: Path) -> dict[str, dict]:
    with ResultStore(db, readonly=True) as store:
        return {Path(r["path"]).name: r for r in store.iter_rows(with_frames=True)}


@pytest.fixture()
def tree(photo_dir: Path, tmp_path: Path) -> Path:
    root = tmp_path / "t"
    root.mkdir()
    for n in sorted(p.name for p in photo_dir.iterdir())[:2]:
        shutil.copy(photo_dir / n, root / n)
    (root / "anim.gif").write_bytes(animation([(128, 128, 128), RED, (100, 100, 100), (90, 90, 90)]))
    return root


def test_a_new_calibration_and_thresholds_rederive_rows_without_the_model(tree: Path, tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    with ResultStore(db) as store:
        first = scan([tree], store, _config(), backend=RedFraction())
    assert first.scored == 3 and first.rederived == 0
    before = _rows(db)
    model = ScanModel(NoModel(), PreprocessConfig(), ScanMode.EXACT)  # type: ignore[arg-type]
    with ResultStore(db) as store:
        again = scan([tree], store, _config(calibration=HALF_UP), model=model)
    assert (again.scored, again.reused, again.skipped, again.rederived) == (0, 0, 0, 3)
    assert again.changed == ["calibration"]
    after = _rows(db)
    for name, row in after.items():
        assert row["raw_score"] == before[name]["raw_score"]
        assert row["score"] == pytest.approx(0.5 + row["raw_score"] / 2)
    gif = after["anim.gif"]
    assert [s for _, s in gif["frame_scores"]] == pytest.approx([0.5, 1.0, 0.5, 0.5])
    # the same policy again: nothing to do
    with ResultStore(db) as store:
        same = scan([tree], store, _config(calibration=HALF_UP), model=model)
    assert (same.skipped, same.rederived) == (3, 0)
    # other thresholds and aggregation: labels and the animation's score follow, still without the model
    frames = FrameOptions(aggregate="mean")
    with ResultStore(db) as store:
        third = scan([tree], store, _config(calibration=HALF_UP, thresholds=Thresholds(0.1, 0.55), frames=frames),
                     model=model)
    assert third.rederived == 3 and third.changed == ["aggregate", "thresholds"]
    gif = _rows(db)["anim.gif"]
    assert gif["score"] == pytest.approx(np.mean([0.5, 1.0, 0.5, 0.5])) and gif["label"] == "nsfw"


def test_a_bank_given_later_matches_rows_scanned_before(tree: Path, tmp_path: Path) -> None:
    pytest.importorskip("pdqhash")
    from nsfwlab.bank import Bank

    db = tmp_path / "r.sqlite"
    with ResultStore(db) as store:
        scan([tree], store, _config(), backend=RedFraction())
    banked = sorted(p for p in tree.iterdir() if p.suffix != ".gif")[0]
    with Bank(tmp_path / "bank.sqlite") as bank:
        assert bank.add_image(banked, "nsfw", "list:case-3").skipped is None
    model = ScanModel(NoModel(), PreprocessConfig(), ScanMode.EXACT)  # type: ignore[arg-type]
    with ResultStore(db) as store:
        summary = scan([tree], store, _config(bank=str(tmp_path / "bank.sqlite")), model=model)
    assert summary.rederived == 3 and summary.matched == 1 and "bank" in summary.changed
    rows = _rows(db)
    assert rows[banked.name]["label"] == "nsfw" and rows[banked.name]["match_source"] == "list:case-3"
    assert rows[banked.name]["pdq"] is not None  # hashed once, kept for the next change
    assert rows["anim.gif"]["match_decision"] is None and "not matched" in rows["anim.gif"]["match_skipped"]


def test_the_cli_says_what_it_rederived_and_reports_a_true_rate(tree: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import nsfwlab.scan.pipeline as scan_pipeline

    db = tmp_path / "r.sqlite"
    backend: list[RedFraction] = [RedFraction()]
    monkeypatch.setattr(scan_pipeline, "build_scan_model",
                        lambda config: ScanModel(backend[0], PreprocessConfig(), ScanMode.EXACT))  # type: ignore[arg-type]
    args = ["scan", str(tree), "--db", str(db), "--no-progress", "--no-count", "--workers", "1"]
    assert runner.invoke(app, args).exit_code == 0
    backend[0] = NoModel()
    cal = tmp_path / "cal.json"
    cal.write_text(HALF_UP.dumps())
    res = runner.invoke(app, [*args, "--calibration", str(cal)])
    assert res.exit_code == 0, res.output
    assert "re-derived 3 rows with the new calibration" in res.output
    assert "scored 0" in res.output and "skipped 0" in res.output
    assert "files/s written)" in res.output


def test_export_writes_the_latest_model_version_and_says_the_store_holds_more(tree: Path, tmp_path: Path) -> None:
    class Other(RedFraction):
        model_version = "fake-finetuned"

    db = tmp_path / "r.sqlite"
    with ResultStore(db) as store:
        scan([tree], store, _config(), backend=RedFraction())
        scan([tree], store, _config(), backend=Other())
    out = tmp_path / "o.csv"
    res = runner.invoke(app, ["export", "--db", str(db), "-f", "csv", "-o", str(out)])
    assert res.exit_code == 0, res.output
    lines = out.read_text().splitlines()
    assert len(lines) == 1 + 3 and all(",fake-finetuned," in line for line in lines[1:])
    assert "holds 2 model versions" in res.output and "--model-version" in res.output
    res = runner.invoke(app, ["export", "--db", str(db), "-f", "csv", "-o", str(out), "--model-version", "fake"])
    assert res.exit_code == 0 and "holds" not in res.output
    assert all(",fake," in line for line in out.read_text().splitlines()[1:])


def test_a_version_3_store_keeps_its_raw_scores_and_is_rederived(tree: Path, tmp_path: Path) -> None:
    """Before schema 4 an uncalibrated row's raw score was its score; the migration keeps it as raw_score."""
    db = tmp_path / "old.sqlite"
    conn = sqlite3.connect(db)
    conn.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);\n" + results_ddl(3)
                       + "CREATE TABLE runs (id INTEGER PRIMARY KEY, started REAL NOT NULL, finished REAL, "
                         "model_version TEXT NOT NULL, preprocess_version TEXT NOT NULL, mode TEXT NOT NULL, "
                         "engine TEXT NOT NULL, roots TEXT NOT NULL, scored INTEGER, reused INTEGER, "
                         "skipped INTEGER, errors INTEGER);")
    conn.execute("INSERT INTO meta VALUES ('schema_version', '3')")
    path = sorted(p for p in tree.iterdir() if p.suffix != ".gif")[0]
    st = path.stat()
    conn.execute("INSERT INTO results (path, size, mtime_ns, sha256, score, label, status, model_version, "
                 "preprocess_version, mode, first_seen, scored_at, kind) VALUES (?, ?, ?, 'h', 0.25, 'review', "
                 "'ok', 'fake', 'yahoo-exact-v1', 'exact', 0, 0, 'image')", (str(path), st.st_size, st.st_mtime_ns))
    conn.commit()
    conn.close()
    model = ScanModel(NoModel(), PreprocessConfig(), ScanMode.EXACT)  # type: ignore[arg-type]
    with ResultStore(db) as store:
        summary = scan([path], store, _config(calibration=HALF_UP), model=model)
    assert summary.rederived == 1 and summary.changed == ["policy (not recorded before)"]
    (row,) = _rows(db).values()
    assert row["raw_score"] == 0.25 and row["score"] == pytest.approx(0.625) and row["model"] == "open_nsfw"
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    conn.close()
