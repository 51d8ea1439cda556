"""benchmarks/gpu_check.{py,sh}: the parts of the GPU check that run without a GPU, at a
small scale, so that the one run on a GPU machine does not fail on its own machinery; and real
CUDA tests of `scan --device cuda`, which run where CUDA is (gpu_check.sh runs this file there).
The stages that score images are marked slow (CI still runs them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402

N = 4
CUDA_ONLY = {"tests", "decode", "compile", "scan_mixed"}


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    env.pop("OUT", None)
    env.update(PYTHON=sys.executable, GPU_CHECK_INSTALL="0", **extra)
    return env


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every CPU stage in this process on N images, and the written report."""
    work = tmp_path_factory.mktemp("gpu_check")
    out = work / "report.json"
    returned = gpu_check.run_all(work, "cpu", N, out)
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(returned, default=str))
    written["_work"] = str(work)
    return written


def test_the_cpu_plan_has_no_gpu_stage_and_the_gpu_plan_has_all() -> None:
    cpu = [name for name, _ in gpu_check.plan("cpu")]
    cuda = [name for name, _ in gpu_check.plan("cuda")]
    assert cuda == list(gpu_check.STAGES) and not CUDA_ONLY & set(cpu)
    assert set(cuda) - set(cpu) == CUDA_ONLY and cpu[:2] == ["env", "corpus"]


@pytest.mark.slow
def test_every_cpu_stage_ran_and_the_report_says_the_gpu_was_not_measured(report: dict) -> None:
    s = report["summary"]
    assert report["device"] == "cpu" and report["schema"] == gpu_check.SCHEMA
    assert s["stages"] == {name: "ok" for name, _ in gpu_check.plan("cpu")}, report["stages"]
    assert s["gpu_measured"] is False and "not measured" in s["note"]
    assert s["fast_target_met"] is None and s["decode"] is None and s["compile_seconds"] is None
    assert s["torch"] == torch.__version__ and s["cpus"] >= 1 and s["date_utc"]


@pytest.mark.slow
def test_the_corpus_is_n_distinct_web_size_jpegs(report: dict) -> None:
    corpus = report["stages"]["corpus"]["result"]
    files = gpu_check.corpus_files(Path(corpus["path"]))
    assert corpus["n"] == N == len(files) and corpus["kinds"] == {"jpeg": N}
    sizes = {s for wh in gpu_check.WEB_SIZES for s in (wh, wh[::-1])}
    for f in files:
        with Image.open(f) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size in sizes
    assert len({f.read_bytes() for f in files}) == N
    again = gpu_check.make_corpus(Path(corpus["path"]), N)  # the same corpus is reused, not remade
    assert again["reused"] is True and again["n"] == N


def test_mixed_corpus_kinds(tmp_path: Path) -> None:
    stats = gpu_check.make_corpus(tmp_path, 12, seed=3, progressive=0.3, png=0.2, grey=0.2, processes=1)
    assert sum(stats["kinds"].values()) == 12 and set(stats["kinds"]) == {"jpeg", "progressive", "png", "grey"}
    formats = set()
    for f in gpu_check.corpus_files(tmp_path):
        with Image.open(f) as im:
            formats.add((im.format, im.mode, bool(im.info.get("progressive"))))
    assert formats == {("JPEG", "RGB", False), ("JPEG", "RGB", True), ("PNG", "RGB", False), ("JPEG", "L", False)}


@pytest.mark.slow
def test_model_variants_images_per_s_and_drift(report: dict) -> None:
    model = report["stages"]["model"]["result"]
    variants = model["variants"]
    assert model["inputs"] == N and set(variants) == {v.name for v in gpu_check.CPU_VARIANTS}
    for name, v in variants.items():
        assert v["images_per_s"] > 0 and v["drift_vs_fp32"]["n"] == N, name
    fp32 = variants["fp32"]
    assert fp32["drift_vs_fp32"]["max_abs"] == 0.0  # the reference against itself
    assert fp32["drift_vs_onnxruntime_cpu"]["max_abs"] < 1e-4  # the port equals `nsfwlab score`'s model
    # bf16 really ran in bf16: it drifts, but boundedly
    assert 0 < variants["bf16_cl"]["drift_vs_fp32"]["max_abs"] < 0.05
    assert report["summary"]["model_images_per_s"] == {k: v["images_per_s"] for k, v in variants.items()}


