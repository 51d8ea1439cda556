"""``nsfwlab evolve`` (images of shapes evolved towards a score) and ``nsfwlab synthesize``
(images optimised by gradient for an objective).

Only this module writes files; the library returns arrays, PNG bytes and reports. torch, DEAP,
pycma and matplotlib are imported inside the commands."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import typer

from ..config import BackendName, Device
from ..errors import ConfigError, NsfwlabError
from ..lab.evolve import Algorithm
from ..lab.render import ShapeKind
from ..lab.synthesize import Param
from ..outputs import atomic_output
from ._common import ExitCode, fail, output_dir, output_file, progress_bar, stderr, stdout

__all__ = ["evolve_command", "synthesize_command"]


def _write_bytes(path: Path, data: bytes) -> None:
    """Write atomically (a temporary file renamed over the target)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    with atomic_output(path, binary=True) as fh:
        fh.write(data)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    _write_bytes(path, (json.dumps(payload, indent=2, allow_nan=False, default=_plain) + "\n").encode())


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _check_suffix(path: Path, suffixes: tuple[str, ...], what: str) -> Path:
    if path.suffix.lower() not in suffixes:
        raise ConfigError(f"{path}: {what} must end in " + " or ".join(suffixes))
    return output_file(path)


def _write_frames(target: Path, frames: list[tuple[int, Any]]) -> None:
    from PIL import Image

    from ..lab.evolve import png_bytes

    if target.suffix.lower() == ".gif":
        import io

        pictures = [Image.fromarray(img) for _, img in frames]
        buf = io.BytesIO()
        pictures[0].save(buf, format="GIF", save_all=True, append_images=pictures[1:], duration=120, loop=0)
        _write_bytes(target, buf.getvalue())
        return
    for generation, img in frames:
        _write_bytes(target / f"generation_{generation:06d}.png", png_bytes(img))


