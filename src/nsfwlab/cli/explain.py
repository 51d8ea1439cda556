"""``nsfwlab explain`` (heatmaps) and ``nsfwlab censor`` (hide what the heatmaps mark, or a
detector model's boxes).

Only this module writes files; the library returns arrays. torch, captum and matplotlib are
imported inside the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..config import BackendName, Device
from ..errors import ConfigError, NsfwlabError
from ..explain.options import Baseline, ExplainCaps, Fill, Method, Reduction, Style
from ..outputs import atomic_output
from ._common import ExitCode, fail, output_file, progress_bar, stderr, stdout, tagged

__all__ = ["censor_command", "explain_command"]

_LABELS = {
    "occlusion": "occlusion (score drop)",
    "sliding-window": "sliding window (crop score)",
    "gradcam": "Grad-CAM",
    "guided-backprop": "guided backprop",
    "deconvnet": "deconvnet",
    "integrated-gradients": "integrated gradients",
}


#: Pixel-level gradient maps are dominated by a few pixels: their colour scale ends at this
#: percentile (values above it are drawn at the top colour).
_PIXEL_PERCENTILE = 99.5
_PIXEL_METHODS = (Method.GUIDED_BACKPROP, Method.DECONVNET, Method.INTEGRATED_GRADIENTS)


def _display_max(method: Method, heat: Any) -> float | None:
    import numpy as np

    if method not in _PIXEL_METHODS:
        return None
    top = float(np.percentile(heat, _PIXEL_PERCENTILE))
    return top if top > float(heat.min()) else None


#: Windows per model call when not given. On the CPU onnxruntime's cost per image rises with the
#: batch (2-core test machine: batches of 1-4 scored 55-65 windows/s, 16-32 35-45), so small
#: batches win there and the preprocessing threads keep the model busy; a GPU wants large ones.
CPU_BATCH, CUDA_BATCH = 4, 32

#: The default caps (docs/explain.md, "Caps").
_CAPS = ExplainCaps()


def _detector(backend: BackendName, device: Device, model: str | None, batch_size: int | None) -> Any:
    from ..backends import resolve_device
    from ..detector import Detector

    if batch_size is None:
        batch_size = CUDA_BATCH if resolve_device(device) == "cuda" else CPU_BATCH
    return Detector(backend, device, model=model, batch_size=batch_size)


def _save_png(path: Path, arr: Any) -> None:
    from PIL import Image

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    with atomic_output(path, binary=True) as fh:
        Image.fromarray(arr).save(fh, format="PNG")


def _picture(img: Any, heats: dict[Method, Any], score: float, caps: Any, *, cmap: str, alpha: float,
             max_side: int | None) -> Any:
    """The overlay (one method) or labelled grid (several), drawn at the image's size capped to
    ``caps.max_output_side`` on the long side; heatmaps are resized to it."""
    import numpy as np
    from PIL import Image

    from ..explain import overlay
    from ..explain.caps import fit_side, resize_map

    out_h, out_w = fit_side(img.height, img.width, caps.max_output_side)
    view = img if (out_h, out_w) == (img.height, img.width) else img.resize((out_w, out_h), Image.Resampling.BILINEAR)
    rgb = np.asarray(view)
    if len(heats) == 1:
        (m, heat), = heats.items()
        return overlay.overlay_with_scale(rgb, resize_map(heat, out_h, out_w), cmap=cmap, alpha=alpha,
                                          label=_LABELS[m.value], vmax=_display_max(m, heat))
    panels = [(f"original (score {score:.3f})", rgb)]
    for m, heat in heats.items():
        vmax = _display_max(m, heat)
        clip = "" if vmax is None else f", p{_PIXEL_PERCENTILE:g}"
        # Signed maps (occlusion drops) start their colours at 0 in the grid: hot means
        # "raises the score"; regions that lower it share the coldest colour.
        vmin = 0.0 if float(heat.min()) < 0.0 < float(heat.max()) else None
        panels.append((f"{_LABELS[m.value]} [{heat.min():.3g}, {heat.max():.3g}{clip}]",
                       overlay.blend(rgb, resize_map(heat, out_h, out_w), cmap=cmap, alpha=alpha, vmin=vmin,
                                     vmax=vmax)))
    columns = min(4, len(panels))
    grid = overlay.labelled_grid(panels, columns=columns, max_side=max_side or max(64, caps.max_output_side // 4))
    return overlay.attach_scale(grid, 0.0, 1.0, cmap=cmap, label="per map: 0 or min .. max")


def _check_png(path: Path) -> None:
    if path.suffix.lower() != ".png":
        raise ConfigError(f"{path}: output images are written as PNG; use a .png name")
    output_file(path)


def explain_command(
    image: Path = typer.Argument(..., help="The image to explain."),
    out: Path = typer.Option(..., "--out", "-o", help="Overlay PNG (with --method all: a labelled grid)."),
    method: Method = typer.Option(Method.ALL, "--method", "-m", help="Explanation method."),
    save_heatmap: Path | None = typer.Option(
        None, "--save-heatmap", help="Save the raw heatmap(s) at the image's size (the working copy's over "
        "--max-work-side): .npy (one method) or .npz (all)."),
    target: str | None = typer.Option(None, help="What to explain: nsfw-probability, logit-margin, "
                                      "nsfw-logit, or an objective such as 'nsfw-sfw' or 'channel:stage3:17' "
                                      "(all but the first two: gradient methods only; layers: not Grad-CAM). "
                                      "Default: nsfw-probability; for Grad-CAM the predicted class."),
    layer: str | None = typer.Option(None, help="Grad-CAM's feature map, e.g. stage2 or stage3_block1 "
                                     "(default: the last stage)."),
    box: int | None = typer.Option(None, min=1, help="Occlusion box in pixels (default: 1/6 of the short side)."),
    stride: int | None = typer.Option(None, min=1, help="Occlusion stride in pixels (default: box/3)."),
    fill: Fill = typer.Option(Fill.MEAN, help="What fills the occlusion box."),
    window: int | None = typer.Option(None, min=1, help="Sliding-window crop in pixels (default: 1/3 of the short side)."),
    window_stride: int | None = typer.Option(None, min=1, help="Sliding-window stride (default: window/4)."),
    steps: int = typer.Option(32, min=1, help="Integrated-gradients steps."),
    baseline: Baseline = typer.Option(Baseline.BLACK, help="Integrated-gradients baseline image."),
    reduction: Reduction = typer.Option(Reduction.ABS, help="How gradient attributions become one value per pixel."),
    cmap: str = typer.Option("jet", help="matplotlib colormap."),
    alpha: float = typer.Option(0.5, min=0.0, max=1.0, help="Heatmap weight in the blend."),
    max_side: int | None = typer.Option(None, min=16, help="Cap the longer side of each grid panel "
                                        "(default: --max-output-side / 4)."),
    max_work_side: int = typer.Option(_CAPS.max_work_side, min=16, help="Explain a copy of the image downscaled "
                                      "to this long side (larger images only; the score stays the original's)."),
    max_windows: int = typer.Option(_CAPS.max_windows, min=1, help="At most this many occlusion/sliding "
                                    "windows (default grids are coarsened to fit; explicit ones refused)."),
    max_output_side: int = typer.Option(_CAPS.max_output_side, min=16, help="Draw the overlay at most this large "
                                        "on the long side."),
    max_aspect: float = typer.Option(_CAPS.max_aspect, min=1.0, help="Refuse images more than this many times "
                                     "longer than wide (or wider than long)."),
    device: Device = typer.Option(Device.AUTO, help="Where the model runs."),
    backend: BackendName = typer.Option(BackendName.AUTO, help="Engine of the black-box methods."),
    model: str | None = typer.Option(None, "--model", help="A model id (`nsfwlab models`; black-box methods only) or a fine-tuned checkpoint (.pt; .onnx for black-box methods only)."),
    batch_size: int | None = typer.Option(None, min=1, help="Windows per model call (default: 4 on CPU, 32 on CUDA)."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="Progress bar on stderr (default: on a terminal)."),
) -> None:
    """Heatmaps of what the model looks at, blended over the image at its own resolution (at most
    --max-output-side on the long side).

    Exit status: 0 done, 1 the image could not be read or is over a cap (aspect ratio), 2 usage
    error (e.g. an explicit grid over --max-windows), 3 model error.
    """
    import numpy as np

    from ..backends import resolve_device

    try:
        _check_png(out)
        if save_heatmap is not None:
            want = ".npz" if method is Method.ALL else ".npy"
            if save_heatmap.suffix.lower() != want:
                raise ConfigError(f"--save-heatmap must end in {want} for --method {method.value}"
                                  + (" (one array per method)" if method is Method.ALL else ""))
            output_file(save_heatmap)
        from ..explain import methods as M
        from ..explain.caps import check_aspect
        from ..objectives import parse_objective

        tgt = parse_objective(target) if target is not None else None
        wanted = list(M.ALL_METHODS) if method is Method.ALL else [method]
        if tgt is not None and any(m not in M.GRADIENT_METHODS for m in wanted):
            tgt.from_probabilities(np.asarray([0.5]))  # black-box methods need a probability target
        caps = ExplainCaps(max_work_side=max_work_side, max_windows=max_windows,
                           max_output_side=max_output_side, max_aspect=max_aspect)
        det = _detector(backend, device, model, batch_size)
        img = M.load_input(image, det.limits)
        w, h = img.size
        check_aspect(h, w, caps)
        opts = M.ExplainOptions(box=box, stride=stride, fill=fill, window=window, window_stride=window_stride,
                                steps=steps, baseline=baseline, reduction=reduction, layer=layer,
                                device=resolve_device(device), caps=caps)
        gradients = any(m in M.GRADIENT_METHODS for m in wanted)
        torch_model = M.torch_model_for(det, opts.device) if gradients else None
        explainers = {m: M.make_explainer(m, det, options=opts, model=torch_model) for m in wanted}
        total = sum(M.work_units(m, e, h, w) for m, e in explainers.items())
        score = det.nsfw_score(img)
        heats: dict[Method, np.ndarray] = {}
        with det, progress_bar(total, "explaining", unit="win", enabled=progress) as advance:
            for m, e in explainers.items():
                heats[m] = e.explain(img, target=tgt, progress=advance)
        picture = _picture(img, heats, score, caps, cmap=cmap, alpha=alpha, max_side=max_side)
        _save_png(out, picture)
        if save_heatmap is not None:
            try:
                save_heatmap.parent.mkdir(parents=True, exist_ok=True)
                if method is Method.ALL:
                    savez: Any = np.savez
                    savez(save_heatmap, **{m.value: heat for m, heat in heats.items()})
                else:
                    np.save(save_heatmap, next(iter(heats.values())))
            except OSError as exc:
                raise ConfigError(f"cannot write {save_heatmap}: {exc.strerror or exc}") from None
    except NsfwlabError as exc:
        raise fail(exc) from None
    work = next(iter(heats.values())).shape
    explained = tgt.name if tgt is not None else (
        "predicted class" if wanted == [Method.GRADCAM] else "nsfw-probability; Grad-CAM: predicted class")
    worked = "" if work == (h, w) else f" on a {work[1]}x{work[0]} working copy"
    stdout.print(f"{image}: {w}x{h}, score {score:.6f} ({explained} explained{worked})", highlight=False)
    for m, heat in heats.items():
        y, x = (round((int(v) + 0.5) * size / n - 0.5) for v, size, n in
                zip(np.unravel_index(int(np.argmax(heat)), heat.shape), (h, w), heat.shape, strict=True))
        stdout.print(f"  {m.value:<22} range [{heat.min():.4g}, {heat.max():.4g}], peak at x={x} y={y}",
                     highlight=False)
    stdout.print(f"wrote {out}" + (f" and {save_heatmap}" if save_heatmap else ""), highlight=False)


def censor_command(
    image: Path = typer.Argument(..., help="The image to censor."),
    out: Path = typer.Option(..., "--out", "-o", help="The censored image (PNG), at the original resolution."),
    target: float = typer.Option(0.2, min=0.0, max=1.0, help="Stop once the NSFW score is below this."),
    style: Style = typer.Option(Style.BLUR, help="How hidden regions look."),
    strength: int | None = typer.Option(None, min=1, help="Blur radius / pixel block in pixels (default: relative to size)."),
    method: Method = typer.Option(Method.OCCLUSION, "--method", "-m", help="Heatmap that ranks the regions to hide."),
    box: int | None = typer.Option(None, min=1, help="Occlusion box in pixels (default: 1/5 of the short side)."),
    stride: int | None = typer.Option(None, min=1, help="Occlusion stride in pixels (default: box/2)."),
    max_steps: int = typer.Option(10, min=1, help="At most this many explain-and-hide steps."),
    max_work_side: int = typer.Option(_CAPS.max_work_side, min=16, help="Censor on a copy downscaled to this long "
                                      "side, then apply the mask to the original (larger images only)."),
    max_windows: int = typer.Option(_CAPS.max_windows, min=1, help="At most this many heatmap windows per step."),
    max_aspect: float = typer.Option(_CAPS.max_aspect, min=1.0, help="Refuse images more than this many times "
                                     "longer than wide (or wider than long)."),
    save_mask: Path | None = typer.Option(None, "--save-mask", help="Also write the hidden region as a PNG mask."),
    device: Device = typer.Option(Device.AUTO, help="Where the model runs."),
    backend: BackendName = typer.Option(BackendName.AUTO, help="Inference engine."),
    model: str | None = typer.Option(None, "--model", help="A model id (`nsfwlab models`) or a fine-tuned checkpoint (.pt) or exported .onnx. A detector (nudenet-320n) hides its boxes instead of heatmap regions."),
    all_boxes: bool = typer.Option(False, "--all-boxes", help="With a detector model: hide every box (faces too), not only those of the classes its NSFW score is made of."),
    box_class: list[str] | None = typer.Option(None, "--box-class", help="With a detector model: hide the boxes of this class (repeatable; default: the classes its NSFW score is made of)."),
    batch_size: int | None = typer.Option(None, min=1, help="Images per model call (default: 4 on CPU, 32 on CUDA)."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress", help="Progress bar on stderr (default: on a terminal)."),
) -> None:
    """Hide the regions the heatmaps mark, step by step, until the image scores below --target; with
    a detector model (--model nudenet-320n), hide its boxes (detected again after each step).

    Exit status: 0 target reached, 1 the image could not be read, is over a cap (aspect ratio) or
    the target was not reached (the best attempt is still written), 2 usage error (e.g. an
    explicit grid over --max-windows), 3 model error.
    """
    import numpy as np

    from ..backends import resolve_device

    try:
        _check_png(out)
        if save_mask is not None:
            _check_png(save_mask)
        if method is Method.ALL:
            raise ConfigError("censor uses one heatmap method; pick one (default: occlusion)")
        if not 0.0 < target <= 1.0:
            raise ConfigError(f"--target must lie in (0, 1], got {target}")
        from ..explain import methods as M
        from ..explain.censor import BoxCensor, Censor

        caps = ExplainCaps(max_work_side=max_work_side, max_windows=max_windows, max_aspect=max_aspect)
        det = _detector(backend, device, model, batch_size)
        boxed = det.zoo is not None and det.zoo.is_detector
        if boxed and (method is not Method.OCCLUSION or box is not None or stride is not None):
            raise ConfigError(f"{det.model_id} is a detector: censor hides its boxes; --method, --box and --stride "
                              "choose heatmap regions, for classifier models")
        if not boxed and (all_boxes or box_class):
            raise ConfigError("--all-boxes and --box-class need a detector model (--model nudenet-320n)")
        if all_boxes and box_class:
            raise ConfigError("give --all-boxes or --box-class, not both")
        censor: Any
        if boxed:
            censor = BoxCensor(det, style=style, strength=strength, classes=box_class or None, all_boxes=all_boxes,
                               max_steps=max_steps)
        else:
            explainer = None
            if method is not Method.OCCLUSION:
                opts = M.ExplainOptions(device=resolve_device(device), caps=caps)
                explainer = M.make_explainer(method, det, options=opts)
            censor = Censor(det, explainer=explainer, style=style, strength=strength, max_steps=max_steps,
                            box=box if method is Method.OCCLUSION else None,
                            stride=stride if method is Method.OCCLUSION else None, caps=caps)
        with det, progress_bar(None, "censoring", unit="img", enabled=progress) as advance:
            result = censor.censor(image, target=target, progress=advance)
        _save_png(out, result.image)
        if save_mask is not None:
            _save_png(save_mask, (result.mask * 255).astype(np.uint8))
    except NsfwlabError as exc:
        raise fail(exc, {"classes": "--box-class"}) from None
    verdict = "reached" if result.reached else "NOT reached"
    stdout.print(f"{image}: score {result.score_before:.4f} -> {result.score_after:.4f} "
                 f"(target {target:g} {verdict}); hid {100 * result.hidden_fraction:.1f}% of the image "
                 f"in {len(result.steps)} step(s) with {style.value}"
                 f"{' (detected boxes)' if boxed else ''}; wrote {out}", highlight=False)
    if result.kept_input and result.steps:
        lowest = min(st.score for st in result.steps)
        why = (f"hiding the boxes raised the score (to {result.steps[-1].score:.4f})" if boxed else
               f"no censoring step lowered the score (the lowest tried was {lowest:.4f})")
        stderr.print(tagged("warning:", "bold yellow", f" {why}; wrote the input unchanged"), highlight=False)
    if not result.reached:
        raise typer.Exit(int(ExitCode.INPUT_FAILED))
