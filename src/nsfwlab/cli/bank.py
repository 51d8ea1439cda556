"""``nsfwlab bank import | export | stats``: PDQ hash lists in and out of a hash bank."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ..errors import ConfigError, NsfwlabError
from ..outputs import atomic_output, csv_writer, printable
from ..sidefiles import open_side_file
from ._common import ExitCode, fail, output_file, stderr, stdout, tagged

if TYPE_CHECKING:
    from ..bank import Bank

__all__ = ["bank_app"]

bank_app = typer.Typer(help="A bank of human decisions keyed by PDQ perceptual hash (matched before the model).",
                       no_args_is_help=True)

#: Rows checked and written per transaction while importing (bounded memory for any list size).
_IMPORT_CHUNK = 10_000
#: Largest hash list imported (about 2.5 million rows of hash, decision and source).
HASH_LIST_MAX_BYTES = 256 << 20


def _open(path: Path, *, must_exist: bool) -> Bank:
    from ..bank import Bank

    if must_exist and not path.is_file():
        raise ConfigError(f"no bank at {path} (create one with `nsfwlab bank import`)")
    if not must_exist:
        output_file(path)
    return Bank(path)


@bank_app.command("import")
def import_command(
    file: Path = typer.Argument(..., help="CSV: pdq (64 hex digits), decision (nsfw|safe), source (review:<id> or list:<name>; optional), reviewer, quality, added_at (optional). A header row is optional."),
    bank: Path = typer.Option(..., "--bank", help="The bank file (SQLite; created if missing)."),
    name: str | None = typer.Option(None, "--name", help="List name for rows without a source: list:<name> (default: the file's stem)."),
) -> None:
    """Import a hash list into a bank (a later decision for the same hash replaces the earlier one).

    Bad rows are reported with their row numbers and skipped; the others are imported. Exit status:
    0 all imported, 1 some rows bad, 2 usage error.
    """
    from ..bank import BankEntry, BankWriteError, RowError, parse_rows

    default_source = f"list:{name or file.stem}"
    try:
        # A regular file only (a FIFO would hang, /dev/zero never end), read as a stream under a cap.
        handle = io.TextIOWrapper(open_side_file(file, "hash list", max_bytes=HASH_LIST_MAX_BYTES),
                                  encoding="utf-8-sig", newline="")
    except NsfwlabError as exc:
        raise fail(exc) from None
    try:
        store = _open(bank, must_exist=False)
    except NsfwlabError as exc:
        handle.close()
        raise fail(exc) from None
    imported = bad = 0
    chunk: list[BankEntry] = []
    try:
        with handle, store:
            for item in parse_rows(csv.reader(handle), default_source=default_source):
                if isinstance(item, RowError):
                    bad += 1
                    stderr.print(tagged("error:", "bold red", f" {file}: {item}"), highlight=False)
                    continue
                chunk.append(item)
                if len(chunk) >= _IMPORT_CHUNK:
                    imported += store.add_many(chunk)
                    chunk = []
            imported += store.add_many(chunk)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise fail(ConfigError(f"{file}: not a UTF-8 CSV file ({exc}); {imported} rows imported before it")) from None
    except OSError as exc:
        raise fail(ConfigError(f"cannot read {file}: {exc.strerror or exc}; {imported} rows imported before it")
                   ) from None
    except BankWriteError as exc:
        # Not a usage error (as for scan): the import ran, and the rows committed before are kept.
        fail(BankWriteError(f"{exc.message}; {imported} rows imported before it"))
        raise typer.Exit(int(ExitCode.INPUT_FAILED)) from None
    except NsfwlabError as exc:  # a list over the size cap: what was imported before it is kept
        raise fail(ConfigError(f"{exc.message}; {imported} rows imported before it")) from None
    stdout.print(f"imported {imported} hash(es) into {bank}" + (f"; {bad} bad row(s) skipped" if bad else ""),
                 highlight=False)
    if bad:
        raise typer.Exit(int(ExitCode.INPUT_FAILED))


@bank_app.command("export")
def export_command(
    bank: Path = typer.Option(..., "--bank", help="The bank file."),
    out: Path = typer.Option(..., "--out", "-o", help="The CSV file to write ('-' for stdout)."),
) -> None:
    """Export a bank as CSV (pdq, decision, source, reviewer, quality, added_at): `bank import` reads it back."""
    from ..bank import export_rows

    try:
        store = _open(bank, must_exist=True)
        if str(out) != "-":
            output_file(out)
    except NsfwlabError as exc:
        raise fail(exc) from None
    with store:
        rows = export_rows(store.entries())
        if str(out) == "-":
            csv_writer(sys.stdout).writerows(rows)
            return
        try:
            with atomic_output(out, what="bank export") as fh:
                csv_writer(fh).writerows(rows)
        except NsfwlabError as exc:
            raise fail(exc) from None
    stdout.print(f"exported {printable(bank)} to {printable(out)}", highlight=False)


@bank_app.command("stats")
def stats_command(
    bank: Path = typer.Option(..., "--bank", help="The bank file."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """How many hashes a bank holds, by decision and by source."""
    try:
        store = _open(bank, must_exist=True)
    except NsfwlabError as exc:
        raise fail(exc) from None
    with store:
        stats = store.stats()
    if as_json:
        stdout.print(json.dumps(stats.to_dict()), highlight=False)
        return
    stdout.print(f"{stats.total} hash(es): " + ", ".join(f"{k} {v}" for k, v in stats.decisions.items()),
                 highlight=False)
    for source, count in stats.sources.items():  # imported text: control characters shown as escapes
        stdout.print(f"  {printable(source)}: {count}", highlight=False)