def evolve_command(
    out: Path = typer.Option(..., "--out", "-o", help="The best image (PNG)."),
    shape: ShapeKind = typer.Option(ShapeKind.CIRCLE, help="What the image is made of."),
    count: int = typer.Option(50, min=1, max=10_000, help="Number of shapes."),
    to: float = typer.Option(1.0, min=0.0, max=1.0, help="1 maximises the NSFW score, 0 minimises it, "
                             "another value is a target score."),
    stop_at: float | None = typer.Option(None, "--stop-at", min=0.0, max=1.0,
                                         help="Stop once the verified score reaches this (maximise: >=, minimise: <=)."),
    tolerance: float = typer.Option(1e-3, help="For a target score: stop within this of it."),
    algorithm: Algorithm = typer.Option(Algorithm.SEP_CMAES, help="Optimiser: DEAP's GA or pycma's CMA-ES "
                                        "(sep-cmaes: diagonal, linear in the genome length)."),
    population: int | None = typer.Option(None, min=4, help="Population size (default: 50 for ga, pycma's for cmaes)."),
    budget: int = typer.Option(20_000, min=1, help="At most this many images scored."),
    seed: int = typer.Option(0, min=0, help="Random seed: the same seed gives the same run."),
    size: int = typer.Option(256, min=8, max=2048, help="Canvas side in pixels."),
    sigma: float = typer.Option(0.15, help="CMA-ES initial step size (genes lie in [0, 1])."),
    report: Path | None = typer.Option(None, "--report", help="JSON report: shapes, score, evaluations, seconds, history."),
    plot: Path | None = typer.Option(None, "--plot", help="History plot PNG (default with --report: REPORT.history.png)."),
    frames: Path | None = typer.Option(None, "--frames", help="Keep the best image every --frame-every generations: "
                                       "an animated GIF (path ends in .gif) or a folder of PNGs."),
    frame_every: int | None = typer.Option(None, min=1, help="Generations between frames (default: about 60 frames)."),
    device: Device = typer.Option(Device.AUTO, help="Where the model runs."),
    backend: BackendName = typer.Option(BackendName.AUTO, help="Inference engine."),
    model: str | None = typer.Option(None, "--model", help="A zoo model id (`nsfwlab models`: the nsfwjs models, "
                                     "nudenet-320n), an ensemble (ensemble:A+B[:mean|max]), or a fine-tuned "
                                     "checkpoint (.pt) or exported .onnx, instead of open_nsfw."),
    batch_size: int = typer.Option(8, min=1, help="Images per model call."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="Progress on stderr (default: on a terminal)."),
) -> None:
    """Evolve an image of coloured shapes towards an NSFW score (open_nsfw's, or --model's).

    Every candidate is scored through the model's exact pipeline (open_nsfw: JPEG round trip
    included), so the printed score is what `nsfwlab score` prints for the written PNG.

    Exit status: 0 goal reached (or the budget spent when maximising/minimising without
    --stop-at), 1 not reached (the best image is still written, the report says so), 2 usage
    error, 3 model error.
    """
    from ..detector import Detector
    from ..lab.evolve import EvolveConfig, evolve, history_plot_png, population_size

    try:
        _check_suffix(out, (".png",), "the output image")
        if report is not None:
            _check_suffix(report, (".json",), "--report")
            plot = plot or report.with_name(report.stem + ".history.png")
        if plot is not None:
            _check_suffix(plot, (".png",), "--plot")
        if frames is not None:
            output_file(frames) if frames.suffix.lower() == ".gif" else output_dir(frames)
        config = EvolveConfig(shape=shape, count=count, to=to, algorithm=algorithm, population=population,
                              budget=budget, seed=seed, size=size, stop_at=stop_at, tolerance=tolerance, sigma=sigma)
        if frames is not None:
            every = frame_every or max(1, budget // population_size(config) // 60)
            config = dataclasses.replace(config, frames_every=every)
        det = Detector(backend, device, model=model, batch_size=batch_size)
        with det, progress_bar(budget, "evolving", unit="eval", enabled=progress) as advance:
            shown = {"evaluations": 0, "generation": 0}

            def on_generation(event: Any) -> None:
                row = event.item
                advance(row.evaluations - shown["evaluations"])
                shown["evaluations"] = row.evaluations
                if progress is not False and (progress or stderr.is_terminal) and row.generation % 25 == 0:
                    eta = "-" if row.eta is None else f"{row.eta:.0f} s"
                    stderr.print(f"generation {row.generation}: best {row.best_score:.6f}, {row.evaluations} "
                                 f"evaluations, {row.rate:.1f} eval/s, ETA {eta}", highlight=False)

            result = evolve(None, det, config, progress=on_generation)
        _write_bytes(out, result.png)
        if report is not None:
            _write_json(report, {**result.report(), "image": str(out), "plot": str(plot)})
        if plot is not None:
            _write_bytes(plot, history_plot_png(result.history, config))
        if frames is not None and result.frames:
            _write_frames(frames, result.frames)
    except NsfwlabError as exc:
        raise fail(exc, {"frames_every": "--frame-every"}) from None
    if result.interrupted:
        verdict = "interrupted"
    elif config.goal != "target" and stop_at is None:
        verdict = f"{config.goal}d over the budget"
    else:
        verdict = f"{'target' if config.goal == 'target' else 'stop-at'} "
        verdict += f"{to if config.goal == 'target' else stop_at:g} " + ("reached" if result.reached else "NOT reached")
    stdout.print(f"{out}: score {result.score:.6f} ({verdict}) after {result.evaluations} "
                 f"evaluations in {result.seconds:.1f} s ({count} {shape.value}s, {algorithm.value})", highlight=False)
    if not result.reached:
        raise typer.Exit(int(ExitCode.INPUT_FAILED))


def _gallery_html(names: list[str], pngs: list[bytes], scores: list[float], objective: str, blur: bool) -> bytes:
    """A self-contained page: every image inline with its score; blurred (hover to see) when the
    score is above the safe band, unless blur is off."""
    import base64
    import html

    cells = []
    for name, png, score in zip(names, pngs, scores, strict=True):
        hidden = " blurred" if blur and score >= BLUR_ABOVE else ""
        data = base64.b64encode(png).decode()
        cells.append(f'<figure><img class="thumb{hidden}" src="data:image/png;base64,{data}" alt="{html.escape(name)}">'
                     f"<figcaption>{html.escape(name)}<br>score {score:.6f}</figcaption></figure>")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>nsfwlab synthesize: {html.escape(objective)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
figure {{ display: inline-block; margin: 0.5em; text-align: center; }}
.thumb {{ width: 256px; height: 256px; image-rendering: auto; }}
.blurred {{ filter: blur(14px); transition: filter 0.2s; }}
.blurred:hover {{ filter: none; }}
</style></head><body>
<h1>objective {html.escape(objective)}</h1>
<p>Scores: the exact pipeline on each saved PNG. Images scoring {BLUR_ABOVE:g} or more are blurred; hover to see.</p>
{"".join(cells)}
</body></html>
"""
    return page.encode()


#: Gallery thumbnails at or above this score are blurred by default (the top of the safe band).
BLUR_ABOVE = 0.2


def _image_paths(out: Path, batch: int) -> list[Path]:
    if batch == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(batch)]


def synthesize_command(
    out: Path = typer.Option(..., "--out", "-o", help="The image (PNG); with --batch N: OUT-0.png .. OUT-(N-1).png."),
    objective: str = typer.Option("nsfw", "--objective", help="What to maximise: nsfw, sfw, nsfw+sfw, 0.5*nsfw+sfw, "
                                  "-nsfw, logit-margin, channel:LAYER:K, neuron:LAYER:K."),
    report: Path | None = typer.Option(None, "--report", help="JSON report: score, logits_start/end, objective values, seconds."),
    also: list[str] = typer.Option([], "--also", help="MODEL:CLASS[:WEIGHT]: a second network (a tensors-only file "
                                   "from nsfwlab.lab.networks.save_network, an nsfwlab checkpoint, .onnx with onnx2torch, "
                                   "or TorchScript with --trust-code) taking (N, 3, S, S) RGB in [0, 1]; its class joins "
                                   "the objective. Repeatable."),
    also_size: int = typer.Option(224, "--also-size", min=8, max=1024, help="Input side of the --also networks."),
    param: Param = typer.Option(Param.FFT, "--param", help="Image parameterisation: decorrelated Fourier or plain pixels."),
    steps: int = typer.Option(200, min=0, help="Optimiser steps."),
    lr: float = typer.Option(0.05, help="Adam learning rate."),
    size: int = typer.Option(256, min=32, max=1024, help="Image side in pixels."),
    batch: int = typer.Option(1, min=1, max=64, help="Images optimised together (with a diversity term)."),
    diversity: float | None = typer.Option(None, help="Weight of the diversity term (default: 1 with --batch > 1)."),
    tv: float = typer.Option(0.0, help="Total-variation penalty weight."),
    l2: float = typer.Option(0.0, help="L2 penalty weight (distance from mid-grey)."),
    transforms: bool = typer.Option(True, "--transforms/--no-transforms", help="Random jitter, scale and rotation each step."),
    balance: bool = typer.Option(True, "--balance/--no-balance", help="An objective of several terms (nsfw+sfw, or any --also) gives each term an equal share of every step (its unit-length image gradient times its weight), so that every term rises, not only the cheapest; --no-balance optimises the plain weighted sum."),
    settle: float | None = typer.Option(None, "--settle", min=0.0, max=1.0, help="Fraction of the last steps run without the transforms, tuning the final image to the exact pipeline it is measured on (default: 0.2 for a balanced objective such as nsfw+sfw, else 0)."),
    generator: Path | None = typer.Option(None, "--generator", help="A generator (code -> image in [0, 1]): a tensors-only file or, with --trust-code, TorchScript."),
    trust_code: bool = typer.Option(False, "--trust-code", help="Allow TorchScript files for --also and --generator. TorchScript is a program: it runs its own code and can read and write your files; use only files you trust."),
    code_dim: int | None = typer.Option(None, "--code-dim", min=1, help="The generator's code size (if it has no code_dim)."),
    gallery: Path | None = typer.Option(None, "--gallery", help="HTML gallery of the images and scores "
                                        "(default with --batch > 1: OUT.html)."),
    blur: bool = typer.Option(True, "--blur/--no-blur", help="Blur gallery images that score high."),
    seed: int = typer.Option(0, min=0, help="Random seed."),
    device: Device = typer.Option(Device.AUTO, help="Where the optimisation runs."),
    model: str | None = typer.Option(None, "--model", help="A fine-tuned open_nsfw checkpoint (.pt) instead of the "
                                     "stock model (synthesis optimises open_nsfw's classes and layers; zoo models: "
                                     "`nsfwlab evolve --model`)."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="Progress bar on stderr (default: on a terminal)."),
) -> None:
    """Synthesise images that maximise an objective on open_nsfw (feature visualisation).

    Every reported number is measured on the saved PNGs through the exact pipeline.

    Exit status: 0 done, 1 interrupted (Ctrl-C: the images so far are still written), 2 usage
    error, 3 model error.
    """
    from ..backends import resolve_device
    from ..detector import Detector
    from ..lab.synthesize import SynthConfig, parse_also, synthesize

    try:
        _check_suffix(out, (".png",), "the output image")
        if report is not None:
            _check_suffix(report, (".json",), "--report")
        if gallery is None and batch > 1:
            gallery = out.with_suffix(".html")
        if gallery is not None:
            _check_suffix(gallery, (".html", ".htm"), "--gallery")
        dev = resolve_device(device)
        config = SynthConfig(objective=objective, param=param, steps=steps, lr=lr, size=size, batch=batch, seed=seed,
                             tv=tv, l2=l2, diversity=diversity, transforms=transforms, code_dim=code_dim, balance=balance,
                             settle=settle, also=tuple(parse_also(a) for a in also), also_size=also_size,
                             generator=generator, trust_code=trust_code, device=dev)
        det = Detector(BackendName.AUTO, dev, model=model)
        with det, progress_bar(steps, "synthesizing", unit="step", enabled=progress) as advance:
            result = synthesize(None, det, config, progress=lambda event: advance(1))
        paths = _image_paths(out, batch)
        for path, png in zip(paths, result.pngs, strict=True):
            _write_bytes(path, png)
        if report is not None:
            _write_json(report, {**result.to_dict(), "image": str(paths[0]), "paths": [str(p) for p in paths]})
        if gallery is not None:
            _write_bytes(gallery, _gallery_html([p.name for p in paths], result.pngs, result.scores, objective, blur))
    except NsfwlabError as exc:
        raise fail(exc) from None
    for path, score, a, b in zip(paths, result.scores, result.logits_start, result.logits_end, strict=True):
        stdout.print(f"{path}: score {score:.6f}; logits [sfw, nsfw] {a[0]:.3f}, {a[1]:.3f} -> {b[0]:.3f}, {b[1]:.3f}",
                     highlight=False)
    stdout.print(f"{objective}: {result.steps} steps in {result.seconds:.1f} s"
                 + (" (interrupted)" if result.interrupted else ""), highlight=False)
    if result.interrupted:
        raise typer.Exit(int(ExitCode.INPUT_FAILED))
