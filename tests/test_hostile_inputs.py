"""Hostile inputs across commands: a typed one-line error with the right exit status, found
before any work is done where it can be; never a traceback, never lost work."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from nsfwlab.cli import app
from nsfwlab.cli._common import output_dir, output_file
from nsfwlab.errors import ConfigError


@pytest.fixture()
def blocker(tmp_path: Path) -> Path:
    """A plain file standing where an output folder would have to be."""
    path = tmp_path / "blocker"
    path.write_text("in the way")
    return path


@pytest.fixture()
def labelled(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for label, colour in (("safe", (20, 120, 20)), ("nsfw", (200, 120, 90))):
        (root / label).mkdir(parents=True)
        Image.new("RGB", (32, 32), colour).save(root / label / "a.png")
    return root


def test_output_helpers_refuse_unwritable_places(tmp_path: Path, blocker: Path) -> None:
    assert output_dir(tmp_path / "new" / "deep") == tmp_path / "new" / "deep"
    assert (tmp_path / "new" / "deep").is_dir() and list((tmp_path / "new" / "deep").iterdir()) == []
    assert output_file(tmp_path / "other" / "m.pt") == tmp_path / "other" / "m.pt"
    with pytest.raises(ConfigError, match="it is a file, not a folder"):
        output_dir(blocker)
    with pytest.raises(ConfigError, match=r"cannot write to .*blocker/sub: Not a directory"):
        output_dir(blocker / "sub")
    with pytest.raises(ConfigError, match=r"cannot write to .*blocker"):
        output_file(blocker / "m.pt")
    with pytest.raises(ConfigError, match="is a directory"):
        output_file(tmp_path)
    with pytest.raises(ConfigError, match="cannot write to /proc"):
        output_dir(Path("/proc/nsfwlab-out"))  # a virtual file system: no folder can be made there


def _fails_cleanly(args: list[str], what: str) -> str:
    result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and what in result.output
    return result.output


def test_evaluate_refuses_a_bad_report_folder_before_scoring(labelled: Path, blocker: Path) -> None:
    # It used to score every image, draw the plots, then die on mkdir with a traceback.
    out = _fails_cleanly(["evaluate", str(labelled), "--out", str(blocker / "report"), "--no-progress"],
                         "cannot write to")
    assert "images (" not in out  # nothing was scored


def test_finetune_refuses_bad_output_paths_before_training(labelled: Path, blocker: Path, tmp_path: Path) -> None:
    # It used to preprocess and train a whole epoch, then die saving the state with a traceback.
    base = ["finetune", str(labelled), "--epochs", "1", "--no-progress"]
    _fails_cleanly([*base, "--out", str(blocker / "m.pt")], "cannot write to")
    _fails_cleanly([*base, "--out", str(tmp_path / "m.pt"), "--state", str(blocker / "s.pt")], "cannot write to")
    _fails_cleanly([*base, "--out", str(tmp_path / "m.pt"), "--export-onnx", str(blocker / "m.onnx")],
                   "cannot write to")
    _fails_cleanly([*base, "--out", str(tmp_path)], "is a directory")
    assert not (tmp_path / "m.state.pt").exists()


def test_export_onnx_explain_and_censor_refuse_bad_outputs(blocker: Path, tmp_path: Path) -> None:
    image = tmp_path / "img.png"
    Image.new("RGB", (40, 30), (90, 90, 90)).save(image)
    _fails_cleanly(["export-onnx", str(tmp_path / "missing.pt"), str(blocker / "m.onnx")], "cannot write to")
    _fails_cleanly(["explain", str(image), "-o", str(blocker / "x.png")], "cannot write to")
    _fails_cleanly(["explain", str(image), "-o", str(tmp_path / "x.png"), "--save-heatmap",
                    str(blocker / "h.npz")], "cannot write to")
    _fails_cleanly(["censor", str(image), "-o", str(blocker / "x.png")], "cannot write to")


def test_review_export_refuses_a_bad_out_folder(tmp_path: Path, blocker: Path) -> None:
    from nsfwlab.serve.review import ReviewStore

    with ReviewStore(tmp_path / "data"):
        pass
    _fails_cleanly(["review", "export", "--data-dir", str(tmp_path / "data"), "--out", str(blocker)],
                   "it is a file, not a folder")
    _fails_cleanly(["review", "export", "--data-dir", str(tmp_path / "data"), "--out", str(blocker / "x")],
                   "cannot write to")


def test_evaluate_reports_a_non_utf8_file_name(labelled: Path, tmp_path: Path) -> None:
    # The report used to die writing scores.csv (UnicodeEncodeError) after everything was scored,
    # leaving a half-written report folder.
    raw = os.fsencode(str(labelled / "nsfw")) + b"/b\xffd.png"
    Image.new("RGB", (32, 32), (180, 100, 80)).save(os.fsdecode(raw))
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["evaluate", str(labelled), "--out", str(out), "--no-progress",
                                      "--bootstrap", "10"])
    assert result.exit_code == 0, result.output
    assert raw + b",nsfw," in (out / "scores.csv").read_bytes()  # the name's own bytes
    assert (out / "report.html").stat().st_size > 0
    assert json.loads((out / "metrics.json").read_text())["n"] == 3
