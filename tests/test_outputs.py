"""Outputs a user names are regular files written atomically; text in tables and CSV cells can
neither drive a terminal nor run as a spreadsheet formula (nsfwlab.outputs)."""

from __future__ import annotations

import csv
import errno
import io
import os
import re
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nsfwlab.bank import Bank
from nsfwlab.cli import app
from nsfwlab.errors import ConfigError
from nsfwlab.outputs import atomic_output, check_output_path, csv_cell, csv_writer, printable
from nsfwlab.scan.store import FileRecord, ResultStore, Status

runner = CliRunner()
HOSTILE = ("=HYPERLINK(\"http://x\",\"y\")", "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A2)", "\tx", "\rx",
           "a\x1b[2Jb", "t\x1b]0;owned\x07", "c1\x9bz", "del\x7f")


def _one_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


def _safe(cell: str) -> bool:
    return not cell.startswith(("=", "+", "-", "@", "\t", "\r")) and not any(
        ord(c) < 32 or 127 <= ord(c) < 160 for c in cell)


# -- text -----------------------------------------------------------------------------------------
def test_printable_escapes_every_control_character() -> None:
    assert printable("a\x1b[2Jb\x07\x00\x7f\x85\x9b\n\t") == "a\\x1b[2Jb\\x07\\x00\\x7f\\x85\\x9b\\x0a\\x09"
    assert printable("héllo wörld ✓ 日本") == "héllo wörld ✓ 日本"  # printable text is untouched


def test_csv_cells_defuse_formulas_and_keep_numbers() -> None:
    for text in HOSTILE:
        assert _safe(str(csv_cell(text))), text
    assert csv_cell("=1+1") == "'=1+1" and csv_cell("@x") == "'@x" and csv_cell("\tx") == "'\\x09x"
    assert csv_cell("-0.5") == "-0.5" and csv_cell("+1e3") == "+1e3" and csv_cell(-3) == -3
    assert csv_cell(None) == "" and csv_cell("plain/path.jpg") == "plain/path.jpg"
    assert csv_cell("-") == "-" and csv_cell("-x") == "'-x"  # a lone '-' names standard input
    buf = io.StringIO()
    csv_writer(buf).writerow(["=cmd", 0.5, "a,b"])
    assert buf.getvalue() == "'=cmd,0.5,\"a,b\"\n"


# -- output files ---------------------------------------------------------------------------------
def test_output_paths_must_be_regular_files_or_new_names(tmp_path: Path) -> None:
    assert check_output_path(tmp_path / "new.csv") == (tmp_path / "new.csv").resolve()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        check_output_path(fifo)
    if os.path.exists("/dev/full"):
        with pytest.raises(ConfigError, match="not a regular file"):
            check_output_path("/dev/full")
    with pytest.raises(ConfigError, match="is a folder"):
        check_output_path(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        check_output_path(tmp_path / "no" / "x.csv")


def test_atomic_output_replaces_only_on_success(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    out.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(out) as fh:
        fh.write("half")
        raise RuntimeError("boom")
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]
    with pytest.raises(ConfigError, match="No space left"), atomic_output(out) as fh:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a full disk during the write
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]
    with atomic_output(out) as fh:
        fh.write("new\n")
    assert out.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]
    link = tmp_path / "link.csv"
    link.symlink_to(out)
    with atomic_output(link, binary=True) as fh:
        fh.write(b"through the link\n")
    assert link.is_symlink() and out.read_text() == "through the link\n"


# -- commands -------------------------------------------------------------------------------------
def _store(db: Path, names: list[str]) -> None:
    with ResultStore(db) as store:
        store.write([FileRecord(f"/photos/{n}.jpg", 1, 1, "0" * 64, Status.OK, "m", "p", "exact", score=0.1,
                                label="safe") for n in names])


