"""Keywords override a lab verb's config dataclass; unknown keywords are refused."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from nsfwlab.errors import ConfigError
from nsfwlab.lab.options import configure


@dataclass(frozen=True)
class _Config:
    steps: int = 10
    lr: float = 0.1


def test_overrides_replace_fields_and_keep_the_rest() -> None:
    assert configure(_Config, None, {}) == _Config()
    assert configure(_Config, _Config(lr=0.5), {"steps": 3}) == _Config(steps=3, lr=0.5)


def test_unknown_keyword_and_wrong_config_type_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"unknown _Config field.*stepz; known: lr, steps"):
        configure(_Config, None, {"stepz": 3})
    with pytest.raises(ConfigError, match="config must be a _Config"):
        configure(_Config, object(), {})  # type: ignore[arg-type]