def test_drift_compares_what_it_is_given() -> None:
    d = gpu_check.drift(np.array([0.1, 0.5, 0.9]), np.array([0.1, 0.45, 0.7]))
    assert d["max_abs"] == pytest.approx(0.2) and d["mean_abs"] == pytest.approx(0.25 / 3)
    assert d["band_changes"] == 1 and d["n"] == 3  # 0.9 nsfw -> 0.7 review


@pytest.mark.slow
def test_scans_score_every_file_in_both_modes(report: dict) -> None:
    for stage, mode in (("scan_fast", "fast"), ("scan_exact", "exact")):
        res = report["stages"][stage]["result"]
        (run,) = res["runs"]
        assert run["status"] == "ok" and run["returncode"] == 0, run
        assert run["mode"] == mode and run["scored"] == run["files"] == N
        assert run["summary"]["errors"] == 0 and run["summary"]["mode"] == mode
        assert run["images_per_s_scan"] > 0 and 0 < run["images_per_s_wall"] <= run["images_per_s_scan"]
        assert Path(run["db"]).is_file()
    drift = report["summary"]["fast_vs_exact_drift"]
    assert drift["n"] == N and 0 < drift["max_abs"] < 0.05  # fast differs from exact, boundedly
    # exact mode's stored scores are those of the model stage's fp32 torch model on the same files
    exact = gpu_check.store_scores(Path(report["stages"]["scan_exact"]["result"]["runs"][0]["db"]))
    files = gpu_check.corpus_files(Path(report["stages"]["corpus"]["result"]["path"]))
    fp32 = np.load(Path(report["_work"]) / "fp32_scores.npy")
    assert sorted(exact) == [str(f) for f in files]
    np.testing.assert_allclose([exact[str(f)] for f in files], fp32, atol=1e-5)


@pytest.mark.slow
def test_cpu_preprocessing_rates(report: dict) -> None:
    prep = report["stages"]["preprocess_cpu"]["result"]
    assert prep["files"] == N and prep["processes"] == gpu_check.cores()
    assert prep["exact"]["images_per_s"] > 0 and prep["fast_draft"]["images_per_s"] > 0
    assert report["summary"]["exact_scan_share_of_cpu_ceiling"] > 0


@pytest.mark.slow
def test_cpu_balance_runs_every_split(report: dict) -> None:
    bal = report["stages"]["cpu_balance"]["result"]
    assert bal["files"] == N and bal["cores"] == gpu_check.cores()
    runs = bal["runs"]
    assert [r["mode"] for r in runs] == ["fast", "fast", "exact"]
    assert all(r["status"] == "ok" and r["scored"] == N for r in runs), runs
    assert runs[1]["workers"] == 1 and runs[1]["threads"] == 1 and "--threads 1" in runs[1]["command"]
    assert "--device cpu" in runs[0]["command"] and bal["best_fast"]["images_per_s_scan"] > 0
    assert 0 < bal["defaults_share_of_best"] <= 1


def test_merge_reports_timeouts_skips_failures_and_missing_stages(tmp_path: Path) -> None:
    stages = tmp_path / "stages"
    stages.mkdir()
    (stages / "env.json").write_text(json.dumps({"status": "ok", "seconds": 1.0, "result": {"gpu": "X"}}))
    (stages / "env.rc").write_text("0 2\n")
    tests = {"status": "failed", "result": {"ok": False, "counts": {"failed": 1}}}
    (stages / "tests.json").write_text(json.dumps(tests))
    (stages / "corpus.rc").write_text("124 60\n")
    (stages / "model.rc").write_text("1 3\n")
    (stages / "scan_fast.rc").write_text("skipped out of time (5s left)\n")
    rep = gpu_check.merge(tmp_path, "cuda", tmp_path / "r.json")
    st = rep["stages"]
    assert st["env"]["status"] == "ok" and st["env"]["shell_seconds"] == 2.0
    assert st["tests"]["status"] == "failed" and rep["summary"]["tests"] == {"failed": 1}
    assert st["corpus"]["status"] == "timeout" and st["corpus"]["returncode"] == 124
    assert st["model"]["status"] == "failed" and st["model"]["returncode"] == 1
    assert st["scan_fast"] == {"status": "skipped", "reason": "out of time (5s left)", "budget_s": 60}
    assert st["compile"]["status"] == "not run" and rep["summary"]["gpu"] == "X"
    assert rep["summary"]["gpu_measured"] is True and json.loads((tmp_path / "r.json").read_text()) == rep


