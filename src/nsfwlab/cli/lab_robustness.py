"""``nsfwlab robustness``: the per-image study (everyday perturbations, the smallest flipping budget, attacks
through defences) and the robustness protocol (a stated threat model, robust accuracy against epsilon for an
ensemble of attacks and their worst case, transfer between models, sanity checks, everyday evasions, attacks
on a live service), written as one robustness.json, the plots and one report.html.

Only this module writes files; the lab returns values. torch and matplotlib are imported inside the command."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import typer

from ..config import Device
from ..errors import ConfigError, NsfwlabError
from ..outputs import printable
from ..progress import Progress
from ..sidefiles import read_text_file
from ._common import (
    ExitCode,
    expand_images,
    fail,
    output_dir,
    progress_bar,
    stderr,
    stdout,
    tagged,
    write_report_files,
)

__all__ = ["DEFAULT_ATTACKS", "robustness_command"]

#: The protocol's attacks unless --attacks names others: one white-box, one score-based and one label-only
#: attack. ``minimal`` (the exact-pipeline smallest-budget search) is left out: the per-image study already
#: measures it on the same images, and it is the slowest.
DEFAULT_ATTACKS = "apgd,square,hopskipjump"
#: Attacks that need a model's gradients, so they cannot run against --target-url.
WHITE_BOX = ("apgd", "minimal")
#: The code of the service oracle's errors (unreachable, an answer that is not the API's): exit status 3.
SERVICE_ERROR = "service_error"
#: Library parameters whose flag is not simply ``--name``.
FLAGS = {"norm": "--threat", "models": "--model", "save_adversarial": "--save-adversarial", "names": "--evasions",
         "max_work_side": "--max-work-side", "work_side": "--work-side", "api_key": "--api-key"}


def _eps(text: str) -> tuple[float, ...]:
    """``--eps 1,2,4,8`` as numbers (the library checks their range)."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values:
        raise ConfigError(f"eps takes budgets in levels of 1/255 such as 1,2,4,8, got {text!r}", param="eps")
    return values


def _attacks(text: str | None, remote: bool) -> tuple[tuple[str, ...], str | None]:
    """The attacks to run, and a note when some asked for cannot run against a service."""
    names = tuple(a.strip().lower() for a in (text or DEFAULT_ATTACKS).split(",") if a.strip())
    if not names:
        raise ConfigError(f"attacks takes a list such as {DEFAULT_ATTACKS}, got {text!r}", param="attacks")
    if not remote:
        return names, None
    kept = tuple(a for a in names if a not in WHITE_BOX)
    dropped = [a for a in names if a in WHITE_BOX]
    if not kept:
        raise ConfigError(f"against --target-url only black-box attacks run (square, hopskipjump); "
                          f"{', '.join(dropped)} need a local model's gradients")
    note = (f"--target-url: {', '.join(dropped)} need a local model's gradients and are skipped; running "
            f"{', '.join(kept)}") if dropped and text is not None else None
    return kept, note


#: Where --target-url finds the service's key when neither --api-key nor --api-key-file gives it.
API_KEY_ENV = "NSFWLAB_API_KEY"


def _api_key(api_key: str | None, api_key_file: Path | None, remote: bool) -> str | None:
    """The service's key from --api-key, --api-key-file (its first key line) or, for --target-url only, the
    NSFWLAB_API_KEY variable; an empty or blank key is refused, as serve refuses one."""
    if api_key is not None and api_key_file is not None:
        raise ConfigError("give the service's key by --api-key or by --api-key-file, not both")
    if not remote:
        if api_key is not None or api_key_file is not None:
            raise ConfigError("an API key is for --target-url; give the service's URL too")
        return None
    if api_key is None and api_key_file is None:
        api_key = os.environ.get(API_KEY_ENV)
        if api_key is None:
            raise ConfigError(f"--target-url needs the service's key: --api-key-file FILE, {API_KEY_ENV} or "
                              "--api-key")
    if api_key is not None:
        if not api_key.strip():
            raise ConfigError(f"an empty or blank --api-key (or {API_KEY_ENV}) is no key; give the service's key")
        return api_key.strip()
    assert api_key_file is not None
    text = read_text_file(api_key_file, "the API key file", " (one key per line)")
    keys = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if not keys:
        raise ConfigError(f"the API key file {api_key_file} holds no key (one key per line)")
    return keys[0]


