"""`--engine ray` on a small local Ray instance: the same results store as the local engine."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")

from nsfwlab.scan import Engine, ResultStore, ScanConfig, scan  # noqa: E402


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
