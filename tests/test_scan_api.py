"""The public names of nsfwlab.scan, and that importing it (or the CLI) pulls in nothing heavy."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import nsfwlab.scan
from nsfwlab.scan import Engine, Executor, ExportFormat, ScanConfig, ScanMode, WalkConfig
from nsfwlab.scan.walk import matches


def test_public_names_are_pinned() -> None:
    assert sorted(nsfwlab.scan.__all__) == [
        "COLUMNS", "Decision", "Engine", "Executor", "ExportFilter", "ExportFormat", "FileRecord", "ResultStore",
        "ScanConfig", "ScanMode", "ScanModel", "ScanSummary", "Status", "StoreError", "WalkConfig",
        "build_scan_model", "iter_records", "quantize_int8", "scan", "walk", "write_export",
    ]
    assert [m.value for m in ScanMode] == ["exact", "fast"]
    assert [e.value for e in Engine] == ["local", "ray"]
    assert [f.value for f in ExportFormat] == ["csv", "jsonl", "parquet"]


def test_importing_scan_and_the_cli_stays_light() -> None:
    code = ("import sys, nsfwlab.scan, nsfwlab.cli.scan; "
            "print(','.join(m for m in ('ray', 'pyarrow', 'torchvision', 'torch', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


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
