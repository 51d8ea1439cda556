"""`nsfwlab score` on videos and animations: routing by content, frame options, output
columns, the timeline, calibration and the bank for these rows, and hostile files as one-line errors.

The CLI's Detector is given the fake RedFraction backend (tests/synthetic.py): a red frame is the
"explicit" stand-in, so a clip's flagged segment is known exactly. Clips and animations are made
at test time (tests/test_frames.py's helpers)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from nsfwlab.calibration import Calibration
from nsfwlab.cli import app
from synthetic import RedFraction

av = pytest.importorskip("av")
from test_frames import GREY, RED, animation, clip  # noqa: E402

runner = CliRunner()
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def fake_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI builds its Detector on the fake backend (the rest of its arguments kept)."""
    import nsfwlab.cli.score as score_module

    real = score_module.Detector

    def make(backend: Any, device: Any, **kwargs: Any) -> Any:
        kwargs.pop("precision", None)
        kwargs.pop("model", None)
        return real(RedFraction(), **kwargs)

    monkeypatch.setattr(score_module, "Detector", make)


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    files = {
        "clip.mp4": clip(),  # 6 s, red from 2 s to 4 s
        "third.gif": animation([GREY, (120, 120, 120), RED, (110, 110, 110), (100, 100, 100)]),
        "grey.png": animation([GREY]),  # a still PNG
        "clean.webm": clip("libvpx-vp9", "webm", seconds=2.0, red=(9.0, 9.0)),
    }
    out = {}
    for name, data in files.items():
        (d / name).write_bytes(data)
        out[name] = d / name
    return out


def _jsonl(*args: str) -> tuple[int, list[dict[str, Any]]]:
    res = runner.invoke(app, ["score", "-f", "jsonl", *args], catch_exceptions=False)
    assert "Traceback" not in res.output
    return res.exit_code, [json.loads(line) for line in res.stdout.splitlines()]


def test_a_clip_whose_middle_scores_high_is_flagged_with_its_segment(media: dict[str, Path]) -> None:
    code, (row,) = _jsonl("--per-frame", str(media["clip.mp4"]))
    assert code == 0
    assert row["kind"] == "video" and row["label"] == "nsfw" and row["score"] >= 0.8
    assert row["frames"] == 12  # 6 s at --fps 2
    (start, end, peak), = row["segments"]
    assert abs(start - 2.0) <= 0.5 and abs(end - 4.0) <= 0.5 and peak >= 0.8
    assert [t for t, _ in row["frame_scores"]] == pytest.approx([0.5 * i for i in range(12)])
    assert max(s for _, s in row["frame_scores"]) == pytest.approx(row["score"])


def test_a_gif_whose_third_frame_scores_high_is_flagged_there(media: dict[str, Path]) -> None:
    code, (row,) = _jsonl(str(media["third.gif"]))
    assert code == 0 and row["kind"] == "animation" and row["frames"] == 5 and row["label"] == "nsfw"
    (start, end, peak), = row["segments"]
    assert (start, end) == pytest.approx((0.4, 0.6)) and peak > 0.8
    assert "frame_scores" not in row  # only with --per-frame
    # --frames first: the original pipeline's first frame only (still an animation, of one frame) misses it
    code, (first,) = _jsonl("--frames", "first", str(media["third.gif"]))
    assert first["kind"] == "animation" and first["frames"] == 1 and first["label"] == "safe"


def test_inputs_are_routed_by_content_and_kept_in_order(media: dict[str, Path], photo_paths: list[Path],
                                                        tmp_path: Path) -> None:
    """Still images are batched around the videos and animations; rows stay in input order."""
    renamed = tmp_path / "holiday.jpg"  # a video named as an image: content decides
    renamed.write_bytes(media["clip.mp4"].read_bytes())
    args = [str(photo_paths[0]), str(media["third.gif"]), str(photo_paths[1]), str(photo_paths[2]),
            str(renamed), str(media["grey.png"]), str(photo_paths[3])]
    code, rows = _jsonl("--batch-size", "2", *args)
    assert code == 0 and [r["path"] for r in rows] == args
    kinds = [r.get("kind", "image row") for r in rows]
    assert kinds == ["image row", "animation", "image row", "image row", "video", "image row", "image row"]


