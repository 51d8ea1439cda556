"""The ``nsfwlab`` command line: a thin typer app over the library."""

from __future__ import annotations

import inspect

import typer

from .score import score_command

__all__ = ["app", "main"]

app = typer.Typer(
    name="nsfwlab",
    help="Yahoo's open_nsfw classifier: exact scores, fast, at scale; evaluate, tune, explain.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"nsfwlab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """nsfwlab command line."""


app.command("score")(score_command)

# Capabilities register their commands here, one line each (imported lazily inside the modules
# so that `nsfwlab score` never pays for FastAPI, Ray or matplotlib).
from .scan import export_command, scan_command  # noqa: E402

app.command("scan")(scan_command)
app.command("export")(export_command)
from .serve import review_app, serve_command  # noqa: E402

app.command("serve")(serve_command)
app.add_typer(review_app, name="review")
from .evaluate import evaluate_command, export_onnx_command, finetune_command  # noqa: E402

app.command("evaluate")(evaluate_command)
app.command("finetune")(finetune_command)
app.command("export-onnx")(export_onnx_command)
from .compare import compare_command  # noqa: E402

app.command("compare")(compare_command)
from .explain import censor_command, explain_command  # noqa: E402

app.command("explain")(explain_command)
app.command("censor")(censor_command)
from .bank import bank_app  # noqa: E402

app.add_typer(bank_app, name="bank")
from .lab_attack import attack_command, robustness_command  # noqa: E402

app.command("attack")(attack_command)
app.command("robustness")(robustness_command)
from .lab_synth import evolve_command, synthesize_command  # noqa: E402

app.command("evolve")(evolve_command)
app.command("synthesize")(synthesize_command)
from .models import models_app  # noqa: E402

app.add_typer(models_app, name="models")


def _prose(doc: str) -> str:
    """Join each paragraph's hard-wrapped lines: typer's rich help would keep every newline."""
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(p.split()) for p in paragraphs)


def _unwrap_help(typer_app: typer.Typer) -> None:
    for info in typer_app.registered_commands:
        doc = info.help or (info.callback.__doc__ if info.callback else None)
        if doc:
            info.help = _prose(doc)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _unwrap_help(group.typer_instance)


_unwrap_help(app)


def main() -> None:
    app()
