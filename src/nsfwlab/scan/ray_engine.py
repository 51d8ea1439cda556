"""``--engine ray``: the same scan on a Ray cluster (Ray Data), into the same results store.

The driver (this process) walks the tree, decides what to skip and owns the SQLite store, exactly
as the local engine does. Files go to the cluster in blocks (``block`` files at a time, so memory
stays bounded on huge trees; each block starts a fresh actor pool), in two Ray Data passes per block:

1. hash: tasks read each file, check its format and header caps, and return its sha256 (or the
   error). The driver then drops content already scored with this model version and keeps one file per content;
2. score: tasks decode and preprocess with the core (:func:`nsfwlab.scan.pipeline.prepare_file`),
   and an actor pool of model replicas (one per GPU where the cluster has GPUs) runs the model.

Results stream back to the driver, which writes them one transaction per batch. Scores are the
local engine's: the same preprocessing and the same model build (:func:`build_scan_model`) run
in every replica. Ray is imported only here.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from functools import partial
from typing import Any

import numpy as np

from ..backends import Backend
from ..config import DecodeLimits, PreprocessConfig
from ..errors import ConfigError, NsfwlabError
from .pipeline import (
    Engine,
    ProgressFn,
    ScanConfig,
    ScanModel,
    ScanSummary,
    _plan,
    _Writer,
    build_scan_model,
    pack_array,
    prepare_file,
    unpack_array,
)
from .store import ResultStore
from .walk import WalkedFile

__all__ = ["scan_ray"]


def _hash_batch(batch: dict[str, np.ndarray], limits: DecodeLimits) -> dict[str, np.ndarray]:
    from ..imageio import open_image, read_bytes

    shas, codes, errors = [], [], []
    for path in batch["path"]:
        sha = ""
        try:
            data = read_bytes(str(path), limits)
            sha = hashlib.sha256(data).hexdigest()
            open_image(data, limits)  # format and header caps: bad files never reach the model pass
            codes.append("")
            errors.append("")
        except NsfwlabError as exc:
            codes.append(exc.code)
            errors.append(exc.message)
        shas.append(sha)
    return {"path": batch["path"], "sha256": np.array(shas, dtype=object),
            "error_code": np.array(codes, dtype=object), "error": np.array(errors, dtype=object)}


def _prepare_batch(batch: dict[str, np.ndarray], preprocess: PreprocessConfig,
                   limits: DecodeLimits) -> dict[str, np.ndarray]:
    n = len(batch["path"])
    crop = preprocess.crop
    arrays: list[np.ndarray | None] = []
    codes, errors = [], []
    for path in batch["path"]:
        p = prepare_file(WalkedFile(str(path), 0, 0), preprocess, limits)
        arrays.append(p.array)
        codes.append(p.error_code or "")
        errors.append(p.error or "")
    packed = [pack_array(a, preprocess.mean_bgr) if a is not None else None for a in arrays]
    dtype = np.uint8 if all(a is None or a.dtype == np.uint8 for a in packed) else np.float32
    pixels = np.zeros((n, crop, crop, 3), dtype=dtype)
    for i, a in enumerate(packed):
        if a is not None:
            pixels[i] = a if dtype == a.dtype else unpack_array(a, preprocess.mean_bgr)
    return {"path": batch["path"], "sha256": batch["sha256"], "ok": np.array([a is not None for a in arrays]),
            "pixels": pixels, "error_code": np.array(codes, dtype=object), "error": np.array(errors, dtype=object)}


class _ModelReplica:
    """One model per actor: built from the scan config (or the caller's picklable backend)."""

    def __init__(self, config: ScanConfig, backend: Backend | None, mean_bgr: tuple[float, float, float]) -> None:
        self.backend = backend if backend is not None else build_scan_model(config).backend
        self.mean_bgr = mean_bgr

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = batch["ok"].astype(bool)
        scores = np.full(len(ok), np.nan, dtype=np.float64)
        if ok.any():
            x = unpack_array(np.ascontiguousarray(batch["pixels"][ok]), self.mean_bgr)
            scores[ok] = self.backend.predict(x)[:, 1]
        return {"path": batch["path"], "sha256": batch["sha256"], "ok": ok, "score": scores,
                "error_code": batch["error_code"], "error": batch["error"]}


def _blocks(files: Iterator[WalkedFile], size: int) -> Iterator[list[WalkedFile]]:
    block: list[WalkedFile] = []
    for f in files:
        block.append(f)
        if len(block) >= size:
            yield block
            block = []
    if block:
        yield block


def _replicas(ray: Any, device: str) -> tuple[int, float]:
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if device == "cuda":
        if gpus < 1:
            raise ConfigError("--device cuda with --engine ray needs GPUs in the Ray cluster; it has none")
        return gpus, 1.0
    return max(1, int(resources.get("CPU", 1)) // 4), 0.0


def scan_ray(roots: list[str], store: ResultStore, config: ScanConfig, *, model: ScanModel,
             backend: Backend | None = None, progress: ProgressFn | None = None,
             block: int = 16384) -> ScanSummary:
    """Scan on Ray. ``model`` (built on the driver) defines the versions; every replica builds the
    same model from ``config``, or uses ``backend`` (which must then be picklable)."""
    import time

    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray: pip install 'nsfwlab[scan]'") from None

    from ..backends import resolve_device

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                 logging_level=logging.WARNING)
    device = resolve_device(config.device)
    n_replicas, gpus_each = _replicas(ray, device)
    summary = ScanSummary(model.model_version, model.preprocess_version, model.mode.value, Engine.RAY.value)
    writer = _Writer(store, model, config.thresholds, config.batch_size, summary, progress)
    run_id = store.start_run(model_version=model.model_version, preprocess_version=model.preprocess_version,
                             mode=model.mode.value, engine=Engine.RAY.value, roots=roots)
    mv, pv = model.model_version, model.preprocess_version
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the CLI shows its own progress bar
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    start = time.perf_counter()
    try:
        for files in _blocks(_plan(roots, store, model, config, writer), block):
            by_path = {f.path: f for f in files}
            hashed = ray.data.from_items([{"path": f.path} for f in files]).map_batches(
                partial(_hash_batch, limits=config.limits), batch_size=config.chunk * 16, batch_format="numpy")
            to_score: list[dict[str, str]] = []
            twins: dict[str, list[WalkedFile]] = {}
            for row in hashed.iter_rows():
                f, sha = by_path[str(row["path"])], str(row["sha256"])
                if row["error_code"]:
                    writer.record(f, sha or None, error_code=str(row["error_code"]), error=str(row["error"]))
                elif sha in twins:
                    twins[sha].append(f)
                elif (known := store.cached_score(sha, mv, pv)) is not None:
                    writer.record(f, sha, score=known, reused=True)
                else:
                    twins[sha] = []
                    to_score.append({"path": f.path, "sha256": sha})
            writer.flush()
            if not to_score:
                continue
            scored = (
                ray.data.from_items(to_score)
                .map_batches(partial(_prepare_batch, preprocess=model.preprocess, limits=config.limits),
                             batch_size=config.chunk * 4, batch_format="numpy")
                .map_batches(_ModelReplica, fn_constructor_args=(config, backend, model.preprocess.mean_bgr),
                             batch_size=config.batch_size, batch_format="numpy", concurrency=n_replicas,
                             num_gpus=gpus_each)
            )
            for batch in scored.iter_batches(batch_size=config.batch_size, batch_format="numpy"):
                for i in range(len(batch["path"])):
                    f, sha = by_path[str(batch["path"][i])], str(batch["sha256"][i])
                    if batch["ok"][i]:
                        score = float(batch["score"][i])
                        writer.record(f, sha, score=score)
                        for twin in twins.get(sha, []):
                            writer.record(twin, sha, score=score, reused=True)
                    else:
                        writer.record(f, sha, error_code=str(batch["error_code"][i]), error=str(batch["error"][i]))
                        for twin in twins.get(sha, []):
                            writer.record(twin, sha, error_code=str(batch["error_code"][i]),
                                          error=str(batch["error"][i]))
                writer.flush()
    finally:
        summary.seconds = time.perf_counter() - start
    store.finish_run(run_id, scored=summary.scored, reused=summary.reused, skipped=summary.skipped,
                     errors=summary.errors)
    return summary
