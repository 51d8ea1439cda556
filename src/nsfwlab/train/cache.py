"""Preprocess every training image once, with the core's exact pipeline, and keep the arrays.

Arrays are kept as uint8 BGR pixels (the exact preprocessing output plus the integer mean, so
the float input is recovered bit for bit) at 150 KB per image, a quarter of float32. With a
``cache_dir`` they are also saved as ``.npy`` under a key of the files' paths, sizes, mtimes and
the preprocessing version, so a resumed run does not decode everything again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import DecodeLimits, PreprocessConfig
from ..errors import ConfigError, ImageError, NsfwlabError
from ..evaluate.data import LabelledItem, Problem
from ..preprocess import preprocess

__all__ = ["PreparedSet", "prepare"]


@dataclass(frozen=True)
class PreparedSet:
    """Preprocessed inputs of the readable images: ``pixels`` (N, H, W, 3) uint8 BGR (or float32
    network inputs when the mean is not integral), labels, and the files that failed."""

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
        if rows.dtype == np.uint8:
            return rows.astype(np.float32) - np.asarray(self.config.mean_bgr, dtype=np.float32)
        return rows.astype(np.float32, copy=False)


def _integral_mean(config: PreprocessConfig) -> bool:
    return all(float(m).is_integer() for m in config.mean_bgr)


def _to_storage(arr: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    if not _integral_mean(config):
        return arr
    return np.rint(arr + np.asarray(config.mean_bgr, dtype=np.float32)).astype(np.uint8)


def _fingerprint(items: Sequence[LabelledItem], config: PreprocessConfig) -> str:
    h = hashlib.sha256(config.version.encode())
    for it in items:
        try:
            st = it.path.stat()
            h.update(f"{it.path}\0{st.st_size}\0{st.st_mtime_ns}\0{it.label}\n".encode("utf-8", "surrogateescape"))
        except OSError:
            h.update(f"{it.path}\0missing\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:24]


def prepare(items: Sequence[LabelledItem], config: PreprocessConfig | None = None, *,
            limits: DecodeLimits | None = None, workers: int = 2, cache_dir: str | os.PathLike | None = None,
            progress: Callable[[int, int], None] | None = None) -> PreparedSet:
    """Decode and preprocess ``items`` once (in ``workers`` threads); unreadable files are
    reported in ``problems`` and left out. ``progress(n_done, n_errors)`` is called per image."""
    config = config or PreprocessConfig()
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
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
            return _to_storage(preprocess(it.path, config, limits), config)
        except NsfwlabError as exc:
            return exc
        except Exception as exc:
            return ImageError(f"unexpected {type(exc).__name__}: {exc}")

    arrays: list[np.ndarray] = []
    labels: list[int] = []
    paths: list[str] = []
    problems: list[Problem] = []
    with ThreadPoolExecutor(workers, thread_name_prefix="nsfwlab-prep") as pool:
        for it, out in zip(items, pool.map(one, items), strict=True):
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
    pixels = np.stack(arrays)
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


def _load_cached(files: tuple[Path, Path], config: PreprocessConfig) -> PreparedSet | None:
    """The cached set, or ``None`` when it is missing or unusable (cut short, damaged, edited):
    the cache only saves time, so a bad one is rebuilt, never trusted and never fatal."""
    if not (files[0].is_file() and files[1].is_file()):
        return None
    try:
        meta = json.loads(files[1].read_text(encoding="utf-8"))
        pixels = np.load(files[0], mmap_mode="r", allow_pickle=False)
        labels = np.asarray(meta["labels"], dtype=np.int64)
        paths = tuple(str(p) for p in meta["paths"])
        problems = tuple(Problem(**p) for p in meta["problems"])
    except (OSError, ValueError, TypeError, KeyError, EOFError):  # JSON and Unicode errors are ValueErrors
        return None
    if pixels.ndim != 4 or not len(pixels) == len(labels) == len(paths) or not np.isin(labels, (0, 1)).all():
        return None
    return PreparedSet(pixels, labels, paths, problems, config)
