"""``nsfwlab evaluate``, ``nsfwlab finetune`` and ``nsfwlab export-onnx``.

Only typer and the light core are imported here; scikit-learn, matplotlib and the training code
are imported inside the commands.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import typer

from ..calibration import CalibrationMethod
from ..config import BackendName, DecodeLimits, Device, Thresholds
from ..errors import NsfwlabError
from ..outputs import atomic_output, csv_writer
from ._common import ExitCode, fail, output_dir, output_file, progress_bar, stderr, stdout, tagged, write_report_files

__all__ = ["evaluate_command", "export_onnx_command", "finetune_command"]


def _targets(fpr: list[float] | None, recall: list[float] | None, precision: list[float] | None) -> list:
    from ..evaluate.metrics import DEFAULT_TARGETS, TargetKind, TargetRate

    targets = [TargetRate(TargetKind.FPR, v) for v in fpr or []]
    targets += [TargetRate(TargetKind.RECALL, v) for v in recall or []]
    targets += [TargetRate(TargetKind.PRECISION, v) for v in precision or []]
    return targets or list(DEFAULT_TARGETS)


#: Library parameters whose flag is not simply their name with dashes.
_FLAGS = {"n_boot": "--bootstrap", "level": "--ci", "max_gallery": "--gallery", "folds": "--calibration-folds"}


def _scores_csv(evaluation: object) -> str:
    buf = io.StringIO()
    w = csv_writer(buf)  # file names: control characters escaped, formula prefixes defused
    w.writerow(["path", "label", "score"])
    for it in evaluation.scored:  # type: ignore[attr-defined]
        w.writerow([it.path, "nsfw" if it.label else "safe", f"{it.score:.6f}"])
    return buf.getvalue()


def evaluate_command(
    data: Path = typer.Argument(..., help="A folder with safe/ and nsfw/ subfolders, or a CSV of path,label."),
    out: Path = typer.Option(..., "--out", "-o", help="Report folder (created): metrics.json, scores.csv, roc.png, pr.png, histogram.png, report.html."),
    model: str | None = typer.Option(None, "--model", help="A zoo model id (`nsfwlab models`), an ensemble, or a fine-tuned checkpoint (.pt) or exported .onnx, instead of open_nsfw; --calibrate then fits a calibration for that model."),
    target_fpr: list[float] | None = typer.Option(None, "--target-fpr", help="Recommend nsfw_above for this false-positive rate (repeatable)."),
    target_recall: list[float] | None = typer.Option(None, "--target-recall", help="Recommend safe_below for this NSFW recall (repeatable)."),
    target_precision: list[float] | None = typer.Option(None, "--target-precision", help="Recommend nsfw_above for this precision (repeatable)."),
    safe_below: float = typer.Option(0.2, help="Current safe band: scores below this."),
    nsfw_above: float = typer.Option(0.8, help="Current NSFW band: scores above this."),
    bootstrap: int = typer.Option(1000, min=1, help="Bootstrap resamples for the confidence intervals."),
    ci: float = typer.Option(0.95, min=0.5, max=0.999, help="Confidence level of the intervals."),
    seed: int = typer.Option(0, help="Seed of the bootstrap (and of the calibration's folds)."),
    calibrate: CalibrationMethod | None = typer.Option(None, "--calibrate", help="Also fit a score calibration (isotonic or platt), cross-validated: calibration.json (for score --calibration), reliability_before.png, reliability_after.png."),
    calibration_folds: int = typer.Option(5, min=2, help="Cross-validation folds of --calibrate."),
    drop_duplicates: bool = typer.Option(False, "--drop-duplicates", help="Score identical files once; leave out groups with conflicting labels (files are never touched)."),
    gallery: int = typer.Option(48, min=0, help="Most thumbnails per error gallery in the report."),
    device: Device = typer.Option(Device.AUTO, help="Where the model runs."),
    backend: BackendName = typer.Option(BackendName.AUTO, help="Inference engine (auto: onnxruntime on CPU, torch on CUDA)."),
    batch_size: int = typer.Option(16, min=1, help="Images per model call."),
    workers: int = typer.Option(2, min=1, help="Threads decoding and preprocessing."),
    max_pixels: int | None = typer.Option(None, min=1, help="Refuse images with more pixels (default: $NSFWLAB_MAX_PIXELS, else 100000000)."),
    max_bytes: int | None = typer.Option(None, min=1, help="Refuse files larger than this (default: $NSFWLAB_MAX_BYTES, else 67108864)."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="Progress bar on stderr (default: when stderr is a terminal)."),
) -> None:
    """Measure the model on your labelled images: ROC/PR curves, AUC and average precision with
    bootstrap confidence intervals, confusion at the current bands, recommended thresholds, and an
    HTML report with (blurred) galleries of the errors.

    Exit status: 0 all images scored, 1 some files unreadable (reported; the rest evaluated),
    2 usage error, 3 the model could not be loaded.
    """
    from ..detector import Detector
    from ..evaluate import evaluate, load_labelled
    from ..evaluate.calibrate import check_folds
    from ..evaluate.metrics import check_bootstrap
    from ..evaluate.plots import histogram_png, pr_png, roc_png
    from ..evaluate.report import check_gallery, render_report, thumbnail

    try:
        check_bootstrap(bootstrap, ci)
        check_folds(calibration_folds)
        check_gallery(gallery)
        limits = DecodeLimits.from_env(max_bytes, max_pixels)
        targets = _targets(target_fpr, target_recall, target_precision)
        dataset = load_labelled(data)
        output_dir(out)
        detector = Detector(backend, device, thresholds=Thresholds(safe_below, nsfw_above), batch_size=batch_size,
                            workers=workers, model=model, limits=limits)
    except NsfwlabError as exc:
        raise fail(exc, _FLAGS) from None
    counts = dataset.counts()
    if calibrate is not None:  # before scoring: unreadable files can only make the classes smaller
        from ..evaluate.calibrate import check_calibration_size

        try:
            check_calibration_size(calibrate, counts["safe"], counts["nsfw"])
        except NsfwlabError as exc:
            raise fail(exc, {"method": "--calibrate"}) from None
    stderr.print(f"{len(dataset)} images ({counts['safe']} safe, {counts['nsfw']} nsfw) from {dataset.source}",
                 highlight=False)
    try:
        with detector, progress_bar(len(dataset), "scoring", enabled=progress) as advance:
            result = evaluate(dataset, detector, targets=targets, n_boot=bootstrap, level=ci, seed=seed,
                              drop_duplicates=drop_duplicates,
                              progress=lambda r: advance(1, errors=0 if r.ok else 1))
    except NsfwlabError as exc:
        raise fail(exc, _FLAGS) from None

    m = result.metrics
    plots = {
        "roc": roc_png(m_labels := [it.label for it in result.scored], m_scores := [it.score for it in result.scored],
                       auc_text=f"(AUC {m.roc_auc.value:.3f})", recommendations=m.recommendations),
        "pr": pr_png(m_labels, m_scores, ap_text=f"(AP {m.average_precision.value:.3f})"),
        "histogram": histogram_png(m_labels, m_scores, thresholds=m.current, recommended=m.recommended),
    }
    fit: Any = None
    if calibrate is not None:
        fit, reliability = _fit_calibration(result, dataset, calibrate, calibration_folds, seed, limits)
        plots.update(reliability)
    shown = result.false_positives()[:gallery] + result.false_negatives()[:gallery]
    thumbs = {it.path: thumbnail(it.path, limits=limits) for it in shown}
    calibration = None if fit is None else {"method": calibrate.value if calibrate else "", "folds": fit.folds,
                                            "brier_before": fit.brier_before, "brier_after": fit.brier_after,
                                            "warnings": list(fit.warnings)}
    html = render_report(result, plots, thumbs, max_gallery=gallery, calibration=calibration)

    write_report_files(out, {"metrics.json": json.dumps(result.to_dict(), indent=2), "scores.csv": _scores_csv(result),
                             **{f"{name}.png": png for name, png in plots.items()}, "report.html": html})

    stdout.print(f"ROC AUC {m.roc_auc.value:.4f} [{m.roc_auc.low:.4f}, {m.roc_auc.high:.4f}]  "
                 f"AP {m.average_precision.value:.4f} [{m.average_precision.low:.4f}, {m.average_precision.high:.4f}]  "
                 f"({int(100 * ci)}% CI, {bootstrap} bootstrap resamples, n={m.n})", highlight=False)
    for r in m.recommendations:
        a = r.achieved.to_dict()
        rates = ", ".join(f"{k} {'n/a' if a[k] is None else format(a[k], '.3f')}" for k in ("recall", "fpr", "precision"))
        status = "  NOT MET" if not r.met else "" if r.demonstrated else "  met here, NOT DEMONSTRATED (too few images)"
        stdout.print(f"  {r.target.name}: {r.sets} = {r.threshold:.6g}  ({rates}){status}", highlight=False)
    stdout.print(f"recommended bands: safe_below={m.recommended.safe_below:.6g} nsfw_above={m.recommended.nsfw_above:.6g}",
                 highlight=False)
    for warning in m.warnings:
        stderr.print(tagged("warning:", "yellow", f" {warning}"), highlight=False)
    h = result.hygiene
    if h.duplicates:
        stderr.print(f"{sum(len(g.paths) - 1 for g in h.duplicates)} duplicate file(s) in {len(h.duplicates)} "
                     f"group(s), {len(h.conflicting)} with conflicting labels (see report)", style="yellow")
    for p in h.unreadable:
        stderr.print(tagged("unreadable:", "red", f" {p.path}: {p.message}"), highlight=False)
    if fit is not None:
        write_report_files(out, {"calibration.json": fit.calibration.dumps()})
        stdout.print(f"calibration ({calibrate.value if calibrate else ''}): Brier {fit.brier_before:.4f} -> "
                     f"{fit.brier_after:.4f} ({fit.folds}-fold cross-validated): {out / 'calibration.json'}",
                     highlight=False)
    stdout.print(f"report: {out / 'report.html'}", highlight=False)
    if h.unreadable:
        raise typer.Exit(int(ExitCode.INPUT_FAILED))


def _fit_calibration(evaluation: object, dataset: Any, method: CalibrationMethod, folds: int, seed: int,
                     limits: DecodeLimits) -> tuple[Any, dict[str, bytes]]:
    """Fit the calibration on the scored set, cross-validated with near-duplicates (and images of
    one CSV group) kept in one fold; the fit and its two reliability diagrams."""
    from ..datasets import near_duplicate_groups
    from ..evaluate.calibrate import fit_calibration
    from ..evaluate.plots import reliability_png

    labels = [it.label for it in evaluation.scored]  # type: ignore[attr-defined]
    scores = [it.score for it in evaluation.scored]  # type: ignore[attr-defined]
    paths = [it.path for it in evaluation.scored]  # type: ignore[attr-defined]
    digests = evaluation.hygiene.digests  # type: ignore[attr-defined]
    model = evaluation.model  # type: ignore[attr-defined]
    sources = {str(it.path): it.group for it in dataset.items}
    keys = [(digests.get(p, p), f"group:{g}") if (g := sources.get(p)) is not None else digests.get(p, p)
            for p in paths]
    try:
        groups = near_duplicate_groups(paths, keys=keys, limits=limits)
        fit = fit_calibration(labels, scores, method, model_version=model["model_version"],
                              preprocess_version=model["preprocess_version"], folds=folds, seed=seed, groups=groups)
    except NsfwlabError as exc:
        raise fail(exc, {**_FLAGS, "method": "--calibrate"}) from None
    for warning in fit.warnings:
        stderr.print(tagged("warning:", "yellow", f" {warning}"), highlight=False)
    plots = {
        "reliability_before": reliability_png(labels, scores, brier=fit.brier_before, title="Reliability: model scores"),
        "reliability_after": reliability_png(
            labels, fit.out_of_fold, brier=fit.brier_after,
            title=f"Reliability: {method.value} calibration ({fit.folds}-fold cross-validated)"),
    }
    return fit, plots


def finetune_command(
    data: Path = typer.Argument(..., help="A folder with safe/ and nsfw/ subfolders, or a CSV of path,label."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the best model (an nsfwlab .pt checkpoint); OUT.history.png gets the per-epoch curves."),
    arch: str = typer.Option("open_nsfw", help="open_nsfw (transfer learning), vgg16 (from scratch, a baseline), or any registered architecture (from scratch)."),
    unfreeze: int = typer.Option(1, min=0, max=5, help="open_nsfw stages to train, from the top: 0 head only, 1-4 stages, 5 everything."),
    epochs: int = typer.Option(10, min=1, help="Most epochs."),
    patience: int = typer.Option(3, min=1, help="Stop after this many epochs without a better validation AUC."),
    batch_size: int = typer.Option(16, min=1, help="Images per step."),
    lr: float = typer.Option(1e-4, min=0.0, help="AdamW learning rate."),
    weight_decay: float = typer.Option(1e-4, min=0.0, help="AdamW weight decay."),
    val_fraction: float = typer.Option(0.2, min=0.01, max=0.9, help="Share of each class held out for validation."),
    seed: int = typer.Option(0, help="Seed of the split, shuffling, augmentation and initialisation."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Flip, crop and colour jitter on the training batches."),
    balance: bool = typer.Option(True, "--balance/--no-balance", help="Class-weighted loss."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the training state next to --out."),
    state: Path | None = typer.Option(None, "--state", help="Training state file (default: OUT with .state.pt)."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Keep the preprocessed arrays here (reused on --resume)."),
    export_onnx: Path | None = typer.Option(None, "--export-onnx", help="Also export the model to this .onnx (fast CPU backend)."),
    workers: int = typer.Option(2, min=1, help="Threads decoding and preprocessing."),
    device: Device = typer.Option(Device.AUTO, help="Where training runs (auto: CUDA when available)."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="Progress bars on stderr (default: when stderr is a terminal)."),
) -> None:
    """Fine-tune open_nsfw on your labelled images (or train VGG-16 from scratch as a baseline).

    Stratified seeded train/validation split, augmentation, early stopping on validation ROC AUC,
    a training state saved every epoch (--resume continues after an interruption). The output
    loads wherever --model is accepted (score, scan, serve, evaluate).
    """
    from ..datasets import load_labelled
    from ..train import AugmentConfig, EpochStats, FinetuneConfig, finetune
    from ..train.augment import NO_AUGMENT

    state_path = state or out.with_name(out.stem + ".state.pt")
    try:
        config = FinetuneConfig(arch=arch,
                                unfreeze=unfreeze, epochs=epochs, patience=patience, batch_size=batch_size, lr=lr,
                                weight_decay=weight_decay, val_fraction=val_fraction, seed=seed, balance=balance,
                                augment=AugmentConfig() if augment else NO_AUGMENT)
        dataset = load_labelled(data)
        for path in (out, state_path, export_onnx):
            if path is not None:
                output_file(path)
        if cache_dir is not None:
            output_dir(cache_dir)
    except NsfwlabError as exc:
        raise fail(exc) from None

    def on_epoch(s: EpochStats) -> None:
        loss = "    -   " if s.train_loss is None else f"{s.train_loss:8.4f}"
        mark = " *" if s.improved else ""
        tag = "start" if s.epoch == 0 else f"{s.epoch:5d}"
        stderr.print(f"epoch {tag}  train loss {loss}  val loss {s.val_loss:8.4f}  val AUC {s.val_auc:.4f}  "
                     f"val acc {s.val_accuracy:.3f}  {s.seconds:6.1f}s{mark}", highlight=False)

    counts = dataset.counts()
    stderr.print(f"{len(dataset)} images ({counts['safe']} safe, {counts['nsfw']} nsfw); arch {config.arch}"
                 + (", from scratch" if config.from_scratch else f", unfreeze {unfreeze}"), highlight=False)
    try:
        with _Phases(progress) as bars:
            bars.start("preprocessing", len(dataset))
            n_train_est = int(len(dataset) * (1 - val_fraction))

            def on_batch(n: int) -> None:
                if bars.name != "training":
                    bars.start("training", n_train_est * epochs)
                bars.advance(n)

            result = finetune(dataset, config, state_path=state_path, resume=resume, cache_dir=cache_dir,
                              workers=workers, device=device, on_prepare=lambda n, e: bars.advance(n, e),
                              on_batch=on_batch, on_epoch=on_epoch)
    except KeyboardInterrupt:
        if state_path.is_file():
            stderr.print(tagged("interrupted", "yellow", f": the state after the last finished epoch is in {state_path}; "
                                "run the same command with --resume to continue"), highlight=False)
        else:
            stderr.print(tagged("interrupted", "yellow", " before the first epoch finished; nothing was saved"),
                         highlight=False)
        raise typer.Exit(130) from None
    except NsfwlabError as exc:
        raise fail(exc) from None

    saved = result.save(out)
    from ..evaluate.plots import training_png

    curve = out.with_name(out.stem + ".history.png")
    h = result.history
    png = training_png([s.epoch for s in h], [s.val_auc for s in h], [s.val_loss for s in h],
                       [s.train_loss for s in h], best_epoch=result.best_epoch)
    try:
        with atomic_output(curve, binary=True, what="training curve") as fh:
            fh.write(png)
    except NsfwlabError as exc:
        raise fail(exc) from None
    stdout.print(f"validation AUC: start {result.baseline_auc:.4f} -> best {result.best_auc:.4f} (epoch "
                 f"{result.best_epoch}); {result.n_train} train / {result.n_val} validation images"
                 + ("; stopped early" if result.stopped_early else ""), highlight=False)
    for p in result.problems:
        stderr.print(tagged("unreadable:", "red", f" {p.path}: {p.message}"), highlight=False)
    for warning in result.warnings:
        stderr.print(tagged("warning:", "yellow", f" {warning}"), highlight=False)
    if result.near_duplicates:
        stderr.print(f"{result.near_duplicates} near-duplicate image(s) kept on the side of the split of their "
                     "twin (PDQ)", highlight=False)
    if result.excluded_conflicting:
        stderr.print(f"{len(result.excluded_conflicting)} identical file(s) with conflicting labels left out",
                     style="yellow")
    stdout.print(f"model: {saved}\ncurves: {curve}", highlight=False)
    if export_onnx is not None:
        from ..checkpoint import export_onnx as _export

        try:
            stdout.print(f"onnx: {_export(saved, export_onnx)}", highlight=False)
        except NsfwlabError as exc:
            raise fail(exc) from None
    if result.problems:
        raise typer.Exit(int(ExitCode.INPUT_FAILED))


class _Phases:
    """One progress bar at a time (rich allows a single live display): preprocessing, then training."""

    def __init__(self, enabled: bool | None) -> None:
        self.enabled = enabled
        self.name = ""
        self._stack: ExitStack | None = None
        self._advance: Callable[..., None] = lambda n=1, errors=0: None

    def start(self, name: str, total: int) -> None:
        self.close()
        self._stack = ExitStack()
        self._advance = self._stack.enter_context(progress_bar(total, name, enabled=self.enabled))
        self.name = name

    def advance(self, n: int = 1, errors: int = 0) -> None:
        self._advance(n, errors=errors)

    def close(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def __enter__(self) -> _Phases:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def export_onnx_command(
    checkpoint: Path = typer.Argument(..., help="An nsfwlab checkpoint (.pt) from finetune."),
    out: Path = typer.Argument(..., help="The .onnx file to write (a .json sidecar with the preprocessing goes next to it)."),
) -> None:
    """Export a checkpoint to ONNX for the fast onnxruntime CPU backend (--model OUT.onnx)."""
    from ..checkpoint import export_onnx

    try:
        path = export_onnx(checkpoint, output_file(out))
    except NsfwlabError as exc:
        raise fail(exc) from None
    stdout.print(f"onnx: {path}", highlight=False)
