"""Options are str Enums shared by the library, the CLI and the HTTP schema: printed, formatted or
joined into a message, a member reads as its value (``safe``), never as ``Label.SAFE``."""

from __future__ import annotations

import enum
import importlib
import pkgutil

import nsfwlab
from nsfwlab import Label, ScoreResult


def _str_enums() -> list[type[enum.Enum]]:
    found: dict[str, type[enum.Enum]] = {}
    for info in pkgutil.walk_packages(nsfwlab.__path__, "nsfwlab."):
        if info.name.endswith("ray_engine"):  # starts nothing, but importing ray takes seconds
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional extra that is not installed
            continue
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, enum.Enum) and issubclass(value, str):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return list(found.values())


def test_every_str_enum_prints_its_value() -> None:
    enums = _str_enums()
    assert len(enums) >= 20
    for cls in enums:
        for member in cls:
            assert str(member) == f"{member}" == member.value, f"{cls.__qualname__}.{member.name}"


def test_a_score_results_label_prints_as_its_value() -> None:
    result = ScoreResult(source="x.jpg", score=0.1, label=Label.SAFE)
    assert str(result.label) == "safe" and f"label={result.label}" == "label=safe"
