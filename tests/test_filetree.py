"""nsfwlab's one directory walk (nsfwlab.filetree): gitignore-style filters, what it reports, and
that score and scan walk by the same rules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nsfwlab.errors import ConfigError, ImageError
from nsfwlab.filetree import EntryKind, PathFilter, matches, walk_tree
from nsfwlab.imageio import iter_image_files
from nsfwlab.scan.walk import WalkConfig, WalkIssue, walk

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    for rel in ("a.jpg", "thumbs/t.jpg", "d/thumbs/t.jpg", "d/e/thumbs/t.jpg", "raw/r.png", "d/raw/r.png",
                "cache/c.jpg", "d/cache", "keep/k.jpg", ".hidden/h.jpg", "d/x.jpg"):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(JPEG)
    return root


def _walked(root: Path, **kwargs: tuple[str, ...]) -> list[str]:
    return [str(e.path.relative_to(root)) for e in walk_tree(root, PathFilter(**kwargs))]


@pytest.mark.parametrize(("exclude", "gone"), [
    (("thumbs",), {"thumbs/t.jpg", "d/thumbs/t.jpg", "d/e/thumbs/t.jpg"}),  # no slash: any depth
    (("thumbs/",), {"thumbs/t.jpg", "d/thumbs/t.jpg", "d/e/thumbs/t.jpg"}),  # trailing slash: folders
    (("thumbs/**",), {"thumbs/t.jpg"}),  # a slash inside anchors: the top-level folder only
    (("/raw",), {"raw/r.png"}),  # a leading slash anchors
    (("**/thumbs/**",), {"thumbs/t.jpg", "d/thumbs/t.jpg", "d/e/thumbs/t.jpg"}),
    (("d/**/t.jpg",), {"d/thumbs/t.jpg", "d/e/thumbs/t.jpg"}),  # ** matches any number of folders
    (("cache/",), {"cache/c.jpg"}),  # the file d/cache is not a folder
    (("*.jpg", "!keep/k.jpg"), {"a.jpg", "thumbs/t.jpg", "d/thumbs/t.jpg", "d/e/thumbs/t.jpg", "cache/c.jpg",
                               ".hidden/h.jpg", "d/x.jpg"}),  # ! re-includes
])
def test_excludes_follow_gitignore_rules(tree: Path, exclude: tuple[str, ...], gone: set[str]) -> None:
    everything = set(_walked(tree))
    assert gone <= everything
    assert set(_walked(tree, exclude=exclude)) == everything - gone


def test_includes_and_excludes_together(tree: Path) -> None:
    assert _walked(tree, include=("*.png",)) == ["d/raw/r.png", "raw/r.png"]
    assert _walked(tree, include=("*.png",), exclude=("/raw/",)) == ["d/raw/r.png"]
    assert matches("a/b/thumbs/x.jpg", ["thumbs/"]) and not matches("a/thumbs.jpg", ["thumbs/"])
    with pytest.raises(ConfigError, match="exclude pattern"):
        PathFilter(exclude=("ok/", "a\\"))  # a trailing backslash escapes nothing


def test_an_excluded_folder_is_not_entered(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    listed: list[str] = []
    real = os.scandir

    def spy(path: str | os.PathLike[str]) -> object:
        listed.append(os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", spy)
    list(walk_tree(tree, PathFilter(exclude=("thumbs",))))
    assert not any(p.endswith("thumbs") for p in listed)


def test_the_walk_reports_what_it_cannot_read_in_sorted_order(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.jpg").write_bytes(JPEG)
    (tmp_path / "a.jpg").write_bytes(JPEG)
    (tmp_path / "c.txt").write_text("not an image")
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "missing")
    (tmp_path / "loop").symlink_to(tmp_path)  # a folder link: not followed, not reported
    kinds = {str(e.path.relative_to(tmp_path)): e.kind for e in walk_tree(tmp_path)}
    assert list(kinds) == ["a.jpg", "b/x.jpg", "c.txt", "gone.jpg", "pipe"]
    assert kinds["gone.jpg"] is EntryKind.BROKEN_LINK and kinds["pipe"] is EntryKind.SPECIAL
    # score's view: images, and every special entry in its place (reading it says what it is)
    got = [p.name if isinstance(p, Path) else p for p in iter_image_files(tmp_path)]
    assert got == ["a.jpg", "x.jpg", "gone.jpg", "pipe"]
    # scan's view: the same files, and the same entries as issues
    issues: list[WalkIssue] = []
    files = [Path(f.path).name for f in walk([tmp_path], on_issue=issues.append)]
    assert files == ["a.jpg", "x.jpg"]
    assert [(Path(i.path).name, i.code) for i in issues] == [("gone.jpg", "dangling_link"), ("pipe", "not_a_file")]


def test_score_and_scan_take_the_same_excludes(tree: Path) -> None:
    config = WalkConfig(exclude=("thumbs/", "/raw"))
    scanned = sorted(str(Path(f.path).relative_to(tree)) for f in walk([tree], config))
    scored = sorted(str(p.relative_to(tree)) for p in iter_image_files(tree, path_filter=config.path_filter)
                    if not isinstance(p, ImageError))
    assert scanned == scored and "d/thumbs/t.jpg" not in scanned and "d/raw/r.png" in scanned
    with pytest.raises(ConfigError):
        WalkConfig(include=("!",))


@pytest.mark.skipif(os.geteuid() == 0, reason="root lists any folder")
def test_an_unreadable_folder_is_reported_in_its_place(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        entries = list(walk_tree(tmp_path))
    finally:
        locked.chmod(0o755)
    assert [(e.path.name, e.kind) for e in entries] == [("locked", EntryKind.UNREADABLE)]
