"""Streaming directory walk: image and video files by content or name, ``include`` / ``exclude`` patterns.

The walk is nsfwlab's one directory walk, :func:`nsfwlab.filetree.walk_tree` (sorted path order, one
listing in memory per level, directory symlinks not followed, file symlinks followed), and the
patterns follow gitignore's rules (:class:`nsfwlab.filetree.PathFilter`): ``thumbs`` or ``thumbs/``
skips every folder of that name at any depth, ``/raw`` only the top-level one, ``*.jpg`` any JPEG name.

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

import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..filetree import EntryKind, PathFilter, TreeEntry, matches, walk_tree
from ..frames import sniff_video
from ..imageio import IMAGE_SUFFIXES, sniff_format

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "IssueFn", "WalkConfig", "WalkIssue", "WalkedFile", "matches", "walk"]


@dataclass(frozen=True)
class WalkConfig:
    """``include``/``exclude`` are gitignore-style patterns matched against the path relative to its
    root (``*.jpg``, ``thumbs/``, ``/raw/**``, ``**/cache``); see :mod:`nsfwlab.filetree`. An empty
    ``include`` means every file; ``exclude`` wins over ``include``, and an excluded folder is not entered."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    sniff: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        self.path_filter  # a malformed pattern is a ConfigError here, before any walk  # noqa: B018

    @property
    def path_filter(self) -> PathFilter:
        return PathFilter(self.include, self.exclude)


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


def _special_kind(path: Path) -> str:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "not a regular file"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _issue(entry: TreeEntry) -> WalkIssue:
    """Why an entry that is not a regular file cannot be scanned."""
    path = str(entry.path)
    if entry.kind is EntryKind.UNREADABLE:
        return WalkIssue(path, "unreadable", f"cannot list this folder: {entry.os_message or entry.error}")
    if entry.kind is EntryKind.BROKEN_LINK:
        try:
            target = repr(os.readlink(path))
        except OSError:
            target = "a target"
        return WalkIssue(path, "dangling_link", f"symlink to {target}, which does not exist (or a loop of links)")
    return WalkIssue(path, "not_a_file", f"{_special_kind(entry.path)}, not an image file")


def _walk_dir(root: str, config: WalkConfig, on_issue: IssueFn) -> Iterator[WalkedFile]:
    for entry in walk_tree(root, config.path_filter):
        if entry.kind is not EntryKind.FILE:
            on_issue(_issue(entry))
            continue
        path = str(entry.path)
        try:
            st = os.stat(path)
        except OSError as exc:
            on_issue(WalkIssue(path, "unreadable", f"cannot read this entry: {exc.strerror or exc}"))
            continue
        if _is_candidate(path, config):
            yield WalkedFile(path, st.st_size, st.st_mtime_ns)


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
