"""``nsfwlab models``: the listing, and refusals with one-line errors and the documented exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nsfwlab.cli import app

runner = CliRunner()


@pytest.fixture
def empty_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NSFWLAB_HOME", str(tmp_path))
    return tmp_path


def test_models_lists_every_card_with_its_licence(empty_home: Path) -> None:
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["id"]: row for row in json.loads(result.stdout)}
    assert set(rows) == {"open_nsfw", "nsfwjs-mobilenetv2", "nsfwjs-mobilenetv2-mid", "nsfwjs-inceptionv3",
                         "nudenet-320n"}
    assert rows["nudenet-320n"]["licence"].startswith("AGPL-3.0") and rows["nudenet-320n"]["kind"] == "detector"
    assert rows["nsfwjs-inceptionv3"]["licence"] == "MIT" and rows["nsfwjs-inceptionv3"]["installed"] is False
    assert rows["open_nsfw"]["default"] and rows["open_nsfw"]["installed"]
    text = runner.invoke(app, ["models"])
    assert text.exit_code == 0 and "nsfwjs-mobilenetv2-mid" in text.stdout and "MIT" in text.stdout


def test_import_of_a_file_that_is_not_the_package_is_refused(empty_home: Path) -> None:
    bogus = empty_home / "nsfwjs-4.4.0.tgz"
    bogus.write_bytes(b"\x1f\x8b not really")
    result = runner.invoke(app, ["models", "import", "nsfwjs-mobilenetv2", str(bogus)])
    assert result.exit_code == 3
    assert result.stderr.count("\n") == 1 and "sha256" in result.stderr


def test_unknown_model_is_a_usage_error(empty_home: Path) -> None:
    result = runner.invoke(app, ["models", "fetch", "no-such-model"])
    assert result.exit_code == 2 and "unknown ID 'no-such-model'" in result.stderr


def test_a_broken_user_card_is_one_line(empty_home: Path) -> None:
    (empty_home / "cards").mkdir()
    (empty_home / "cards" / "bad.json").write_text('{"id": "bad", "colour": "red"}')
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 2 and "unknown field(s) 'colour'" in result.stderr
