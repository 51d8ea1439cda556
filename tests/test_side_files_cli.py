"""Side files on the command line: a device (/dev/zero), a FIFO or an oversized file given as a
calibration, an API key file, a TLS certificate or a hash list is one line and exit 2, before any
read that would never end or never return; a full disk while importing a hash list is one line too."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from nsfwlab.bank import Bank, BankWriteError
from nsfwlab.cli import app
from nsfwlab.errors import ConfigError

runner = CliRunner()
HASH = "ab" * 32


def _one_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


@pytest.fixture()
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


@pytest.fixture()
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the server must not start")

    monkeypatch.setattr(uvicorn, "run", refuse)


def _specials(fifo: Path) -> list[str]:
    return [str(fifo), *(["/dev/zero"] if os.path.exists("/dev/zero") else [])]


@pytest.mark.parametrize("flag", ["--calibration", "--api-key-file", "--ssl-certfile"])
def test_serve_refuses_special_side_files(flag: str, fifo: Path, no_server: None) -> None:
    for path in _specials(fifo):
        res = runner.invoke(app, ["serve", "--port", "1", flag, path])
        assert res.exit_code == 2, res.output
        assert "not a regular file" in _one_line(res.output)


def test_bank_import_refuses_special_and_oversized_lists(tmp_path: Path, fifo: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    bank = tmp_path / "bank.sqlite"
    for path in _specials(fifo):
        res = runner.invoke(app, ["bank", "import", path, "--bank", str(bank)])
        assert res.exit_code == 2, res.output
        assert "not a regular file" in _one_line(res.output)
    big = tmp_path / "big.csv"
    big.write_text(f"{HASH},nsfw\n" * 100)
    from nsfwlab.cli import bank as bank_cli

    monkeypatch.setattr(bank_cli, "HASH_LIST_MAX_BYTES", 1000)
    res = runner.invoke(app, ["bank", "import", str(big), "--bank", str(bank)])
    assert res.exit_code == 2 and "the limit is 1,000" in _one_line(res.output)


class _FullDisk:
    """A connection whose writes fail as SQLite's do on a full disk."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def executemany(self, *args: Any) -> Any:
        raise sqlite3.OperationalError("database or disk is full")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def test_a_full_disk_while_banking_is_a_config_error(tmp_path: Path) -> None:
    with Bank(tmp_path / "bank.sqlite") as bank:
        bank.add(HASH, "nsfw", "list:a")
        bank._db = _FullDisk(bank._db)  # type: ignore[assignment]
        with pytest.raises(BankWriteError, match="disk is full; everything committed before is kept"):
            bank.add("cd" * 32, "safe", "list:a")
        assert not bank._db.in_transaction and len(bank) == 1


def test_bank_import_on_a_full_disk_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    connect = Bank._connect
    monkeypatch.setattr(Bank, "_connect", staticmethod(lambda path: _FullDisk(connect(path))))
    hashes = tmp_path / "list.csv"
    hashes.write_text(f"{HASH},nsfw\n")
    res = runner.invoke(app, ["bank", "import", str(hashes), "--bank", str(tmp_path / "bank.sqlite")])
    assert res.exit_code == 1, res.output  # as scan on a full disk: the command ran, what it committed is kept
    assert "disk is full" in _one_line(res.output) and "0 rows imported before it" in res.output


def test_a_streamed_side_file_that_grows_past_its_cap_stops_at_the_cap(tmp_path: Path) -> None:
    from nsfwlab.sidefiles import open_side_file

    path = tmp_path / "list.csv"
    path.write_bytes(b"x" * 100)
    with open_side_file(path, "hash list", max_bytes=1000) as fh:
        with path.open("ab") as grow:  # written to after the size was checked
            grow.write(b"y" * 5000)
        with pytest.raises(ConfigError, match="over the limit of 1,000 bytes"):
            fh.read()
