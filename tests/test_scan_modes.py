"""Fast mode: the int8 model is built offline, cached, versioned apart from exact, and drifts little."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nsfwlab.scan import ResultStore, ScanConfig, ScanMode, build_scan_model, quantize_int8, scan
from nsfwlab.scan.modes import QUANT_VERSION, calibration_batches


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nsfwlab-cache")


@pytest.fixture(scope="module")
def web_tree(tmp_path_factory: pytest.TempPathFactory, photos: dict[str, np.ndarray]) -> Path:
    """The photos upscaled to web size (~1 MP), where DCT-scaled decoding actually applies."""
    root = tmp_path_factory.mktemp("web")
    for name, arr in photos.items():
        img = Image.fromarray(arr).convert("RGB").resize((1200, 800), Image.Resampling.BICUBIC)
        img.save(root / f"{name}.jpg", quality=85)
    return root


def test_calibration_is_deterministic() -> None:
    a, b = calibration_batches(count=4, batch=2), calibration_batches(count=4, batch=2)
    assert len(a) == 2 and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert a[0].shape == (2, 224, 224, 3) and a[0].dtype == np.float32
    assert not np.array_equal(calibration_batches(count=2, batch=2, seed=1)[0], a[0])


def test_int8_model_is_built_once_and_cached(cache_dir: Path) -> None:
    path = quantize_int8(cache_dir=cache_dir)
    assert path.is_file() and path.parent == cache_dir / "int8" and QUANT_VERSION in path.name
    mtime = path.stat().st_mtime_ns
    assert quantize_int8(cache_dir=cache_dir) == path and path.stat().st_mtime_ns == mtime
    assert not [p for p in path.parent.iterdir() if p.suffix == ".tmp" or p.name.endswith(".src.onnx")]


def test_fast_mode_drift_and_versions(cache_dir: Path, web_tree: Path, tmp_path: Path, detector) -> None:
    fast = build_scan_model(ScanConfig(mode=ScanMode.FAST, cache_dir=str(cache_dir)))
    assert fast.model_version == f"{detector.model_version}-{QUANT_VERSION}"
    assert fast.preprocess_version == "custom-r256_c224_jpeg75_draft2x"
    db = tmp_path / "r.sqlite"
    with ResultStore(db) as store:
        scan([web_tree], store, ScanConfig(workers=1, batch_size=8))
        scan([web_tree], store, ScanConfig(mode=ScanMode.FAST, workers=1, batch_size=8), model=fast)
        rows = list(store.iter_rows())
    exact = {r["path"]: r for r in rows if r["mode"] == "exact"}
    quick = {r["path"]: r for r in rows if r["mode"] == "fast"}
    assert len(exact) == len(quick) == 7  # both versions kept side by side
    deltas = [abs(exact[p]["score"] - quick[p]["score"]) for p in exact]
    # Measured on the benchmark corpus: max |Δ| of a few hundredths (BENCHMARKS.md).
    assert max(deltas) < 0.06
    assert sum(exact[p]["label"] == quick[p]["label"] for p in exact) >= 6
    for p, row in exact.items():
        assert abs(row["score"] - detector.nsfw_score(p)) <= 1e-5


def test_bad_cache_dir_is_a_config_error(tmp_path: Path) -> None:
    from nsfwlab.errors import ConfigError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot create the model cache"):
        quantize_int8(cache_dir=blocker / "sub")


@pytest.mark.parametrize(("size", "decoded"), [((1920, 1080), (960, 540)), ((1200, 800), (1200, 800)),
                                              ((4000, 3000), (1000, 750)), ((300, 200), (300, 200))])
def test_fast_mode_decodes_jpegs_at_twice_the_resize_at_least(size: tuple[int, int],
                                                              decoded: tuple[int, int]) -> None:
    """The DCT scale keeps both sides >= 2 x 256, so the bilinear resize still reduces by >= 2
    (scaling down to 256 itself drifted up to 0.16 on painting-like images)."""
    import io

    from nsfwlab import PreprocessConfig
    from nsfwlab.imageio import load_image

    fast = PreprocessConfig(draft=True)
    assert fast.draft_size == 512 and PreprocessConfig().draft_size is None
    buf = io.BytesIO()
    Image.new("RGB", size, (120, 80, 40)).save(buf, format="JPEG")
    assert load_image(buf.getvalue(), draft_size=fast.draft_size).size == decoded


def test_needs_exact_flags_scores_within_the_margin_of_a_band_boundary() -> None:
    from nsfwlab import Thresholds
    from nsfwlab.scan.modes import FAST_GUARD_MARGIN, needs_exact

    label = Thresholds().label  # 0.2 / 0.8
    assert not needs_exact(0.05, 0.1, label) and needs_exact(0.15, 0.1, label) and needs_exact(0.25, 0.1, label)
    assert not needs_exact(0.5, 0.2, label) and needs_exact(0.79, 0.02, label) and not needs_exact(0.95, 0.1, label)
    assert needs_exact(0.2, 1e-6, label) and not needs_exact(0.2, 0.0, label)  # margin 0: the guard is off
    assert not needs_exact(0.0, 0.1, label) and not needs_exact(1.0, 0.1, label)  # the ends of [0, 1]
    # The label after calibration decides: here raw 0.5 is calibrated to 0.2, a boundary.
    assert needs_exact(0.5, 0.01, lambda raw: label(raw * 0.4)) and not needs_exact(0.5, 0.01, label)
    assert 0 < FAST_GUARD_MARGIN < 0.5


def test_a_fast_score_near_a_boundary_is_rescored_exactly(cache_dir: Path, web_tree: Path, tmp_path: Path,
                                                          detector) -> None:
    """Thresholds set right at one image's fast score: the guard re-scores that image the exact way
    and records the exact score (and its label); the others keep their fast scores."""
    from nsfwlab import Thresholds

    def fast_scan(db: Path, **kw) -> dict[str, float]:
        with ResultStore(db) as store:
            scan([web_tree], store, ScanConfig(mode=ScanMode.FAST, workers=1, cache_dir=str(cache_dir), **kw))
            return {r["path"]: r["score"] for r in store.iter_rows()}

    unguarded = fast_scan(tmp_path / "a.db", guard_margin=0.0)
    exact = {p: detector.nsfw_score(p) for p in unguarded}
    target = max(unguarded, key=lambda p: abs(unguarded[p] - exact[p]))
    assert abs(unguarded[target] - exact[target]) > 1e-4  # fast mode alone drifts on it
    thresholds = Thresholds(safe_below=unguarded[target], nsfw_above=max(unguarded[target], 0.8))
    config = ScanConfig(mode=ScanMode.FAST, workers=1, cache_dir=str(cache_dir), thresholds=thresholds,
                        guard_margin=1e-6)
    model = build_scan_model(config)
    assert model.guard is not None
    with ResultStore(tmp_path / "b.db") as store:
        scan([web_tree], store, config, model=model)
        rows = {r["path"]: r for r in store.iter_rows()}
    assert abs(rows[target]["score"] - exact[target]) <= 1e-5
    assert rows[target]["label"] == thresholds.label(exact[target]).value
    assert model.guard.rescored == 1 and model.guard.checked == len(rows)
    for p, row in rows.items():
        if p != target:
            assert row["score"] == pytest.approx(unguarded[p], abs=1e-6)


def test_the_guard_keeps_the_fast_score_of_a_file_changed_since(tmp_path: Path) -> None:
    from nsfwlab import DecodeLimits, PreprocessConfig
    from nsfwlab.scan.modes import ExactGuard

    calls: list[int] = []

    class Exact:
        def predict(self, batch: np.ndarray) -> np.ndarray:
            calls.append(len(batch))
            return np.array([[0.7, 0.3]] * len(batch), np.float32)

    image = tmp_path / "a.png"
    Image.new("RGB", (64, 48), (200, 120, 90)).save(image)
    import hashlib

    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    guard = ExactGuard(Exact, PreprocessConfig(), DecodeLimits(), lambda s: s >= 0.5, margin=0.1)
    scores = guard.review([(str(image), sha), (str(image), "0" * 64), (None, "v#0"), (str(image), sha)],
                          [0.45, 0.45, 0.45, 0.9])
    assert scores == [pytest.approx(0.3), 0.45, 0.45, 0.9]  # re-scored; changed file; a frame; far from 0.5
    assert calls == [1] and guard.rescored == 1 and guard.checked == 3
    with pytest.raises(Exception, match="guard_margin"):
        ScanConfig(guard_margin=-0.1)


def test_the_guard_margin_is_a_scan_option(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from nsfwlab.cli import app

    result = CliRunner().invoke(app, ["scan", str(tmp_path), "--db", str(tmp_path / "r.db"), "--guard-margin", "2"])
    assert result.exit_code == 2 and "--guard-margin must lie in [0, 1]" in result.output, result.output
