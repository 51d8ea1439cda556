"""``nsfwlab score``: score image files, videos and animations; print a table, JSON lines or CSV.

The inputs are listed here (files, directories, stdin) and scored by :meth:`Detector.score_media`,
which routes each by its content (videos and animations over their frames, still images in
batches); the verdict decides every answer (calibration, bands, the hash bank). This module parses
the options and prints the results in input order.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Union

import typer
from rich.table import Table
from rich.text import Text

from ..config import BackendName, DecodeLimits, Device, Precision, Thresholds
from ..detector import Detector, FramesResult, ScoreResult
from ..errors import ConfigError, ImageError, NsfwlabError
from ..frames import FrameMode, FrameOptions, sniff_video
from ..imageio import IMAGE_SUFFIXES, VIDEO_SUFFIXES, iter_image_files, read_bytes, read_head, sniff_format
from ..outputs import atomic_output, csv_writer, printable
from ..tiles import TiledScore, check_tiles, score_media_tiled
from ..verdict import may_hold_frames
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
    output_file,
    progress_bar,
    stderr,
    stdout,
)

if TYPE_CHECKING:
    from ._timeline import Timeline

__all__ = ["OutputFormat", "score_command"]

Result = Union[ScoreResult, FramesResult]
_MEDIA_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES


class OutputFormat(StrEnum):
    TABLE = "table"
    JSONL = "jsonl"
    CSV = "csv"


class _MediaSeen:
    """Whether some input's first bytes say video, or GIF, PNG or WebP, which may be animated:
    then the CSV has its kind,frames,segments columns. Learnt while the inputs are listed (a
    directory's files are sniffed anyway; a named file costs one 32-byte read), so an image-only
    CSV keeps the columns it always had."""

    def __init__(self) -> None:
        self.media = False

    def note(self, head: bytes | None) -> None:
        if head and may_hold_frames(head):
            self.media = True

    def sniff(self, head: bytes) -> str | None:
        """An image or video format by content (for the directory walk), noted."""
        self.note(head)
        return sniff_format(head) or sniff_video(head)


def _expand(paths: list[str], seen: _MediaSeen) -> Iterator[tuple[str, object]]:
    """(name, source) pairs: files as given, directories recursively (sorted), '-' is stdin. A
    directory that cannot be listed is an error in its place."""
    for raw in paths:
        if raw == "-":
            yield "-", sys.stdin.buffer  # read once, capped, by _stdin_once
            continue
        p = Path(raw)
        try:
            is_dir = p.is_dir()
        except OSError:  # cannot even be looked at (no search permission): reading it says why
            is_dir = False
        if is_dir:
            empty = True
            # images and videos by content or name; README.txt is not one
            for child in iter_image_files(p, sniff=seen.sniff, suffixes=_MEDIA_SUFFIXES):
                empty = False
                yield (child.source or raw, child) if isinstance(child, NsfwlabError) else (str(child), child)
            if empty:
                yield raw, ImageError("directory holds no image files")
        else:
            seen.note(read_head(p))
            yield raw, p


def _stdin_once(items: list[tuple[str, object]], limits: DecodeLimits, seen: _MediaSeen) -> list[tuple[str, object]]:
    """stdin read into bytes (at most --max-bytes + 1), so that it can be routed by its content
    and read by both the model and the bank."""
    out: list[tuple[str, object]] = []
    stdin = sys.stdin.buffer
    for name, src in items:
        if id(src) == id(stdin):  # (`is` would narrow stdin to object for mypy)
            try:
                src = read_bytes(stdin, limits)
                seen.note(src[:32])
            except NsfwlabError as exc:
                src = exc
        out.append((name, src))
    return out



def _check_bank(path: Path | None) -> None:
    if path is not None and not path.is_file():
        raise ConfigError(f"no bank at {path} (create one with `nsfwlab bank import`)")


def _jsonl_line(res: Result, per_frame: bool, tiled: TiledScore | None = None) -> str:
    row = res.to_dict(per_frame) if isinstance(res, FramesResult) else res.to_dict()
    if tiled is not None:
        row["tile"], row["tile_box"] = tiled.tile.name, tiled.tile.xywh
    return json.dumps(row, ensure_ascii=False)


def _tile_cells(tiled: TiledScore | None) -> list[str]:
    """The CSV's tile and tile_box (x,y,w,h in pixels of the image) cells; empty without a tiled score."""
    return ["", ""] if tiled is None else [tiled.tile.name, ",".join(map(str, tiled.tile.xywh))]


def _frame_options(mode: FrameMode, fps: float, max_frames: int, keyframes_only: bool, aggregate: str, topk: int,
                   min_consecutive: int, early_stop: bool) -> FrameOptions:
    return FrameOptions(mode=mode, fps=fps, max_frames=max_frames, keyframes_only=keyframes_only,
                        aggregate=aggregate, topk=topk, min_consecutive=min_consecutive, early_stop=early_stop)


def _timeline_entry(res: Result) -> Timeline | None:
    from ._timeline import Timeline

    if not isinstance(res, FramesResult) or not res.ok or res.score is None or res.label is None:
        return None
    return Timeline(res.source, res.kind, res.score, res.label.value, res.frame_scores, res.segments)


def _write_timeline(out: Path, entries: list[Timeline], thresholds: Thresholds) -> None:
    from ._timeline import page_paths, timeline_pngs

    if not entries:
        stderr.print(f"no video or animation was scored: {out} not written", style="yellow", highlight=False)
        return
    pages = timeline_pngs(entries, thresholds)
    paths = page_paths(out, len(pages))
    for path, png in zip(paths, pages, strict=True):
        with atomic_output(path, binary=True, what="timeline") as fh:
            fh.write(png)
    stderr.print(f"timeline: {', '.join(map(str, paths))}", highlight=False)


def score_command(
    paths: list[str] = typer.Argument(..., metavar="PATH", help="Image or video files, or directories ('-' reads stdin)."),
    fmt: OutputFormat = typer.Option(OutputFormat.TABLE, "--format", "-f", help="Output format."),
    device: Device = typer.Option(Device.AUTO, help="Where the model runs."),
    backend: BackendName = typer.Option(BackendName.AUTO, help="Inference engine (auto: onnxruntime on CPU, torch on CUDA)."),
    precision: Precision = typer.Option(Precision.AUTO, help="torch backend precision (auto: fp16 on CUDA, fp32 on CPU)."),
    safe_below: float | None = typer.Option(None, help="Scores below this are labelled 'safe' (default: the model's band, 0.2 for open_nsfw)."),
    nsfw_above: float | None = typer.Option(None, help="Scores above this are labelled 'nsfw'; between is 'review' (default: the model's band, 0.8 for open_nsfw)."),
    model: str | None = typer.Option(None, "--model", help="A zoo model id (`nsfwlab models`), an ensemble (ensemble:A+B[:mean|max]), or a fine-tuned checkpoint (.pt) or exported .onnx, instead of open_nsfw."),
    batch_size: int = typer.Option(16, min=1, help="Images (or frames of one video) per model call."),
    workers: int = typer.Option(2, min=1, help="Threads decoding and preprocessing."),
    max_pixels: int | None = typer.Option(None, min=1, help="Refuse images (and video frames) with more pixels: decompression bombs (default: $NSFWLAB_MAX_PIXELS, else 100000000)."),
    max_bytes: int | None = typer.Option(None, min=1, help="Refuse files larger than this, videos too (default: $NSFWLAB_MAX_BYTES, else 67108864)."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="Progress bar (files) on stderr (default: when stderr is a terminal)."),
    calibration: Path | None = typer.Option(None, "--calibration", help="A calibration.json from `evaluate --calibrate`: scores become calibrated probabilities (labels follow them); raw_score keeps the model's."),
    bank: Path | None = typer.Option(None, "--bank", help="A hash bank (`nsfwlab bank`): a still image matching a banked PDQ hash takes the human decision as its label (the model score is still reported). Videos and animations are not matched (match_skipped says why)."),
    match_distance: int = typer.Option(31, "--match-distance", min=0, max=256, help="Most differing PDQ bits (of 256) for a bank match."),
    frames: FrameMode = FRAMES_OPTION,
    fps: float = FPS_OPTION,
    max_frames: int = MAX_FRAMES_OPTION,
    keyframes_only: bool = KEYFRAMES_ONLY_OPTION,
    aggregate: str = AGGREGATE_OPTION,
    topk: int = TOPK_OPTION,
    min_consecutive: int = MIN_CONSECUTIVE_OPTION,
    early_stop: bool = typer.Option(False, "--early-stop", help="End a file at the first batch of frames that makes it nsfw (faster; its frames and segments then cover only what was scored)."),
    per_frame: bool = typer.Option(False, "--per-frame", help="JSONL rows of videos/animations gain frame_scores: a (time, score) pair per frame scored."),
    timeline: Path | None = typer.Option(None, "--timeline", help="Write a PNG of score against time, one subplot per video/animation (12 per page: OUT.png, OUT_2.png, ...)."),
    tiles: bool = typer.Option(False, "--tiles", help="Also score the panels found in each still image (the picture inside a border, the cells of a collage, a meme's or screenshot's picture) and report the highest score; most photos hold none and cost nothing more. Rows gain tile and tile_box (the crop that won). Videos and animations are scored as without it."),
) -> None:
    """Score images, videos and animations with the exact open_nsfw model (or --model's).

    Goes on past bad inputs. Exit status: 0 all scored, 1 some input failed, 2 usage error,
    3 the model could not be loaded.
    """
    try:
        limits = DecodeLimits.from_env(max_bytes, max_pixels)
        options = _frame_options(frames, fps, max_frames, keyframes_only, aggregate, topk, min_consecutive, early_stop)
        if per_frame and fmt is not OutputFormat.JSONL:
            raise ConfigError("--per-frame needs --format jsonl")
        if timeline is not None:
            from ._timeline import check_matplotlib

            check_matplotlib()
            output_file(timeline)
        _check_bank(bank)
        detector = Detector(backend, device, batch_size=batch_size, workers=workers,
                            precision=precision, model=model, limits=limits, calibration=calibration,
                            bank=bank, match_distance=match_distance)
        detector.thresholds = _bands(detector.thresholds, safe_below, nsfw_above)
        thresholds = detector.thresholds
        if tiles:
            check_tiles(detector)
    except NsfwlabError as exc:
        raise fail(exc) from None

    banked = bank is not None
    seen = _MediaSeen()
    items = _stdin_once(list(_expand(paths, seen)), limits, seen)
    calibrated = detector.calibration is not None
    classes = detector.zoo.classes if detector.zoo is not None else None
    boxed = detector.zoo is not None and detector.zoo.is_detector  # a detector's rows carry its boxes
    failed = 0
    writer = csv_writer(sys.stdout) if fmt is OutputFormat.CSV else None
    if writer is not None:
        header = (["path", "score", "label", "error"] + (["raw_score"] if calibrated else [])
                  + (["match_decision", "match_distance", "match_source", "match_skipped"] if banked else [])
                  + (["kind", "frames", "segments"] if seen.media else []))
        writer.writerow(header + _class_header(classes, header) + (["boxes"] if boxed else [])
                        + (["tile", "tile_box"] if tiles else []))
    rows: list[Result] = []  # for the table, printed at the end
    won: list[TiledScore | None] = []  # with --tiles: each row's tiled score
    timelines: list[Timeline] = []
    stream = (score_media_tiled(detector, items, options) if tiles
              else ((r, None) for r in detector.score_media(items, options)))
    with detector, progress_bar(len(items), "scoring", unit="file", enabled=progress) as advance:
        for res, tiled in stream:
            advance(1, errors=0 if res.ok else 1)
            failed += 0 if res.ok else 1
            if timeline is not None and (entry := _timeline_entry(res)) is not None:
                timelines.append(entry)
            if fmt is OutputFormat.JSONL:
                sys.stdout.write(_jsonl_line(res, per_frame, tiled) + "\n")
                sys.stdout.flush()
            elif writer is not None:
                writer.writerow(_csv_row(res, calibrated, banked, seen.media) + _class_cells(res, classes)
                                + ([_boxes_json(res)] if boxed else []) + (_tile_cells(tiled) if tiles else []))
            else:
                rows.append(res)
                won.append(tiled)
    if fmt is OutputFormat.TABLE:
        stdout.print(_table(rows, calibrated, banked, classes, boxed, won if tiles else None))
    if timeline is not None:
        try:
            _write_timeline(timeline, timelines, thresholds)
        except NsfwlabError as exc:
            raise fail(exc) from None
    if failed:
        raise typer.Exit(int(ExitCode.INPUT_FAILED))


def _bands(model_bands: Thresholds, safe_below: float | None, nsfw_above: float | None) -> Thresholds:
    """The model's bands (its card's; open_nsfw's 0.2 / 0.8) with the options given replacing theirs."""
    given = {k: v for k, v in (("safe_below", safe_below), ("nsfw_above", nsfw_above)) if v is not None}
    return replace(model_bands, **given) if given else model_bands


def _class_header(classes: tuple[str, ...] | None, header: list[str]) -> list[str]:
    """``model`` and one column per class of a zoo model (a name taken by a column gets ``class_``)."""
    if classes is None:
        return []
    return ["model"] + [f"class_{c}" if c in header or c == "model" else c for c in classes]


def _class_cells(res: Result, classes: tuple[str, ...] | None, digits: int = 6) -> list[str]:
    if classes is None:
        return []
    probs = res.classes if isinstance(res, ScoreResult) and res.classes is not None else {}
    return [res.model or ""] + [f"{probs[c]:.{digits}f}" if c in probs else "" for c in classes]


def _segments_json(res: FramesResult) -> str:
    return json.dumps([[round(a, 3), round(b, 3), round(m, 6)] for a, b, m in res.segments], separators=(",", ":"))


def _csv_row(res: Result, calibrated: bool, banked: bool, media: bool) -> list[str]:
    if res.ok:
        row = [res.source, f"{res.score:.6f}", res.label.value if res.label else "", ""]
    else:
        row = [res.source, "", "", str(res.error.message if res.error else "")]
    if calibrated:
        row.append(f"{res.raw_score:.6f}" if res.raw_score is not None else "")
    if banked:
        match, skipped = res.match, res.bank_check.skipped if res.bank_check else None
        row += ([match.decision.value, str(match.distance), match.source] if match else ["", "", ""]) + [skipped or ""]
    if not media:
        return row
    if not res.ok:
        return [*row, "", "", ""]
    if isinstance(res, FramesResult):
        return [*row, res.kind, str(res.frames), _segments_json(res)]
    return [*row, "image", "1", ""]


def _segments_text(res: FramesResult, most: int = 4) -> str:
    shown = [f"{a:.1f}-{b:.1f} s ({m:.3f})" for a, b, m in res.segments[:most]]
    more = len(res.segments) - most
    return "; ".join(shown) + (f"; +{more} more" if more > 0 else "") if shown else "none"


def _boxes_json(res: Result) -> str:
    """A detector's boxes as compact JSON (empty for a frames result or an error)."""
    boxes = res.to_dict().get("boxes") if isinstance(res, ScoreResult) and res.ok else None
    return "" if boxes is None else json.dumps(boxes, separators=(",", ":"))


def _boxes_text(res: Result, most: int = 3) -> str:
    """How many boxes, and the first ``most`` as ``CLASS score``."""
    boxes = res.boxes if isinstance(res, ScoreResult) and res.boxes is not None else []
    shown = ", ".join(f"{b['class']} {b['score']:.3f}" for b in boxes[:most])
    return f"{len(boxes)}" + (f": {shown}" if shown else "") + (", ..." if len(boxes) > most else "")


def _table(rows: list[Result], calibrated: bool, banked: bool, classes: tuple[str, ...] | None = None,
           boxed: bool = False, tiled: list[TiledScore | None] | None = None) -> Table:
    media = any(isinstance(res, FramesResult) for res in rows)
    columns = (["path", "score"] + (["raw score"] if calibrated else []) + ["label"] + (["match"] if banked else [])
               + (["frames", "segments"] if media else []))
    table = Table(*columns, *_class_header(classes, columns), *(["boxes"] if boxed else []),
                  *(["tile"] if tiled is not None else []), title=None, show_edge=False)
    for i, res in enumerate(rows):
        won = tiled[i] if tiled is not None else None
        tile_cell = ([f"{won.tile.name} {','.join(map(str, won.tile.xywh))}" if won is not None else ""]
                     if tiled is not None else [])
        table.add_row(*_table_row(res, calibrated, banked, media), *_class_cells(res, classes, 3),
                      *([printable(_boxes_text(res))] if boxed else []), *tile_cell)
    return table


def _table_row(res: Result, calibrated: bool, banked: bool, media: bool) -> list[str | Text]:
    tail: list[str | Text] = []
    if media:
        tail = ([str(res.frames), _segments_text(res)] if isinstance(res, FramesResult) and res.ok
                else ["", ""] if not res.ok else ["1", ""])
    if not res.ok:
        return [printable(res.source), Text("error", style="red"), *([""] if calibrated else []),
                Text(printable(res.error.message) if res.error else "", style="red"), *([""] if banked else []),
                *tail]
    label = res.label.value if res.label else "safe"
    style = {"safe": "green", "review": "yellow", "nsfw": "red"}[label]
    row: list[str | Text] = [printable(res.source), f"{res.score:.6f}"]
    if calibrated:
        row.append(f"{res.raw_score:.6f}" if res.raw_score is not None else "")
    row.append(Text(label, style=style))
    if banked:
        match = res.match
        skipped = res.bank_check.skipped if res.bank_check else None
        row.append(printable(f"{match.decision.value} ({match.distance} bits, {match.source})") if match
                   else f"none: {skipped}" if skipped else "")
    return row + tail
