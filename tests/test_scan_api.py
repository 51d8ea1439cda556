"""The public names of nsfwlab.scan, and that importing it (or the CLI) pulls in nothing heavy."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import nsfwlab.scan
from nsfwlab.scan import Engine, Executor, ExportFormat, ScanConfig, ScanMode, WalkConfig
from nsfwlab.scan.walk import matches


def test_public_names_are_pinned() -> None:
    assert sorted(nsfwlab.scan.__all__) == [
        "COLUMNS", "Engine", "Executor", "ExportFilter", "ExportFormat", "FileRecord", "ResultStore",
        "ScanAction", "ScanConfig", "ScanMode", "ScanModel", "ScanSummary", "Status", "StoreError", "WalkConfig",
        "build_scan_model", "iter_records", "quantize_int8", "scan", "walk", "write_export",
    ]
    with pytest.warns(DeprecationWarning, match="ScanAction"):
        assert nsfwlab.scan.Decision is nsfwlab.scan.ScanAction  # the old name, for one release
    assert [m.value for m in ScanMode] == ["exact", "fast"]
    assert [e.value for e in Engine] == ["local", "ray"]
    assert [f.value for f in ExportFormat] == ["csv", "jsonl", "parquet"]


def test_config_validation() -> None:
    from nsfwlab.errors import ConfigError

    for bad in ({"batch_size": 0}, {"chunk": 0}, {"max_attempts": 0}, {"workers": 0}, {"threads": 0}):
        with pytest.raises(ConfigError):
            ScanConfig(**bad)  # type: ignore[arg-type]
    assert ScanConfig(workers=3).n_workers == 3
    cores = os.cpu_count() or 1
    assert ScanConfig(executor=Executor.THREAD).n_workers == cores
    assert ScanConfig(executor=Executor.PROCESS).n_workers == max(1, cores // 2)
    assert ScanConfig().executor_kind is (Executor.THREAD if cores <= 4 else Executor.PROCESS)
    assert ScanConfig(batch_size=8, workers=1, chunk=4).window == 16
    # Small batches on the CPU (measured faster there), larger on CUDA; an explicit size wins.
    assert ScanConfig().model_batch("cpu") == 8 and ScanConfig().model_batch("cuda") == 32
    assert ScanConfig(batch_size=3).model_batch("cpu") == ScanConfig(batch_size=3).model_batch("cuda") == 3


def test_the_default_batch_reaches_the_model(tmp_path: Path) -> None:
    """Without --batch-size the CPU model is called with at most 8 images at a time."""
    from nsfwlab.scan import ResultStore, scan

    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(20):
        Image.new("RGB", (40 + i, 30), (i * 10, 50, 90)).save(root / f"{i}.png")
    sizes: list[int] = []

    class Recording:
        name, device, model_version = "recording", "cpu", "rec-1"

        def predict(self, batch: np.ndarray) -> np.ndarray:
            sizes.append(len(batch))
            return np.tile(np.array([[0.9, 0.1]], np.float32), (len(batch), 1))

    with ResultStore(tmp_path / "r.sqlite") as store:
        summary = scan([root], store, ScanConfig(workers=1), backend=Recording())  # type: ignore[arg-type]
    assert summary.scored == 20 and sum(sizes) == 20 and max(sizes) == 8


@pytest.mark.parametrize(("rel", "patterns", "expected"), [
    ("a/b/c.jpg", ("*.jpg",), True),
    ("a/b/c.jpg", ("*.png",), False),
    ("thumbs/x.jpg", ("thumbs/**",), True),
    ("a/thumbs/x.jpg", ("*/thumbs/*",), True),
    ("thumbsup/x.jpg", ("thumbs/**",), False),
    ("c.JPG", ("*.jpg",), False),  # case-sensitive, like the shell
])
def test_glob_matching(rel: str, patterns: tuple[str, ...], expected: bool) -> None:
    assert matches(rel, patterns) is expected
    assert WalkConfig(include=patterns).include == patterns
