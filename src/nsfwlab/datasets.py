"""Labelled data sets: loading (a folder with ``safe/`` and ``nsfw/``, or a CSV of ``path,label``)
and hygiene (unreadable files and duplicates by content hash, reported, never modified). Shared by
the evaluate and train capabilities (and re-exported by :mod:`nsfwlab.evaluate`)."""

from __future__ import annotations

import csv
import os
import stat
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .hashing import file_sha256
from .imageio import EntryKind, walk_tree

__all__ = [
    "MAX_CSV_BYTES",
    "NEAR_DUPLICATE_DISTANCE",
    "DuplicateGroup",
    "Hygiene",
    "LabelledItem",
    "LabelledSet",
    "Problem",
    "check_hygiene",
    "load_csv",
    "load_folder",
    "load_labelled",
    "near_duplicate_groups",
    "parse_label",
]

#: Spellings accepted for the two classes (case-insensitive). 1 / ``nsfw`` is the positive class.
_SAFE = frozenset({"safe", "sfw", "0", "neg", "negative", "false", "no"})
_NSFW = frozenset({"nsfw", "unsafe", "1", "pos", "positive", "true", "yes"})


@dataclass(frozen=True)
class LabelledItem:
    """One image file and its label (1 = NSFW, the positive class; 0 = safe). ``problem`` says why
    a path found when listing the set cannot be used (a directory that cannot be listed): it is
    reported by :func:`check_hygiene` like any unreadable file, never scored."""

    path: Path
    label: int
    problem: str | None = None
    #: The source the image was made from (a CSV's optional third column): images of one group
    #: stay on one side of a train/validation split or cross-validation fold, e.g. crops of one
    #: photo, which :func:`near_duplicate_groups`' PDQ hashes do not follow.
    group: str | None = None


@dataclass(frozen=True)
class LabelledSet:
    """The items of a data set, in a stable order, and where they came from."""

    items: tuple[LabelledItem, ...]
    source: str

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> list[int]:
        return [it.label for it in self.items]

    @property
    def paths(self) -> list[Path]:
        return [it.path for it in self.items]

    def counts(self) -> dict[str, int]:
        pos = sum(self.labels)
        return {"safe": len(self.items) - pos, "nsfw": pos}


def parse_label(raw: str) -> int:
    """``safe``/``sfw``/``0`` -> 0, ``nsfw``/``unsafe``/``1`` -> 1; anything else is a ConfigError."""
    value = raw.strip().lower()
    if value in _SAFE:
        return 0
    if value in _NSFW:
        return 1
    raise ConfigError(f"unknown label {raw!r}: use 'safe' (or 0) and 'nsfw' (or 1)")


def _files_under(folder: Path, label: int) -> list[LabelledItem]:
    """Every entry under ``folder`` but hidden names, sorted: regular files, and also pipes,
    devices and broken links (reported by :func:`check_hygiene`, not silently skipped) and
    directories that cannot be listed (with their ``problem``)."""
    return [LabelledItem(e.path, label, e.error) for e in walk_tree(folder)
            if e.kind is EntryKind.UNREADABLE or not e.path.name.startswith(".")]


def _is_dir(path: Path) -> bool:
    """``path.is_dir()``, but a path that cannot even be looked at is a one-line ConfigError."""
    try:
        return path.is_dir()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None


def load_folder(root: str | os.PathLike) -> LabelledSet:
    """Every file under ``root/safe`` (label 0) and ``root/nsfw`` (label 1), recursively, sorted.

    Files are listed, not opened: whether they decode is found out when they are scored.
    """
    root = Path(root)
    items: list[LabelledItem] = []
    for sub, label in (("safe", 0), ("nsfw", 1)):
        folder = root / sub
        if not _is_dir(folder):
            raise ConfigError(f"{root} has no '{sub}/' folder: expected {root}/safe/ and {root}/nsfw/ "
                              "(or pass a CSV of path,label)")
        items.extend(_files_under(folder, label))
    return _checked(LabelledSet(tuple(items), str(root)))


#: The largest labelled-set CSV read (a million rows of ~60 bytes).
MAX_CSV_BYTES = 64 << 20


def load_csv(path: str | os.PathLike) -> LabelledSet:
    """A CSV of ``path,label`` or ``path,label,group`` rows (a header row naming them is
    optional). Relative paths are taken relative to the CSV's folder; ``group`` (may be empty)
    names the source an image was made from (:attr:`LabelledItem.group`). Blank lines and lines
    starting with ``#`` are skipped. The file is read as a side file (regular files only, at most
    :data:`MAX_CSV_BYTES`)."""
    from .sidefiles import read_text_file

    path = Path(path)
    text = read_text_file(path, "labelled-set CSV", " (expected a CSV of path,label)", max_bytes=MAX_CSV_BYTES)
    base = path.parent
    items: list[LabelledItem] = []
    for lineno, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) < 2:
            raise ConfigError(f"{path}:{lineno}: expected 'path,label', got {','.join(row)!r}")
        raw_path, raw_label = row[0].strip(), row[1]
        if lineno == 1 and raw_path.lower() == "path" and raw_label.strip().lower() == "label":
            continue
        try:
            label = parse_label(raw_label)
        except ConfigError as exc:
            raise ConfigError(f"{path}:{lineno}: {exc.message}") from None
        p = Path(raw_path)
        group = row[2].strip() if len(row) > 2 and row[2].strip() else None
        items.append(LabelledItem(p if p.is_absolute() else base / p, label, group=group))
    return _checked(LabelledSet(tuple(items), str(path)))


