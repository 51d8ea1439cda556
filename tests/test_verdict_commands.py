"""One verdict: `nsfwlab score`, `nsfwlab scan` + `export` and the HTTP service give the same answer
for every file of one tree (a JPEG, a flat PNG too featureless to match, a copy of a banked photo,
an animated GIF, a short video), with a hash bank, with and without a calibration.

The model is the fake RedFraction backend (tests/synthetic.py: the score is the fraction of red
pixels), so frame scores and segments are known; the bank holds a reviewer's decision for a
scikit-image photo, and the tree holds a copy of it."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from nsfwlab import Detector, PreprocessConfig
from nsfwlab.cli import app
from nsfwlab.scan import ScanMode, ScanModel
from synthetic import HALF_UP, RedFraction

av = pytest.importorskip("av")
pytest.importorskip("pdqhash")
from test_frames import GREY, RED, animation, clip  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

runner = CliRunner()


def _jpeg(arr: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _gif(frames: list[Any]) -> bytes:
    """An animation of 128x128 frames (arrays, or RGB colours), 200 ms each."""
    images = [Image.fromarray(f) if isinstance(f, np.ndarray) else Image.new("RGB", (128, 128), f) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=200, loop=0)
    return buf.getvalue()


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory, photos: dict[str, np.ndarray]) -> dict[str, Path]:
    """The tree, the bank (a reviewer's nsfw for the astronaut) and the calibration file."""
    from nsfwlab.bank import Bank

    d = tmp_path_factory.mktemp("verdict")
    root = d / "tree"
    root.mkdir()
    astronaut = np.asarray(Image.fromarray(photos["astronaut"]).resize((128, 128)))
    red_corner = np.asarray(Image.fromarray(photos["coffee"]).resize((120, 80))).copy()
    red_corner[:40, :60] = RED  # a quarter red: 0.25 to the fake model, in the review band calibrated
    files = {
        "a_photo.jpg": _jpeg(red_corner),
        "b_banked_copy.jpg": _jpeg(astronaut, quality=80),
        "c_flat.png": animation([GREY]),  # a still PNG, too featureless for PDQ
        "d_third.gif": _gif([astronaut, GREY, RED, (110, 110, 110), (100, 100, 100)]),  # opens on the banked photo
        "e_clip.mp4": clip(seconds=3.0, red=(1.0, 2.0)),
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    (d / "original.jpg").write_bytes(_jpeg(astronaut, quality=95))
    with Bank(d / "bank.sqlite3") as bank:
        assert bank.add_image(d / "original.jpg", "nsfw", "review:7").skipped is None
    (d / "cal.json").write_text(HALF_UP.dumps())
    return {"root": root, "bank": d / "bank.sqlite3", "cal": d / "cal.json", "dir": d}


def _row(score: float, label: str, raw: float | None, kind: str | None, frames: int | None,
         segments: Any, match: dict[str, Any] | None, skipped: str | None) -> dict[str, Any]:
    """The fields every interface must agree on, in one spelling (a still image: kind image, 1 frame)."""
    return {"score": round(score, 6), "raw_score": round(score if raw is None else raw, 6), "label": label,
            "kind": kind or "image", "frames": frames or 1,
            "segments": [[round(v, 6) for v in seg] for seg in segments or []],
            "match": None if match is None else {k: match[k] for k in ("decision", "distance", "source")},
            "match_skipped": skipped}


def _by_score(tree: dict[str, Path], calibrated: bool, monkeypatch: pytest.MonkeyPatch) -> dict[str, dict]:
    import nsfwlab.cli.score as score_module

    real = score_module.Detector

    def make(backend: Any, device: Any, **kwargs: Any) -> Any:
        kwargs.pop("precision", None)
        kwargs.pop("model", None)
        return real(RedFraction(), **kwargs)

    monkeypatch.setattr(score_module, "Detector", make)
    args = ["score", "-f", "jsonl", "--bank", str(tree["bank"]), str(tree["root"])]
    res = runner.invoke(app, args + (["--calibration", str(tree["cal"])] if calibrated else []),
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = {}
    for line in res.stdout.splitlines():
        r = json.loads(line)
        out[Path(r["path"]).name] = _row(r["score"], r["label"], r.get("raw_score"), r.get("kind"), r.get("frames"),
                                         r.get("segments"), r.get("match"), r.get("match_skipped"))
    return out


def _by_scan(tree: dict[str, Path], calibrated: bool, monkeypatch: pytest.MonkeyPatch,
             db: Path) -> dict[str, dict]:
    import nsfwlab.scan.pipeline as scan_pipeline

    monkeypatch.setattr(scan_pipeline, "build_scan_model",
                        lambda config: ScanModel(RedFraction(), PreprocessConfig(), ScanMode.EXACT))  # type: ignore[arg-type]
    args = ["scan", str(tree["root"]), "--db", str(db), "--no-progress", "--no-count", "--bank", str(tree["bank"]),
            "--workers", "1"]
    res = runner.invoke(app, args + (["--calibration", str(tree["cal"])] if calibrated else []),
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out_file = db.with_suffix(".jsonl")
    res = runner.invoke(app, ["export", "--db", str(db), "-f", "jsonl", "-o", str(out_file)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = {}
    for line in out_file.read_text().splitlines():
        r = json.loads(line)
        match = None if r["match_decision"] is None else {
            "decision": r["match_decision"], "distance": r["match_distance"], "source": r["match_source"]}
        out[Path(r["path"]).name] = _row(r["score"], r["label"], r["raw_score"], r["kind"], r["frames"],
                                         r["segments"], match, r["match_skipped"])
    return out


def _by_serve(tree: dict[str, Path], calibrated: bool) -> dict[str, dict]:
    from nsfwlab.serve import ServeConfig, create_app

    det = Detector(RedFraction(), calibration=tree["cal"] if calibrated else None)
    config = ServeConfig(data_dir=tree["dir"] / f"serve-{calibrated}", bank=tree["bank"])
    out = {}
    with TestClient(create_app(config, det)) as client:
        for path in sorted(tree["root"].iterdir()):
            resp = client.post(f"/v1/score?filename={path.name}", content=path.read_bytes())
            assert resp.status_code == 200, resp.text
            (r,) = resp.json()["results"]
            out[path.name] = _row(r["score"], r["label"], r.get("raw_score"), r.get("kind"), r.get("frames"),
                                  r.get("segments"), r.get("match"), r.get("match_skipped"))
    return out


@pytest.mark.parametrize("calibrated", [False, True], ids=["raw", "calibrated"])
def test_score_scan_and_serve_give_identical_rows(tree: dict[str, Path], calibrated: bool,
                                                  monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    by_score = _by_score(tree, calibrated, monkeypatch)
    by_scan = _by_scan(tree, calibrated, monkeypatch, tmp_path / "r.sqlite")
    by_serve = _by_serve(tree, calibrated)
    assert sorted(by_score) == sorted(p.name for p in tree["root"].iterdir())
    assert by_scan == by_score
    assert by_serve == by_score
    # and the rows are what the rules say
    copy, flat, gif, video = (by_score[n] for n in ("b_banked_copy.jpg", "c_flat.png", "d_third.gif", "e_clip.mp4"))
    assert copy["match"]["decision"] == "nsfw" and copy["label"] == "nsfw"  # the reviewer's decision
    assert copy["match"]["source"] == "review:7"
    assert flat["match"] is None and "quality" in flat["match_skipped"]
    assert gif["kind"] == "animation" and gif["frames"] == 5 and gif["match"] is None and gif["match_skipped"]
    assert gif["segments"] == [[0.4, 0.6, gif["score"]]] and gif["label"] == "nsfw"  # not 0.6000000000000001
    assert video["kind"] == "video" and video["segments"] and video["match"] is None
    photo = by_score["a_photo.jpg"]
    assert photo["score"] == pytest.approx(0.5 + photo["raw_score"] / 2 if calibrated else photo["raw_score"])

