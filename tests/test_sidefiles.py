"""Side files are regular files under a size cap, and their JSON is bounded."""

from __future__ import annotations

import os

import pytest

from nsfwlab.errors import ConfigError, ModelError
from nsfwlab.sidefiles import finite_number, parse_json, read_json_file, read_side_file, read_text_file


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/null"])
def test_device_nodes_are_refused_without_reading(path: str) -> None:
    with pytest.raises(ConfigError, match="not a regular file"):
        read_side_file(path, "calibration")


def test_fifo_is_refused_without_hanging(tmp_path) -> None:
    fifo = tmp_path / "keys"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        read_text_file(fifo, "the API key file")


def test_size_cap_and_error_class(tmp_path) -> None:
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 2048)
    with pytest.raises(ModelError, match="limit is 1,024"):
        read_side_file(big, "sidecar", max_bytes=1024, error=ModelError)
    assert read_side_file(big, "sidecar", max_bytes=2048) == b" " * 2048


def test_missing_and_binary_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read calibration"):
        read_side_file(tmp_path / "nope", "calibration")
    binary = tmp_path / "b"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8 text, hint"):
        read_text_file(binary, "keys", ", hint")


@pytest.mark.parametrize("text, message", [
    ("[" * 200_000, "nested too deeply"),
    ('{"a": NaN}', "NaN"),
    ("[Infinity]", "Infinity"),
    ("1" * 5000, "not valid JSON"),
    ("{", "not valid JSON"),
])
def test_hostile_json_is_one_line_error(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_json(text, "x")


def test_read_json_file_round_trip(tmp_path) -> None:
    p = tmp_path / "c.json"
    p.write_text('{"a": [1, 2.5]}', encoding="utf-8")
    assert read_json_file(p, "calibration") == {"a": [1, 2.5]}


@pytest.mark.parametrize("value, message", [
    (True, "must be a number"), ("3", "must be a number"), (10**400, "out of range"),
    (float("inf"), "must lie in"), (-1, "must lie in"), (2.5, "must be an integer"),
])
def test_finite_number_refuses(value, message) -> None:
    with pytest.raises(ConfigError, match=message):
        finite_number(value, "crop", lo=0, hi=10, integer=isinstance(value, float) and value == 2.5)


def test_finite_number_accepts() -> None:
    assert finite_number(3, "crop", lo=0, hi=10, integer=True) == 3.0