def _models(model: Sequence[str]) -> tuple[str, ...]:
    """The models to study (default open_nsfw); an id that no card has is refused now, before any work.
    Against --target-url they name the models the service runs: each success is verified on the same model
    here."""
    from ..modelsource import check_model_name

    if not model:
        return ("open_nsfw",)
    if len(set(model)) != len(model):
        raise ConfigError(f"--model names a model twice: {', '.join(model)}", param="models")
    for m in model:
        check_model_name(m)
    return tuple(model)


def _advance(advance: Callable[..., None]) -> Callable[[Progress], None]:
    """A progress callback moving a bar by each event's ``done`` (events of one stage count up)."""
    seen: dict[str, int] = {}

    def step(event: Progress) -> None:
        n = event.done - seen.get(event.stage, 0)
        seen[event.stage] = event.done
        item = event.item
        error = getattr(item, "error", None) if not isinstance(item, Mapping) else item.get("error")
        advance(n=max(n, 0), errors=int(error is not None))
    return step


def _summary_lines(data: Mapping[str, Any]) -> None:
    """One line per model: clean accuracy and the worst case at the largest budget."""
    norm = (data.get("threat_model") or {}).get("norm", "")
    for model, curves in (data.get("curves") or {}).items():
        clean = (data.get("clean_accuracy") or {}).get(model) or {}
        points = [p for p in curves.get("worst", []) if isinstance(p.get("eps"), (int, float))]
        line = f"{printable(model)}: clean accuracy {_num(clean.get('value'))} (n={clean.get('n', '-')})"
        if points:
            top = max(points, key=lambda p: p["eps"])
            lo, hi = (top.get("ci95") or [None, None])[:2]
            line += (f", worst-case robust accuracy {_num(top.get('robust_accuracy'))} [{_num(lo)}, {_num(hi)}] "
                     f"at {top['eps']:g}/255 {norm}")
        stdout.print(line, highlight=False)
    for check in data.get("sanity", []):
        if check.get("passed") is False:
            stderr.print(tagged("warning:", "bold yellow", f" sanity check failed: {check.get('check')}: "
                                f"{check.get('detail', '')}"), highlight=False)
    for note in data.get("warnings", []):
        stderr.print(tagged("warning:", "bold yellow", f" {note}"), highlight=False)


def _num(x: Any) -> str:
    return f"{x:.2f}" if isinstance(x, float) else "-" if x is None else str(x)


def _study_lines(rep: Any) -> None:
    for im in rep.images:
        if im.error is not None:
            stderr.print(tagged("error:", "bold red", f" {im.error}"), highlight=False)
            continue
        eps = im.min_eps["value"] if im.min_eps else None
        pixels = im.min_eps.get("pixels") if im.min_eps else None
        where = f" (on a {im.working_copy} working copy)" if im.working_copy else ""
        stdout.print(f"{printable(im.path)}: score {im.score:.4f}, min eps {eps if eps is not None else '-'}, "
                     f"changed pixels {pixels if pixels is not None else '-'}{where}", highlight=False)
    for note in rep.summary.get("warnings", []):
        stderr.print(tagged("warning:", "bold yellow", f" {note}"), highlight=False)


