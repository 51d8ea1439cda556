"""``nsfwlab score``: score image files, print a table, JSON lines or CSV."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table
from rich.text import Text

from ..config import BackendName, DecodeLimits, Device, Label, Precision, Thresholds
from ..detector import Detector, ScoreResult
from ..errors import ConfigError, ImageError, NsfwlabError
from ..imageio import iter_image_files, read_bytes
from ._common import ExitCode, fail, progress_bar, stderr, stdout, tagged

if TYPE_CHECKING:
    from ..bank import Bank, Match


class OutputFormat(str, Enum):
    TABLE = "table"
    JSONL = "jsonl"
    CSV = "csv"


def _expand(paths: list[str]) -> Iterator[tuple[str, object]]:
    """(name, source) pairs: files as given, directories recursively (sorted), '-' is stdin."""
    for raw in paths:
        if raw == "-":
            yield "-", sys.stdin.buffer  # read by the detector: at most --max-bytes + 1 bytes
            continue
        p = Path(raw)
        if p.is_dir():
            empty = True
            for child in iter_image_files(p):  # images by content or name; README.txt is not one
                empty = False
                yield str(child), child
            if empty:
                yield raw, ImageError("directory holds no image files")
        else:
            yield raw, p


def _jsonl_line(res: ScoreResult, match: Match | None = None) -> str:
    row = res.to_dict()
    if match is not None:
        row["match"] = match.to_dict()
    return json.dumps(row, ensure_ascii=False)


def _stdin_once(items: list[tuple[str, object]], limits: DecodeLimits) -> list[tuple[str, object]]:
    """stdin read into bytes (capped), so that both the model and the bank can read it."""
    out: list[tuple[str, object]] = []
    stdin = sys.stdin.buffer
    for name, src in items:
        if id(src) == id(stdin):  # (`is` would narrow stdin to object for mypy)
            try:
                src = read_bytes(stdin, limits)
            except NsfwlabError as exc:
                src = exc
        out.append((name, src))
    return out


def _bank_match(bank: Bank | None, res: ScoreResult, source: object, distance: int) -> tuple[ScoreResult, Match | None]:
    """The result with the bank's human decision as its label when the image matches a banked hash."""
    if bank is None or not res.ok:
        return res, None
    try:
        match = bank.match(source, distance)  # type: ignore[arg-type]
    except NsfwlabError as exc:
        stderr.print(tagged("warning:", "yellow", f" {res.source}: not matched against the bank: {exc.message}"),
                     highlight=False)
        return res, None
    if match is None:
        return res, None
    return replace(res, label=Label(match.decision.value)), match


def _open_bank(path: Path | None, limits: DecodeLimits) -> Bank | None:
    if path is None:
        return None
    from ..bank import Bank

    if not path.is_file():
        raise ConfigError(f"no bank at {path} (create one with `nsfwlab bank import`)")
    return Bank(path, limits=limits)


