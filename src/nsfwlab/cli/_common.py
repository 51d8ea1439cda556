"""Shared pieces of the CLI: exit codes, error reporting, progress bars, option types."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from enum import IntEnum
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from ..errors import ConfigError, ImageError, ModelError, NsfwlabError
from ..frames import FrameMode
from ..outputs import check_output_path, printable

__all__ = [
    "AGGREGATE_OPTION",
    "FPS_OPTION",
    "FRAMES_OPTION",
    "KEYFRAMES_ONLY_OPTION",
    "MAX_FRAMES_OPTION",
    "MIN_CONSECUTIVE_OPTION",
    "TOPK_OPTION",
    "ExitCode", "exit_code_for", "expand_images", "fail", "output_dir", "output_file", "progress_bar", "stderr", "stdout", "tagged",
]

# No console markup: printed text holds file names and error messages, and a "[/x]" in one of
# them would be eaten or raise MarkupError. Style with ``style=`` or :func:`tagged` instead.
stdout = Console(soft_wrap=True, markup=False)
stderr = Console(stderr=True, soft_wrap=True, markup=False)


# The frame options of every command that scores videos and animations (score, scan, serve): one
# definition each, so their names, defaults and help never drift apart (docs/frames.md).
FRAMES_OPTION = typer.Option(FrameMode.SAMPLE, "--frames", help="Videos and animated GIF/WebP/APNG: score frames sampled over the whole file (sample) or only the first frame, as the original pipeline (first).")
FPS_OPTION = typer.Option(2.0, "--fps", min=0.001, help="Video frames scored per second of video.")
MAX_FRAMES_OPTION = typer.Option(300, "--max-frames", min=1, help="Most frames scored per file (spread evenly over longer ones).")
KEYFRAMES_ONLY_OPTION = typer.Option(False, "--keyframes-only", help="Decode only a video's keyframes: much faster, coarser (misses what lies between keyframes).")
AGGREGATE_OPTION = typer.Option("max", "--aggregate", help="A file's score from its frames' scores: max, mean, pNN (e.g. p90) or topk-mean.")
TOPK_OPTION = typer.Option(3, "--topk", min=1, help="Frames averaged by --aggregate topk-mean.")
MIN_CONSECUTIVE_OPTION = typer.Option(1, "--min-consecutive", min=1, help="Only runs of at least K consecutive high frames count (an isolated spike does not).")


class ExitCode(IntEnum):
    """Exit statuses of every nsfwlab command."""

    OK = 0
    INPUT_FAILED = 1  # some inputs could not be processed; the others were
    USAGE = 2  # bad arguments or configuration (click uses 2 for usage errors too)
    MODEL = 3  # the model or backend could not be loaded or run
    INTERNAL = 4


def exit_code_for(exc: NsfwlabError) -> ExitCode:
    """The one place where error classes map to exit statuses."""
    if isinstance(exc, ConfigError):
        return ExitCode.USAGE
    if isinstance(exc, ModelError):
        return ExitCode.MODEL
    if isinstance(exc, ImageError):
        return ExitCode.INPUT_FAILED
    return ExitCode.INTERNAL


def tagged(tag: str, style: str, text: str) -> Text:
    """``tag`` in ``style`` followed by ``text`` (never read as markup; control characters shown as
    escapes, :func:`~nsfwlab.outputs.printable`, as it often holds file names)."""
    return Text.assemble((tag, style), printable(text))


#: What a folder given to a lab command contributes: its image files, by suffix.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})


def expand_images(inputs: list[Path]) -> list[Path]:
    """Files as given; folders become their image files (by suffix, sorted, recursive)."""
    out: list[Path] = []
    for p in inputs:
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        else:
            out.append(p)
    return out


def write_report_files(out: Path, files: dict[str, str | bytes]) -> None:
    """Write a report folder's files in order, creating the folder. Text is UTF-8 whatever the
    locale: a file name that is not valid UTF-8 reaches us with surrogate escapes and is written
    back as its own bytes instead of failing the whole report."""
    out.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        data = content if isinstance(content, bytes) else content.encode("utf-8", "surrogateescape")
        (out / name).write_bytes(data)


def flag_for(param: str) -> str:
    """The command-line flag of a library parameter: ``trust_code`` -> ``--trust-code``."""
    return "--" + param.replace("_", "-")


def fail(exc: NsfwlabError, flags: dict[str, str] | None = None) -> typer.Exit:
    """Print a one-line error and return the Exit to raise.

    An error about a library parameter (``exc.param``) names the flag instead: ``flags`` maps
    parameters whose flag is not simply :func:`flag_for` of their name (``{"n_steps": "--steps"}``)."""
    if exc.param:
        flags = {exc.param: flag_for(exc.param), **(flags or {})}
    stderr.print(tagged("error:", "bold red", f" {exc.render(flags)}"), highlight=False)
    return typer.Exit(int(exit_code_for(exc)))


def output_dir(path: Path) -> Path:
    """Create the folder a command will write into, and prove it writable, before any work.

    A bad output path (under a file, on a read-only or virtual file system, without permission)
    is then a one-line usage error at once, instead of a traceback after minutes of scoring or
    training whose results are lost.
    """
    if path.exists() and not path.is_dir():
        raise ConfigError(f"cannot write to {path}: it is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".nsfwlab-write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write to {path}: {exc.strerror or exc}") from None
    return path


def output_file(path: Path) -> Path:
    """:func:`output_dir` for the folder of an output file; refuses a path that is a folder, a device,
    a FIFO or a socket (:func:`~nsfwlab.outputs.check_output_path`)."""
    if path.is_dir():
        raise ConfigError(f"cannot write {path}: it is a directory; give a file name")
    if os.path.lexists(path):  # before output_dir: a device's folder (/dev) must not get a write test
        check_output_path(path)
    output_dir(path.parent)
    return path


def mean_rate(task: Task) -> float | None:
    """Items per second since the task started.

    Results arrive in bursts (a whole batch at once), so rich's own estimate, taken between its
    first and last samples, reads thousands of images/s on a short run.
    """
    elapsed = task.finished_time if task.finished else task.elapsed
    if not elapsed or not task.completed:
        return None
    return task.completed / elapsed


class _RateColumn(ProgressColumn):
    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = mean_rate(task)
        return Text(f"{speed:,.1f} {self.unit}/s" if speed else f"- {self.unit}/s", style="cyan")


class _EtaColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = mean_rate(task)
        if task.finished:
            return Text("0:00:00", style="cyan")
        if task.total is None or not speed:
            return Text("-:--:--", style="cyan")
        return Text(str(timedelta(seconds=int(max(0.0, task.total - task.completed) / speed))), style="cyan")


class _ErrorsColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        errors = int(task.fields.get("errors", 0))
        return Text(f"{errors} error" + ("" if errors == 1 else "s"), style="red" if errors else "dim")


@contextmanager
def progress_bar(total: int | None, description: str, *, unit: str = "img",
                 enabled: bool | None = None) -> Iterator[Callable[..., None]]:
    """A rich progress bar on stderr (rate, ETA, errors). Yields ``advance(n=1, errors=0)``.

    Disabled automatically when stderr is not a terminal, unless ``enabled`` forces it.
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield lambda n=1, errors=0: None
        return
    columns: list[ProgressColumn | str] = [
        SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        _RateColumn(unit), _ErrorsColumn(), TimeElapsedColumn(), TextColumn("ETA"), _EtaColumn(),
    ]
    with Progress(*columns, console=stderr, transient=False) as progress:
        task = progress.add_task(description, total=total, errors=0)
        state = {"errors": 0}

        def advance(n: int = 1, errors: int = 0) -> None:
            state["errors"] += errors
            progress.update(task, advance=n, errors=state["errors"])

        yield advance
