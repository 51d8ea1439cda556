"""``nsfwlab scan`` and ``nsfwlab export``: scan trees into a results store; export it."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..config import DecodeLimits, Device, Label
from ..errors import NsfwlabError
from ..frames import FrameMode
from ..scan.config import Engine, Executor
from ..scan.export import ExportFormat
from ..scan.modes import FAST_GUARD_MARGIN, ScanMode
from ..scan.sink import ScanSummary
from ..scan.store import ResultStore, Status, StoreWriteError
from ._common import (
    AGGREGATE_OPTION,
    FPS_OPTION,
    FRAMES_OPTION,
    KEYFRAMES_ONLY_OPTION,
    MAX_FRAMES_OPTION,
    MIN_CONSECUTIVE_OPTION,
    TOPK_OPTION,
    ExitCode,
    fail,
    progress_bar,
    stderr,
    stdout,
    tagged,
)

__all__ = ["export_command", "scan_command"]

#: Library parameters whose flag is not their name: the store's ``path`` is ``--db``.
_FLAGS = {"path": "--db"}


def scan_command(
    paths: list[Path] = typer.Argument(..., metavar="DIR", help="Directories (scanned recursively) or files."),
    db: Path = typer.Option(..., "--db", help="SQLite results store (created if missing; re-runs resume)."),
    mode: ScanMode = typer.Option(ScanMode.EXACT, "--mode", help="exact: scores equal `nsfwlab score`; fast: DCT-scaled decode + int8 "
                             "(CPU; labels near a band boundary re-scored exactly, see --guard-margin) or GPU decode/resize + fp16 (CUDA); drift measured in docs/scan.md."),
    device: Device = typer.Option(Device.CPU, help="Where the model runs (cuda: GPU decoding in fast mode)."),
    executor: Executor = typer.Option(Executor.AUTO, "--executor", help="Decode in threads or processes "
                                      "(auto: threads on up to 4 cores, processes above; processes isolate "
                                      "decoder crashes)."),
    engine: Engine = typer.Option(Engine.LOCAL, "--engine", help="local: this machine; ray: a Ray cluster (RAY_ADDRESS) or a local Ray instance."),
    include: list[str] = typer.Option([], "--include", help="Only paths matching this gitignore-style pattern (repeatable; e.g. '*.jpg')."),
    exclude: list[str] = typer.Option([], "--exclude", help="Skip paths matching this gitignore-style pattern (repeatable; wins over --include; 'thumbs/' skips every thumbs folder, '/thumbs' only the top one)."),
    model: Path | None = typer.Option(None, "--model", help="A fine-tuned checkpoint (.pt) or exported .onnx."),
    batch_size: int | None = typer.Option(None, min=1, help="Images per model call (default: 8 on the CPU, where onnxruntime runs small batches cheaper per image, 32 on CUDA)."),
    workers: int | None = typer.Option(None, min=1, help="Decoding threads (default: one per core) or processes (default: half the cores)."),
    threads: int | None = typer.Option(None, min=1, help="Model threads (default: CPU count)."),
    max_attempts: int = typer.Option(3, min=1, help="Give up on a failing file after this many runs (unless it changes)."),
    safe_below: float = typer.Option(0.2, help="Scores below this are labelled 'safe'."),
    nsfw_above: float = typer.Option(0.8, help="Scores above this are labelled 'nsfw'."),
    max_pixels: int | None = typer.Option(None, min=1, help="Refuse images with more pixels (default: $NSFWLAB_MAX_PIXELS, else 100000000)."),
    max_bytes: int | None = typer.Option(None, min=1, help="Refuse files larger than this (default: $NSFWLAB_MAX_BYTES, else 67108864)."),
    cache_dir: Path | None = typer.Option(None, help="Where fast mode caches its int8 model, and a scan a .pt checkpoint's ONNX export (default ~/.cache/nsfwlab)."),
    guard_margin: float = typer.Option(FAST_GUARD_MARGIN, "--guard-margin", help="Fast mode on a CPU re-scores exactly an image whose fast score lies this close to a band boundary, so its label is exact's (0: never; docs/scan.md)."),
    frames: FrameMode = FRAMES_OPTION,
    fps: float = FPS_OPTION,
    max_frames: int = MAX_FRAMES_OPTION,
    keyframes_only: bool = KEYFRAMES_ONLY_OPTION,
    aggregate: str = AGGREGATE_OPTION,
    topk: int = TOPK_OPTION,
    min_consecutive: int = MIN_CONSECUTIVE_OPTION,
    calibration: Path | None = typer.Option(None, "--calibration", help="A calibration.json from `evaluate --calibrate`: scores become calibrated probabilities (labels follow them); raw_score keeps the model's."),
    bank: Path | None = typer.Option(None, "--bank", help="A hash bank (`nsfwlab bank`): an image matching a banked PDQ hash takes the human decision as its label (the model score is kept)."),
    match_distance: int = typer.Option(31, "--match-distance", min=0, max=256, help="Most differing PDQ bits (of 256) for a bank match."),
    count: bool = typer.Option(True, "--count/--no-count", help="Count files first, for the progress bar's ETA."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="Progress bar (default: on a terminal)."),
    json_summary: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Score every image under DIR... into a resumable results store.

    A re-run skips files already scored with the same content and model; a killed scan loses at
    most one batch. Paths that cannot be scanned (unreadable folders, dangling links, FIFOs, devices)
    are recorded as errors; rows of files deleted since are marked 'missing'. Exit status: 0 all
    scored, 1 some files failed (recorded in the store) or the store could not be written (a full
    disk; what was committed is kept), 2 usage error (also a read-only or foreign --db), 3 the model
    could not be loaded.
    """
    from ..calibration import load_calibration
    from ..config import Thresholds
    from ..frames import FrameOptions
    from ..scan import ResultStore, ScanConfig, WalkConfig, scan, walk
    from ..scan.config import check_roots

    try:
        config = ScanConfig(
            frames=FrameOptions(mode=frames, fps=fps, max_frames=max_frames, keyframes_only=keyframes_only,
                                aggregate=aggregate, topk=topk, min_consecutive=min_consecutive),
            calibration=load_calibration(calibration) if calibration else None,
            bank=str(bank) if bank else None, match_distance=match_distance,
            mode=mode, device=device, engine=engine, executor=executor, batch_size=batch_size, workers=workers,
            threads=threads, max_attempts=max_attempts,
            thresholds=Thresholds(safe_below=safe_below, nsfw_above=nsfw_above),
            limits=DecodeLimits.from_env(max_bytes, max_pixels),
            walk=WalkConfig(include=tuple(include), exclude=tuple(exclude)),
            model=str(model) if model else None, cache_dir=str(cache_dir) if cache_dir else None,
            guard_margin=guard_margin,
        )
        roots = check_roots(paths)
        total = None
        if count:
            total = sum(1 for _ in walk(roots, config.walk))
        with ResultStore(db) as store, progress_bar(total, "scanning", unit="files", enabled=progress) as advance:
            summary = scan(roots, store, config, progress=lambda n, errors: advance(n, errors=errors))
    except StoreWriteError as exc:
        # Not a usage error: the scan ran, its committed results are kept (a full disk, an I/O error).
        fail(exc, _FLAGS)
        raise typer.Exit(int(ExitCode.INPUT_FAILED)) from None
    except NsfwlabError as exc:
        raise fail(exc, _FLAGS) from None
    except KeyboardInterrupt:
        stderr.print("interrupted: everything committed so far is kept; run the same command again to resume")
        raise typer.Exit(130) from None

    if json_summary:
        stdout.print_json(json.dumps(summary.to_dict()))
    else:
        _print_summary(summary)
    if summary.errors:
        raise typer.Exit(int(ExitCode.INPUT_FAILED))


