"""Faults around a scan: a full disk, a read-only store, unreadable folders, a foreign
SQLite file, dangling links and special files, deleted files. Each ends in a one-line error or a
reported row, never a traceback, a silent skip or a modified foreign file."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from nsfwlab.cli import app
from nsfwlab.scan import Executor, ResultStore, ScanConfig, Status, StoreError, scan
from nsfwlab.scan.store import SCHEMA_VERSION
from synthetic import RedFraction


def _tree(root: Path, n: int = 12) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (40 + i, 30), (20 * i % 256, 100, 50)).save(root / f"f{i:02d}.png")
    return root


def _config(**kw: object) -> ScanConfig:
    return ScanConfig(workers=1, batch_size=2, chunk=1, executor=Executor.THREAD, **kw)  # type: ignore[arg-type]


def _rows(db: Path) -> dict[str, dict]:
    with ResultStore(db, readonly=True) as store:
        return {r["path"]: r for r in store.iter_rows()}


# -- a full disk ------------------------------------------------------------------------------
def _capped_connect(pages: int) -> Callable[..., sqlite3.Connection]:
    real = sqlite3.connect

    def connect(*args: object, **kw: object) -> sqlite3.Connection:
        conn = real(*args, **kw)  # type: ignore[arg-type]
        conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite then answers SQLITE_FULL for real
        return conn

    return connect


def test_a_full_disk_ends_the_scan_with_one_line_and_keeps_what_was_committed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _tree(tmp_path / "t", 60)
    db = tmp_path / "r.sqlite"
    with ResultStore(db):
        pass
    pages = sqlite3.connect(db).execute("PRAGMA page_count").fetchone()[0]
    monkeypatch.setattr(sqlite3, "connect", _capped_connect(pages + 3))
    res = CliRunner().invoke(app, ["scan", str(root), "--db", str(db), "--batch-size", "2", "--workers", "1",
                                   "--executor", "thread", "--no-progress", "--no-count", "--threads", "1"])
    monkeypatch.undo()
    assert res.exit_code == 1, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "full" in lines[0] and "Traceback" not in res.output, res.output
    with ResultStore(db, readonly=True) as store:
        assert store.integrity_check() == "ok"
        kept = list(store.iter_rows())
    assert 0 < len(kept) < 60 and all(r["status"] == "ok" for r in kept)


# -- a read-only store ------------------------------------------------------------------------
@contextlib.contextmanager
def _as_nobody() -> Iterator[None]:
    """As root, file modes do not stop writes: act as 'nobody' (effective uid) for the block."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def test_a_read_only_store_is_a_one_line_usage_error() -> None:
    base = Path(tempfile.mkdtemp(prefix="nsfwlab-ro-"))
    try:
        base.chmod(0o755)
        root = _tree(base / "t", 2)
        db = base / "r.sqlite"
        with ResultStore(db) as store:
            store.start_run(model_version="m", preprocess_version="p", mode="exact", engine="local", roots=["x"])
        for p in base.rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        db.chmod(0o444)
        with _as_nobody():
            res = CliRunner().invoke(app, ["scan", str(root), "--db", str(db), "--no-progress", "--no-count",
                                           "--executor", "thread", "--workers", "1", "--threads", "1"])
        assert res.exit_code == 2, res.output
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and "read-only" in lines[0], res.output
    finally:
        for p in sorted(base.rglob("*"), reverse=True):
            p.unlink() if not p.is_dir() else p.rmdir()
        base.rmdir()


# -- a foreign SQLite file --------------------------------------------------------------------
def _refused_untouched(db: Path, *sql: str) -> None:
    conn = sqlite3.connect(db)
    for statement in sql:
        conn.execute(statement)
    conn.commit()
    conn.close()
    before = (db.read_bytes(), db.stat().st_mtime_ns)
    with pytest.raises(StoreError, match="another application"):
        ResultStore(db)
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before
    assert sorted(p.name for p in db.parent.iterdir()) == [db.name]  # no -wal / -shm left behind


def test_a_foreign_sqlite_file_is_refused_without_a_single_write(tmp_path: Path) -> None:
    db = tmp_path / "other.sqlite"
    _refused_untouched(db, "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)",
                       "INSERT INTO notes (body) VALUES ('hello')")
    _refused_untouched(db, "CREATE TABLE results (x)")  # a 'results' table of other columns is foreign too


