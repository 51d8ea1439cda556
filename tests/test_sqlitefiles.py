"""nsfwlab's SQLite files are opened only when they are ours: another application's database, a
non-SQLite file or a device is refused with one line before anything is written to it."""

from __future__ import annotations

import importlib.util
import os
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nsfwlab.bank import Bank
from nsfwlab.cli import app
from nsfwlab.errors import ConfigError
from nsfwlab.scan.store import ResultStore, StoreError
from nsfwlab.serve.review import ReviewStore
from nsfwlab.sqlitefiles import KNOWN_IDS, DatabaseKind, application_id, open_database

_KIND = DatabaseKind("test store", application_id("NsfB"), frozenset({"hashes"}))


def _foreign(path: Path) -> tuple[bytes, int, list[str]]:
    """Another application's database at ``path``; returns what must stay unchanged."""
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    db.execute("INSERT INTO notes (body) VALUES ('hello')")
    db.commit()
    db.close()
    return _snapshot(path)


def _snapshot(path: Path) -> tuple[bytes, int, list[str]]:
    return path.read_bytes(), path.stat().st_mtime_ns, sorted(p.name for p in path.parent.iterdir())


def _one_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


# -- the helper ----------------------------------------------------------------------------------
def test_a_new_file_is_created_and_stamped_with_the_kinds_application_id(tmp_path: Path) -> None:
    db = open_database(tmp_path / "new.sqlite", _KIND)
    db.execute("CREATE TABLE hashes (x)")
    db.close()
    check = sqlite3.connect(tmp_path / "new.sqlite")
    assert check.execute("PRAGMA application_id").fetchone()[0] == application_id("NsfB")
    check.close()
    open_database(tmp_path / "new.sqlite", _KIND, readonly=True).close()


def test_foreign_and_non_sqlite_files_are_refused_untouched(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite"
    before = _foreign(other)
    with pytest.raises(ConfigError, match=r"another application.*left untouched"):
        open_database(other, _KIND)
    assert _snapshot(other) == before  # not a byte, not a -wal or -journal beside it
    text = tmp_path / "notes.txt"
    text.write_text("hello " * 100)
    with pytest.raises(ConfigError, match="not a usable SQLite database"):
        open_database(text, _KIND)
    assert text.read_text() == "hello " * 100
    stamped = tmp_path / "stamped.sqlite"  # an id of another application, even with no table
    sqlite3.connect(stamped).execute("PRAGMA application_id = 1234").connection.close()
    with pytest.raises(ConfigError, match="application_id 0x4d2"):
        open_database(stamped, _KIND)


def test_another_kind_of_nsfwlab_database_is_refused_by_name(tmp_path: Path) -> None:
    with Bank(tmp_path / "bank.sqlite"):
        pass
    with pytest.raises(StoreError, match="is an nsfwlab hash bank, not an nsfwlab results store"):
        ResultStore(tmp_path / "bank.sqlite")
    with ResultStore(tmp_path / "results.sqlite"):
        pass
    with pytest.raises(ConfigError, match="is an nsfwlab results store, not an nsfwlab hash bank"):
        Bank(tmp_path / "results.sqlite")
    assert sorted(KNOWN_IDS.values()) == ["nsfwlab hash bank", "nsfwlab results store", "nsfwlab review store"]


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
def test_devices_folders_and_fifos_are_not_database_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a regular file"):
        open_database("/dev/null", _KIND)
    with pytest.raises(ConfigError, match="is a folder"):
        open_database(tmp_path, _KIND)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        open_database(fifo, _KIND)  # would hang on a read
    with pytest.raises(ConfigError, match=r"folder .* does not exist"):
        open_database(tmp_path / "no" / "x.sqlite", _KIND)
    with pytest.raises(ConfigError, match="does not exist"):
        open_database(tmp_path / "missing.sqlite", _KIND, readonly=True)


def test_databases_written_before_the_application_id_are_still_ours(tmp_path: Path) -> None:
    bank = tmp_path / "old-bank.sqlite"
    db = sqlite3.connect(bank)
    db.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                     "CREATE TABLE hashes (id INTEGER PRIMARY KEY, pdq TEXT NOT NULL UNIQUE, decision TEXT NOT NULL,"
                     " source TEXT NOT NULL, reviewer TEXT, quality INTEGER, added_at REAL NOT NULL);"
                     "INSERT INTO meta VALUES ('schema', '1');"
                     "INSERT INTO hashes (pdq, decision, source, added_at)"
                     f" VALUES ('{'ab' * 32}', 'nsfw', 'list:x', 1);")
    db.close()
    with Bank(bank) as opened:
        assert len(opened) == 1
    review = tmp_path / "review"
    with ReviewStore(review):
        pass
    db = sqlite3.connect(review / "review.sqlite3")
    db.execute("PRAGMA application_id = 0")  # as a review store written before the id was set
    db.close()
    with ReviewStore(review, create=False):
        pass


# -- the commands ----------------------------------------------------------------------------------
def test_bank_commands_refuse_a_foreign_database(tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()
    other = tmp_path / "db" / "other.sqlite"
    before = _foreign(other)
    hashes = tmp_path / "list.csv"
    hashes.write_text(f"{'ab' * 32},nsfw\n")
    runner = CliRunner()
    for args in (["bank", "import", str(hashes), "--bank", str(other)], ["bank", "stats", "--bank", str(other)],
                 ["bank", "export", "--bank", str(other), "-o", str(tmp_path / "out.csv")]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        assert "another application" in _one_line(res.output)
        assert _snapshot(other) == before


def test_review_stores_refuse_a_foreign_database(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    before = _foreign(data / "review.sqlite3")
    with pytest.raises(ConfigError, match="another application"):
        ReviewStore(data)
    res = CliRunner().invoke(app, ["review", "export", "--data-dir", str(data), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "another application" in _one_line(res.output)
    assert _snapshot(data / "review.sqlite3") == before


def test_scan_refuses_dev_null_as_its_database(tmp_path: Path) -> None:
    if not os.path.exists("/dev/null"):
        pytest.skip("needs /dev/null")
    existed = os.path.exists("/dev/null-journal")
    res = CliRunner().invoke(app, ["scan", str(tmp_path), "--db", "/dev/null", "--no-progress"])
    assert res.exit_code == 2 and "not a regular file" in _one_line(res.output)
    assert os.path.exists("/dev/null-journal") == existed


def test_serve_refuses_a_foreign_bank_or_review_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    started: list[object] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append(a))
    (tmp_path / "db").mkdir()
    other = tmp_path / "db" / "other.sqlite"
    before = _foreign(other)
    data = tmp_path / "data"
    data.mkdir()
    review_before = _foreign(data / "review.sqlite3")
    cases = [["--data-dir", str(data), "--no-bank"]]
    if importlib.util.find_spec("pdqhash") is not None:  # the bank is checked only when it can be used
        cases.append(["--bank", str(other)])
    for args in cases:
        res = CliRunner().invoke(app, ["serve", "--port", "1", *args])
        assert res.exit_code == 2 and not started, res.output
        assert "another application" in _one_line(res.output)
    assert _snapshot(other) == before and _snapshot(data / "review.sqlite3") == review_before
