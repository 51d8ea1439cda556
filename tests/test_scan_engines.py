"""The engines share one worker task, one driver and one sink: on one tree with duplicates and bad
files they give identical stores, and every file is read once.

The GPU engine runs on the CPU with Pillow standing in for nvJPEG and the GPU JPEG encoder (as in
test_scan_gpu.py); the Ray engine's run of the same tree is in test_scan_ray.py (Ray start-up is slow).
The model is a fake whose score is a function of the network input, identical for the numpy (CPU)
and tensor (GPU) paths; the images are flat colours, so that torch's resize (GPU route) and Pillow's
(CPU route) give the same pixels and every score can be compared exactly.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from nsfwlab import PreprocessConfig
from nsfwlab.scan import Executor, ResultStore, ScanConfig, ScanMode, ScanModel, ScanSummary, scan
from nsfwlab.scan.gpu import pillow_jpeg_roundtrip, scan_gpu
from nsfwlab.scan.modes import fast_preprocess
from test_scan_gpu import pillow_decoder

#: Store columns every engine must agree on (``attempts``, ``first_seen`` and ``scored_at`` aside).
COMPARED = ("path", "size", "mtime_ns", "sha256", "score", "label", "status", "error_code", "reused",
            "model_version", "preprocess_version", "mode")


class MeanBackend:
    """Score = a squashed mean of the network input, the same for NHWC arrays and NCHW tensors. Picklable."""

    name = "mean-fake"
    device = "cpu"
    model_version = "mean-fake-v1"

    @staticmethod
    def _probs(nhwc: np.ndarray) -> np.ndarray:
        nsfw = 1.0 / (1.0 + np.exp(-nhwc.astype(np.float64).mean(axis=(1, 2, 3)) / 20.0))
        return np.stack([1.0 - nsfw, nsfw], axis=1)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self._probs(batch).astype(np.float32)

    def predict_tensor(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.predict(np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())))


def fast_model() -> ScanModel:
    return ScanModel(MeanBackend(), fast_preprocess(PreprocessConfig()), ScanMode.FAST)  # type: ignore[arg-type]


def engine_config(**kw: Any) -> ScanConfig:
    """Small batches and chunks, so that duplicates fall within one batch and across batches."""
    return ScanConfig(mode=ScanMode.FAST, workers=1, batch_size=4, chunk=2, executor=Executor.THREAD, **kw)


def make_tree(root: Path) -> Path:
    """Flat-colour JPEGs (GPU route) and PNGs (CPU route); identical files under other names next to
    the original (same batch) and in a later folder (a later batch); a linked duplicate; bad files."""
    colours = [(30 * i % 256, 70 + 11 * i, 200 - 13 * i) for i in range(8)]
    (root / "a").mkdir(parents=True)
    (root / "z").mkdir()
    for i, c in enumerate(colours):
        img = Image.new("RGB", (160 + 8 * i, 120), c)
        if i % 2:
            img.save(root / "a" / f"p{i}.png")
        else:
            img.save(root / "a" / f"j{i}.jpg", quality=95)
    shutil.copy(root / "a" / "j0.jpg", root / "a" / "j0_copy.jpg")  # same batch as j0
    shutil.copy(root / "a" / "p1.png", root / "a" / "p1_copy.png")  # same batch as p1
    shutil.copy(root / "a" / "j2.jpg", root / "z" / "j2_late.jpg")  # a later batch
    shutil.copy(root / "a" / "p3.png", root / "z" / "p3_late.png")
    os.symlink(root / "a" / "j4.jpg", root / "z" / "link_to_j4.jpg")  # followed: a duplicate
    os.symlink(root / "nowhere.jpg", root / "z" / "broken_link.jpg")  # not a file: not reported
    big = Image.new("RGB", (300, 200), (90, 40, 10))
    big.save(root / "a" / "cut_src.jpg", quality=95)
    data = (root / "a" / "cut_src.jpg").read_bytes()
    (root / "a" / "cut_src.jpg").unlink()
    (root / "a" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "a" / "empty.jpg").write_bytes(b"")
    (root / "a" / "notes.jpg").write_text("not an image\n")
    return root


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "tree")


def run_local(root: Path, db: Path) -> ScanSummary:
    with ResultStore(db) as store:
        return scan([root], store, engine_config(), backend=MeanBackend())  # type: ignore[arg-type]


def run_gpu(root: Path, db: Path) -> ScanSummary:
    with ResultStore(db) as store:
        return scan_gpu([str(root)], store, engine_config(), model=fast_model(), device="cpu",
                        decode=pillow_decoder, roundtrip=pillow_jpeg_roundtrip)


def store_state(db: Path) -> dict[str, tuple]:
    """Each row's compared columns, and what the store decides for it on the next run."""
    model = fast_model()
    out = {}
    with ResultStore(db) as store:
        for r in store.iter_rows():
            decision = store.decide(r["path"], r["size"], r["mtime_ns"], model.model_version,
                                    model.preprocess_version, max_attempts=3)
            out[r["path"]] = (*(r[k] for k in COMPARED), decision)
    return out