def score_command(
    paths: list[str] = typer.Argument(..., metavar="PATH", help="Image files or directories ('-' reads stdin)."),
    fmt: OutputFormat = typer.Option(OutputFormat.TABLE, "--format", "-f", help="Output format."),
    device: Device = typer.Option(Device.AUTO, help="Where the model runs."),
    backend: BackendName = typer.Option(BackendName.AUTO, help="Inference engine (auto: onnxruntime on CPU, torch on CUDA)."),
    precision: Precision = typer.Option(Precision.AUTO, help="torch backend precision (auto: fp16 on CUDA, fp32 on CPU)."),
    safe_below: float = typer.Option(0.2, help="Scores below this are labelled 'safe'."),
    nsfw_above: float = typer.Option(0.8, help="Scores above this are labelled 'nsfw'; between is 'review'."),
    model: Path | None = typer.Option(None, "--model", help="A fine-tuned checkpoint (.pt) or exported .onnx instead of the stock model."),
    batch_size: int = typer.Option(16, min=1, help="Images per model call."),
    workers: int = typer.Option(2, min=1, help="Threads decoding and preprocessing."),
    max_pixels: int | None = typer.Option(None, min=1, help="Refuse images with more pixels: decompression bombs (default: $NSFWLAB_MAX_PIXELS, else 100000000)."),
    max_bytes: int | None = typer.Option(None, min=1, help="Refuse files larger than this (default: $NSFWLAB_MAX_BYTES, else 67108864)."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="Progress bar on stderr (default: when stderr is a terminal)."),
    calibration: Path | None = typer.Option(None, "--calibration", help="A calibration.json from `evaluate --calibrate`: scores become calibrated probabilities (labels follow them); raw_score keeps the model's."),
    bank: Path | None = typer.Option(None, "--bank", help="A hash bank (`nsfwlab bank`): an image matching a banked PDQ hash takes the human decision as its label (the model score is still reported)."),
    match_distance: int = typer.Option(31, "--match-distance", min=0, max=256, help="Most differing PDQ bits (of 256) for a bank match."),
) -> None:
    """Score images with the exact open_nsfw model.

    Goes on past bad inputs. Exit status: 0 all scored, 1 some input failed, 2 usage error,
    3 the model could not be loaded.
    """
    try:
        limits = DecodeLimits.from_env(max_bytes, max_pixels)
        thresholds = Thresholds(safe_below=safe_below, nsfw_above=nsfw_above)
        detector = Detector(backend, device, thresholds=thresholds, batch_size=batch_size, workers=workers,
                            precision=precision, model=model, limits=limits, calibration=calibration)
        hash_bank = _open_bank(bank, limits)
    except NsfwlabError as exc:
        raise fail(exc) from None

    items = list(_expand(paths))
    if hash_bank is not None:
        items = _stdin_once(items, limits)
    sources = dict(items)
    calibrated = detector.calibration is not None
    failed = 0
    writer = csv.writer(sys.stdout, lineterminator="\n") if fmt is OutputFormat.CSV else None
    if writer is not None:
        writer.writerow(["path", "score", "label", "error"] + (["raw_score"] if calibrated else [])
                        + (["match_decision", "match_distance", "match_source"] if hash_bank is not None else []))
    columns = ["path", "score"] + (["raw score"] if calibrated else []) + ["label"] + (["match"] if hash_bank else [])
    table = Table(*columns, title=None, show_edge=False) if fmt is OutputFormat.TABLE else None

    with detector, progress_bar(len(items), "scoring", enabled=progress) as advance:
        for scored in detector.iter_score((src for _, src in items), (name for name, _ in items)):  # type: ignore[misc]
            res, match = _bank_match(hash_bank, scored, sources.get(scored.source), match_distance)
            advance(1, errors=0 if res.ok else 1)
            failed += 0 if res.ok else 1
            if fmt is OutputFormat.JSONL:
                sys.stdout.write(_jsonl_line(res, match) + "\n")
                sys.stdout.flush()
            elif writer is not None:
                writer.writerow(_csv_row(res, match, calibrated, hash_bank is not None))
            elif table is not None:
                table.add_row(*_table_row(res, match, calibrated, hash_bank is not None))
    if hash_bank is not None:
        hash_bank.close()
    if table is not None:
        stdout.print(table)
    if failed:
        raise typer.Exit(int(ExitCode.INPUT_FAILED))


def _csv_row(res: ScoreResult, match: Match | None, calibrated: bool, banked: bool) -> list[str]:
    if res.ok:
        row = [res.source, f"{res.score:.6f}", res.label.value if res.label else "", ""]
    else:
        row = [res.source, "", "", str(res.error.message if res.error else "")]
    if calibrated:
        row.append(f"{res.raw_score:.6f}" if res.raw_score is not None else "")
    if banked:
        row += [match.decision.value, str(match.distance), match.source] if match else ["", "", ""]
    return row


def _table_row(res: ScoreResult, match: Match | None, calibrated: bool, banked: bool) -> list[str | Text]:
    if not res.ok:
        return [res.source, Text("error", style="red"), *([""] if calibrated else []),
                Text(res.error.message if res.error else "", style="red"), *([""] if banked else [])]
    label = res.label.value if res.label else "safe"
    style = {"safe": "green", "review": "yellow", "nsfw": "red"}[label]
    row: list[str | Text] = [res.source, f"{res.score:.6f}"]
    if calibrated:
        row.append(f"{res.raw_score:.6f}" if res.raw_score is not None else "")
    row.append(Text(label, style=style))
    if banked:
        row.append(f"{match.decision.value} ({match.distance} bits, {match.source})" if match else "")
    return row