def load_labelled(source: str | os.PathLike) -> LabelledSet:
    """A folder with ``safe/`` and ``nsfw/`` subfolders, or a ``.csv`` file of ``path,label``."""
    p = Path(source)
    if _is_dir(p):
        return load_folder(p)
    if p.is_file():
        return load_csv(p)
    raise ConfigError(f"{p} does not exist: pass a folder with safe/ and nsfw/, or a CSV of path,label")


def _checked(data: LabelledSet) -> LabelledSet:
    if not data.items:
        raise ConfigError(f"{data.source} holds no images")
    return data


@dataclass(frozen=True)
class Problem:
    """A file that could not be used, with the error code and message of why."""

    path: str
    label: int
    code: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "label": self.label, "code": self.code, "message": self.message}


@dataclass(frozen=True)
class DuplicateGroup:
    """Files with identical bytes. ``conflicting`` when they carry different labels."""

    sha256: str
    paths: tuple[str, ...]
    labels: tuple[int, ...]

    @property
    def conflicting(self) -> bool:
        return len(set(self.labels)) > 1

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "paths": list(self.paths), "labels": list(self.labels),
                "conflicting": self.conflicting}


@dataclass(frozen=True)
class Hygiene:
    """What is wrong with a data set. Nothing here is ever deleted or modified on disk."""

    unreadable: tuple[Problem, ...] = ()
    duplicates: tuple[DuplicateGroup, ...] = ()
    #: path -> sha256 of its bytes (files that could be read)
    digests: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def conflicting(self) -> tuple[DuplicateGroup, ...]:
        return tuple(g for g in self.duplicates if g.conflicting)

    def with_unreadable(self, problems: Iterable[Problem]) -> Hygiene:
        """Add files found unreadable later (when decoding), keeping the first report per path."""
        seen = {p.path for p in self.unreadable}
        merged = list(self.unreadable) + [p for p in problems if p.path not in seen]
        return Hygiene(tuple(merged), self.duplicates, self.digests)

    def to_dict(self) -> dict[str, Any]:
        return {
            "unreadable": [p.to_dict() for p in self.unreadable],
            "duplicate_groups": [g.to_dict() for g in self.duplicates],
            "duplicate_files": sum(len(g.paths) - 1 for g in self.duplicates),
            "conflicting_label_groups": len(self.conflicting),
        }


def check_hygiene(items: Sequence[LabelledItem]) -> Hygiene:
    """Hash every file (read-only) and group identical contents.

    Files that cannot be read at all (missing, a broken link, a directory, a pipe or device, no
    permission, empty) and directories of the set that could not be listed are reported as
    unreadable here; files that read but do not decode are added by the scoring
    pass (:meth:`Hygiene.with_unreadable`).
    """
    by_digest: dict[str, list[LabelledItem]] = defaultdict(list)
    digests: dict[str, str] = {}
    unreadable: list[Problem] = []
    for it in items:
        name = str(it.path)
        if it.problem is not None:
            unreadable.append(Problem(name, it.label, "image_error", it.problem))
            continue
        try:
            st = it.path.stat()
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError
            if not stat.S_ISREG(st.st_mode):  # a pipe could block the hash; a device never end
                unreadable.append(Problem(name, it.label, "image_error",
                                          "not a regular file (a pipe, socket or device)"))
                continue
            if st.st_size == 0:
                unreadable.append(Problem(name, it.label, "empty", "empty file (0 bytes)"))
                continue
            digest = file_sha256(it.path)
        except FileNotFoundError:
            broken = it.path.is_symlink()
            unreadable.append(Problem(name, it.label, "image_error",
                                      "broken symbolic link (its target does not exist)" if broken else "no such file"))
            continue
        except IsADirectoryError:
            unreadable.append(Problem(name, it.label, "image_error", "is a directory, not an image file"))
            continue
        except OSError as exc:
            unreadable.append(Problem(name, it.label, "image_error", f"cannot read file: {exc.strerror or exc}"))
            continue
        digests[name] = digest
        by_digest[digest].append(it)
    groups = tuple(
        DuplicateGroup(d, tuple(str(i.path) for i in group), tuple(i.label for i in group))
        for d, group in sorted(by_digest.items(), key=lambda kv: str(kv[1][0].path))
        if len(group) > 1
    )
    return Hygiene(tuple(unreadable), groups, digests)