def test_pytest_counts() -> None:
    assert gpu_check._pytest_counts("x\n3 passed, 1 skipped, 2 warnings in 4.0s\n") == {"passed": 3, "skipped": 1}
    assert gpu_check._pytest_counts("1 failed, 5 passed, 1 error in 9s") == {"failed": 1, "passed": 5, "error": 1}


def test_the_script_parses() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_wheels.sh")], check=True)


@pytest.mark.slow
def test_the_script_on_the_cpu_writes_its_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = subprocess.run(["bash", str(SCRIPT), "--cpu"], capture_output=True, text=True, timeout=300,
                         env=_env(OUT=str(out), GPU_CHECK_WORK=str(tmp_path / "w"), GPU_CHECK_N="2",
                                  GPU_CHECK_STAGES="env corpus"))
    assert res.returncode == 0, res.stdout + res.stderr
    rep = json.loads((out / "gpu_check.json").read_text())
    log = (out / "gpu_check.log").read_text()
    assert rep["device"] == "cpu" and rep["log"] == str(out / "gpu_check.log")
    assert rep["summary"]["stages"] == {"env": "ok", "corpus": "ok", "model": "skipped", "scan_fast": "skipped",
                                        "scan_exact": "skipped", "preprocess_cpu": "skipped",
                                        "cpu_balance": "skipped"}
    assert rep["stages"]["corpus"]["result"]["n"] == 2 and rep["stages"]["env"]["shell_seconds"] >= 0
    assert "stage corpus: exit 0" in log and "==== gpu_check summary ====" in log


@pytest.mark.slow
def test_a_hanging_stage_is_killed_and_the_others_go_on(tmp_path: Path) -> None:
    """The wrapper's per-stage timeout: a stage that hangs is recorded as a timeout, one that dies
    without a record as failed, and the report is still written."""
    fake = tmp_path / "python"
    fake.write_text(f"""#!/usr/bin/env bash
case " $* " in
  *" --resolve-device "*) echo cpu ;;
  *" --stage corpus "*) exec sleep 60 ;;
  *" --stage model "*) exit 3 ;;
  *) exec {sys.executable} "$@" ;;
esac
""")
    fake.chmod(0o755)
    out = tmp_path / "out"
    env = _env(OUT=str(out), GPU_CHECK_WORK=str(tmp_path / "w"), GPU_CHECK_STAGES="corpus model",
               GPU_CHECK_MAX_STAGE="2", GPU_CHECK_MIN_STAGE="1")
    env["PYTHON"] = str(fake)
    res = subprocess.run(["bash", str(SCRIPT), "--cpu"], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    st = json.loads((out / "gpu_check.json").read_text())["stages"]
    assert st["corpus"]["status"] == "timeout" and st["corpus"]["returncode"] == 124
    assert st["model"]["status"] == "failed" and st["model"]["returncode"] == 3
    assert st["env"]["status"] == "skipped"


# ---------------------------------------------------------------- on a CUDA machine only

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _scan_scores(root: Path, db: Path, **config: object) -> dict[str, float]:
    from nsfwlab.scan import ResultStore, ScanConfig, scan

    with ResultStore(db) as store:
        summary = scan([str(root)], store, ScanConfig(**config))  # type: ignore[arg-type]
        assert summary.errors == 0 and summary.scored == len(list(root.glob("*.jpg")))
        return {Path(r["path"]).name: r["score"] for r in store.iter_rows()}


@needs_cuda
def test_fast_scan_on_cuda_tracks_the_exact_scores(photo_dir: Path, detector, tmp_path: Path) -> None:
    """nvJPEG decoding, GPU resize and JPEG round trip, fp16: within the fast mode's drift."""
    from nsfwlab.config import Device
    from nsfwlab.scan import ScanMode

    scores = _scan_scores(photo_dir, tmp_path / "r.sqlite", mode=ScanMode.FAST, device=Device.CUDA, workers=2)
    for name, score in scores.items():
        assert abs(score - detector.nsfw_score(photo_dir / name)) < 0.03, name


@needs_cuda
def test_exact_scan_on_cuda_equals_the_cpu_scores(photo_dir: Path, detector, tmp_path: Path) -> None:
    """Exact mode on a GPU: the CPU's exact preprocessing into the fp32 model with TF32 off."""
    from nsfwlab.config import Device
    from nsfwlab.scan import ScanMode

    scores = _scan_scores(photo_dir, tmp_path / "r.sqlite", mode=ScanMode.EXACT, device=Device.CUDA, workers=2)
    for name, score in scores.items():
        assert abs(score - detector.nsfw_score(photo_dir / name)) < 1e-4, name
