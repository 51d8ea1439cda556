"""The GPU fast path's logic, on the CPU: routing, the tensor preprocessing (with Pillow standing
in for the GPU JPEG encoder), and clear errors where no GPU or torchvision is present.
GPU speed is not measured here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from nsfwlab import PreprocessConfig
from nsfwlab.cli import app
from nsfwlab.errors import BackendUnavailableError
from nsfwlab.imageio import load_image
from nsfwlab.preprocess import preprocess
from nsfwlab.scan.gpu import Route, gpu_preprocess, pillow_jpeg_roundtrip, require_torchvision, route


def test_routing() -> None:
    assert route("JPEG", "RGB") is Route.GPU
    assert route("JPEG", "L") is Route.GPU
    assert route("JPEG", "CMYK") is Route.CPU  # nvJPEG's colour conversion differs from Pillow's
    for fmt in ("PNG", "GIF", "WEBP", "BMP", "TIFF"):
        assert route(fmt, "RGB") is Route.CPU


def _tensor(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(load_image(path)).copy()).permute(2, 0, 1)


# Bounds between the real drift of the GPU preprocessing (torch's antialiased resize instead of
# Pillow's) and the drift of one that skips the JPEG round trip, measured on the 7 session photos:
#                          per-image mean |input diff|   max |score diff|
#   GPU steps (real)       0.43 .. 1.04                  0.0028
#   without the JPEG step  2.17 .. 4.50                  0.0127
MAX_INPUT_DIFF = 1.5
MAX_SCORE_DIFF = 0.006


def _drift(cfg: PreprocessConfig, photo_paths: list[Path], detector) -> tuple[np.ndarray, float]:
    """(per-image mean |input difference|, max |score difference|) of gpu_preprocess under ``cfg``
    (Pillow standing in for the GPU JPEG encoder) against the exact pipeline."""
    batch = gpu_preprocess([_tensor(p) for p in photo_paths], cfg, roundtrip=pillow_jpeg_roundtrip)
    assert batch.shape == (len(photo_paths), 3, 224, 224) and batch.dtype == torch.float32
    exact = np.stack([preprocess(p) for p in photo_paths])  # NHWC BGR - mean
    ours = np.ascontiguousarray(batch.permute(0, 2, 3, 1).numpy())
    scores = np.abs(detector.predict_arrays(exact) - detector.predict_arrays(ours))
    return np.abs(ours - exact).mean(axis=(1, 2, 3)), float(scores.max())


def test_gpu_preprocess_on_cpu_tensors_tracks_the_exact_pipeline(photo_paths: list[Path], detector) -> None:
    # Same layout, channel order, mean and JPEG step: the inputs differ only by resampling noise.
    inputs, scores = _drift(PreprocessConfig(), photo_paths, detector)
    assert inputs.max() < MAX_INPUT_DIFF and scores < MAX_SCORE_DIFF, (inputs, scores)


def test_a_gpu_preprocessing_without_the_jpeg_step_is_caught(photo_paths: list[Path], detector) -> None:
    """The bounds above are tight enough that dropping the JPEG round trip fails them, on every photo."""
    inputs, scores = _drift(PreprocessConfig(jpeg_roundtrip=False), photo_paths, detector)
    assert inputs.min() > MAX_INPUT_DIFF and scores > MAX_SCORE_DIFF, (inputs, scores)


def test_gpu_preprocess_without_roundtrip_is_resize_crop_bgr_mean() -> None:
    img = torch.zeros(3, 300, 500, dtype=torch.uint8)
    img[0] = 200  # pure red in RGB
    out = gpu_preprocess([img], PreprocessConfig(jpeg_roundtrip=False))
    assert out.shape == (1, 3, 224, 224)
    # BGR order, mean (104, 117, 123) subtracted: red ends up in the last channel.
    assert torch.allclose(out[0, :, 100, 100], torch.tensor([-104.0, -117.0, 200.0 - 123.0]))


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed")
def test_missing_torchvision_is_a_clear_error() -> None:
    with pytest.raises(BackendUnavailableError, match="torchvision"):
        require_torchvision()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_exits_with_the_model_status(photo_dir: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["scan", str(photo_dir), "--db", str(tmp_path / "r.sqlite"), "--device",
                                   "cuda", "--mode", "fast", "--no-progress"])
    assert res.exit_code == 3 and "CUDA" in res.output


def pillow_decoder(datas: list[bytes]) -> list[torch.Tensor]:
    """Stands in for nvJPEG: raises RuntimeError on a bad JPEG, as torchvision does."""
    from nsfwlab.errors import ImageError

    out = []
    for d in datas:
        try:
            out.append(torch.from_numpy(np.asarray(load_image(d)).copy()).permute(2, 0, 1))
        except ImageError as exc:
            raise RuntimeError(str(exc)) from None
    return out


def test_gpu_scan_logic_on_the_cpu(photo_dir: Path, photos: dict[str, np.ndarray], tmp_path: Path,
                                   torch_model, detector) -> None:
    """scan_gpu with the CPU as the 'device': JPEGs take the decode-on-device route, the PNG the
    CPU-worker route, a duplicate is reused, a JPEG the decoder rejects falls back to the CPU path
    (and its error is recorded)."""
    import shutil

    from PIL import Image

    from nsfwlab.backends import TorchBackend
    from nsfwlab.scan import ResultStore, ScanConfig, ScanMode, ScanModel
    from nsfwlab.scan.gpu import scan_gpu
    from nsfwlab.scan.modes import fast_preprocess

    root = tmp_path / "tree"
    shutil.copytree(photo_dir, root)
    shutil.copy(root / "chelsea.jpg", root / "chelsea_dup.jpg")
    Image.fromarray(photos["coffee"]).save(root / "coffee.png")
    data = (root / "rocket.jpg").read_bytes()
    (root / "cut.jpg").write_bytes(data[: len(data) // 2])
    model = ScanModel(TorchBackend(torch_model, device="cpu", model_version="gpu-logic-test"),
                      fast_preprocess(PreprocessConfig()), ScanMode.FAST)
    with ResultStore(tmp_path / "r.sqlite") as store:
        summary = scan_gpu([str(root)], store, ScanConfig(mode=ScanMode.FAST, workers=1, batch_size=4),
                           model=model, device="cpu", decode=pillow_decoder, roundtrip=pillow_jpeg_roundtrip)
        rows = {Path(r["path"]).name: r for r in store.iter_rows()}
    photo_dir_files = list(photo_dir.glob("*.jpg"))
    assert summary.seen == len(photo_dir_files) + 3
    assert summary.reused == 1 and summary.errors == 1 and rows["cut.jpg"]["error_code"] == "truncated"
    assert rows["chelsea_dup.jpg"]["score"] == rows["chelsea.jpg"]["score"]
    for p in photo_dir_files:
        assert abs(rows[p.name]["score"] - detector.nsfw_score(p)) < 0.03
    assert abs(rows["coffee.png"]["score"] - detector.nsfw_score(root / "coffee.png")) < 0.03
