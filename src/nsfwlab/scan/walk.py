"""Streaming directory walk: image and video files by content or name, ``--include`` / ``--exclude`` globs.

The walk is a generator over ``os.scandir`` (one directory listing in memory at a time, sorted
for a stable order), so a tree of millions of files never becomes a list. Directory symlinks are
not followed (no cycles); file symlinks are.

A file is an image when its name says image (``.jpg``, ``.heic``, ...; taken without opening it, so
the scan reads it once) or when its first bytes are one of the allowed formats
(:func:`nsfwlab.imageio.sniff_format`); a video when its name says video (``.mp4 .mov .m4v .webm
.mkv``) or its first bytes are MP4/QuickTime or Matroska/WebM
(:func:`nsfwlab.frames.sniff_video`). A file with an image name whose content is not an allowed
format is yielded, so that the scan records why it could not be scored instead of silently ignoring it.

What cannot be scanned is reported, never skipped silently, through ``on_issue`` (the scan records
each as an error row): a folder that cannot be listed (``unreadable``), a dangling or looping
symlink (``dangling_link``), a FIFO, socket or device (``not_a_file``). A symlink to a folder is
not followed, by design, and not reported.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..frames import sniff_video
from ..imageio import IMAGE_SUFFIXES, sniff_format

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "IssueFn", "WalkConfig", "WalkIssue", "WalkedFile", "matches", "walk"]


@dataclass(frozen=True)
class WalkConfig:
    """``include``/``exclude`` are shell globs matched against the path relative to its root and
    against the bare file name (``*.jpg``, ``raw/**``, ``*/thumbs/*``). An empty ``include`` means
    every file; ``exclude`` wins over ``include``."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    sniff: bool = True


@dataclass(frozen=True)
class WalkedFile:
    path: str  # absolute, not symlink-resolved
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class WalkIssue:
    """A path the walk met but cannot hand to the scan, and why (``code``: ``unreadable``,
    ``dangling_link`` or ``not_a_file``)."""

    path: str
    code: str
    message: str


IssueFn = Callable[[WalkIssue], None]


def matches(rel: str, patterns: Iterable[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    for pat in patterns:
        if fnmatch.fnmatchcase(rel, pat) or fnmatch.fnmatchcase(name, pat):
            return True
        if pat.endswith("/**") and (rel == pat[:-3] or rel.startswith(pat[:-2])):
            return True
    return False


#: Names taken as videos without opening the file (other files are recognised by content).
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".m4v", ".webm", ".mkv"})


def _is_candidate(path: str, config: WalkConfig) -> bool:
    """An image or video name is enough (the scan reads the file once, later); other names are
    sniffed (their first 32 bytes). An unreadable file counts, so that its error is reported."""
    suffix = os.path.splitext(path)[1].lower()
    if not config.sniff or suffix in IMAGE_SUFFIXES or suffix in VIDEO_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(32)
    except OSError:
        return True
    return sniff_format(head) is not None or sniff_video(head) is not None


def _special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _unscannable(entry: os.DirEntry[str]) -> WalkIssue | None:
    """Why an entry that is neither a folder nor a regular file cannot be scanned (``None``: a
    symlink to a folder, not followed by design)."""
    if entry.is_symlink():
        if os.path.isdir(entry.path):
            return None
        if not os.path.exists(entry.path):
            return WalkIssue(entry.path, "dangling_link", f"symlink to {os.readlink(entry.path)!r}, which does "
                                                          "not exist (or a loop of links)")
    kind = _special_kind(os.stat(entry.path).st_mode)
    return WalkIssue(entry.path, "not_a_file", f"{kind}, not an image file")


def _walk_dir(root: str, config: WalkConfig, on_issue: IssueFn) -> Iterator[WalkedFile]:
    stack = [root]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            on_issue(WalkIssue(current, "unreadable", f"cannot list this folder: {exc.strerror or exc}"))
            continue
        subdirs: list[str] = []
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.path)
                    continue
                rel = os.path.relpath(entry.path, root).replace(os.sep, "/")
                if config.include and not matches(rel, config.include):
                    continue
                if config.exclude and matches(rel, config.exclude):
                    continue
                if not entry.is_file():
                    if (issue := _unscannable(entry)) is not None:
                        on_issue(issue)
                    continue
                st = entry.stat()
            except OSError as exc:
                on_issue(WalkIssue(entry.path, "unreadable", f"cannot read this entry: {exc.strerror or exc}"))
                continue
            if _is_candidate(entry.path, config):
                yield WalkedFile(entry.path, st.st_size, st.st_mtime_ns)
        stack.extend(reversed(subdirs))


def _ignore(issue: WalkIssue) -> None:
    return None


def walk(roots: Iterable[str | os.PathLike], config: WalkConfig | None = None, *,
         on_issue: IssueFn | None = None) -> Iterator[WalkedFile]:
    """Yield the image files under ``roots`` (directories recursively, files as given); what cannot be
    scanned goes to ``on_issue`` (default: ignored, e.g. for counting)."""
    config = config or WalkConfig()
    for raw in roots:
        root = os.path.abspath(os.fspath(raw))
        if os.path.isdir(root):
            yield from _walk_dir(root, config, on_issue or _ignore)
        elif os.path.isfile(root):
            st = os.stat(root)
            yield WalkedFile(root, st.st_size, st.st_mtime_ns)
        elif os.path.exists(root):
            raise ConfigError(f"{Path(raw)}: not a regular file or directory (a pipe, socket or device)")
        else:
            raise ConfigError(f"{Path(raw)}: no such file or directory")