def robustness_command(
    inputs: list[Path] = typer.Argument(..., help="Images or folders of images."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for robustness.json, the plots and report.html."),
    labels: Path | None = typer.Option(None, "--labels", help="Labels: a CSV of path,label or a folder with "
                                       "safe/ and nsfw/ (AUC under each perturbation; the protocol's robust "
                                       "accuracy against them; without, each model's own decision is the label)."),
    model: list[str] = typer.Option([], "--model", help="A model to attack (repeatable; `nsfwlab models`, "
                                    "ensemble:A+B[:mean|max]); default open_nsfw. Two or more give a transfer "
                                    "matrix. The per-image study measures the first. With --target-url: the "
                                    "service's model of that id (without --model, its default), verified on the "
                                    "same model here."),
    attacks: str | None = typer.Option(None, "--attacks", help="The protocol's attacks, comma-separated, from "
                                       f"apgd, square, hopskipjump, minimal (default {DEFAULT_ATTACKS})."),
    threat: str = typer.Option("linf", "--threat", help="The threat model's norm: linf (max change per value) or "
                               "l2 (root-mean-square change over all values)."),
    eps: str = typer.Option("1,2,4,8", "--eps", help="The protocol's budgets, in levels of 1/255."),
    threshold: float = typer.Option(0.5, "--threshold", help="NSFW when the score is at least this (the "
                                    "protocol's decision)."),
    restarts: int = typer.Option(1, "--restarts", min=1, help="APGD's random restarts per budget."),
    queries: int = typer.Option(300, "--queries", min=1, help="Query budget of each black-box attack per image "
                                "(Square: per budget)."),
    work_side: int = typer.Option(256, "--work-side", min=32, help="The protocol attacks a copy of each image "
                                  "downscaled to at most this longer side."),
    protocol: bool = typer.Option(True, "--protocol/--no-protocol", help="Run the protocol (curves, transfer, "
                                  "sanity checks); --no-protocol runs the per-image study alone."),
    sanity: bool = typer.Option(True, "--sanity/--no-sanity", help="The protocol's sanity checks (extra APGD "
                                "runs: an unbounded budget, more steps and restarts)."),
    evasions: bool = typer.Option(False, "--evasions", help="Everyday evasions (borders, grids, overlays, "
                                  "rotations, hue shifts, a frame in an animation): the score change per model."),
    tiles: bool = typer.Option(False, "--tiles", help="Also score the evasions tiled (max over tiles) and report "
                               "what that recovers and costs (implies --evasions)."),
    target_url: str | None = typer.Option(None, "--target-url", help="Attack a live `nsfwlab serve` at this URL "
                                          "(black-box attacks only; queries counted, 429 honoured)."),
    api_key: str | None = typer.Option(None, "--api-key", help="The service's API key (prefer --api-key-file or "
                                       f"{API_KEY_ENV}: a key on the command line is visible to other users)."),
    api_key_file: Path | None = typer.Option(None, "--api-key-file", help="File holding the service's API key."),
    start_images: list[Path] | None = typer.Option(None, "--start-images", help="Images (or folders) HopSkipJump "
                                                   "may start from: the attacker's images of the other class, not "
                                                   "attacked themselves (a set of one class gives it none)."),
    save_adversarial: bool = typer.Option(False, "--save-adversarial", help="Keep every verified adversarial "
                                          "PNG in OUT/adversarial (otherwise none is kept)."),
    perturb: str | None = typer.Option(None, "--perturb", help="Comma-separated perturbations: jpeg:Q, scale:F, "
                                       "blur:R, noise:S, crop:F, rotate:D, flip, grayscale, bits:B, median:K "
                                       "(default: a standard set)."),
    attack: bool = typer.Option(True, "--attack/--no-attack", help="Per-image study: measure the smallest "
                                "flipping budget."),
    defences: str = typer.Option("jpeg:75,bits:4,median:3", "--defences",
                                 help="Defences to attack through (comma-separated), or 'none'."),
    max_eps: float = typer.Option(8.0, "--max-eps", min=1.0, max=255.0, help="Per-image study: largest budget, "
                                  "in levels of 1/255."),
    steps: int = typer.Option(30, min=1, help="Optimiser steps per budget (the study's search and APGD's "
                              "iterations)."),
    jpeg: str = typer.Option("differentiable", help="The study's JPEG step: differentiable, straight-through, eot."),
    thumbnails: bool = typer.Option(True, "--thumbnails/--no-thumbnails", help="Blurred thumbnails in report.html."),
    max_work_side: int = typer.Option(2048, "--max-work-side", min=32, help="Per-image study: measure a "
                                      "downscaled copy of images longer than this."),
    seed: int = typer.Option(0, help="Seed of the noise perturbation, the attacks and the bootstrap."),
    device: Device = typer.Option(Device.AUTO, help="Where the attacks' gradients are computed."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="Progress bars on stderr."),
) -> None:
    """How robust each model is: the per-image study and the robustness protocol, in one robustness.json.

    Writes robustness.json, report.html, jpeg_curve.png and min_eps.png (the per-image study; min_eps.png
    unless --no-attack) and curves-MODEL.png (the protocol) into --out. Against --target-url only the
    protocol's black-box attacks run.

    Exit status: 0 done, 1 some inputs could not be read, 2 usage error, 3 model error (or the service at
    --target-url could not be reached).
    """
    from ..lab.robust import load_labels

    try:
        remote = target_url is not None
        key = _api_key(api_key, api_key_file, remote)
        if remote and (evasions or tiles):
            raise ConfigError("--evasions and --tiles score local models; run them without --target-url")
        if remote and not protocol:
            raise ConfigError("--target-url attacks a service with the protocol; leave out --no-protocol")
        models = _models(model)
        names, note = _attacks(attacks, remote)
        eps_values = _eps(eps)
        label_map = load_labels(labels) if labels is not None else None
        if label_map is not None:
            label_map = {str(Path(k).resolve()): v for k, v in label_map.items()}
        study_config, study_note = (None, None) if remote else _study_config(
            models[0], perturb=perturb, attack=attack, defences=defences, max_eps=max_eps, steps=steps, jpeg=jpeg,
            labels=label_map, max_work_side=max_work_side, seed=seed, device=device.value)
        protocol_config = _protocol_config(
            attacks=names, norm=threat.strip().lower(), eps=eps_values, threshold=threshold, steps=steps,
            restarts=restarts, queries=queries, work_side=work_side, seed=seed, sanity=sanity, device=device.value,
            save_adversarial=out / "adversarial" if save_adversarial else None) if protocol else None
        files = expand_images(inputs)
        if not files:
            raise ConfigError("no images found in the given folders")
        sources = [str(f.resolve()) if label_map else str(f) for f in files]
        starts = [str(f) for f in expand_images(start_images)] if start_images else []
        if start_images and not starts:
            raise ConfigError("no images found in --start-images")
        missing = [f for f in starts if not Path(f).is_file()]
        if missing:
            raise ConfigError(f"--start-images: {printable(missing[0])} is not a file")
        output_dir(out)
        for line in (note, study_note):
            if line:
                stderr.print(tagged("note:", "bold yellow", f" {line}"), highlight=False)
        if remote:
            stderr.print(tagged("note:", "bold yellow", " --target-url: the per-image study measures a local "
                                "model and is skipped; the protocol attacks the service"), highlight=False)
        files_out: dict[str, str | bytes] = {}
        data: dict[str, Any] = {}
        study = None
        if study_config is not None:
            study, study_plots = _run_study(sources, models[0], study_config, progress)
            data.update(study.to_dict())
            plot_files = {"score against JPEG quality": "jpeg_curve.png", "smallest flipping budget": "min_eps.png"}
            files_out.update({plot_files[k]: png for k, png in study_plots.items()})
        else:
            study_plots = {}
        if protocol_config is not None:
            data.update(_run_protocol(sources, models, protocol_config, label_map, progress,
                                      target_url=target_url, api_key=key, threshold=threshold,
                                      explicit_models=bool(model), starts=starts))
        if evasions or tiles:
            extra = _run_evasions(sources, models, tiles=tiles, seed=seed, threshold=threshold, progress=progress)
            data["warnings"] = [*data.get("warnings", []), *extra.pop("warnings", [])]
            data.update(extra)
        from ..lab.protocol_report import curve_file, protocol_plots, render_html

        plots = protocol_plots(data)
        files_out.update({curve_file(m): png for m, png in plots.items()})
        page = render_html(data, plots, study=study, study_plots=study_plots, thumbnails=thumbnails)
        write_report_files(out, {"robustness.json": json.dumps(data, indent=1, allow_nan=False),
                                 **files_out, "report.html": page})
    except NsfwlabError as exc:
        stop = fail(exc, FLAGS)
        if exc.code == SERVICE_ERROR:  # the service is the model under attack: it could not be run
            raise typer.Exit(int(ExitCode.MODEL)) from None
        raise stop from None
    if study is not None:
        _study_lines(study)
    _summary_lines(data)
    stdout.print(f"wrote {out / 'robustness.json'}, {out / 'report.html'}", highlight=False)
    errors = (study.summary["errors"] if study is not None else 0) + sum(
        1 for im in data.get("protocol_images", []) if im.get("error"))
    if errors:
        raise typer.Exit(int(ExitCode.INPUT_FAILED))


def _study_config(model: str, *, perturb: str | None, attack: bool, defences: str,
                  **fields: Any) -> tuple[Any, str | None]:
    """The per-image study's config, and a note when its first model cannot be attacked (NudeNet's detector:
    its perturbation scores still tell something, so the study runs without its smallest-budget attack)."""
    from ..lab.attack_options import check_attackable
    from ..lab.robust import RobustnessConfig
    from ..lab.transforms import DEFAULT_PERTURBATIONS

    note = None
    if attack:
        try:
            check_attackable(model)
        except ConfigError as exc:
            attack, note = False, f"per-image study: no smallest-budget attack on {model}: {exc}"
    specs = tuple(s for s in (perturb.split(",") if perturb else DEFAULT_PERTURBATIONS) if s.strip())
    defs = () if defences.strip().lower() in ("", "none") else tuple(d for d in defences.split(",") if d.strip())
    return RobustnessConfig(perturbations=specs, attack=attack, defences=defs, **fields), note


def _protocol_config(**fields: Any) -> Any:
    from ..lab.protocol import ProtocolConfig

    return ProtocolConfig(**fields)


def _run_study(sources: list[str], model: str, config: Any, progress: bool | None) -> tuple[Any, dict[str, bytes]]:
    """The per-image study of the first model; its plots."""
    from ..detector import Detector
    from ..lab.robust import robustness
    from ..lab.robust_report import plot_jpeg_curve, plot_min_eps

    det = Detector(device="cpu") if model == "open_nsfw" else Detector(device="cpu", model=model)
    with progress_bar(len(sources), "per-image study", enabled=progress) as advance:
        rep = robustness(sources, det, config, progress=_advance(advance))
    plots = {"score against JPEG quality": plot_jpeg_curve(rep)}
    if any(im.min_eps for im in rep.images):  # with --no-attack there is no budget to draw
        plots["smallest flipping budget"] = plot_min_eps(rep)
    return rep, plots


def _run_protocol(sources: list[str], models: tuple[str, ...], config: Any, labels: Mapping[str, int] | None,
                  progress: bool | None, *, target_url: str | None, api_key: str | None,
                  threshold: float, explicit_models: bool, starts: list[str]) -> dict[str, Any]:
    from ..lab.protocol import robustness_protocol

    factory = None
    if target_url is not None:
        factory = _service_factory(target_url, api_key, threshold, default_model=not explicit_models)

    with progress_bar(len(sources) * len(models), "protocol", enabled=progress) as advance:
        rep = robustness_protocol(sources, models, config, labels=labels, oracle_factory=factory, starts=starts,
                                  progress=_advance(advance))
    return rep.to_dict()  # type: ignore[no-any-return]


def _service_factory(url: str, api_key: str | None, threshold: float, *,
                     default_model: bool) -> Callable[[str], Any]:
    """The oracle of each model at the service: the service's model of that id or, when --model was not
    given and the service has no model called open_nsfw, its default model."""
    from ..lab.remote import ServiceOracle

    def factory(model: str) -> Any:
        try:
            return ServiceOracle(url, api_key, model=model, threshold=threshold)
        except ConfigError as exc:
            if not default_model or exc.param != "model":
                raise
        return ServiceOracle(url, api_key, model=None, threshold=threshold)
    return factory


def _run_evasions(sources: list[str], models: tuple[str, ...], *, tiles: bool, seed: int, threshold: float,
                  progress: bool | None) -> dict[str, Any]:
    from ..detector import Detector
    from ..lab.evasions import evasion_table

    detectors = {m: Detector(device="cpu") if m == "open_nsfw" else Detector(device="cpu", model=m) for m in models}
    with progress_bar(len(sources), "evasions", enabled=progress) as advance:
        rep = evasion_table(sources, detectors, tiles=tiles, seed=seed, threshold=threshold,
                            progress=_advance(advance))
    return rep.to_dict()  # type: ignore[no-any-return]

