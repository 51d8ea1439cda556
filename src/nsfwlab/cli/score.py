"""``nsfwlab score``: score image files, print a table, JSON lines or CSV."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from enum import Enum
from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from ..config import BackendName, DecodeLimits, Device, Precision, Thresholds
from ..detector import Detector, ScoreResult
from ..errors import ImageError, NsfwlabError
from ..imageio import iter_image_files
from ._common import ExitCode, fail, progress_bar, stdout


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


def _jsonl_line(res: ScoreResult) -> str:
    return json.dumps(res.to_dict(), ensure_ascii=False)


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
) -> None:
    """Score images with the exact open_nsfw model.

    Goes on past bad inputs. Exit status: 0 all scored, 1 some input failed, 2 usage error,
    3 the model could not be loaded.
    """
    try:
        thresholds = Thresholds(safe_below=safe_below, nsfw_above=nsfw_above)
        detector = Detector(backend, device, thresholds=thresholds, batch_size=batch_size, workers=workers,
                            precision=precision, model=model, limits=DecodeLimits.from_env(max_bytes, max_pixels))
    except NsfwlabError as exc:
        raise fail(exc) from None

    items = list(_expand(paths))
    failed = 0
    writer = csv.writer(sys.stdout, lineterminator="\n") if fmt is OutputFormat.CSV else None
    if writer is not None:
        writer.writerow(["path", "score", "label", "error"])
    table = Table("path", "score", "label", title=None, show_edge=False) if fmt is OutputFormat.TABLE else None

    with detector, progress_bar(len(items), "scoring", enabled=progress) as advance:
        for res in detector.iter_score((src for _, src in items), (name for name, _ in items)):  # type: ignore[misc]
            advance(1, errors=0 if res.ok else 1)
            failed += 0 if res.ok else 1
            if fmt is OutputFormat.JSONL:
                sys.stdout.write(_jsonl_line(res) + "\n")
                sys.stdout.flush()
            elif writer is not None:
                if res.ok:
                    writer.writerow([res.source, f"{res.score:.6f}", res.label.value if res.label else "", ""])
                else:
                    writer.writerow([res.source, "", "", str(res.error.message if res.error else "")])
            elif table is not None:
                if res.ok:
                    style = {"safe": "green", "review": "yellow", "nsfw": "red"}[res.label.value if res.label else "safe"]
                    table.add_row(res.source, f"{res.score:.6f}", Text(res.label.value if res.label else "", style=style))
                else:
                    table.add_row(res.source, Text("error", style="red"),
                                  Text(res.error.message if res.error else "", style="red"))
    if table is not None:
        stdout.print(table)
    if failed:
        raise typer.Exit(int(ExitCode.INPUT_FAILED))
