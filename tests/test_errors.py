"""Errors name library parameters; the CLI shows its flags in their place."""

from __future__ import annotations

from nsfwlab.cli._common import fail, flag_for
from nsfwlab.errors import ConfigError, ModelError


def test_render_replaces_the_parameter_name_only_as_a_whole_word() -> None:
    exc = ConfigError("steps must be >= 1 (max_steps is 5)", param="steps")
    assert str(exc) == "steps must be >= 1 (max_steps is 5)"
    assert exc.render({"steps": "--steps"}) == "--steps must be >= 1 (max_steps is 5)"
    assert exc.render({"other": "--other"}) == str(exc)


def test_flag_for_and_source() -> None:
    assert flag_for("trust_code") == "--trust-code"
    exc = ModelError("a TorchScript file is a program; pass trust_code to run it",
                     param="trust_code", source="n.pt")
    expected = "n.pt: a TorchScript file is a program; pass --trust-code to run it"
    assert exc.render({"trust_code": "--trust-code"}) == expected


def test_cli_fail_prints_the_flag(capsys) -> None:
    exit_ = fail(ConfigError("lr must be positive", param="lr"))
    assert exit_.exit_code == 2
    assert "--lr must be positive" in capsys.readouterr().err
    fail(ConfigError("n_steps must be positive", param="n_steps"), {"n_steps": "--steps"})
    assert "--steps must be positive" in capsys.readouterr().err
