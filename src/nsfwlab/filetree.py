"""The one directory walk of nsfwlab (score, evaluate's folders, scan), with gitignore-style filters.

:func:`walk_tree` yields every entry under a folder that is not a folder, in sorted path order, with
what it is (:class:`EntryKind`). Its rules, shared by every command:

- one listing in memory per level, so a tree of millions of files never becomes a list;
- a symbolic link to a file is followed; a link to a folder is not (no cycles), and not reported;
- what cannot be read is reported in its place, never skipped silently: a folder that cannot be
  listed (``UNREADABLE``, with the reason), a pipe, socket or device (``SPECIAL``: reading it could
  block forever or never end), a link whose target is missing (``BROKEN_LINK``);
- hidden names are walked like any other (a caller that wants them out filters them);
- nothing raises.

:class:`PathFilter` selects entries by patterns with gitignore's rules (through ``pathspec``'s
``GitIgnoreSpec``), matched against the path relative to the walked folder: a pattern without a slash
matches a name at any depth (``thumbs`` or ``*.jpg``); a leading slash or a slash inside anchors it
to the walked folder (``/raw``, ``raw/*.png``, ``thumbs/**`` is only the top-level ``thumbs``); ``**``
matches any number of folders (``**/thumbs/**``); a trailing slash matches folders only
(``cache/``); a leading ``!`` re-includes what an earlier pattern excluded. An excluded folder is not
entered at all.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from pathspec import GitIgnoreSpec

from .errors import ConfigError

__all__ = ["EntryKind", "PathFilter", "TreeEntry", "matches", "walk_tree"]


class EntryKind(StrEnum):
    """What :func:`walk_tree` found at a path."""

    FILE = "file"  # a regular file, or a link to one (or an entry whose type could not be read)
    SPECIAL = "special"  # a pipe, socket or device: reading it could block forever or never end
    BROKEN_LINK = "broken_link"  # a symbolic link whose target does not exist (or a loop of links)
    UNREADABLE = "unreadable"  # a directory that could not be listed


@dataclass(frozen=True)
class TreeEntry:
    """One entry of a directory tree; ``error`` says why an ``UNREADABLE`` directory was not listed
    (``os_message``: the operating system's own words, as ``strerror`` gives them)."""

    path: Path
    kind: EntryKind
    error: str | None = None
    os_message: str | None = None


def _spec(patterns: tuple[str, ...], what: str) -> GitIgnoreSpec | None:
    if not patterns:
        return None
    try:
        return GitIgnoreSpec.from_lines(patterns)
    except Exception as exc:  # pathspec raises its own error types for a malformed pattern
        raise ConfigError(f"{what} pattern is not valid: {exc}") from None


@dataclass(frozen=True)
class PathFilter:
    """Which entries a walk yields: ``exclude`` (gitignore patterns) wins; an empty ``include`` takes
    every file, else a file must match one of its patterns. See the module for the pattern rules."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    _include: GitIgnoreSpec | None = field(init=False, repr=False, compare=False, default=None)
    _exclude: GitIgnoreSpec | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        object.__setattr__(self, "_include", _spec(self.include, "include"))
        object.__setattr__(self, "_exclude", _spec(self.exclude, "exclude"))

    @property
    def active(self) -> bool:
        return self._include is not None or self._exclude is not None

    def enters(self, rel_dir: str) -> bool:
        """Whether the walk goes into the folder ``rel_dir`` (relative, ``/``-separated)."""
        return self._exclude is None or not self._exclude.match_file(rel_dir + "/")

    def takes(self, rel: str) -> bool:
        """Whether the walk yields the non-folder entry ``rel`` (relative, ``/``-separated)."""
        if self._exclude is not None and self._exclude.match_file(rel):
            return False
        return self._include is None or self._include.match_file(rel)


def matches(rel: str, patterns: Iterable[str]) -> bool:
    """Whether the relative path ``rel`` matches any of the gitignore-style ``patterns``."""
    spec = _spec(tuple(patterns), "path")
    return spec is not None and spec.match_file(rel)


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    return str(exc.strerror or exc).lower()


def _sorted_listing(folder: Path) -> list[os.DirEntry[str]] | TreeEntry:
    """The entries of ``folder`` sorted by name, or the ``UNREADABLE`` entry that says why not."""
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError as exc:
        return TreeEntry(folder, EntryKind.UNREADABLE, f"cannot list directory: {_os_reason(exc)}",
                         str(exc.strerror or exc))


def _entry_kind(entry: os.DirEntry[str]) -> EntryKind | None:
    """The kind of a non-directory entry; None for a link to a directory (never followed)."""
    try:
        if entry.is_file():  # follows links
            return EntryKind.FILE
        if not entry.is_symlink():
            return EntryKind.SPECIAL
    except OSError:  # the type cannot be read (no search permission): reading it reports why
        return EntryKind.FILE
    if os.path.isdir(entry.path):
        return None
    return EntryKind.BROKEN_LINK if not os.path.exists(entry.path) else EntryKind.SPECIAL


def _relative(path: str, root: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def walk_tree(directory: str | os.PathLike, path_filter: PathFilter | None = None) -> Iterator[TreeEntry]:
    """Every entry under ``directory`` that is not a directory, recursively, in sorted path order,
    with its kind (see the module's rules), selected by ``path_filter``. A directory that cannot be
    listed is yielded as ``UNREADABLE`` with the reason, in its place, and the walk goes on."""
    root = Path(directory)
    top = os.fspath(root)
    chosen = path_filter if path_filter is not None and path_filter.active else None
    first = _sorted_listing(root)
    if isinstance(first, TreeEntry):
        yield first
        return
    stack: list[Iterator[os.DirEntry[str]]] = [iter(first)]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        path = Path(entry.path)
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        if is_dir:
            if chosen is not None and not chosen.enters(_relative(entry.path, top)):
                continue
            listing = _sorted_listing(path)
            if isinstance(listing, TreeEntry):
                yield listing
            else:
                stack.append(iter(listing))
            continue
        if chosen is not None and not chosen.takes(_relative(entry.path, top)):
            continue
        kind = _entry_kind(entry)
        if kind is not None:
            yield TreeEntry(path, kind)