#: Two images whose PDQ hashes differ in at most this many of their 256 bits are near-duplicates
#: for :func:`near_duplicate_groups`. Measured on scikit-image's photos: a resize moves a hash by
#: ~14 bits, +30 brightness by ~6, a 3 degree rotation by ~60, a centred 95% crop by ~48 (other
#: 95% crops 72-96; 90% crops and smaller 90-140, no longer distinguishable); unrelated photos
#: lie 106-146 apart. Meta's match threshold (31) is set for takedowns; keeping a split honest can
#: afford a wider net, since a false grouping costs only a little balance.
NEAR_DUPLICATE_DISTANCE = 63


def _pdq(path: str | os.PathLike, limits: Any) -> str | None:
    from .bank.pdq import pdq_hash
    from .errors import NsfwlabError

    try:
        h = pdq_hash(path, limits)
    except NsfwlabError:
        return None
    return h.hex if h.usable else None


def near_duplicate_groups(paths: Sequence[str | os.PathLike], *,
                          keys: Sequence[str | tuple[str, ...]] | None = None,
                          max_distance: int | None = NEAR_DUPLICATE_DISTANCE, limits: Any = None,
                          workers: int = 2) -> list[str]:
    """One group key per path, so that near-duplicates can be kept on one side of a split.

    Images start grouped by their ``keys[i]`` (default: the path itself): a string, or a tuple of
    strings, every one of which joins the image to the others carrying it (pass the content
    digests of :class:`Hygiene` to keep identical files together, and a :attr:`LabelledItem.group`
    to keep the crops of one source together). Groups joined by a pair of PDQ hashes at most
    ``max_distance`` bits apart merge (``None``: no hashing); each image gets the first key of the
    first image of its merged group. An image that cannot be hashed (it does not decode) or whose
    hash is of low quality (flat or featureless, :data:`nsfwlab.bank.pdq.QUALITY_FLOOR`) keeps its
    keys only. PDQ is robust to re-encoding, resizing, colour changes and small edits, not to
    crops that cut more than a few percent (see :data:`NEAR_DUPLICATE_DISTANCE`).

    Cost: one decode and hash per image (``workers`` threads) and all pairs compared, 32 bytes
    each (about 1.5 s for 10,000 images on one core). Hashing needs the ``pdqhash`` package (the
    ``evaluate`` and ``bank`` extras): :class:`ConfigError` otherwise.
    """
    all_keys = [(str(p),) for p in paths] if keys is None else [k if isinstance(k, tuple) else (k,) for k in keys]
    if len(all_keys) != len(paths):
        raise ConfigError(f"{len(paths)} paths but {len(all_keys)} keys", param="keys")
    if max_distance is not None and (isinstance(max_distance, bool) or not isinstance(max_distance, int)
                                     or not 0 <= max_distance <= 256):
        raise ConfigError(f"max_distance must be an integer in [0, 256], got {max_distance!r}", param="max_distance")
    if not 1 <= workers <= 256:  # threads; more than the cores only costs memory
        raise ConfigError(f"workers must lie in [1, 256], got {workers}", param="workers")
    parent = list(range(len(paths)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(i: int, j: int) -> None:
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)  # the first image's key names the group

    first: dict[str, int] = {}
    for i, ks in enumerate(all_keys):
        for k in ks:
            join(first.setdefault(str(k), i), i)
    if max_distance is not None:
        for i, j in _pdq_pairs(paths, max_distance, limits, workers):
            join(i, j)
    return [str(all_keys[root(i)][0]) for i in range(len(paths))]


def _pdq_pairs(paths: Sequence[str | os.PathLike], max_distance: int, limits: Any,
               workers: int) -> list[tuple[int, int]]:
    """The pairs ``(i, j)``, ``i < j``, of usable PDQ hashes at most ``max_distance`` bits apart."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from .bank.pdq import hash_words

    _check_pdq()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        hashes = list(pool.map(lambda p: _pdq(p, limits), paths))
    hashed = [i for i, h in enumerate(hashes) if h is not None]
    pairs: list[tuple[int, int]] = []
    if len(hashed) < 2:
        return pairs
    words = hash_words([h for h in hashes if h is not None])
    cols = [np.ascontiguousarray(words[:, k]) for k in range(4)]
    block = max(1, 2**20 // len(hashed))  # (block, n) distances at a time: 2 MB of uint16 (+ an 8 MB xor)
    for start in range(0, len(hashed), block):
        dist = np.zeros((min(block, len(hashed) - start), len(hashed)), dtype=np.uint16)
        for col in cols:  # word by word: 7x faster than one (block, n, 4) array
            dist += np.bitwise_count(col[start:start + block, None] ^ col[None, :])
        pairs += [(hashed[start + a], hashed[b]) for a, b in zip(*np.nonzero(dist <= max_distance), strict=True)
                  if start + a < b]
    return pairs


def _check_pdq() -> None:
    import importlib.util

    if importlib.util.find_spec("pdqhash") is None:
        raise ConfigError("near-duplicate grouping needs the pdqhash package: pip install 'nsfwlab[evaluate]' "
                          "(or pass max_distance=None to group identical files only)", param="max_distance")