def test_scan_export_refuses_a_fifo_and_defuses_hostile_names(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    _store(db, list(HOSTILE))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    res = runner.invoke(app, ["export", "--db", str(db), "-f", "csv", "-o", str(fifo)])
    assert res.exit_code == 2 and "not a regular file" in _one_line(res.output)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # not replaced by a CSV file
    out = tmp_path / "out.csv"
    res = runner.invoke(app, ["export", "--db", str(db), "-f", "csv", "-o", str(out)])
    assert res.exit_code == 0, res.output
    rows = list(csv.reader(out.open(newline="", encoding="utf-8")))
    assert len(rows) == 1 + len(HOSTILE)
    assert all(_safe(cell) for row in rows for cell in row)
    assert {r[0] for r in rows[1:]} >= {"/photos/=HYPERLINK(\"http://x\",\"y\").jpg", "/photos/a\\x1b[2Jb.jpg"}


def test_bank_export_and_stats_neutralise_imported_fields(tmp_path: Path) -> None:
    bank = tmp_path / "bank.sqlite"
    with Bank(bank) as b:
        b.add("ab" * 32, "nsfw", "list:t\x1b]0;owned\x07", reviewer="=HYPERLINK(\"http://x\")")
        b.add("cd" * 32, "safe", "list:@SUM(A1)", reviewer="a\x1b[2Jb")
    res = runner.invoke(app, ["bank", "stats", "--bank", str(bank)])
    assert res.exit_code == 0 and "\x1b" not in res.output and "\x07" not in res.output
    assert "list:t\\x1b]0;owned\\x07" in res.output
    for target in ("-", str(tmp_path / "out.csv")):
        res = runner.invoke(app, ["bank", "export", "--bank", str(bank), "-o", target])
        assert res.exit_code == 0, res.output
        text = res.stdout if target == "-" else (tmp_path / "out.csv").read_text()
        rows = list(csv.reader(io.StringIO(text)))
        assert len(rows) == 3 and all(_safe(cell) for row in rows for cell in row), rows
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    res = runner.invoke(app, ["bank", "export", "--bank", str(bank), "-o", str(fifo)])
    assert res.exit_code == 2 and "not a regular file" in _one_line(res.output)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_score_csv_and_table_neutralise_hostile_file_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # short relative names: the table does not truncate them
    paths = ["=HYPERLINK(x).jpg", "a\x1b[2Jb.jpg", "t\x1b]0;owned\x07.jpg"]
    for name in paths:
        Path(name).write_text("not an image")
    res = runner.invoke(app, ["score", "-f", "csv", *paths])
    assert res.exit_code == 1, res.output
    rows = list(csv.reader(io.StringIO(res.stdout)))
    assert len(rows) == 4 and all(_safe(cell) for row in rows for cell in row), rows
    res = runner.invoke(app, ["score", "-f", "table", "=x.jpg", *paths])
    text = re.sub(r"\x1b\[[0-9;]*m", "", res.output)  # rich's own colours, when it sees a terminal
    assert "\x1b" not in text and "\x07" not in text and "a\\x1b[2Jb.jpg" in text


def test_review_export_csvs_defuse_formulas_from_names_and_reviewers(tmp_path: Path) -> None:
    from PIL import Image

    from nsfwlab.serve.review import QueueReason, ReviewStore

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (90, 60, 30)).save(buf, format="JPEG")
    with ReviewStore(tmp_path / "data") as store:
        item = store.add(buf.getvalue(), "JPEG", score=0.5, model_label="review", reason=QueueReason.BAND,
                         model_version="m", filename="=HYPERLINK(\"evil\",\"y\").jpg")
        store.set_label(item.sha256, "nsfw", "@SUM(A1:A2)")
    res = runner.invoke(app, ["review", "export", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "o"),
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    for name in ("labels.csv", "audit.csv"):
        rows = list(csv.reader((tmp_path / "o" / name).open(newline="", encoding="utf-8")))
        assert len(rows) == 2 and all(_safe(cell) for row in rows for cell in row), rows
    labels = list(csv.DictReader((tmp_path / "o" / "labels.csv").open(newline="", encoding="utf-8")))
    assert labels[0]["filename"] == "'=HYPERLINK(\"evil\",\"y\").jpg" and labels[0]["reviewer"] == "'@SUM(A1:A2)"


def test_atomic_output_keeps_the_replaced_files_permissions(tmp_path) -> None:
    import os
    import stat

    from nsfwlab.outputs import atomic_output

    dest = tmp_path / "report.csv"
    dest.write_text("old")
    os.chmod(dest, 0o640)
    with atomic_output(dest) as fh:
        fh.write("new")
    assert dest.read_text() == "new"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640
