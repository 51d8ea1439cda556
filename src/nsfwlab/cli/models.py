"""``nsfwlab models [list] | fetch ID | import ID FILE``: the model zoo's cards and weights."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..errors import NsfwlabError
from ._common import fail, stderr, stdout, tagged

__all__ = ["models_app"]

models_app = typer.Typer(help="The model zoo: every model's card, and fetching or importing its weights.",
                         no_args_is_help=False, invoke_without_command=True)


def _size(card: object) -> str:
    size = getattr(getattr(card, "weights", None), "size_bytes", 0)
    return f"{size / 1e6:.1f} MB" if size else "-"


@models_app.callback()
def models_root(ctx: typer.Context,
                as_json: bool = typer.Option(False, "--json", help="Print the cards as JSON.")) -> None:
    """List every model (installed or not): id, kind, classes, NSFW score, licence, size, fidelity."""
    if ctx.invoked_subcommand is None:
        list_command(as_json)


@models_app.command("list")
def list_command(as_json: bool = typer.Option(False, "--json", help="Print the cards as JSON.")) -> None:
    """List every model (installed or not): id, kind, classes, NSFW score, licence, size, fidelity."""
    from .. import zoo

    try:
        cards = zoo.all_cards()
        rows = [(card, zoo.installed(card.id)) for card in cards.values()]
    except NsfwlabError as exc:
        raise fail(exc) from None
    if as_json:
        out = [{"id": c.id, "kind": c.kind, "classes": list(c.classes), "nsfw_score": c.score_rule,
                "installed": ok, "licence": c.licence, "size_bytes": c.weights.size_bytes or None,
                "input": c.input.describe(), "source": " ".join(filter(None, (c.weights.package, c.weights.version))),
                "sha256": c.weights.sha256, "fidelity": c.fidelity.describe(),
                "default": c.id == zoo.DEFAULT_MODEL} for c, ok in rows]
        stdout.print(json.dumps(out, indent=2), highlight=False)
        return
    header = ("id", "kind", "classes", "NSFW score", "installed", "licence", "size", "fidelity")
    lines = [header] + [(card.id + (" (default)" if card.id == zoo.DEFAULT_MODEL else ""), card.kind,
                         ",".join(card.classes), card.score_rule, "yes" if ok else "no", card.licence, _size(card),
                         card.fidelity.describe()) for card, ok in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:  # plain columns: a table would wrap every cell on a narrow terminal
        stdout.print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip(), highlight=False)


@models_app.command("fetch")
def fetch_command(model_id: str = typer.Argument(..., metavar="ID", help="A model id from `nsfwlab models`.")) -> None:
    """Fetch a model's package through its registry's own client (npm pack for nsfwjs), verify its
    sha256 and convert it into the cache (NSFWLAB_HOME). Nothing else ever downloads."""
    from .. import zoo

    try:
        path = zoo.fetch(model_id)
    except NsfwlabError as exc:
        raise fail(exc, {"model": "ID"}) from None
    stderr.print(tagged("fetched:", "bold green", f" {model_id} -> {path}"), highlight=False)


@models_app.command("import")
def import_command(
    model_id: str = typer.Argument(..., metavar="ID", help="A model id from `nsfwlab models`."),
    file: Path = typer.Argument(..., help="The model's package (e.g. nsfwjs-4.4.0.tgz from `npm pack`) or its "
                                          "converted weights file; checked against the card's sha256."),
) -> None:
    """Install a model's weights from a local file, for machines with no network."""
    from .. import zoo

    try:
        path = zoo.import_weights(model_id, file)
    except NsfwlabError as exc:
        raise fail(exc, {"model": "ID"}) from None
    stderr.print(tagged("imported:", "bold green", f" {model_id} -> {path}"), highlight=False)
