"""Videos and animations in a scan: scored over their sampled frames, one aggregated row
per file with its frames and segments in the store and the exports; local and GPU engines agree.

The model is a fake (tests/synthetic.py's RedFraction: a red frame is the "explicit" stand-in) and
the clips are made at test time (tests/test_frames.py's clip() and animation())."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from nsfwlab import PreprocessConfig
from nsfwlab.frames import FrameOptions
from nsfwlab.scan import (
    ExportFormat,
    ResultStore,
    ScanConfig,
    ScanMode,
    ScanModel,
    scan,
    write_export,
)
from nsfwlab.scan.gpu import pillow_jpeg_roundtrip, scan_gpu
from synthetic import RedFraction

pytest.importorskip("av")
from test_frames import GREY, RED, animation, clip
from test_scan_gpu import pillow_decoder


class RedTensor(RedFraction):
    """RedFraction for the GPU engine's tensors too."""

    def predict_tensor(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.predict(np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())))


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("media")
    video = clip()  # 6 s at 10 fps, red from 2 s to 4 s
    (root / "clip.mp4").write_bytes(video)
    (root / "copy.mp4").write_bytes(video)  # identical content: scored once, frames reused
    (root / "unnamed.bin").write_bytes(clip(red=(0.0, 1.0)))  # a video found by content
    (root / "anim.gif").write_bytes(animation([GREY, (120, 120, 120), RED, (225, 20, 20), GREY], duration=500))
    Image.new("RGB", (64, 48), GREY).save(root / "still.png")
    (root / "bad.mp4").write_bytes(video[: len(video) // 3])  # truncated
    return root


def _config(**kw: object) -> ScanConfig:
    return ScanConfig(workers=1, batch_size=5, chunk=1, **kw)  # type: ignore[arg-type]


def _rows(db: Path) -> dict[str, dict]:
    with ResultStore(db, readonly=True) as store:
        return {Path(r["path"]).name: r for r in store.iter_rows(with_frames=True)}


def test_a_clip_is_scored_over_its_frames_with_its_segment(media: Path, tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    with ResultStore(db) as store:
        summary = scan([media], store, _config(), backend=RedFraction())
    rows = _rows(db)
    row = rows["clip.mp4"]
    assert row["kind"] == "video" and row["status"] == "ok" and row["frames"] == 12  # 6 s at 2 fps
    assert row["score"] >= 0.8 and row["label"] == "nsfw"
    assert [t for t, _ in row["frame_scores"]] == pytest.approx([0.5 * i for i in range(12)])
    ((start, end, peak),) = row["segments"]
    assert abs(start - 2.0) <= 0.5 and abs(end - 4.0) <= 0.5 and peak >= 0.8
    # Identical content: reused (no model work), with the same frames and segments.
    copy = rows["copy.mp4"]
    assert copy["reused"] == 1 and copy["score"] == row["score"]
    assert copy["frame_scores"] == row["frame_scores"] and copy["segments"] == row["segments"]
    assert rows["unnamed.bin"]["kind"] == "video" and rows["unnamed.bin"]["segments"][0][0] == pytest.approx(0.0)
    anim = rows["anim.gif"]
    assert anim["kind"] == "animation" and anim["frames"] == 5 and anim["label"] == "nsfw"
    ((a_start, a_end, _),) = anim["segments"]
    assert (a_start, a_end) == pytest.approx((1.0, 2.0))
    assert rows["still.png"]["kind"] == "image" and rows["still.png"]["frame_scores"] is None
    assert rows["still.png"]["label"] == "safe"
    assert rows["bad.mp4"]["status"] == "error" and rows["bad.mp4"]["error_code"] in ("truncated", "corrupt")
    assert summary.scored == 4 and summary.reused == 1 and summary.errors == 1


def test_frames_are_exported_as_nested_lists_and_json_in_csv(media: Path, tmp_path: Path) -> None:
    db = tmp_path / "r.sqlite"
    with ResultStore(db) as store:
        scan([media / "clip.mp4", media / "still.png"], store, _config(), backend=RedFraction())
        write_export(store, tmp_path / "o.jsonl", ExportFormat.JSONL)
        write_export(store, tmp_path / "o.csv", ExportFormat.CSV)
        write_export(store, tmp_path / "o.parquet", ExportFormat.PARQUET)
    jl = {Path(r["path"]).name: r for r in map(json.loads, (tmp_path / "o.jsonl").read_text().splitlines())}
    with (tmp_path / "o.csv").open(newline="") as fh:
        cs = {Path(r["path"]).name: r for r in csv.DictReader(fh)}
    import pyarrow.parquet as pq

    pa_rows = {Path(r["path"]).name: r for r in pq.read_table(tmp_path / "o.parquet").to_pylist()}
    for rows in (jl, pa_rows):
        ((start, end, _),) = rows["clip.mp4"]["segments"]
        assert abs(start - 2.0) <= 0.5 and abs(end - 4.0) <= 0.5
        assert len(rows["clip.mp4"]["frame_scores"]) == 12 and rows["still.png"]["segments"] is None
    assert json.loads(cs["clip.mp4"]["segments"]) == jl["clip.mp4"]["segments"]
    assert json.loads(cs["clip.mp4"]["frame_scores"]) == jl["clip.mp4"]["frame_scores"]
    assert cs["still.png"]["segments"] == ""


def test_frame_options_first_frame_aggregate_and_min_consecutive(media: Path, tmp_path: Path) -> None:
    with ResultStore(tmp_path / "first.sqlite") as store:
        scan([media / "clip.mp4"], store, _config(frames=FrameOptions(mode="first")), backend=RedFraction())
        (row,) = store.iter_rows(with_frames=True)
    assert row["frames"] == 1 and row["label"] == "safe" and row["segments"] == []
    with ResultStore(tmp_path / "mean.sqlite") as store:
        scan([media / "clip.mp4"], store, _config(frames=FrameOptions(aggregate="mean")), backend=RedFraction())
        (row,) = store.iter_rows()
    assert row["score"] == pytest.approx(4 / 12, abs=0.05)
    # The animation's red run is 2 frames: min_consecutive=3 opens it away.
    with ResultStore(tmp_path / "k.sqlite") as store:
        scan([media / "anim.gif"], store, _config(frames=FrameOptions(min_consecutive=3)), backend=RedFraction())
        (row,) = store.iter_rows(with_frames=True)
    assert row["label"] == "safe" and row["segments"] == []


@pytest.mark.slow
def test_process_workers_and_the_gpu_engine_give_the_same_rows(media: Path, tmp_path: Path) -> None:
    compared = ("score", "label", "kind", "frames", "status", "sha256", "reused", "frame_scores", "segments")

    def state(db: Path) -> dict[str, tuple]:
        return {k: tuple(r[c] for c in compared) for k, r in _rows(db).items()}

    model = ScanModel(RedTensor(), PreprocessConfig(), ScanMode.EXACT)  # type: ignore[arg-type]
    with ResultStore(tmp_path / "local.sqlite") as store:
        scan([media], store, _config(), model=model)
    with ResultStore(tmp_path / "proc.sqlite") as store:
        scan([media], store, _config(executor="process"), model=model)
    with ResultStore(tmp_path / "gpu.sqlite") as store:
        scan_gpu([str(media)], store, _config(), model=model, device="cpu", decode=pillow_decoder,
                 roundtrip=pillow_jpeg_roundtrip)
    local = state(tmp_path / "local.sqlite")
    assert state(tmp_path / "proc.sqlite") == local
    assert state(tmp_path / "gpu.sqlite") == local


def test_cli_frame_options(media: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nsfwlab.scan.pipeline as scan_pipeline

    monkeypatch.setattr(scan_pipeline, "build_scan_model",
                        lambda config: ScanModel(RedFraction(), PreprocessConfig(), ScanMode.EXACT))  # type: ignore[arg-type]
    target = tmp_path / "t"
    target.mkdir()
    shutil.copy(media / "clip.mp4", target / "clip.mp4")
    db = tmp_path / "r.sqlite"
    res = CliRunner().invoke(__import__("nsfwlab.cli", fromlist=["app"]).app, [
        "scan", str(target), "--db", str(db), "--no-progress", "--no-count", "--fps", "4", "--max-frames", "100",
        "--aggregate", "p50", "--min-consecutive", "2", "--frames", "sample", "--json"])
    assert res.exit_code == 0, res.output
    (row,) = _rows(db).values()
    assert row["frames"] == 24 and row["label"] == "safe"  # 6 s at 4 fps; the median frame is grey
    ((start, end, _),) = row["segments"]
    assert abs(start - 2.0) <= 0.5 and abs(end - 4.0) <= 0.5
