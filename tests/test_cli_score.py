"""`nsfwlab score` run in-process: formats, exit codes, bad inputs, no tracebacks."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nsfwlab import __version__
from nsfwlab.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory: pytest.TempPathFactory, photo_paths: list[Path]) -> Path:
    d = tmp_path_factory.mktemp("bad")
    good = photo_paths[0].read_bytes()
    (d / "empty.jpg").write_bytes(b"")
    (d / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (d / "notes.jpg").write_text("this is not an image\n")
    (d / "doc.png").write_bytes(b"%PDF-1.5\n%\xe2\xe3\xcf\xd3\n")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3)
    return d


def _run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_version() -> None:
    res = _run("--version")
    assert res.exit_code == 0 and __version__ in res.stdout


def test_jsonl_in_input_order(photo_paths: list[Path], detector) -> None:
    res = _run("score", "--format", "jsonl", "--device", "cpu", *map(str, photo_paths[:3]))
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["path"] for r in rows] == [str(p) for p in photo_paths[:3]]
    for row, path in zip(rows, photo_paths[:3], strict=True):
        assert set(row) == {"path", "score", "label"}
        assert abs(row["score"] - detector.nsfw_score(path)) <= 1e-6
        assert row["label"] in {"safe", "review", "nsfw"}


def test_bad_inputs_are_reported_and_others_scored(photo_paths: list[Path], bad_dir: Path) -> None:
    bad = sorted(bad_dir.iterdir())
    args = [str(photo_paths[0]), *map(str, bad), str(bad_dir / "missing.jpg"), str(photo_paths[1])]
    res = _run("score", "-f", "jsonl", *args)
    assert res.exit_code == 1
    assert "Traceback" not in res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["path"] for r in rows] == args
    assert "score" in rows[0] and "score" in rows[-1]
    errors = {Path(r["path"]).name: r["error"] for r in rows if "error" in r}
    assert set(errors) == {p.name for p in bad} | {"missing.jpg"}
    assert "empty" in errors["empty.jpg"]
    assert "truncated" in errors["truncated.jpg"]
    assert "PDF" in errors["doc.png"]
    assert "text" in errors["notes.jpg"]
    assert "no such file" in errors["missing.jpg"]
    for msg in errors.values():
        assert "\n" not in msg


def test_directory_is_expanded(photo_dir: Path) -> None:
    res = _run("score", "-f", "jsonl", str(photo_dir))
    assert res.exit_code == 0
    assert len(res.stdout.splitlines()) == len(list(photo_dir.glob("*.jpg")))


def test_csv_and_table(photo_paths: list[Path], bad_dir: Path) -> None:
    res = _run("score", "-f", "csv", str(photo_paths[0]), str(bad_dir / "empty.jpg"))
    assert res.exit_code == 1
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert rows[0]["label"] in {"safe", "review", "nsfw"} and float(rows[0]["score"]) >= 0
    assert rows[1]["score"] == "" and "empty" in rows[1]["error"]
    res = _run("score", str(photo_paths[0]))
    assert res.exit_code == 0 and photo_paths[0].name in res.stdout and "score" in res.stdout


def test_thresholds_change_labels(photo_paths: list[Path]) -> None:
    res = _run("score", "-f", "jsonl", "--safe-below", "0", "--nsfw-above", "0", str(photo_paths[0]))
    assert json.loads(res.stdout)["label"] == "nsfw"


def test_usage_errors_exit_2(photo_paths: list[Path]) -> None:
    assert runner.invoke(app, ["score", "--safe-below", "0.9", str(photo_paths[0])]).exit_code == 2
    assert runner.invoke(app, ["score", "--format", "xml", str(photo_paths[0])]).exit_code == 2
    assert runner.invoke(app, ["score", "--batch-size", "0", str(photo_paths[0])]).exit_code == 2
    assert runner.invoke(app, ["score"]).exit_code == 2
    assert runner.invoke(app, ["frobnicate"]).exit_code == 2


def test_missing_model_exits_3(photo_paths: list[Path], tmp_path: Path) -> None:
    res = runner.invoke(app, ["score", "--model", str(tmp_path / "nope.pt"), str(photo_paths[0])])
    assert res.exit_code == 3 and "does not exist" in res.output


def test_names_with_brackets_are_printed_verbatim(photo_paths: list[Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Paths and messages are never read as console markup ("[/b]" once raised MarkupError)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x[").mkdir()
    odd = tmp_path / "x[" / "b][red].jpg"  # its path holds "x[/b][red].jpg"
    odd.write_bytes(photo_paths[0].read_bytes()[:500])
    res = _run("score", "-f", "csv", str(odd))
    assert res.exit_code == 1 and res.stdout.splitlines()[1].startswith(f"{odd},,,truncated")
    res = _run("score", str(odd.relative_to(tmp_path)))
    assert res.exit_code == 1 and "x[/b][red].jpg" in res.stdout
    res = runner.invoke(app, ["score", "--model", str(tmp_path / "[/x][bold]m.pt"), str(photo_paths[0])])
    assert res.exit_code == 3 and "[/x][bold]m.pt does not exist" in res.output


def test_help_reads_well() -> None:
    """Defaults in option help survive rich markup; hard-wrapped docstrings are joined."""
    res = runner.invoke(app, ["explain", "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
    assert res.exit_code == 0 and "Windows per model call (default: 4 on CPU, 32 on CUDA)." in res.stdout
    res = runner.invoke(app, ["score", "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
    assert "score [OPTIONS] {PATH}..." in res.stdout and "PATH..." not in res.stdout
    res = runner.invoke(app, ["--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
    assert "AUC and average precision with bootstrap confidence intervals, confusion" in res.stdout


def test_progress_rate_is_the_mean_since_start() -> None:
    """A batch of results arriving at once must not read as thousands of images per second."""
    from rich.progress import Progress

    from nsfwlab.cli._common import mean_rate

    now = [0.0]
    progress = Progress(get_time=lambda: now[0], disable=True)
    task_id = progress.add_task("scoring", total=32)
    now[0] = 2.0
    for _ in range(16):  # one batch of 16, all within a millisecond
        now[0] += 1e-5
        progress.advance(task_id)
    task = progress.tasks[0]
    assert task.speed is not None and task.speed > 1e4  # rich's own estimate
    assert abs(mean_rate(task) - 8.0) < 0.01
    now[0] = 4.0
    progress.advance(task_id, 16)
    assert abs(mean_rate(progress.tasks[0]) - 8.0) < 0.01  # finished: total over elapsed at the end
    now[0] = 100.0
    assert abs(mean_rate(progress.tasks[0]) - 8.0) < 0.01


def test_stdin(photo_paths: list[Path]) -> None:
    res = runner.invoke(app, ["score", "-f", "jsonl", "-"], input=photo_paths[0].read_bytes())
    assert res.exit_code == 0 and json.loads(res.stdout)["path"] == "-"


def test_max_pixels_option(photo_paths: list[Path]) -> None:
    res = _run("score", "-f", "jsonl", "--max-pixels", "100", str(photo_paths[0]))
    assert res.exit_code == 1 and "pixels" in json.loads(res.stdout)["error"]


def test_decode_caps_from_the_environment(photo_paths: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """NSFWLAB_MAX_PIXELS / NSFWLAB_MAX_BYTES set the caps unless the option is given, everywhere."""
    from nsfwlab.config import DecodeLimits
    from nsfwlab.scan import ScanConfig
    from nsfwlab.serve import ServeConfig

    monkeypatch.setenv("NSFWLAB_MAX_PIXELS", "100")
    monkeypatch.setenv("NSFWLAB_MAX_BYTES", "5000000")
    res = _run("score", "-f", "jsonl", str(photo_paths[0]))
    assert res.exit_code == 1 and json.loads(res.stdout)["code"] == "too_large"
    res = _run("score", "-f", "jsonl", "--max-pixels", "100000000", str(photo_paths[0]))
    assert res.exit_code == 0 and "score" in json.loads(res.stdout)
    env_limits = DecodeLimits(max_bytes=5_000_000, max_pixels=100)
    assert DecodeLimits.from_env() == ScanConfig().limits == ServeConfig().limits == env_limits
    assert DecodeLimits.from_env(max_bytes=7) == DecodeLimits(max_bytes=7, max_pixels=100)
    monkeypatch.setenv("NSFWLAB_MAX_PIXELS", "lots")
    res = runner.invoke(app, ["score", str(photo_paths[0])])
    assert res.exit_code == 2 and "NSFWLAB_MAX_PIXELS must be an integer" in res.output


class _EndlessStream(io.RawIOBase):
    """A JPEG signature followed by an endless stream of bytes; fails if read far past any cap."""

    def __init__(self) -> None:
        self.served = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        if self.served > 10_000_000:
            raise AssertionError("standard input was read far past --max-bytes")
        n = len(buffer)
        buffer[:n] = (b"\xff\xd8\xff\xe0" + b"\x00" * n)[:n] if self.served == 0 else b"\x00" * n
        self.served += n
        return n


def test_stdin_is_read_no_further_than_the_byte_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    from types import SimpleNamespace

    import nsfwlab.cli.score as score_module

    stream = _EndlessStream()

    class _Sys:  # the real sys (stdout is the runner's), with an endless standard input
        stdin = SimpleNamespace(buffer=io.BufferedReader(stream))

        def __getattr__(self, name: str) -> object:
            return getattr(sys, name)

    monkeypatch.setattr(score_module, "sys", _Sys())
    res = runner.invoke(app, ["score", "-f", "jsonl", "--max-bytes", "1000", "-"], catch_exceptions=False)
    assert res.exit_code == 1 and json.loads(res.stdout)["code"] == "too_large"
    assert stream.served < 1_000_000


def test_python_dash_m_runs_the_cli() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "nsfwlab", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"nsfwlab {__version__}"


def test_directory_takes_images_by_content_or_name(tmp_path: Path, photo_paths: list[Path]) -> None:
    d = tmp_path / "mixed"
    (d / "sub").mkdir(parents=True)
    (d / "README.txt").write_text("notes, not an image\n")
    (d / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (d / "sub" / "photo").write_bytes(photo_paths[0].read_bytes())  # no suffix: found by content
    (d / "broken.jpg").write_bytes(b"not really a jpeg")  # image name: reported
    res = _run("score", "-f", "jsonl", str(d))
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [Path(r["path"]).name for r in rows] == ["broken.jpg", "photo"]
    assert "error" in rows[0] and "score" in rows[1]
    assert res.exit_code == 1


def test_empty_directory_is_reported(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    res = _run("score", "-f", "jsonl", str(tmp_path / "empty"))
    assert res.exit_code == 1
    assert json.loads(res.stdout)["error"] == "directory holds no image files"


def test_broken_link_named_as_image_is_reported(tmp_path: Path, photo_paths: list[Path]) -> None:
    d = tmp_path / "links"
    d.mkdir()
    (d / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    (d / "gone.txt").symlink_to(tmp_path / "deleted.txt")  # whatever its name, as scan reports it
    (d / "ok.jpg").write_bytes(photo_paths[0].read_bytes())
    res = _run("score", "-f", "jsonl", str(d))
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [Path(r["path"]).name for r in rows] == ["gone.jpg", "gone.txt", "ok.jpg"]
    assert rows[0]["error"] == rows[1]["error"] == "no such file" and res.exit_code == 1


# -- unreadable directories, special files -------------------------------------------------
def deny_listing(monkeypatch: pytest.MonkeyPatch, *denied: Path) -> None:
    """os.scandir raises PermissionError for ``denied`` (chmod 000 does not stop root, who runs the tests)."""
    import os

    real = os.scandir
    blocked = {os.fspath(p) for p in denied}

    def scandir(path: object = ".") -> object:
        if os.fspath(path) in blocked:  # type: ignore[arg-type]
            raise PermissionError(13, "Permission denied", os.fspath(path))  # type: ignore[arg-type]
        return real(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", scandir)


def deny_stat(monkeypatch: pytest.MonkeyPatch, denied: Path) -> None:
    """Path.stat raises PermissionError for ``denied``, as under a folder without search permission."""
    real_stat = Path.stat

    def stat(self: Path, *args: object, **kwargs: object) -> object:
        if self == denied:
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "stat", stat)


def test_an_unreadable_subdirectory_is_reported_and_the_walk_goes_on(
        tmp_path: Path, photo_paths: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "tree"
    (d / "locked").mkdir(parents=True)
    for name in ("a.jpg", "locked/b.jpg", "z.jpg"):
        (d / name).write_bytes(photo_paths[0].read_bytes())
    deny_listing(monkeypatch, d / "locked")
    res = _run("score", "-f", "jsonl", str(d))
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert [Path(r["path"]).name for r in rows] == ["a.jpg", "locked", "z.jpg"]
    assert rows[1]["error"] == "cannot list directory: permission denied" and "score" in rows[2]


def test_an_unreadable_directory_given_is_one_error(tmp_path: Path, photo_paths: list[Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "locked"
    d.mkdir()
    (d / "a.jpg").write_bytes(photo_paths[0].read_bytes())
    deny_listing(monkeypatch, d)
    res = _run("score", "-f", "jsonl", str(d), str(photo_paths[1]))
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert res.exit_code == 1 and [r["path"] for r in rows] == [str(d), str(photo_paths[1])]
    assert rows[0]["error"] == "cannot list directory: permission denied" and "score" in rows[1]


def test_a_path_that_cannot_be_looked_at_is_one_error(tmp_path: Path, photo_paths: list[Path],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a folder without search permission even stat() fails: Path.is_dir() used to raise."""
    hidden = tmp_path / "nosearch" / "photos"
    hidden.mkdir(parents=True)
    deny_stat(monkeypatch, hidden)
    res = _run("score", "-f", "jsonl", str(hidden), str(photo_paths[0]))
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert res.exit_code == 1 and rows[0] == {"path": str(hidden), "error": "permission denied", "code": "image_error"}
    assert "score" in rows[1]


