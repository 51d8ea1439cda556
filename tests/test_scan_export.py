"""Export round-trips every row of a real scan, in CSV, JSON lines and Parquet; filters; atomicity."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from nsfwlab.cli import app
from nsfwlab.config import Label
from nsfwlab.errors import ConfigError
from nsfwlab.scan import COLUMNS, ExportFilter, ExportFormat, ResultStore, ScanConfig, scan, write_export
from nsfwlab.scan.store import FRAME_COLUMNS

INT_COLUMNS = {"size", "mtime_ns", "attempts", "reused", "frames", "match_distance"}
FLOAT_COLUMNS = {"score", "first_seen", "scored_at", "raw_score"}


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory, photo_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("export_tree")
    for p in sorted(photo_dir.glob("*.jpg")):
        img = Image.open(p)
        img.thumbnail((300, 300))
        img.save(root / p.name, quality=90)
    (root / "broken, \"quoted\".jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "noise.png")
    db = root.parent / "export.sqlite"
    with ResultStore(db) as store:
        scan([root], store, ScanConfig(workers=2, batch_size=4))
    return db


def _all_rows(db: Path) -> list[dict]:
    with ResultStore(db, readonly=True) as store:
        return list(store.iter_rows(with_frames=True))


def _typed(row: dict) -> dict:
    out: dict = {}
    for k, v in row.items():
        if v in ("", None):
            out[k] = None
        elif k in INT_COLUMNS:
            out[k] = int(v)
        elif k in FLOAT_COLUMNS:
            out[k] = float(v)
        elif k in FRAME_COLUMNS:
            out[k] = json.loads(v)
        else:
            out[k] = v
    return out


@pytest.mark.parametrize("fmt", list(ExportFormat))
def test_export_round_trips_every_row(scanned: Path, tmp_path: Path, fmt: ExportFormat) -> None:
    rows = _all_rows(scanned)
    assert len(rows) == 9 and sum(r["status"] == "error" for r in rows) == 1
    out = tmp_path / f"out.{fmt.value}"
    with ResultStore(scanned, readonly=True) as store:
        assert write_export(store, out, fmt) == len(rows)
    if fmt is ExportFormat.CSV:
        with out.open(newline="") as fh:
            back = [_typed(r) for r in csv.DictReader(fh)]
    elif fmt is ExportFormat.JSONL:
        back = [json.loads(line) for line in out.read_text().splitlines()]
    else:
        import pyarrow.parquet as pq

        back = pq.read_table(out).to_pylist()
        for r in back:
            r["reused"] = int(r["reused"])
    assert [list(r) for r in back] == [list(COLUMNS + FRAME_COLUMNS)] * len(rows)
    assert back == rows  # every column of every row, exactly (floats included)
    assert not list(tmp_path.glob(".*.tmp"))


def test_export_filters_and_cli(scanned: Path, tmp_path: Path) -> None:
    rows = _all_rows(scanned)
    with ResultStore(scanned, readonly=True) as store:
        out = tmp_path / "safe.jsonl"
        n = write_export(store, out, ExportFormat.JSONL, ExportFilter(label=Label.SAFE, min_score=0.001))
    expected = [r["path"] for r in rows if r["label"] == "safe" and r["score"] >= 0.001]
    assert n == len(expected) and [json.loads(x)["path"] for x in out.read_text().splitlines()] == expected

    runner = CliRunner()
    out_csv = tmp_path / "errors.csv"
    res = runner.invoke(app, ["export", "--db", str(scanned), "--format", "csv", "--out", str(out_csv),
                              "--status", "error"])
    assert res.exit_code == 0, res.output
    (err_row,) = list(csv.DictReader(out_csv.open(newline="")))
    assert err_row["path"].endswith('broken, "quoted".jpg') and err_row["status"] == "error"
    assert err_row["error_code"] in ("corrupt", "truncated")

    bad = runner.invoke(app, ["export", "--db", str(tmp_path / "none.sqlite"), "--format", "csv", "--out",
                              str(tmp_path / "x.csv")])
    assert bad.exit_code == 2 and "does not exist" in bad.output
    bad_fmt = runner.invoke(app, ["export", "--db", str(scanned), "--format", "xml", "--out", str(tmp_path / "x")])
    assert bad_fmt.exit_code == 2
    with pytest.raises(ConfigError):
        ExportFilter(min_score=1.5)


def test_failed_export_leaves_no_file(scanned: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nsfwlab.scan import export as export_mod

    def boom(rows, fh):
        fh.write("partial")
        raise OSError("disk full")

    monkeypatch.setattr(export_mod, "_write_jsonl", boom)
    out = tmp_path / "x.jsonl"
    with ResultStore(scanned, readonly=True) as store, pytest.raises(ConfigError, match="disk full"):
        write_export(store, out, ExportFormat.JSONL)
    assert not out.exists() and not list(tmp_path.iterdir())
