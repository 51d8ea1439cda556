"""The results store on its own: schema, WAL, decisions, attempts, versions, integrity."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nsfwlab.cli import app
from nsfwlab.scan import FileRecord, ResultStore, ScanAction, Status, StoreError
from nsfwlab.scan.store import SCHEMA_VERSION

MV, PV = "model-a", "pre-a"


def ok(path: str, score: float, *, size: int = 10, mtime: int = 1, sha: str = "h1", mv: str = MV,
       pv: str = PV) -> FileRecord:
    return FileRecord(path, size, mtime, sha, Status.OK, mv, pv, "exact", score=score, label="safe")


def err(path: str, *, size: int = 10, mtime: int = 1) -> FileRecord:
    return FileRecord(path, size, mtime, None, Status.ERROR, MV, PV, "exact", error_code="corrupt", error="bad")


def test_store_is_wal_and_versioned(tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    with ResultStore(db) as store:
        store.write([ok("/a", 0.1)])
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    conn.close()


def test_decide_skips_unchanged_ok_and_rescans_changed(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as store:
        assert store.decide("/a", 10, 1, MV, PV, max_attempts=3) is ScanAction.SCAN
        store.write([ok("/a", 0.1)])
        assert store.decide("/a", 10, 1, MV, PV, max_attempts=3) is ScanAction.SKIP
        assert store.decide("/a", 11, 1, MV, PV, max_attempts=3) is ScanAction.SCAN  # size changed
        assert store.decide("/a", 10, 2, MV, PV, max_attempts=3) is ScanAction.SCAN  # mtime changed
        assert store.decide("/a", 10, 1, "model-b", PV, max_attempts=3) is ScanAction.SCAN  # other model
        assert store.decide("/a", 10, 1, MV, "pre-b", max_attempts=3) is ScanAction.SCAN  # other preprocessing


def test_failed_file_is_retried_until_max_attempts_then_reset_by_a_change(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as store:
        for attempt in (1, 2, 3):
            assert store.decide("/bad", 10, 1, MV, PV, max_attempts=3) is ScanAction.SCAN
            store.write([err("/bad")])
            (row,) = list(store.iter_rows())
            assert row["attempts"] == attempt and row["status"] == "error" and row["error_code"] == "corrupt"
        assert store.decide("/bad", 10, 1, MV, PV, max_attempts=3) is ScanAction.SKIP
        # The file changes: scanned again, attempts restart.
        assert store.decide("/bad", 12, 5, MV, PV, max_attempts=3) is ScanAction.SCAN
        store.write([err("/bad", size=12, mtime=5)])
        assert next(store.iter_rows())["attempts"] == 1
        # ... and a success replaces the error row (still one row).
        store.write([ok("/bad", 0.5, size=12, mtime=5)])
        rows = list(store.iter_rows())
        assert len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["error"] is None


def test_other_versions_never_overwrite(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.write([ok("/a", 0.1)])
        store.write([ok("/a", 0.9, mv="model-b")])
        store.write([ok("/a", 0.7, pv="pre-b")])
        rows = {(r["model_version"], r["preprocess_version"]): r["score"] for r in store.iter_rows()}
        assert rows == {(MV, PV): 0.1, ("model-b", PV): 0.9, (MV, "pre-b"): 0.7}
        assert store.versions() == [(MV, PV, 1), (MV, "pre-b", 1), ("model-b", PV, 1)]


def test_cached_score_by_content_and_version(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.write([ok("/a", 0.25, sha="abc"), err("/b")])
        assert store.cached_score("abc", MV, PV) == 0.25
        assert store.cached_score("abc", "model-b", PV) is None
        assert store.cached_score("zzz", MV, PV) is None


def test_filters(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.write([ok("/a", 0.1), ok("/b", 0.5), ok("/c", 0.95), err("/d")])
        assert [r["path"] for r in store.iter_rows(min_score=0.4)] == ["/b", "/c"]
        assert [r["path"] for r in store.iter_rows(max_score=0.4)] == ["/a"]
        assert [r["path"] for r in store.iter_rows(status="error")] == ["/d"]
        assert store.integrity_check() == "ok"


def test_bad_database_files_are_clear_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a usable SQLite"):
        ResultStore(junk)
    with pytest.raises(StoreError, match="does not exist"):
        ResultStore(tmp_path / "missing.sqlite", readonly=True)
    with pytest.raises(StoreError, match="does not exist"):
        ResultStore(tmp_path / "no" / "dir" / "r.sqlite")
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(StoreError, match="another application") as refused:
        ResultStore(other, readonly=True)
    # the library names its parameter, never a command-line flag; the CLI shows --db in its place
    assert "--" not in refused.value.message and refused.value.param == "path"
    res = CliRunner().invoke(app, ["export", "--db", str(other), "-f", "csv", "-o", str(tmp_path / "o.csv")])
    assert res.exit_code == 2 and f"--db {other} is an SQLite database of another application" in res.output
    empty = tmp_path / "empty.sqlite"
    sqlite3.connect(empty).execute("PRAGMA user_version = 0").connection.close()
    with pytest.raises(StoreError, match="no nsfwlab results"):
        ResultStore(empty, readonly=True)


def test_non_utf8_file_names_are_stored_escaped_and_found_again(tmp_path: Path) -> None:
    # POSIX names are bytes; os.scandir hands a non-UTF-8 name over with surrogate escapes,
    # which SQLite cannot encode. The store writes those bytes as \xNN, the same way every time.
    name = b"/photos/bad\xffname.jpg".decode("utf-8", "surrogateescape")
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.start_run(model_version=MV, preprocess_version=PV, mode="exact", engine="local", roots=[name])
        assert store.decide(name, 10, 1, MV, PV, max_attempts=3) is ScanAction.SCAN
        store.write([ok(name, 0.1), FileRecord(name + "2", 10, 1, None, Status.ERROR, MV, PV, "exact",
                                               error_code="corrupt", error=f"{name}2: bad")])
        assert store.decide(name, 10, 1, MV, PV, max_attempts=3) is ScanAction.SKIP
        rows = list(store.iter_rows())
    assert [r["path"] for r in rows] == ["/photos/bad\\xffname.jpg", "/photos/bad\\xffname.jpg2"]
    assert rows[1]["error"] == "/photos/bad\\xffname.jpg2: bad"


def test_frames_follow_their_row_and_go_when_it_is_rewritten(tmp_path: Path) -> None:
    video = FileRecord("/v.mp4", 10, 1, "hv", Status.OK, MV, PV, "exact", score=0.9, label="nsfw", kind="video",
                       frames=((0.0, 0.5, 0.1, 0.1), (0.5, 0.5, 0.9, 0.9)), segments=((0.5, 1.0, 0.9),))
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.write([video, ok("/a", 0.1)])
        rows = {r["path"]: r for r in store.iter_rows(with_frames=True)}
        assert rows["/v.mp4"]["frames"] == 2 and rows["/v.mp4"]["frame_scores"] == [[0.0, 0.1], [0.5, 0.9]]
        assert rows["/v.mp4"]["segments"] == [[0.5, 1.0, 0.9]] and rows["/a"]["frame_scores"] is None
        assert store.cached_frames("hv", MV, PV) == ("video", [0.0, 0.5], [0.5, 0.5], [0.1, 0.9])
        store.write([FileRecord("/v.mp4", 11, 2, None, Status.ERROR, MV, PV, "exact", error_code="truncated")])
        (row,) = [r for r in store.iter_rows(with_frames=True) if r["path"] == "/v.mp4"]
        assert row["frames"] is None and row["frame_scores"] is None
    conn = sqlite3.connect(tmp_path / "r.sqlite")
    assert conn.execute("SELECT COUNT(*) FROM frames").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*) FROM segments").fetchone()[0] == 0


def test_the_schema_is_declared_once_and_the_store_matches_it(tmp_path: Path) -> None:
    """The table the store creates has exactly the declared columns, in order; an export has them too."""
    from nsfwlab.scan.schema import COLUMNS, RESULT_COLUMNS, results_ddl, upsert_sql

    with ResultStore(tmp_path / "r.sqlite") as store:
        store.write([FileRecord("/a", 1, 1, "h", Status.OK, MV, PV, "exact", score=0.1, label="safe", raw_score=0.1)])
        (row,) = list(store.iter_rows())
    conn = sqlite3.connect(tmp_path / "r.sqlite")
    names = [r[1] for r in conn.execute("PRAGMA table_info(results)")]
    conn.close()
    assert names == ["id", *COLUMNS] and tuple(row) == COLUMNS
    assert all(c.meaning for c in RESULT_COLUMNS)
    assert results_ddl().count("\n    ") == len(COLUMNS) + 2  # id, the columns, the key
    assert upsert_sql().count("?") == len(COLUMNS) - 1  # all but attempts, counted by the upsert