def summary_counts(s: ScanSummary) -> tuple:
    return s.seen, s.skipped, s.scored, s.reused, s.errors, s.labels, s.error_codes


def check_tree_results(root: Path, db: Path, summary: ScanSummary) -> None:
    """What every engine must record for :func:`make_tree` (first run)."""
    rows = {Path(p).relative_to(root).as_posix(): r for p, r in store_state(db).items()}
    col = {k: i for i, k in enumerate(COMPARED)}
    assert "z/broken_link.jpg" not in rows and len(rows) == 16 == summary.seen
    assert summary.scored == 8 and summary.reused == 5 and summary.errors == 3
    assert {k: rows[k][col["error_code"]] for k in ("a/truncated.jpg", "a/empty.jpg", "a/notes.jpg")} == {
        "a/truncated.jpg": "truncated", "a/empty.jpg": "empty", "a/notes.jpg": "unsupported_format"}
    for copy, original in (("a/j0_copy.jpg", "a/j0.jpg"), ("a/p1_copy.png", "a/p1.png"),
                           ("z/j2_late.jpg", "a/j2.jpg"), ("z/p3_late.png", "a/p3.png"),
                           ("z/link_to_j4.jpg", "a/j4.jpg")):
        assert rows[copy][col["reused"]] == 1 and rows[original][col["reused"]] == 0
        assert rows[copy][col["score"]] == rows[original][col["score"]]
        assert rows[copy][col["sha256"]] == rows[original][col["sha256"]]
    assert len({rows[f"a/{n}"][col["score"]] for n in ("j0.jpg", "p1.png", "j2.jpg", "p3.png", "j4.jpg")}) == 5


def test_local_and_gpu_engines_give_identical_stores(tree: Path, tmp_path: Path) -> None:
    local = run_local(tree, tmp_path / "local.sqlite")
    gpu = run_gpu(tree, tmp_path / "gpu.sqlite")
    check_tree_results(tree, tmp_path / "local.sqlite", local)
    assert summary_counts(gpu) == summary_counts(local)
    assert store_state(tmp_path / "gpu.sqlite") == store_state(tmp_path / "local.sqlite")
    # A second run of each: only the failed files are attempted again, with the same outcome.
    again_local = run_local(tree, tmp_path / "local.sqlite")
    again_gpu = run_gpu(tree, tmp_path / "gpu.sqlite")
    assert summary_counts(again_gpu) == summary_counts(again_local)
    assert again_local.skipped == 13 and again_local.errors == 3 and again_local.scored == 0


class OpenCounter:
    """Counts every open of a file under ``root`` in this process (``sys.addaudithook``'s "open"
    event: builtins.open, io.open, os.open, Path.open alike). Audit hooks stay for the process's
    life, so the hook is installed once and counts only while a counter is active."""

    active: OpenCounter | None = None
    _installed = False

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.opens: Counter[str] = Counter()
        self.lock = threading.Lock()
        if not OpenCounter._installed:
            sys.addaudithook(OpenCounter._hook)
            OpenCounter._installed = True

    @staticmethod
    def _hook(event: str, args: tuple) -> None:
        counter = OpenCounter.active
        if counter is not None and event == "open" and isinstance(args[0], str) and args[0].startswith(counter.root):
            with counter.lock:
                counter.opens[args[0]] += 1

    def __enter__(self) -> OpenCounter:
        OpenCounter.active = self
        return self

    def __exit__(self, *exc: object) -> None:
        OpenCounter.active = None


@pytest.mark.parametrize("engine", [run_local, run_gpu], ids=["local", "gpu"])
def test_each_file_is_read_once(engine: Any, tree: Path, tmp_path: Path) -> None:
    """Read once, hashed from those bytes, decoded from those bytes: also the GPU engine's
    non-JPEGs and its fallback for a JPEG the GPU decoder rejects (truncated.jpg)."""
    with OpenCounter(tree) as counter:
        engine(tree, tmp_path / "r.sqlite")
    files = [os.path.join(d, f) for d, _, fs in os.walk(tree) for f in fs if f != "broken_link.jpg"]
    assert len(files) == 16
    assert dict(counter.opens) == {f: 1 for f in files}
