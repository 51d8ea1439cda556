"""Crash safety: a real `nsfwlab scan` subprocess killed with SIGKILL mid-run, then re-run, ends
with exactly one row per file, the exact scores, and an intact database."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nsfwlab.scan import ResultStore, walk

N_FILES = 48


@pytest.fixture()
def many_photos(tmp_path: Path, photos: dict[str, np.ndarray]) -> Path:
    """48 distinct small JPEGs: crops of the public photos at different offsets."""
    root = tmp_path / "photos"
    root.mkdir()
    rng = np.random.default_rng(3)
    sources = [Image.fromarray(a).convert("RGB") for a in photos.values()]
    for i in range(N_FILES):
        src = sources[i % len(sources)]
        w, h = min(320, src.width), min(240, src.height)
        x, y = int(rng.integers(0, src.width - w + 1)), int(rng.integers(0, src.height - h + 1))
        src.crop((x, y, x + w, y + h)).save(root / f"p{i:03d}.jpg", quality=85 + i % 10)
    return root


def _committed(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return int(conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def _scan_cmd(root: Path, db: Path, executor: str) -> list[str]:
    return [str(Path(sys.executable).parent / "nsfwlab"), "scan", str(root), "--db", str(db), "--batch-size", "2",
            "--workers", "1", "--threads", "1", "--executor", executor, "--no-progress", "--no-count"]


@pytest.mark.parametrize("executor", ["process", "thread"])
def test_sigkill_mid_scan_then_rerun(many_photos: Path, tmp_path: Path, detector, executor: str) -> None:
    db = tmp_path / "r.sqlite"
    env = dict(os.environ)
    proc = subprocess.Popen(_scan_cmd(many_photos, db, executor), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, env=env)
    deadline = time.monotonic() + 120
    try:
        while _committed(db) < 4:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the scan committed nothing in 120 s"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the scan and its decoding workers, at once
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    at_kill = _committed(db)
    assert 0 < at_kill < N_FILES, "the kill must land mid-run"
    with ResultStore(db, readonly=True) as store:
        assert store.integrity_check() == "ok"

    rerun = subprocess.run(_scan_cmd(many_photos, db, executor), capture_output=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr.decode()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = conn.execute("SELECT path, score, status, COUNT(*) OVER (PARTITION BY path) FROM results").fetchall()
    conn.close()
    files = sorted(f.path for f in walk([many_photos]))
    assert sorted(r[0] for r in rows) == files  # exactly one row per file
    assert all(r[2] == "ok" and r[3] == 1 for r in rows)
    for path, score, _, _ in rows[::6]:
        assert abs(score - detector.nsfw_score(path)) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_worker_processes_exit_when_the_scan_is_killed(many_photos: Path, tmp_path: Path, sig: int) -> None:
    """Only the scan's own process is killed (no cleanup runs in it): its decoding workers, children
    of the fork server, must not live on."""
    import psutil

    db = tmp_path / "r.sqlite"
    cmd = _scan_cmd(many_photos, db, "process")
    cmd[cmd.index("--workers") + 1] = "2"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    try:
        while _committed(db) < 2:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the scan committed nothing in 120 s"
            time.sleep(0.01)
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert len(workers) >= 2  # the decoding workers (and the fork server)
        os.kill(proc.pid, sig)
        proc.wait()
        assert proc.returncode == -sig
        _, alive = psutil.wait_procs(workers, timeout=20)
        assert not alive, f"still running after the scan died: {alive}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