def test_frame_options_reach_the_scoring(media: dict[str, Path]) -> None:
    gif = str(media["third.gif"])
    _, (spike,) = _jsonl("--min-consecutive", "2", gif)  # a one-frame spike is not a run of 2
    assert spike["label"] == "safe" and spike["segments"] == []
    _, (mean,) = _jsonl("--aggregate", "mean", gif)
    assert 0.1 < mean["score"] < 0.3
    _, (capped,) = _jsonl("--max-frames", "4", "--fps", "1", str(media["clip.mp4"]))
    assert capped["frames"] == 4
    _, (keys,) = _jsonl("--keyframes-only", "--fps", "1000", str(media["clip.mp4"]))
    assert 1 <= keys["frames"] < 60
    _, (stopped,) = _jsonl("--early-stop", "--batch-size", "2", "--fps", "10", str(media["clip.mp4"]))
    assert stopped["stopped_early"] is True and stopped["label"] == "nsfw" and stopped["frames"] < 60


@pytest.mark.parametrize("args", [["--aggregate", "median"], ["--fps", "0"], ["--per-frame", "-f", "csv"],
                                  ["--frames", "all"]])
def test_bad_frame_options_are_usage_errors(media: dict[str, Path], args: list[str]) -> None:
    res = runner.invoke(app, ["score", *args, str(media["clip.mp4"])])
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_hostile_and_broken_files_are_one_line_errors(media: dict[str, Path], tmp_path: Path) -> None:
    data = media["clip.mp4"].read_bytes()
    bad = {
        "live.m3u8": b"#EXTM3U\n#EXT-X-VERSION:3\n#EXTINF:10,\nhttp://example.invalid/a.ts\n",
        "list.ffconcat": b"ffconcat version 1.0\nfile '/etc/passwd'\n",
        "cut.mp4": data[: len(data) // 2],
        "notes.mp4": b"just some text, not a video\n",
        "broken.webm": b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 4,
    }
    for name, content in bad.items():
        (tmp_path / name).write_bytes(content)
    args = [str(tmp_path / n) for n in bad] + [str(media["grey.png"])]
    code, rows = _jsonl(*args)
    assert code == 1 and [r["path"] for r in rows] == args
    errors = {Path(r["path"]).name: r for r in rows[:-1]}
    assert set(errors) == set(bad) and all("error" in r and "\n" not in r["error"] for r in errors.values())
    assert errors["cut.mp4"]["code"] in {"corrupt", "truncated"}
    assert errors["broken.webm"]["code"] in {"corrupt", "truncated"}
    assert errors["live.m3u8"]["code"] == errors["notes.mp4"]["code"] == "unsupported_format"
    assert "score" in rows[-1]
    res = runner.invoke(app, ["score", *args])  # the table: one line per error too
    assert res.exit_code == 1 and "Traceback" not in res.output


def test_directories_find_videos_by_content_or_name(media: dict[str, Path], tmp_path: Path) -> None:
    d = tmp_path / "mixed"
    d.mkdir()
    (d / "recording").write_bytes(media["clean.webm"].read_bytes())  # no suffix: found by content
    (d / "clip.MOV").write_bytes(media["clip.mp4"].read_bytes())
    (d / "broken.mkv").write_bytes(b"not a video at all")  # a video name: reported
    (d / "anim.gif").write_bytes(media["third.gif"].read_bytes())
    (d / "notes.txt").write_text("not media\n")
    code, rows = _jsonl(str(d))
    assert [Path(r["path"]).name for r in rows] == ["anim.gif", "broken.mkv", "clip.MOV", "recording"]
    assert code == 1 and "error" in rows[1]
    assert [r.get("kind") for r in rows] == ["animation", None, "video", "video"]
    assert rows[3]["label"] == "safe" and rows[3]["segments"] == []


def test_csv_and_table_show_frames_and_segments(media: dict[str, Path], photo_paths: list[Path]) -> None:
    args = [str(photo_paths[0]), str(media["clip.mp4"]), str(media["third.gif"])]
    res = runner.invoke(app, ["score", "-f", "csv", *args], catch_exceptions=False)
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert res.exit_code == 0 and list(rows[0]) == ["path", "score", "label", "error", "kind", "frames", "segments"]
    assert (rows[0]["kind"], rows[0]["frames"], rows[0]["segments"]) == ("image", "1", "")
    assert (rows[1]["kind"], rows[1]["frames"]) == ("video", "12")
    (start, end, _), = json.loads(rows[1]["segments"])
    assert abs(start - 2.0) <= 0.5 and abs(end - 4.0) <= 0.5
    assert rows[2]["kind"] == "animation" and json.loads(rows[2]["segments"])[0][:2] == pytest.approx([0.4, 0.6])
    res = runner.invoke(app, ["score", *args], env={"COLUMNS": "250"}, catch_exceptions=False)
    assert res.exit_code == 0 and "segments" in res.stdout and "0.4-0.6 s" in res.stdout


def test_csv_of_images_only_keeps_its_columns(media: dict[str, Path], photo_paths: list[Path]) -> None:
    """The kind,frames,segments columns come when an input is a video, or a GIF/PNG/WebP (which may be
    animated), by its first bytes: a JPEG-only CSV is what it always was; the table adds none."""
    res = runner.invoke(app, ["score", "-f", "csv", str(photo_paths[0]), str(photo_paths[0].parent)],
                        catch_exceptions=False)
    assert res.stdout.splitlines()[0] == "path,score,label,error"
    assert all(line.count(",") == 3 for line in res.stdout.splitlines())
    res = runner.invoke(app, ["score", "-f", "csv", "--frames", "first", str(photo_paths[0]), str(media["third.gif"])],
                        catch_exceptions=False)
    assert res.stdout.splitlines()[0] == "path,score,label,error,kind,frames,segments"  # an animation still
    res = runner.invoke(app, ["score", "-f", "csv", "-", str(photo_paths[0])], input=media["grey.png"].read_bytes(),
                        catch_exceptions=False)
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [(r["path"], r["kind"], r["frames"]) for r in rows] == [("-", "image", "1"),
                                                                   (str(photo_paths[0]), "image", "1")]
    res = runner.invoke(app, ["score", str(photo_paths[0]), str(media["grey.png"])], env={"COLUMNS": "250"},
                        catch_exceptions=False)
    assert "frames" not in res.stdout and "segments" not in res.stdout


def test_timeline_png(media: dict[str, Path], photo_paths: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "plots" / "timeline.png"
    res = runner.invoke(app, ["score", "--timeline", str(out), str(media["clip.mp4"]), str(media["third.gif"]),
                              str(photo_paths[0])], catch_exceptions=False)
    assert res.exit_code == 0 and out.read_bytes().startswith(PNG_MAGIC)
    width, height = Image.open(out).size
    assert height > width * 0.5  # two subplots stacked
    assert not (tmp_path / "plots" / "timeline_2.png").exists()
    lone = tmp_path / "none.png"
    res = runner.invoke(app, ["score", "--timeline", str(lone), str(photo_paths[0])], catch_exceptions=False)
    assert res.exit_code == 0 and not lone.exists() and "no video or animation" in res.output
    res = runner.invoke(app, ["score", "--timeline", str(tmp_path), str(photo_paths[0])])
    assert res.exit_code == 2  # a folder, not a file: refused before scoring


def test_timeline_pages(tmp_path: Path) -> None:
    from nsfwlab.cli._timeline import PER_PAGE, Timeline, page_paths, timeline_pngs
    from nsfwlab.config import Thresholds

    items = [Timeline(f"v{i}.mp4", "video", 0.9, "nsfw", ((0.0, 0.1), (0.5, 0.9), (1.0, 0.2)), ((0.5, 1.0, 0.9),))
             for i in range(PER_PAGE + 1)]
    pages = timeline_pngs(items, Thresholds())
    assert len(pages) == 2 and all(p.startswith(PNG_MAGIC) for p in pages)
    assert Image.open(io.BytesIO(pages[0])).size[1] > Image.open(io.BytesIO(pages[1])).size[1]
    assert page_paths(tmp_path / "t.png", 3) == [tmp_path / "t.png", tmp_path / "t_2.png", tmp_path / "t_3.png"]


def test_calibration_applies_to_video_rows(media: dict[str, Path], tmp_path: Path) -> None:
    from nsfwlab.config import PreprocessConfig

    cal = Calibration("isotonic", "fake", PreprocessConfig().version, {"x": [0.0, 1.0], "y": [0.0, 0.5]})
    path = tmp_path / "calibration.json"
    path.write_text(cal.dumps())
    _, (raw,) = _jsonl(str(media["clip.mp4"]))
    code, (row,) = _jsonl("--calibration", str(path), "--per-frame", str(media["clip.mp4"]))
    assert code == 0 and row["score"] == pytest.approx(0.5 * raw["score"])
    assert row["label"] == "review" and row["segments"] == []  # calibrated 0.5 is below nsfw_above
    assert max(s for _, s in row["frame_scores"]) <= 0.5 + 1e-9


def test_bank_matches_no_animation_by_its_first_frame_nor_a_video(media: dict[str, Path], photos: dict,
                                                                      tmp_path: Path) -> None:
    pytest.importorskip("pdqhash")
    from nsfwlab.bank import Bank

    first = Image.fromarray(np.asarray(photos["astronaut"])).resize((96, 96))
    frames = [first, Image.new("RGB", (96, 96), RED), Image.new("RGB", (96, 96), GREY)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=200, loop=0)
    gif = tmp_path / "reviewed.gif"
    gif.write_bytes(buf.getvalue())
    with Bank(tmp_path / "bank.sqlite3") as bank:
        assert bank.add_image(gif, "safe", "review:1").skipped is None  # textured enough to bank
    code, rows = _jsonl("--bank", str(tmp_path / "bank.sqlite3"), str(gif), str(media["clip.mp4"]))
    assert code == 0
    # one frame's hash is not the file's: as in scan and serve, the animation keeps the model's label
    assert rows[0]["kind"] == "animation" and rows[0]["match"] is None and rows[0]["label"] == "nsfw"
    assert "not matched" in rows[0]["match_skipped"]
    assert rows[0]["score"] > 0.8  # the model saw the red frame
    assert rows[1]["match"] is None and "not matched" in rows[1]["match_skipped"] and rows[1]["label"] == "nsfw"


def test_progress_counts_files(media: dict[str, Path], photo_paths: list[Path]) -> None:
    res = runner.invoke(app, ["score", "-f", "jsonl", "--progress", str(photo_paths[0]), str(media["clip.mp4"]),
                              str(media["third.gif"])], catch_exceptions=False)
    assert res.exit_code == 0 and "3/3" in res.stderr and "file/s" in res.stderr


def test_a_truncated_webm_is_an_error_not_a_partial_score(tmp_path: Path) -> None:
    """The red (explicit stand-in) part is the last 2 s; cutting the file at 70% must not make it safe."""
    data = clip("libvpx-vp9", "webm", seconds=6.0, red=(4.0, 6.0))
    cut = tmp_path / "cut.webm"
    cut.write_bytes(data[: int(len(data) * 0.7)])
    code, (row,) = _jsonl(str(cut))
    assert code == 1 and row.get("code") == "truncated", row


def test_help_lists_the_frame_options() -> None:
    res = runner.invoke(app, ["score", "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
    for option in ("--frames", "--fps", "--max-frames", "--keyframes-only", "--aggregate", "--min-consecutive",
                   "--early-stop", "--per-frame", "--timeline"):
        assert option in res.stdout
    assert "frame_scores: a (time, score) pair per frame scored." in res.stdout
