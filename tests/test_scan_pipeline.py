"""The real scan pipeline (worker processes, the stock model): exact scores, resumability,
deduplication, error bookkeeping, versions, include/exclude, the CLI."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from nsfwlab import PreprocessConfig
from nsfwlab.backends import Backend
from nsfwlab.cli import app
from nsfwlab.errors import ConfigError
from nsfwlab.scan import Executor, ResultStore, ScanConfig, ScanMode, ScanModel, WalkConfig, scan, walk


class CountingBackend:
    """Wraps a real backend and counts the images it is asked to score."""

    def __init__(self, inner: Backend, model_version: str | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.device = inner.device
        self.model_version = model_version or inner.model_version
        self.images = 0
        self.calls = 0

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.images += len(batch)
        self.calls += 1
        return self.inner.predict(batch)


@pytest.fixture()
def tree(tmp_path: Path, photos: dict[str, np.ndarray]) -> Path:
    """Photos (smaller copies), a duplicate, a PNG, a text file, a fake .jpg, a truncated JPEG."""
    root = tmp_path / "tree"
    (root / "sub" / "deep").mkdir(parents=True)
    for i, (name, arr) in enumerate(sorted(photos.items())):
        img = Image.fromarray(arr).convert("RGB")
        img.thumbnail((400, 400))
        target = root / ("sub" if i % 2 else "") / f"{name}.jpg"
        img.save(target, quality=90)
    shutil.copy(root / "astronaut.jpg", root / "sub" / "deep" / "astronaut_copy.jpg")
    Image.fromarray(photos["camera"]).save(root / "sub" / "deep" / "camera.png")
    (root / "notes.txt").write_text("not an image")
    (root / "fake.jpg").write_text("not a jpeg either")
    data = (root / "astronaut.jpg").read_bytes()
    (root / "sub" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    return root


def _rows(db: Path) -> dict[str, dict]:
    with ResultStore(db, readonly=True) as store:
        return {r["path"]: r for r in store.iter_rows()}


def exact_model(detector, version: str | None = None) -> tuple[ScanModel, CountingBackend]:
    backend = CountingBackend(detector.backend, version)
    return ScanModel(backend, PreprocessConfig(), ScanMode.EXACT), backend


CONFIG = ScanConfig(workers=2, batch_size=4)


def test_walk_by_content_with_globs(tree: Path) -> None:
    names = sorted(Path(f.path).name for f in walk([tree]))
    # notes.txt is not an image by content or name; fake.jpg claims to be one, so it is kept
    # (and its error recorded by the scan).
    assert "notes.txt" not in names and "fake.jpg" in names and "camera.png" in names
    only_png = [Path(f.path).name for f in walk([tree], WalkConfig(include=("*.png",)))]
    assert only_png == ["camera.png"]
    no_sub = [f.path for f in walk([tree], WalkConfig(exclude=("sub/**",)))]
    assert no_sub and all("/sub/" not in p for p in no_sub)


@pytest.mark.parametrize("executor", [Executor.THREAD, Executor.PROCESS])
def test_exact_scan_matches_detector_and_rerun_does_no_model_work(tree: Path, tmp_path: Path, detector,
                                                                  executor: Executor) -> None:
    db = tmp_path / "r.sqlite"
    model, counter = exact_model(detector)
    config = ScanConfig(workers=2, batch_size=4, executor=executor)
    with ResultStore(db) as store:
        first = scan([tree], store, config, model=model)
    rows = _rows(db)
    files = [f.path for f in walk([tree])]
    assert sorted(rows) == sorted(files)
    assert first.seen == len(files) and first.skipped == 0
    assert first.errors == 2 and first.error_codes == {"unsupported_format": 1, "truncated": 1}
    # The duplicate's content is scored once.
    assert first.reused == 1 and counter.images == first.scored == len(files) - 3
    for path, row in rows.items():
        if row["status"] == "ok":
            assert abs(row["score"] - detector.nsfw_score(path)) <= 1e-5, path
            assert row["label"] == detector.label(row["score"]).value
            assert row["model_version"] == detector.model_version and row["preprocess_version"] == "yahoo-exact-v1"
    dup = rows[str(tree / "sub" / "deep" / "astronaut_copy.jpg")]
    assert dup["reused"] == 1 and dup["score"] == rows[str(tree / "astronaut.jpg")]["score"]

    counter.images = counter.calls = 0
    with ResultStore(db) as store:
        second = scan([tree], store, config, model=model)
    assert counter.calls == 0 and counter.images == 0
    # Only the two failed files are attempted again (attempt 2 of 3); everything else is skipped.
    assert second.skipped == len(files) - 2 and second.errors == 2 and second.scored == 0
    assert _rows(db)[str(tree / "fake.jpg")]["attempts"] == 2


def test_touched_file_with_same_content_is_not_rescored(tree: Path, tmp_path: Path, detector) -> None:
    db = tmp_path / "r.sqlite"
    model, counter = exact_model(detector)
    with ResultStore(db) as store:
        scan([tree], store, CONFIG, model=model)
        target = tree / "chelsea.jpg"
        st = target.stat()
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000_000))
        counter.images = 0
        again = scan([tree], store, CONFIG, model=model)
    assert counter.images == 0 and again.reused == 1
    assert _rows(db)[str(target)]["mtime_ns"] == st.st_mtime_ns + 10_000_000_000


def test_failed_files_stop_being_retried(tree: Path, tmp_path: Path, detector) -> None:
    db = tmp_path / "r.sqlite"
    model, _ = exact_model(detector)
    config = ScanConfig(workers=1, batch_size=8, max_attempts=2, walk=WalkConfig(include=("fake.jpg",)))
    with ResultStore(db) as store:
        assert scan([tree], store, config, model=model).errors == 1
        assert scan([tree], store, config, model=model).errors == 1
        third = scan([tree], store, config, model=model)
    assert third.errors == 0 and third.skipped == 1
    (row,) = _rows(db).values()
    assert row["attempts"] == 2 and row["error_code"] == "unsupported_format"


def test_another_model_version_keeps_older_results(tree: Path, tmp_path: Path, detector) -> None:
    db = tmp_path / "r.sqlite"
    config = ScanConfig(workers=1, batch_size=8, walk=WalkConfig(include=("*.png",)))
    model_a, _ = exact_model(detector)
    model_b, counter_b = exact_model(detector, "finetuned-test-v2")
    with ResultStore(db) as store:
        scan([tree], store, config, model=model_a)
        scan([tree], store, config, model=model_b)
        assert counter_b.images == 1  # a new version scores again, it does not reuse
        assert [v[0] for v in store.versions()] == sorted([detector.model_version, "finetuned-test-v2"])


def test_missing_root_is_a_config_error(tmp_path: Path, detector) -> None:
    model, _ = exact_model(detector)
    with ResultStore(tmp_path / "r.sqlite") as store, pytest.raises(ConfigError, match="no such file"):
        scan([tmp_path / "nope"], store, CONFIG, model=model)


def test_cli_scan_then_export(tree: Path, tmp_path: Path, detector) -> None:
    db = tmp_path / "cli.sqlite"
    runner = CliRunner()
    res = runner.invoke(app, ["scan", str(tree), "--db", str(db), "--workers", "2", "--json", "--no-progress"])
    assert res.exit_code == 1, res.output  # two files failed, recorded
    summary = json.loads(res.stdout)
    assert summary["errors"] == 2 and summary["scored"] + summary["reused"] == summary["seen"] - 2
    res2 = runner.invoke(app, ["scan", str(tree), "--db", str(db), "--json", "--no-progress",
                               "--exclude", "fake.jpg", "--exclude", "truncated.jpg"])
    assert res2.exit_code == 0, res2.output
    assert json.loads(res2.stdout)["scored"] == 0
    out = tmp_path / "ok.jsonl"
    res3 = runner.invoke(app, ["export", "--db", str(db), "--format", "jsonl", "--out", str(out), "--status", "ok"])
    assert res3.exit_code == 0, res3.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == summary["seen"] - 2 and all(r["status"] == "ok" for r in records)
    chelsea = next(r for r in records if r["path"].endswith("chelsea.jpg"))
    assert abs(chelsea["score"] - detector.nsfw_score(chelsea["path"])) <= 1e-5
    bad = runner.invoke(app, ["scan", str(tmp_path / "missing"), "--db", str(db)])
    assert bad.exit_code == 2 and "no such file" in bad.output
    os.mkfifo(tmp_path / "pipe.jpg")  # it exists: "no such file" was the wrong reason
    fifo = runner.invoke(app, ["scan", str(tmp_path / "pipe.jpg"), "--db", str(db)])
    assert fifo.exit_code == 2 and "not a regular file or directory" in fifo.output, fifo.output
    with pytest.raises(ConfigError, match="not a regular file or directory"):
        list(walk([tmp_path / "pipe.jpg"]))


def test_scan_goes_on_past_a_non_utf8_file_name(tree: Path, tmp_path: Path) -> None:
    """A name that is not valid UTF-8 used to abort the whole scan with a UnicodeEncodeError."""
    bad = os.fsdecode(os.fsencode(str(tree)) + b"/bad\xffname.jpg")
    shutil.copy(tree / "astronaut.jpg", bad)
    db = tmp_path / "utf8.sqlite"
    runner = CliRunner()
    res = runner.invoke(app, ["scan", str(tree), "--db", str(db), "--json", "--no-progress"])
    assert res.exit_code == 1, res.output  # fake.jpg and truncated.jpg, as in the tree fixture
    assert json.loads(res.stdout)["errors"] == 2
    rows = _rows(db)
    row = rows[str(tree / "bad\\xffname.jpg")]
    assert row["status"] == "ok" and row["score"] == rows[str(tree / "astronaut.jpg")]["score"]
    again = runner.invoke(app, ["scan", str(tree), "--db", str(db), "--json", "--no-progress"])
    assert json.loads(again.stdout)["scored"] == 0  # found again by its escaped name: skipped


def test_worker_transport_is_lossless(photo_paths: list[Path]) -> None:
    from nsfwlab.preprocess import preprocess
    from nsfwlab.scan.pipeline import pack_array, unpack_array

    for cfg in (PreprocessConfig(), PreprocessConfig(draft=True)):
        arr = preprocess(photo_paths[0], cfg)
        packed = pack_array(arr, cfg.mean_bgr)
        assert packed.dtype == np.uint8 and packed.nbytes * 4 == arr.nbytes
        assert np.array_equal(unpack_array(packed, cfg.mean_bgr), arr)  # bit for bit
    odd = PreprocessConfig(mean_bgr=(104.5, 117.0, 123.0))
    arr = preprocess(photo_paths[0], odd)
    assert np.array_equal(unpack_array(pack_array(arr, odd.mean_bgr), odd.mean_bgr), arr)


def test_model_checkpoint_scores_under_its_own_version(photo_dir: Path, tmp_path: Path, torch_model,
                                                       detector) -> None:
    """--model PATH: a checkpoint (here the stock weights saved as one) loads through the core and
    its rows carry the checkpoint's version, next to the stock model's."""
    from nsfwlab.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "mine.pt", torch_model)
    runner = CliRunner()
    db = tmp_path / "r.sqlite"
    args = ["scan", str(photo_dir), "--db", str(db), "--workers", "1", "--no-progress", "--json",
            "--include", "c*.jpg"]
    assert runner.invoke(app, args).exit_code == 0
    res = runner.invoke(app, [*args, "--model", str(ckpt)])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["model_version"].startswith("mine-") and summary["scored"] == 3
    with ResultStore(db, readonly=True) as store:
        rows = list(store.iter_rows())
    assert len(rows) == 6
    by_version: dict[str, dict[str, float]] = {}
    for r in rows:
        by_version.setdefault(r["model_version"], {})[r["path"]] = r["score"]
    stock, mine = by_version[detector.model_version], by_version[summary["model_version"]]
    assert all(abs(stock[p] - mine[p]) <= 1e-5 for p in stock)


class FakeHalfBackend:
    """A constant-time stand-in for the model (this test is about bookkeeping): always 0.5."""

    name = "fake-half"
    device = "cpu"
    model_version = "fake-half-v1"

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.full((len(batch), 2), 0.5, dtype=np.float32)


def test_new_files_among_many_skipped_ones_are_all_written(tmp_path: Path) -> None:
    """Regression: progress reports for skipped files must never drop results not yet written."""
    root = tmp_path / "tree"
    (root / "b_old").mkdir(parents=True)
    for i in range(300):
        Image.fromarray(np.full((4, 4, 3), i % 256, np.uint8)).save(root / "b_old" / f"{i:03d}.png")
    config = ScanConfig(workers=1, batch_size=64, chunk=8)
    db = tmp_path / "r.sqlite"
    with ResultStore(db) as store:
        scan([root], store, config, backend=FakeHalfBackend())
    # Walked before the 300 unchanged files: 5 new images and 200 broken ones, more than the window
    # in flight, so error records are waiting to be written while the skipped files go by.
    (root / "a_new").mkdir()
    for i in range(5):
        Image.fromarray(np.full((4, 4, 3), (i, 7, 9), np.uint8)).save(root / "a_new" / f"{i}.png")
    for i in range(200):
        (root / "a_new" / f"broken_{i:03d}.png").write_bytes(b"not a png %d" % i)
    reported: list[int] = []
    with ResultStore(db) as store:
        summary = scan([root], store, config, backend=FakeHalfBackend(), progress=lambda n, e: reported.append(n))
        assert store.count() == 505
    assert summary.scored == 5 and summary.errors == 200 and summary.skipped == 300
    assert sum(reported) == 505
