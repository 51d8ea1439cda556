"""``nsfwlab compare``: choose between zoo models on your own labelled data.

Only typer and the light core are imported here; the models, scikit-learn and matplotlib are
imported inside the command.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import typer

from ..config import DecodeLimits
from ..errors import NsfwlabError
from ..outputs import csv_writer
from ._common import ExitCode, fail, output_dir, progress_bar, stderr, stdout, tagged, write_report_files

__all__ = ["compare_command"]

#: Library parameters whose flag is not simply their name with dashes.
_FLAGS = {"n_boot": "--bootstrap", "level": "--ci", "max_gallery": "--gallery", "model": "--models"}


def _scores_csv(comparison: object) -> str:
    buf = io.StringIO()
    w = csv_writer(buf)  # file names: control characters escaped, formula prefixes defused
    models = comparison.models  # type: ignore[attr-defined]
    w.writerow(["path", "label", *[m.id for m in models]])
    for i, path in enumerate(comparison.paths):  # type: ignore[attr-defined]
        label = "nsfw" if comparison.labels[i] else "safe"  # type: ignore[attr-defined]
        w.writerow([path, label, *[f"{m.scores[i]:.6f}" for m in models]])
    return buf.getvalue()


def compare_command(
    data: Path = typer.Argument(..., help="A folder with safe/ and nsfw/ subfolders, or a CSV of path,label."),
    models: str = typer.Option(..., "--models", "-m", help="Comma-separated model ids (nsfwlab models list), e.g. open_nsfw,nsfwjs-mobilenetv2; ensemble:A+B counts as one."),
    out: Path = typer.Option(..., "--out", "-o", help="Report folder (created): compare.json, scores.csv, roc.png, pr.png, report.html."),
    fpr: float = typer.Option(0.01, "--fpr", min=0.0, max=0.999999, help="Target false-positive rate: each model's threshold there and its recall."),
    agreement: str = typer.Option("fpr", "--agreement", help="Labels kappa compares: fpr (flagged above each model's threshold at --fpr) or bands (each card's safe/review/nsfw bands)."),
    bootstrap: int = typer.Option(1000, min=1, help="Bootstrap resamples for the confidence intervals."),
    ci: float = typer.Option(0.95, min=0.5, max=0.999, help="Confidence level of the intervals."),
    seed: int = typer.Option(0, help="Seed of the bootstrap."),
    gallery: int = typer.Option(48, min=0, help="Most thumbnails in the disagreement gallery."),
    backend: str | None = typer.Option(None, help="torch or onnxruntime for every model (default: each model's own)."),
    threads: int | None = typer.Option(None, min=1, help="Threads per model (default: $NSFWLAB_THREADS, else the library's)."),
    batch_size: int = typer.Option(16, min=1, help="Images decoded together and fed to every model."),
    max_pixels: int | None = typer.Option(None, min=1, help="Refuse images with more pixels (default: $NSFWLAB_MAX_PIXELS, else 100000000)."),
    max_bytes: int | None = typer.Option(None, min=1, help="Refuse files larger than this (default: $NSFWLAB_MAX_BYTES, else 67108864)."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="Progress bar on stderr (default: when stderr is a terminal)."),
) -> None:
    """Compare models on your labelled images, each image decoded once and fed to every model: per
    model ROC/PR with AUC and average precision (bootstrap intervals), the threshold at --fpr and its
    recall, the per-class confusion of multi-class models and images/s on this machine; Cohen's
    kappa between models; a gallery of the images they disagree on most (blurred); and a judge card
    (cards, weights sha256, thresholds, versions) to reproduce the figures.

    Exit status: 0 all images scored, 1 some files unreadable (reported; the rest compared),
    2 usage error, 3 a model could not be loaded.
    """
    from ..datasets import load_labelled
    from ..evaluate.compare import compare, load_models
    from ..evaluate.compare_report import pr_overlay_png, render_compare_report, roc_overlay_png
    from ..evaluate.metrics import check_bootstrap
    from ..evaluate.report import check_gallery, thumbnail

    try:
        check_bootstrap(bootstrap, ci)
        check_gallery(gallery)
        limits = DecodeLimits.from_env(max_bytes, max_pixels)
        dataset = load_labelled(data)
        output_dir(out)
        loaded = load_models(models.split(","), backend=backend, threads=threads, batch_size=batch_size)
    except NsfwlabError as exc:
        raise fail(exc, _FLAGS) from None
    counts = dataset.counts()
    stderr.print(f"{len(dataset)} images ({counts['safe']} safe, {counts['nsfw']} nsfw) from {dataset.source}; "
                 f"models {', '.join(m.id for m in loaded)}", highlight=False)
    try:
        with progress_bar(len(dataset), "comparing", enabled=progress) as advance:
            seen = [0]

            def on_progress(event: object) -> None:
                done = event.done  # type: ignore[attr-defined]
                advance(done - seen[0])
                seen[0] = done

            result = compare(dataset, loaded, fpr=fpr, agreement=agreement, n_boot=bootstrap, level=ci, seed=seed,
                             batch_size=batch_size, limits=limits, progress=on_progress)
    except NsfwlabError as exc:
        raise fail(exc, _FLAGS) from None

    plots = {"roc": roc_overlay_png(result), "pr": pr_overlay_png(result)}
    thumbs = {d.path: thumbnail(d.path, limits=limits) for d in result.disagreements(gallery)}
    html = render_compare_report(result, plots, thumbs, max_gallery=gallery)
    write_report_files(out, {"compare.json": json.dumps(result.to_dict(), indent=2), "scores.csv": _scores_csv(result),
                             **{f"{name}.png": png for name, png in plots.items()}, "report.html": html})

    for m in result.models:
        auc, a = m.metrics.roc_auc, m.at_fpr
        recall = "n/a" if a.achieved.recall != a.achieved.recall else f"{a.achieved.recall:.3f}"
        stdout.print(f"{m.id}: ROC AUC {auc.value:.4f} [{auc.low:.4f}, {auc.high:.4f}]  at FPR {fpr:g}: "
                     f"nsfw_above {a.threshold:.6g}, recall {recall}  {m.images_per_second:.1f} img/s",
                     highlight=False)
    for w in result.warnings:
        stderr.print(tagged("warning:", "yellow", f" {w}"), highlight=False)
    for p in result.hygiene.unreadable:
        stderr.print(tagged("unreadable:", "red", f" {p.path}: {p.message}"), highlight=False)
    stdout.print(f"report: {out / 'report.html'}", highlight=False)
    if result.hygiene.unreadable:
        raise typer.Exit(int(ExitCode.INPUT_FAILED))
