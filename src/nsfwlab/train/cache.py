"""Preprocess every training image once, with the core's exact pipeline, and keep the arrays.

Arrays are kept in the core's transport form (:func:`nsfwlab.preprocess.pack_array`): uint8 BGR
pixels from which the float input is recovered bit for bit, at 150 KB per image, a quarter of
float32. With a ``cache_dir`` they are also saved as ``.npy`` under a key of the files' paths,
sizes, mtimes and the preprocessing version, so a resumed run does not decode everything again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import DecodeLimits, PreprocessConfig
from ..datasets import LabelledItem, Problem
from ..errors import ConfigError, ImageError, NsfwlabError
from ..preprocess import pack_array, preprocess, unpack_array
from ..readahead import ordered_map
from ..sidefiles import read_json_file

__all__ = ["MAX_WORKERS", "PreparedSet", "prepare", "text_digest"]


@dataclass(frozen=True)
class PreparedSet:
    """Preprocessed inputs of the readable images: ``pixels`` (N, H, W, 3) in the transport form
    (uint8 BGR, or the float32 network inputs when they are not ``uint8 - mean``), labels, and
    the files that failed."""

    pixels: np.ndarray
    labels: np.ndarray
    paths: tuple[str, ...]
    problems: tuple[Problem, ...]
    config: PreprocessConfig

    def __len__(self) -> int:
        return len(self.paths)

    def batch(self, index: Sequence[int] | np.ndarray) -> np.ndarray:
        """The float32 NHWC network inputs of the rows in ``index`` (exactly ``preprocess``'s output)."""
        rows = np.asarray(self.pixels[np.asarray(index)])
        return unpack_array(rows, self.config.mean_bgr)


def text_digest(parts: Iterable[str]) -> str:
    """A short sha256 (24 hex digits) of strings, which may hold undecodable file names."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:24]


def _fingerprint(items: Sequence[LabelledItem], config: PreprocessConfig) -> str:
    def line(it: LabelledItem) -> str:
        try:
            st = it.path.stat()
        except OSError:
            return f"{it.path}\0missing\n"
        return f"{it.path}\0{st.st_size}\0{st.st_mtime_ns}\0{it.label}\n"

    return text_digest([config.version, *(line(it) for it in items)])


def _stack(arrays: Sequence[np.ndarray], config: PreprocessConfig) -> np.ndarray:
    """One array of packed rows; if any row could not be packed, all are stored as float32."""
    if all(a.dtype == np.uint8 for a in arrays):
        return np.stack(arrays)
    return np.stack([unpack_array(a, config.mean_bgr) for a in arrays])


#: The most decoding threads (each holds a decoded image; more than the cores only costs memory).
MAX_WORKERS = 256


def prepare(items: Sequence[LabelledItem], config: PreprocessConfig | None = None, *,
            limits: DecodeLimits | None = None, workers: int = 2, cache_dir: str | os.PathLike | None = None,
            progress: Callable[[int, int], None] | None = None) -> PreparedSet:
    """Decode and preprocess ``items`` once (in ``workers`` threads); unreadable files are
    reported in ``problems`` and left out. ``progress(n_done, n_errors)`` is called per image."""
    config = config or PreprocessConfig()
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"workers must lie in [1, {MAX_WORKERS}], got {workers}", param="workers")
    cache_files: tuple[Path, Path] | None = None
    if cache_dir is not None:
        key = _fingerprint(items, config)
        cache_files = (Path(cache_dir) / f"prep-{key}.npy", Path(cache_dir) / f"prep-{key}.json")
        cached = _load_cached(cache_files, config)
        if cached is not None:
            if progress is not None:
                progress(len(items), len(cached.problems))
            return cached

    def one(it: LabelledItem) -> np.ndarray | NsfwlabError:
        try:
            return pack_array(preprocess(it.path, config, limits), config.mean_bgr)
        except NsfwlabError as exc:
            return exc
        except Exception as exc:
            return ImageError(f"unexpected {type(exc).__name__}: {exc}")

    arrays: list[np.ndarray] = []
    labels: list[int] = []
    paths: list[str] = []
    problems: list[Problem] = []
    for it, out in zip(items, ordered_map(one, items, ahead=4 * workers, workers=workers, name="nsfwlab-prep"),
                       strict=True):
        if isinstance(out, np.ndarray):
            arrays.append(out)
            labels.append(it.label)
            paths.append(str(it.path))
        else:
            problems.append(Problem(str(it.path), it.label, out.code, out.message))
        if progress is not None:
            progress(1, 0 if isinstance(out, np.ndarray) else 1)
    if not arrays:
        raise ConfigError("no image of the data set could be decoded")
    pixels = _stack(arrays, config)
    prepared = PreparedSet(pixels, np.asarray(labels, dtype=np.int64), tuple(paths), tuple(problems), config)
    if cache_files is not None:
        cache_files[0].parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_files[0].with_name(cache_files[0].name + ".tmp.npy")
        np.save(tmp, pixels)
        os.replace(tmp, cache_files[0])
        tmp_meta = cache_files[1].with_name(cache_files[1].name + ".tmp")
        tmp_meta.write_text(json.dumps({"labels": labels, "paths": paths,
                                        "problems": [p.to_dict() for p in problems]}))
        os.replace(tmp_meta, cache_files[1])
    return prepared


#: The cache's index holds every path of the set: generous for millions of images, yet bounded.
_META_MAX_BYTES = 256 << 20


def _load_cached(files: tuple[Path, Path], config: PreprocessConfig) -> PreparedSet | None:
    """The cached set, or ``None`` when it is missing or unusable (cut short, damaged, edited):
    the cache only saves time, so a bad one is rebuilt, never trusted and never fatal."""
    if not (files[0].is_file() and files[1].is_file()):
        return None
    try:
        meta = read_json_file(files[1], "training cache index", max_bytes=_META_MAX_BYTES)
        pixels = np.load(files[0], mmap_mode="r", allow_pickle=False)
        labels = np.asarray(meta["labels"], dtype=np.int64)
        paths = tuple(str(p) for p in meta["paths"])
        problems = tuple(Problem(**p) for p in meta["problems"])
    except (NsfwlabError, OSError, ValueError, TypeError, KeyError, EOFError):  # also a regular file over the cap,
        return None                                                            # deep nesting, NaN: rebuilt
    if pixels.ndim != 4 or not len(pixels) == len(labels) == len(paths) or not np.isin(labels, (0, 1)).all():
        return None
    return PreparedSet(pixels, labels, paths, problems, config)