# -- unreadable folders, dangling links, special files ---------------------------------------
def test_unreadable_folders_and_unscannable_entries_are_reported_and_the_scan_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _tree(tmp_path / "t", 3)
    _tree(root / "locked", 2)
    _tree(root / "open", 2)
    os.symlink(root / "nowhere.png", root / "dangling.png")
    os.mkfifo(root / "fifo.png")
    locked = str(root / "locked")
    real = os.scandir

    def scandir(path: str = ".") -> object:
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    db = tmp_path / "r.sqlite"
    with ResultStore(db) as store:
        summary = scan([root], store, _config(), backend=RedFraction())
    rows = _rows(db)
    assert rows[locked]["status"] == "error" and rows[locked]["error_code"] == "unreadable"
    assert "Permission denied" in rows[locked]["error"]
    assert rows[str(root / "dangling.png")]["error_code"] == "dangling_link"
    assert rows[str(root / "fifo.png")]["error_code"] == "not_a_file"
    assert sum(r["status"] == "ok" for r in rows.values()) == 5  # 3 + open/2; locked/* unseen
    assert summary.errors == 3 and summary.error_codes == {"unreadable": 1, "dangling_link": 1, "not_a_file": 1}


# -- deleted files ----------------------------------------------------------------------------
def test_files_deleted_since_the_last_scan_are_marked_missing_and_come_back(tmp_path: Path) -> None:
    root = _tree(tmp_path / "t", 4)
    other = _tree(tmp_path / "other", 1)
    db = tmp_path / "r.sqlite"
    with ResultStore(db) as store:
        scan([root, other], store, _config(), backend=RedFraction())
        gone = root / "f01.png"
        kept, st = gone.read_bytes(), gone.stat()
        gone.unlink()
        (other / "f00.png").unlink()  # not under the re-scanned root: left alone
        summary = scan([root], store, _config(), backend=RedFraction())
    rows = _rows(db)
    assert rows[str(gone)]["status"] == Status.MISSING.value and rows[str(gone)]["score"] is not None
    assert rows[str(other / "f00.png")]["status"] == "ok"
    assert summary.missing == 1
    assert sum(r["status"] == "ok" for r in rows.values()) == 4
    gone.write_bytes(kept)
    os.utime(gone, ns=(st.st_atime_ns, st.st_mtime_ns))  # back unchanged: scanned again all the same
    with ResultStore(db) as store:
        scan([root], store, _config(max_attempts=1), backend=RedFraction())
    assert _rows(db)[str(gone)]["status"] == "ok"


def test_a_version_1_store_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite"
    conn = sqlite3.connect(db)
    conn.executescript(V1_SCHEMA)
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    conn.execute("INSERT INTO results (path, size, mtime_ns, sha256, score, label, status, model_version, "
                 "preprocess_version, mode, first_seen, scored_at) VALUES ('/x.png', 1, 1, 'h', 0.5, 'review', "
                 "'ok', 'm', 'p', 'exact', 0, 0)")
    conn.commit()
    conn.close()
    with ResultStore(db, readonly=True) as store:  # an export of an old store needs no migration
        (row,) = list(store.iter_rows())
        assert row["score"] == 0.5
    with ResultStore(db) as store:
        (row,) = list(store.iter_rows())
        assert row["path"] == "/x.png" and row["score"] == 0.5 and row["status"] == "ok"
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    conn.close()


V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE results (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT,
    score REAL, label TEXT, status TEXT NOT NULL CHECK (status IN ('ok', 'error')), error_code TEXT, error TEXT,
    attempts INTEGER NOT NULL DEFAULT 1, reused INTEGER NOT NULL DEFAULT 0, model_version TEXT NOT NULL,
    preprocess_version TEXT NOT NULL, mode TEXT NOT NULL, first_seen REAL NOT NULL, scored_at REAL NOT NULL,
    UNIQUE (path, model_version, preprocess_version)
);
CREATE INDEX results_content ON results (sha256, model_version, preprocess_version) WHERE status = 'ok';
CREATE TABLE runs (
    id INTEGER PRIMARY KEY, started REAL NOT NULL, finished REAL, model_version TEXT NOT NULL,
    preprocess_version TEXT NOT NULL, mode TEXT NOT NULL, engine TEXT NOT NULL, roots TEXT NOT NULL,
    scored INTEGER, reused INTEGER, skipped INTEGER, errors INTEGER
);
"""

