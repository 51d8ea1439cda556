"""A generated 10,000-file tree scans with bounded memory.

The model is not under test here, so a constant-time fake backend stands in for it (the seam
``scan(..., backend=...)``); the walk, the worker processes, the core's decoding and exact
preprocessing, and the store are all real.
"""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from nsfwlab.scan import Executor, ResultStore, ScanConfig, scan

N_FILES = 10_000


class ConstantTimeFakeBackend:
    """Implements the Backend protocol in O(1) per image: score = mean pixel of the input, squashed."""

    name = "constant-time-fake"
    device = "cpu"
    model_version = "fake-constant-v1"

    def __init__(self) -> None:
        self.images = 0
        self.largest_batch = 0

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.images += len(batch)
        self.largest_batch = max(self.largest_batch, len(batch))
        nsfw = 1.0 / (1.0 + np.exp(-batch[:, 100:104, 100:104, :].mean(axis=(1, 2, 3)) / 50.0))
        return np.stack([1.0 - nsfw, nsfw], axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("big_tree")
    for d in range(100):
        sub = root / f"d{d:02d}" / "x"
        sub.mkdir(parents=True)
        for i in range(N_FILES // 100):
            k = d * 100 + i
            arr = np.full((8, 8, 3), (k % 251, (k // 251) % 251, (k * 7) % 253), dtype=np.uint8)
            Image.fromarray(arr).save(sub / f"{i:03d}.png", compress_level=0)
    return root


@pytest.mark.parametrize("executor", [Executor.THREAD, Executor.PROCESS])
def test_ten_thousand_files_bounded_memory(big_tree: Path, tmp_path: Path, executor: Executor) -> None:
    backend = ConstantTimeFakeBackend()
    config = ScanConfig(workers=2, batch_size=64, chunk=16, executor=executor)
    proc = psutil.Process()
    samples: list[tuple[int, int]] = []
    done = 0

    def progress(n: int, errors: int) -> None:
        nonlocal done
        done += n
        samples.append((done, proc.memory_info().rss))

    gc.collect()
    with ResultStore(tmp_path / "big.sqlite") as store:
        summary = scan([big_tree], store, config, backend=backend, progress=progress)
        assert store.count() == N_FILES and store.integrity_check() == "ok"
    assert summary.seen == N_FILES and summary.scored == N_FILES and summary.errors == 0
    assert backend.images == N_FILES and backend.largest_batch <= config.batch_size
    assert done == N_FILES
    # Memory: after warm-up (first 1,000 files), the main process grows by less than 40 MiB
    # over the remaining 9,000 files; a list of decoded 224x224 float inputs would need 5.6 GiB.
    baseline = max(rss for n, rss in samples if n <= 1_000)
    peak = max(rss for _, rss in samples)
    assert peak - baseline < 40 * 2**20, f"RSS grew by {(peak - baseline) / 2**20:.1f} MiB"
