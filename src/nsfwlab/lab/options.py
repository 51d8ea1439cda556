"""The shape every lab verb shares: ``verb(input, detector, config, *, progress, **overrides)``.

A verb takes its input, the detector (or model) to study and a frozen config dataclass; keyword
arguments override the config's fields, so ``attack(img, det, steps=50)`` and
``attack(img, det, AttackConfig(steps=50))`` are the same call. It returns a result dataclass with
``to_dict()``. :func:`configure` is the one place where keywords become a config.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from ..errors import ConfigError

__all__ = ["configure"]

C = TypeVar("C")


def configure(cls: type[C], config: C | None, overrides: dict[str, Any]) -> C:
    """``config`` (or ``cls()``) with ``overrides`` applied; an unknown keyword is a one-line ConfigError
    that lists the fields (a misspelt option must not be silently ignored)."""
    base = cls() if config is None else config
    if not isinstance(base, cls):
        raise ConfigError(f"config must be a {cls.__name__}, got {type(base).__name__}")
    if not overrides:
        return base
    names = {f.name for f in dataclasses.fields(base)}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(names))}")
    return dataclasses.replace(base, **overrides)  # type: ignore[type-var]
