"""``nsfwlab attack``: the smallest change to a chosen score (``nsfwlab robustness`` lives in :mod:`.lab_robustness`).

Only this module writes files; the lab returns values. torch and matplotlib are imported inside the commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from ..config import Device
from ..errors import ConfigError, ModelError, NsfwlabError
from ..outputs import atomic_output, printable
from ._common import ExitCode, expand_images, fail, output_dir, output_file, progress_bar, stderr, stdout, tagged
from .lab_robustness import robustness_command

__all__ = ["attack_command", "robustness_command"]

def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_output(path, binary=True) as fh:
        fh.write(data)


def _png_bytes(image: Any) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _targets(images: list[Path], out: Path) -> list[Path]:
    """Where each result goes: ``out`` itself for one image named .png, else ``out/<stem>.png`` (made unique)."""
    if len(images) == 1 and out.suffix.lower() == ".png":
        return [output_file(out)]
    if out.suffix.lower() == ".png":
        raise ConfigError(f"{len(images)} images need a folder for --out, not {out}")
    output_dir(out)
    seen: dict[str, int] = {}
    names = []
    for p in images:
        stem = p.stem
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        names.append(out / (f"{stem}.png" if n == 0 else f"{stem}-{n}.png"))
    return names


def _error(path: Path, exc: BaseException) -> str:
    msg = str(exc.with_source(str(path))) if isinstance(exc, NsfwlabError) else f"{path}: {exc}"
    stderr.print(tagged("error:", "bold red", f" {msg}"), highlight=False)
    return msg


def _table(rows: list[dict[str, Any]], caption: str | None = None) -> None:
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False, caption=caption)
    for col in ("image", "before", "after", "goal", "L-inf", "PSNR", "steps", "seconds", ""):
        table.add_column(col, justify="left" if col in ("image", "goal", "") else "right",
                         overflow="fold")
    for r in rows:
        if "error" in r:
            table.add_row(printable(r["source"]), "-", "-", "-", "-", "-", "-", "-", "error")
            continue
        psnr = "inf" if r["psnr"] is None else f"{r['psnr']:.1f}"
        table.add_row(printable(r["source"]), f"{r['score_before']:.4f}", f"{r['score_after']:.4f}", r["goal"],
                      f"{r['linf']:g}/255", psnr, str(r["steps"]), f"{r['seconds']:.1f}",
                      "ok" if r["success"] else "NOT reached")
    stdout.print(table)


def attack_command(
    images: list[Path] = typer.Argument(..., help="Images (or folders of images) to attack."),
    to: float = typer.Option(..., "--to", min=0.0, max=1.0, help="Target score: >= 0.95 means at least, "
                             "<= 0.05 at most, otherwise within --tolerance."),
    out: Path = typer.Option(..., "--out", "-o", help="Result PNG (one image) or folder (several)."),
    max_eps: float = typer.Option(8.0, "--max-eps", min=1.0, max=255.0, help="Largest budget, in levels of 1/255."),
    norm: str = typer.Option("linf", help="Budget norm: linf or l2 (RMS change per value)."),
    tolerance: float = typer.Option(0.01, min=0.0001, max=0.49, help="How close a mid-range target must be met."),
    steps: int = typer.Option(30, min=1, help="Optimiser steps per budget level."),
    jpeg: str = typer.Option("differentiable", help="JPEG step: differentiable, straight-through or eot."),
    survive_jpeg: str | None = typer.Option(
        None, "--survive-jpeg", help="The result must still meet the target after JPEG re-saves: Q (every "
        "quality from Q to 95 in steps of 5), LO-HI, or a comma-separated list; each is optimised for and "
        "verified on the saved file."),
    survive_resize: str | None = typer.Option(
        None, "--survive-resize", help="... and after resizes by these factors (comma-separated, e.g. 0.5,0.75)."),
    fewest_pixels: bool = typer.Option(False, "--fewest-pixels/--no-fewest-pixels",
                                       help="Cut the result to the fewest changed pixels at its budget."),
    space: str = typer.Option("original", help="original (the image's own resolution) or resized (256x256)."),
    max_work_side: int = typer.Option(2048, "--max-work-side", min=32, help="Attack a downscaled copy of images "
                                      "longer than this (memory grows with the pixels attacked)."),
    report: Path | None = typer.Option(None, "--report", help="Write every result (and error) as JSON here."),
    seed: int = typer.Option(0, help="Seed of the thinning mask."),
    device: Device = typer.Option(Device.AUTO, help="Where the gradients are computed."),
    model: str | None = typer.Option(None, "--model", help="The model to attack: a zoo classifier "
                                     "(`nsfwlab models`: the nsfwjs models), an ensemble (ensemble:A+B[:mean|max]) "
                                     "or a fine-tuned open_nsfw checkpoint (.pt), instead of open_nsfw."),
    target_class: str | None = typer.Option(None, "--target-class", help="Aim at this class's probability "
                                            "(a zoo classifier's class, e.g. Drawing) instead of the NSFW score."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="Progress bar on stderr."),
) -> None:
    """The smallest change that gives each image the score --to, verified by the exact pipeline.

    Every score printed is the Detector's score of the written PNG (and of each re-save or resize it must
    survive): the NSFW score of --model, or the probability of --target-class.

    Exit status: 0 every target reached, 1 some not reached (the best attempt is still written and flagged in
    the report) or an input could not be read, 2 usage error, 3 model error.
    """
    from ..detector import Detector
    from ..lab.attack_options import check_attackable
    from ..lab.attacks import AttackConfig, attack
    from ..lab.pgd import Engine

    try:
        config = AttackConfig(to=to, max_eps=max_eps, norm=norm, tolerance=tolerance, steps=steps,  # type: ignore[arg-type]
                              jpeg=jpeg, survive_jpeg=_qualities(survive_jpeg),  # type: ignore[arg-type]
                              survive_resize=_factors(survive_resize), fewest_pixels=fewest_pixels,
                              space=space, max_work_side=max_work_side, seed=seed,  # type: ignore[arg-type]
                              device=device.value, target_class=target_class)
        if model is not None:
            check_attackable(model, target_class)  # before loading it: NudeNet needs its package to load at all
        files = expand_images(images)
        if not files:
            raise ConfigError("no images found in the given folders")
        targets = _targets(files, out)
        if report is not None:
            output_file(report)
        det = Detector(device="cpu", model=model)
        Engine(config, det)  # a model or option the attack refuses fails here, once, not once per image
    except NsfwlabError as exc:
        raise fail(exc, {"target_class": "--target-class"}) from None
    rows: list[dict[str, Any]] = []
    failed = False
    with progress_bar(len(files), "attacking", enabled=progress) as advance:
        for path, target in zip(files, targets, strict=True):
            try:
                result = attack(path, det, config)
                _write_bytes(target, _png_bytes(result.image))
                row = {**result.to_dict(), "source": str(path), "out": str(target)}
                if result.note:
                    stderr.print(tagged("note:", "bold yellow", f" {path}: {result.note}"), highlight=False)
                failed |= not result.success
                advance()
            except ModelError as exc:
                raise fail(exc) from None
            except (NsfwlabError, OSError) as exc:
                row = {"source": str(path), "error": _error(path, exc)}
                failed = True
                advance(errors=1)
            rows.append(row)
    what = f"probability of {target_class}" if target_class else "NSFW score"
    _table(rows, None if model is None and not target_class else f"before / after: {det.model_id}'s {what}")
    if report is not None:
        _write_bytes(report, json.dumps({"target": to, "model": det.model_id, "score_of": target_class or "nsfw",
                                         "config": _config_dict(config), "results": rows},
                                        indent=1).encode("utf-8"))
    if failed:
        raise typer.Exit(int(ExitCode.INPUT_FAILED))


def _qualities(text: str | None) -> Any:
    """``--survive-jpeg``: Q or LO-HI as given (the library reads them), a list as ints."""
    if text is None or not text.strip():
        return ()
    if "," not in text:
        return text.strip()
    try:
        return tuple(int(q) for q in text.split(",") if q.strip())
    except ValueError:
        raise ConfigError(f"survive_jpeg takes Q, LO-HI or a list of qualities, got {text!r}",
                          param="survive_jpeg") from None


def _factors(text: str | None) -> tuple[float, ...]:
    if text is None or not text.strip():
        return ()
    try:
        return tuple(float(f) for f in text.split(",") if f.strip())
    except ValueError:
        raise ConfigError(f"survive_resize takes factors such as 0.5,0.75, got {text!r}",
                          param="survive_resize") from None


def _config_dict(config: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return {k: getattr(v, "value", v) for k, v in asdict(config).items()}