def test_pipes_and_device_links_named_as_images_are_reported_not_opened(tmp_path: Path,
                                                                        photo_paths: list[Path]) -> None:
    import os

    d = tmp_path / "special"
    d.mkdir()
    os.mkfifo(d / "pipe.jpg")  # opening it would block forever
    os.mkfifo(d / "pipe")  # whatever its name: reported, never skipped silently (as scan does)
    (d / "null.mp4").symlink_to("/dev/null")
    (d / "ok.jpg").write_bytes(photo_paths[0].read_bytes())
    res = _run("score", "-f", "jsonl", str(d))
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [Path(r["path"]).name for r in rows] == ["null.mp4", "ok.jpg", "pipe", "pipe.jpg"]
    assert all(rows[i]["error"].startswith("not a regular file") for i in (0, 2, 3))
    assert res.exit_code == 1


def test_walk_tree_is_sorted_like_rglob_and_reports_kinds(tmp_path: Path) -> None:
    import os

    from nsfwlab.imageio import EntryKind, walk_tree

    for rel in ("b/c.jpg", "b/a/x", "a.jpg", "b.jpg", "b/a.jpg", "c/d/e/f.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "missing")
    (tmp_path / "loop").symlink_to(tmp_path)  # a link to a directory: not followed
    os.mkfifo(tmp_path / "fifo")
    entries = list(walk_tree(tmp_path))
    expected = sorted(p for p in tmp_path.rglob("*") if not p.is_dir() or p.is_symlink())
    expected.remove(tmp_path / "loop")
    assert [e.path for e in entries] == expected
    kinds = {e.path.name: e.kind for e in entries}
    assert kinds["gone.jpg"] is EntryKind.BROKEN_LINK and kinds["fifo"] is EntryKind.SPECIAL
    assert kinds["f.png"] is EntryKind.FILE
