"""Loading labelled sets, data hygiene (reported, never modified), evaluation through the
Detector, the report, and the ``nsfwlab evaluate`` command."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from nsfwlab.cli import app
from nsfwlab.errors import ConfigError
from nsfwlab.evaluate import TargetKind, TargetRate, check_hygiene, evaluate, load_csv, load_folder, load_labelled
from nsfwlab.evaluate.plots import histogram_png, pr_png, roc_png
from nsfwlab.evaluate.report import render_report, thumbnail
from test_cli_score import deny_listing, deny_stat

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def labelled_dir(tmp_path_factory: pytest.TempPathFactory, photo_paths: list[Path]) -> Path:
    """4 photos as 'safe', 3 as 'nsfw' (labels only: every image is a safe public photo), a text
    file posing as a JPEG, an empty file, and a copy of a safe photo filed under nsfw/."""
    root = tmp_path_factory.mktemp("labelled")
    (root / "safe").mkdir()
    (root / "nsfw" / "sub").mkdir(parents=True)
    for p in photo_paths[:4]:
        shutil.copy(p, root / "safe" / p.name)
    for p in photo_paths[4:]:
        shutil.copy(p, root / "nsfw" / "sub" / p.name)
    (root / "safe" / "notes.jpg").write_text("this is not an image")
    (root / "nsfw" / "empty.png").write_bytes(b"")
    shutil.copy(photo_paths[0], root / "nsfw" / "copy.jpg")
    return root


def test_load_folder(labelled_dir: Path) -> None:
    data = load_folder(labelled_dir)
    assert data.counts() == {"safe": 5, "nsfw": 5}
    assert [it.path.parent.name for it in data.items][:5] == ["safe"] * 5
    safe_paths = [it.path for it in data.items if it.label == 0]
    assert safe_paths == sorted(safe_paths)
    assert load_labelled(labelled_dir).items == data.items


def test_load_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "safe").mkdir()
    with pytest.raises(ConfigError, match="no 'nsfw/' folder"):
        load_folder(tmp_path)
    (tmp_path / "nsfw").mkdir()
    with pytest.raises(ConfigError, match="holds no images"):
        load_folder(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_labelled(tmp_path / "missing")


def test_load_csv(tmp_path: Path, photo_paths: list[Path]) -> None:
    (tmp_path / "imgs").mkdir()
    shutil.copy(photo_paths[0], tmp_path / "imgs" / "a.jpg")
    csv_path = tmp_path / "set.csv"
    csv_path.write_text(f"path,label\n# a comment\nimgs/a.jpg,safe\n\n{photo_paths[1]},NSFW\nimgs/b.jpg, 1\n")
    data = load_csv(csv_path)
    assert [(it.path, it.label) for it in data.items] == [
        (tmp_path / "imgs" / "a.jpg", 0), (photo_paths[1], 1), (tmp_path / "imgs" / "b.jpg", 1)]
    csv_path.write_text("imgs/a.jpg,safe\nimgs/b.jpg,maybe\n")
    with pytest.raises(ConfigError, match=r"set.csv:2: unknown label 'maybe'"):
        load_csv(csv_path)
    csv_path.write_text("imgs/a.jpg\n")
    with pytest.raises(ConfigError, match="expected 'path,label'"):
        load_csv(csv_path)


def test_hygiene_reports_and_never_modifies(labelled_dir: Path, photo_paths: list[Path]) -> None:
    before = _snapshot(labelled_dir)
    h = check_hygiene(load_folder(labelled_dir).items)
    assert _snapshot(labelled_dir) == before
    assert [Path(p.path).name for p in h.unreadable] == ["empty.png"]
    assert len(h.duplicates) == 1 and h.duplicates[0].conflicting
    assert sorted(Path(p).name for p in h.duplicates[0].paths) == sorted(["copy.jpg", photo_paths[0].name])
    assert sorted(h.duplicates[0].labels) == [0, 1]
    assert h.to_dict()["duplicate_files"] == 1


def test_hygiene_names_pipes_and_devices_for_what_they_are(tmp_path: Path) -> None:
    """A FIFO or /dev/zero listed in a CSV used to be reported as an "empty file (0 bytes)"."""
    import os

    from nsfwlab.evaluate import LabelledItem

    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    items = [LabelledItem(tmp_path / "pipe.jpg", 1), LabelledItem(Path("/dev/zero"), 0),
             LabelledItem(tmp_path / "empty.jpg", 0), LabelledItem(tmp_path, 1)]
    got = [(p.code, p.message) for p in check_hygiene(items).unreadable]
    assert got == [("image_error", "not a regular file (a pipe, socket or device)")] * 2 + [
        ("empty", "empty file (0 bytes)"), ("image_error", "is a directory, not an image file")]


def test_evaluate_scores_through_the_detector(labelled_dir: Path, detector) -> None:
    before = _snapshot(labelled_dir)
    data = load_folder(labelled_dir)
    result = evaluate(data, detector, targets=[TargetRate(TargetKind.FPR, 0.25), TargetRate(TargetKind.RECALL, 0.5)],
                      n_boot=50)
    assert _snapshot(labelled_dir) == before
    # the readable images, scored exactly as Detector.score scores them
    assert len(result.scored) == 8
    for it in result.scored:
        assert it.score == pytest.approx(detector.nsfw_score(it.path), abs=1e-6)
    assert {Path(p.path).name: p.code for p in result.hygiene.unreadable} == {
        "empty.png": "empty", "notes.jpg": "unsupported_format"}
    assert result.metrics.n == 8 and result.metrics.n_pos == 4
    d = json.loads(json.dumps(result.to_dict()))
    assert d["roc_auc"]["ci_low"] <= d["roc_auc"]["value"] <= d["roc_auc"]["ci_high"]
    assert d["data"]["conflicting_label_groups"] == 1
    # the galleries hold exactly the errors at the recommended bands
    th = result.metrics.recommended
    assert all(it.label == 0 and it.score > th.nsfw_above for it in result.false_positives())
    assert all(it.label == 1 and it.score < th.safe_below for it in result.false_negatives())

    deduped = evaluate(data, detector, n_boot=20, drop_duplicates=True)
    assert deduped.excluded_duplicates == 2  # both copies of the conflicting pair
    assert len(deduped.scored) == 6


def test_plots_and_report(labelled_dir: Path, detector) -> None:
    result = evaluate(load_folder(labelled_dir), detector, n_boot=20)
    y = [it.label for it in result.scored]
    s = [it.score for it in result.scored]
    plots = {"roc": roc_png(y, s, recommendations=result.metrics.recommendations), "pr": pr_png(y, s),
             "histogram": histogram_png(y, s, recommended=result.metrics.recommended)}
    for png in plots.values():
        assert png.startswith(PNG_MAGIC)
        assert Image.open(__import__("io").BytesIO(png)).size[0] > 300
    thumbs = {it.path: thumbnail(it.path) for it in result.scored}
    assert thumbnail(labelled_dir / "safe" / "notes.jpg") is None
    html = render_report(result, plots, thumbs)
    assert html.count('src="data:image/png;base64,') == 3
    assert "filter:blur(" in html and "notes.jpg" in html and "empty.png" in html
    n_gallery = len(result.false_positives()) + len(result.false_negatives())
    assert html.count("<figure class=thumb>") == n_gallery


def _tiny_set(root: Path) -> Path:
    """Separable synthetic images: dark safe, bright nsfw (labels only)."""
    for sub, base in (("safe", 40), ("nsfw", 200)):
        (root / sub).mkdir(parents=True)
        for i in range(4):
            rng = np.random.default_rng(i + base)
            arr = np.clip(base + rng.normal(0, 25, (64, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / sub / f"{i}.png")
    return root


def test_cli_evaluate_writes_every_artifact(tmp_path: Path, labelled_dir: Path) -> None:
    out = tmp_path / "report"
    res = CliRunner().invoke(app, ["evaluate", str(labelled_dir), "--out", str(out), "--bootstrap", "50",
                                   "--target-fpr", "0.25", "--target-recall", "0.75", "--target-precision", "0.5"])
    assert res.exit_code == 1, res.output  # unreadable files were reported
    assert "unreadable" in res.output and "ROC AUC" in res.output
    for name in ("roc.png", "pr.png", "histogram.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["target"] for r in metrics["recommendations"]] == ["fpr=0.25", "recall=0.75", "precision=0.5"]
    assert len((out / "scores.csv").read_text().splitlines()) == 1 + 8
    assert "<html" in (out / "report.html").read_text()


def test_cli_evaluate_with_a_checkpoint(tmp_path: Path, torch_model) -> None:
    from nsfwlab.checkpoint import save_checkpoint

    data = _tiny_set(tmp_path / "data")
    ckpt = save_checkpoint(tmp_path / "stock.pt", torch_model)
    runner = CliRunner()
    a = runner.invoke(app, ["evaluate", str(data), "--out", str(tmp_path / "a"), "--bootstrap", "20"])
    b = runner.invoke(app, ["evaluate", str(data), "--out", str(tmp_path / "b"), "--bootstrap", "20",
                            "--model", str(ckpt)])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    ma = json.loads((tmp_path / "a" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert mb["model"]["backend"] == "torch" and mb["model"]["model_version"].startswith("stock-")
    sa = [float(r.split(",")[2]) for r in (tmp_path / "a" / "scores.csv").read_text().splitlines()[1:]]
    sb = [float(r.split(",")[2]) for r in (tmp_path / "b" / "scores.csv").read_text().splitlines()[1:]]
    assert np.allclose(sa, sb, atol=1e-4)
    assert ma["roc_auc"]["value"] == pytest.approx(mb["roc_auc"]["value"], abs=1e-6)


def test_cli_evaluate_usage_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["evaluate", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "does not exist" in res.output
    data = _tiny_set(tmp_path / "d")
    res = runner.invoke(app, ["evaluate", str(data), "--out", str(tmp_path / "o"), "--target-recall", "0"])
    assert res.exit_code == 2 and "recall" in res.output
    res = runner.invoke(app, ["evaluate", str(data), "--out", str(tmp_path / "o"), "--model", str(tmp_path / "x.pt")])
    assert res.exit_code == 3 and "does not exist" in res.output
    for p in (data / "nsfw").iterdir():
        p.unlink()
    (data / "nsfw" / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    res = runner.invoke(app, ["evaluate", str(data), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "both safe and NSFW" in res.output


# -- unreadable folders and special files in a labelled set ---------------------------------
def _copy_set(root: Path, photo_paths: list[Path]) -> Path:
    (root / "safe").mkdir(parents=True)
    (root / "nsfw" / "locked").mkdir(parents=True)
    for p in photo_paths[:3]:
        shutil.copy(p, root / "safe" / p.name)
    for p in photo_paths[3:6]:
        shutil.copy(p, root / "nsfw" / p.name)
    shutil.copy(photo_paths[6], root / "nsfw" / "locked" / photo_paths[6].name)
    return root


def test_an_unreadable_folder_is_reported_in_the_hygiene_and_evaluation_goes_on(
        tmp_path: Path, photo_paths: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """chmod 000 does not stop root (who runs the tests): os.scandir is made to refuse instead."""
    root = _copy_set(tmp_path / "set", photo_paths)
    locked = root / "nsfw" / "locked"
    deny_listing(monkeypatch, locked)
    data = load_folder(root)
    assert len(data) == 7 and data.items[-1].path == locked
    h = check_hygiene(data.items)
    assert [(p.path, p.label, p.message) for p in h.unreadable] == [
        (str(locked), 1, "cannot list directory: permission denied")]
    res = CliRunner().invoke(app, ["evaluate", str(root), "--out", str(tmp_path / "out"), "--bootstrap", "20"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"unreadable: {locked}: cannot list directory: permission denied" in res.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["data"]["unreadable"][0]["path"] == str(locked)


def test_special_files_and_broken_links_in_a_folder_are_reported(tmp_path: Path, photo_paths: list[Path]) -> None:
    import os

    root = _copy_set(tmp_path / "set", photo_paths)
    os.mkfifo(root / "safe" / "pipe.jpg")
    (root / "safe" / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    (root / "nsfw" / "zero.jpg").symlink_to("/dev/zero")
    (root / "nsfw" / ".hidden").write_bytes(b"")  # hidden names stay out of the set
    got = {Path(p.path).name: p.message for p in check_hygiene(load_folder(root).items).unreadable}
    assert got == {"pipe.jpg": "not a regular file (a pipe, socket or device)",
                   "gone.jpg": "broken symbolic link (its target does not exist)",
                   "zero.jpg": "not a regular file (a pipe, socket or device)"}


def test_a_set_that_cannot_be_looked_at_is_a_one_line_usage_error(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "nosearch" / "set"
    target.mkdir(parents=True)
    deny_stat(monkeypatch, target)
    with pytest.raises(ConfigError, match=r"cannot read .*set: Permission denied"):
        load_labelled(target)
    res = CliRunner().invoke(app, ["evaluate", str(target), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "Traceback" not in res.output and "Permission denied" in res.output


def test_near_duplicate_groups_join_resized_and_slightly_cropped_copies(tmp_path: Path, photos) -> None:
    from nsfwlab.datasets import near_duplicate_groups

    img = Image.fromarray(photos["astronaut"])
    w, h = img.size
    img.save(tmp_path / "a.png")
    img.resize((256, 256)).save(tmp_path / "a_small.jpg", quality=80)
    img.crop((w // 40, h // 40, w - w // 40, h - h // 40)).save(tmp_path / "a_crop95.png")
    shutil.copy(tmp_path / "a_small.jpg", tmp_path / "a_copy.jpg")
    Image.fromarray(photos["coffee"]).save(tmp_path / "c.png")
    Image.fromarray(photos["chelsea"]).save(tmp_path / "ch.png")
    for i, v in enumerate((127, 128)):  # flat images: low-quality hashes are never joined
        Image.fromarray(np.full((64, 64, 3), v, np.uint8)).save(tmp_path / f"flat{i}.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    paths = sorted(tmp_path.iterdir())
    names = [p.name for p in paths]
    groups = dict(zip(names, near_duplicate_groups(paths), strict=True))
    assert {n for n in names if groups[n] == groups["a.png"]} == {"a.png", "a_small.jpg", "a_crop95.png",
                                                                   "a_copy.jpg"}
    assert groups["a.png"] == str(tmp_path / "a.png")  # the first image names its group
    for n in ("c.png", "ch.png", "flat0.png", "flat1.png", "bad.png"):
        assert groups[n] == str(tmp_path / n)
    # keys: images start grouped by them (identical contents), PDQ merges groups
    keys = {n: f"k-{n}" for n in names} | {"a_small.jpg": "same", "a_copy.jpg": "same", "flat1.png": "same"}
    got = dict(zip(names, near_duplicate_groups(paths, keys=[keys[n] for n in names], max_distance=0), strict=True))
    assert got["a_small.jpg"] == got["a_copy.jpg"] == got["flat1.png"] == "same"
    assert got["a.png"] == "k-a.png" and got["a_crop95.png"] == "k-a_crop95.png"  # distance 0: PDQ joins nothing
    with pytest.raises(ConfigError, match="max_distance"):
        near_duplicate_groups(paths, max_distance=300)


def test_a_csv_may_name_each_image_s_source_group_and_is_read_as_a_side_file(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from nsfwlab import datasets

    csv_path = tmp_path / "set.csv"
    csv_path.write_text("path,label,group\na1.jpg,safe,photo-a\na2.jpg,safe,photo-a\nb.jpg,nsfw,\nc.jpg,nsfw\n")
    data = load_csv(csv_path)
    assert [it.group for it in data.items] == ["photo-a", "photo-a", None, None]
    keys = [(str(it.path), f"group:{it.group}") if it.group else str(it.path) for it in data.items]
    groups = datasets.near_duplicate_groups(data.paths, keys=keys, max_distance=None)  # no hashing
    assert groups[0] == groups[1] != groups[2] != groups[3]
    monkeypatch.setattr(datasets, "MAX_CSV_BYTES", 16)  # a CSV is capped like every side file
    with pytest.raises(ConfigError, match=r"set\.csv"):
        load_csv(csv_path)
