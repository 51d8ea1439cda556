"""`--engine ray` on a small local Ray instance: the same results store as the local engine."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")

from nsfwlab.scan import Engine, ResultStore, ScanConfig, scan  # noqa: E402
from nsfwlab.scan.worker import WorkerContext  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture()
def small_tree(tmp_path: Path, photos: dict[str, np.ndarray]) -> Path:
    root = tmp_path / "tree"
    (root / "a").mkdir(parents=True)
    for name in ("astronaut", "chelsea", "coffee", "camera"):
        img = Image.fromarray(photos[name]).convert("RGB")
        img.thumbnail((256, 256))
        img.save(root / "a" / f"{name}.jpg", quality=90)
    shutil.copy(root / "a" / "chelsea.jpg", root / "chelsea_again.jpg")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return root


def _rows(db: Path) -> dict[str, dict]:
    with ResultStore(db, readonly=True) as store:
        return {r["path"]: r for r in store.iter_rows()}


def test_ray_engine_matches_local_engine(local_ray, small_tree: Path, tmp_path: Path) -> None:
    local_db, ray_db = tmp_path / "local.sqlite", tmp_path / "ray.sqlite"
    with ResultStore(local_db) as store:
        scan([small_tree], store, ScanConfig(workers=1, batch_size=4))
    config = ScanConfig(engine=Engine.RAY, batch_size=4)
    with ResultStore(ray_db) as store:
        first = scan([small_tree], store, config)
    assert first.engine == "ray" and first.seen == 6
    assert first.scored == 4 and first.reused == 1 and first.errors == 1
    local, distributed = _rows(local_db), _rows(ray_db)
    assert sorted(local) == sorted(distributed)
    for path, row in local.items():
        other = distributed[path]
        for key in ("status", "label", "sha256", "model_version", "preprocess_version", "error_code"):
            assert row[key] == other[key], (path, key)
        if row["status"] == "ok":
            assert abs(row["score"] - other["score"]) <= 1e-6

    with ResultStore(ray_db) as store:
        again = scan([small_tree], store, config)
    # Only the broken file is attempted again; no model work.
    assert again.scored == 0 and again.skipped == 5 and again.errors == 1
    assert _rows(ray_db)[str(small_tree / "broken.png")]["attempts"] == 2


def test_ray_engine_gives_the_local_engines_store_on_duplicates_and_bad_files(local_ray, tmp_path: Path) -> None:
    """The tree of test_scan_engines.py (flat-colour JPEGs and PNGs, duplicates in one batch and
    across batches, a followed link, a broken link, truncated, empty and text files)."""
    import test_scan_engines
    from test_scan_engines import MeanBackend, check_tree_results, engine_config, make_tree, run_local, store_state
    from test_scan_engines import summary_counts as counts

    ray.cloudpickle.register_pickle_by_value(test_scan_engines)  # the replicas cannot import test modules
    tree = make_tree(tmp_path / "tree")
    local = run_local(tree, tmp_path / "local.sqlite")
    with ResultStore(tmp_path / "ray.sqlite") as store:
        distributed = scan([tree], store, engine_config(engine=Engine.RAY), backend=MeanBackend())
    assert distributed.engine == "ray"
    check_tree_results(tree, tmp_path / "ray.sqlite", distributed)
    assert counts(distributed) == counts(local)
    assert store_state(tmp_path / "ray.sqlite") == store_state(tmp_path / "local.sqlite")


class DyingBackend:
    """A model whose process dies on every batch (as if killed by the OOM killer). Picklable."""

    name = "dying-fake"
    device = "cpu"
    model_version = "dying-fake-v1"

    def predict(self, batch: np.ndarray) -> np.ndarray:
        os._exit(1)


def test_ray_engine_stops_with_one_line_when_every_replica_died(local_ray, small_tree: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray restarts a dead replica (REPLICA_RESTARTS, here none) and retries its batch; with no replica
    left the scan stops with a clear error and what was written stays in a sound store."""
    from nsfwlab.errors import ModelError
    from nsfwlab.scan import ray_engine

    monkeypatch.setattr(ray_engine, "REPLICA_RESTARTS", 0)
    db = tmp_path / "ray.sqlite"
    with ResultStore(db) as store, pytest.raises(ModelError, match="every Ray model replica died") as err:
        scan([small_tree], store, ScanConfig(engine=Engine.RAY, batch_size=2), backend=DyingBackend())  # type: ignore[arg-type]
    assert "\n" not in str(err.value)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT COUNT(*) FROM results WHERE status = 'ok'").fetchone() == (0,)


class _LostTasks:
    """Stands in for Ray in RayPool: every task of a file named in ``lost`` is lost with its worker."""

    exceptions = ray.exceptions

    def __init__(self, lost: set[str]) -> None:
        self.lost = lost

    def remote(self, fn: Any) -> Any:
        return SimpleNamespace(options=lambda **_: SimpleNamespace(remote=lambda files, ctx: (fn, files, ctx)))

    def put(self, value: Any) -> Any:
        return value

    def get(self, handle: Any) -> Any:
        fn, files, ctx = handle
        if any(Path(f.path).name in self.lost for f in files):
            raise ray.exceptions.WorkerCrashedError()
        return fn(files, ctx)


def test_ray_pool_retries_a_lost_chunk_file_by_file_and_stops_when_the_workers_are_gone(small_tree: Path) -> None:
    from nsfwlab import PreprocessConfig
    from nsfwlab.config import DecodeLimits
    from nsfwlab.errors import ModelError
    from nsfwlab.scan.ray_engine import MAX_LOST_IN_A_ROW, RayPool
    from nsfwlab.scan.walk import WalkConfig, walk

    files = sorted(walk([str(small_tree)], WalkConfig()), key=lambda f: f.path)
    ctx = WorkerContext(PreprocessConfig(), DecodeLimits(), None, "m", "p", pack=True)
    pool = RayPool(_LostTasks({"coffee.jpg"}), ctx)
    results = pool.collect(files, pool.submit(files))
    assert [Path(p.file.path).name for p in results] == [Path(f.path).name for f in files]
    assert [Path(p.file.path).name for p in results if p.error_code == "worker_died"] == ["coffee.jpg"]
    assert sum(p.array is not None for p in results) == 4  # the other images; broken.png is reported

    everything = RayPool(_LostTasks({Path(f.path).name for f in files}), ctx)
    assert len(files) > MAX_LOST_IN_A_ROW
    with pytest.raises(ModelError, match="Ray decoding tasks keep dying"):
        everything.collect(files, everything.submit(files))