def _print_summary(summary: ScanSummary) -> None:
    labels = ", ".join(f"{k} {v}" for k, v in summary.labels.items())
    rate = (f" ({summary.files_per_second:.1f} files/s written)" if summary.processed and summary.seconds > 0
            else "")
    stderr.print(tagged(
        "scanned", "bold",
        f" {summary.seen} files in {summary.seconds:.2f}s{rate}: scored {summary.scored}, reused {summary.reused} "
        f"(identical content), skipped {summary.skipped} (already in the store), errors {summary.errors}"
        + (f", missing {summary.missing} (deleted since scanned; rows kept)" if summary.missing else "")
        + (f", matched {summary.matched} (hash bank)" if summary.matched else ""),
    ), highlight=False)
    if summary.rederived:
        stderr.print(f"re-derived {summary.rederived} rows with the new {', '.join(summary.changed)} "
                     "from their stored model scores (the model did not run again)", highlight=False)
    stderr.print(f"labels: {labels}; model {summary.model_version}, preprocessing {summary.preprocess_version}",
                 highlight=False)
    if summary.error_codes:
        stderr.print("errors by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.error_codes.items())),
                     highlight=False)


def export_command(
    db: Path = typer.Option(..., "--db", help="The results store written by `nsfwlab scan`."),
    fmt: ExportFormat = typer.Option(..., "--format", "-f", help="Output format."),
    out: Path = typer.Option(..., "--out", "-o", help="Output file (written to a temporary file, then renamed)."),
    label: Label | None = typer.Option(None, "--label", help="Only rows with this label."),
    status: Status | None = typer.Option(None, "--status", help="Only rows with this status."),
    min_score: float | None = typer.Option(None, "--min-score", help="Only rows scoring at least this."),
    max_score: float | None = typer.Option(None, "--max-score", help="Only rows scoring at most this."),
    model_version: str | None = typer.Option(None, "--model-version", help="Only rows of this model version."),
    preprocess_version: str | None = typer.Option(None, "--preprocess-version", help="Only rows of this preprocessing."),
) -> None:
    """Export the results store: one record per file (path, score, label, status, ...) of one model
    version: the one scanned last, unless --model-version names another."""
    from ..scan import ExportFilter, ResultStore, write_export

    try:
        with ResultStore(db, readonly=True) as store:
            if model_version is None:
                model_version, preprocess_version = _default_version(store, preprocess_version)
            filt = ExportFilter(label=label, status=status, min_score=min_score, max_score=max_score,
                                model_version=model_version, preprocess_version=preprocess_version)
            n = write_export(store, out, fmt, filt)
    except NsfwlabError as exc:
        raise fail(exc, _FLAGS) from None
    stderr.print(f"wrote {n} records to {out}", highlight=False)


def _default_version(store: ResultStore, preprocess_version: str | None) -> tuple[str | None, str | None]:
    """The model version (and its preprocessing) scanned last; a note on stderr when the store holds several."""
    versions = [(m, p) for m, p, _ in store.versions() if preprocess_version in (None, p)]
    latest = store.latest_version()
    if len(versions) <= 1 or latest is None:
        return None, preprocess_version
    if preprocess_version is not None and latest[1] != preprocess_version:
        latest = max(versions)  # the last scan used other preprocessing: any of this one's, named below
    stderr.print(tagged("note:", "yellow", f" the store holds {len(versions)} model versions "
                        f"({', '.join(f'{m} / {p}' for m, p in versions)}); exporting {latest[0]} / {latest[1]}, "
                        "the latest: pass --model-version (and --preprocess-version) to choose"), highlight=False)
    return latest
