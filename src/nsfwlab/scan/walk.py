"""Streaming directory walk: image files by content, ``--include`` / ``--exclude`` globs.

The walk is a generator over ``os.scandir`` (one directory listing in memory at a time, sorted
for a stable order), so a tree of millions of files never becomes a list. Directory symlinks are
not followed (no cycles); file symlinks are.

A file is an image when its name says image (``.jpg``, ``.heic``, ...; taken without opening it, so
the scan reads it once) or when its first bytes are one of the allowed formats
(:func:`nsfwlab.imageio.sniff_format`). A file with an image name whose content is not an allowed
format is yielded, so that the scan records why it could not be scored instead of silently ignoring it.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..imageio import IMAGE_SUFFIXES, looks_like_image

__all__ = ["IMAGE_SUFFIXES", "WalkConfig", "WalkedFile", "matches", "walk"]



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


def matches(rel: str, patterns: Iterable[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    for pat in patterns:
        if fnmatch.fnmatchcase(rel, pat) or fnmatch.fnmatchcase(name, pat):
            return True
        if pat.endswith("/**") and (rel == pat[:-3] or rel.startswith(pat[:-2])):
            return True
    return False


def _is_candidate(path: str, config: WalkConfig) -> bool:
    """An image name is enough (the scan reads the file once, later); other names are sniffed."""
    if not config.sniff or os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES:
        return True
    return looks_like_image(path)


def _walk_dir(root: str, config: WalkConfig) -> Iterator[WalkedFile]:
    stack = [root]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        subdirs: list[str] = []
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.path)
                    continue
                if not entry.is_file():
                    continue
                rel = os.path.relpath(entry.path, root).replace(os.sep, "/")
                if config.include and not matches(rel, config.include):
                    continue
                if config.exclude and matches(rel, config.exclude):
                    continue
                st = entry.stat()
            except OSError:
                continue
            if _is_candidate(entry.path, config):
                yield WalkedFile(entry.path, st.st_size, st.st_mtime_ns)
        stack.extend(reversed(subdirs))


def walk(roots: Iterable[str | os.PathLike], config: WalkConfig | None = None) -> Iterator[WalkedFile]:
    """Yield the image files under ``roots`` (directories recursively, files as given)."""
    config = config or WalkConfig()
    for raw in roots:
        root = os.path.abspath(os.fspath(raw))
        if os.path.isdir(root):
            yield from _walk_dir(root, config)
        elif os.path.isfile(root):
            st = os.stat(root)
            yield WalkedFile(root, st.st_size, st.st_mtime_ns)
        elif os.path.exists(root):
            raise ConfigError(f"{Path(raw)}: not a regular file or directory (a pipe, socket or device)")
        else:
            raise ConfigError(f"{Path(raw)}: no such file or directory")
