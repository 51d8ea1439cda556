"""Censoring driven by heatmaps: hide what makes an image score high until it scores low.

Step by step: explain the current image (occlusion by default), rank the still-visible pixels by
the (lightly smoothed) heatmap, try hiding the top 1 %, 2 %, 5 %, 10 % and 20 % of the image area more
(all candidates scored in one batch through the Detector), and keep the smallest candidate that
scores below the target; if none does, go on from the one with the lowest score and explain again.
Hidden pixels are replaced by a blurred, pixelated or black version of the *original* image, so
nothing is blurred twice. It stops when the target is reached, when every pixel is hidden, or
after ``max_steps`` steps, and says which.

The result is the lowest-scoring image seen, the input included: a step may score higher than the
one before (blurring a region can raise the score: measured 0.2027 -> 0.2421 on a photo), and a
result that scores higher than the input is never returned. When no step lowered the score, the
input comes back unchanged and ``kept_input`` says so.

An image over ``caps.max_work_side`` is censored on its working copy (explain, rank, candidate
scores), and the final mask is scaled back (nearest neighbour) and applied to the original: the
result has the original's size and its ``score_after`` is the exact score of that result, while
the per-step scores are those of the working copy (docs/explain.md, "Caps").

A detector model (``nudenet-320n``) says where, so :class:`BoxCensor` needs no heatmap: it hides
the detected boxes of the classes that make the NSFW score (or of every class, or those named),
always, whatever the score; then, while the censored image still scores at or above the target,
it detects again and hides what is found there too, until no new box is found or after
``max_steps`` rounds of hiding. The same rule holds: a
result that scores higher than the input is never returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from ..config import option
from ..detector import Detector
from ..errors import ConfigError
from ..imageio import ImageInput
from ._windows import ProgressCallback, load_input, score_variants
from .caps import working_copy
from .methods import Explainer
from .occlusion import Occlusion
from .options import ExplainCaps, Fill, Style

__all__ = ["DEFAULT_INCREMENTS", "BoxCensor", "Censor", "CensorResult", "CensorStep", "Style", "box_mask", "hide",
           "hide_image"]

#: Fractions of the image area added to the hidden region in one step (candidates).
DEFAULT_INCREMENTS: tuple[float, ...] = (0.01, 0.02, 0.05, 0.10, 0.20)


def hide(image: np.ndarray, style: Style | str, strength: int | None = None) -> np.ndarray:
    """The whole image censored in ``style`` (uint8 HxWx3). ``strength`` is the blur radius or
    pixel block size in pixels (default: 1/30 resp. 1/40 of the long side, at least 4)."""
    return np.asarray(hide_image(Image.fromarray(image), style, strength))


def hide_image(img: Image.Image, style: Style | str, strength: int | None = None) -> Image.Image:
    """:func:`hide` on a Pillow RGB image (no array copy of a large image is made)."""
    style = Style(style)
    w, h = img.size
    if style is Style.BOX:
        return Image.new("RGB", img.size, (0, 0, 0))
    if style is Style.BLUR:
        radius = strength or max(4, round(max(h, w) / 30))
        return img.filter(ImageFilter.GaussianBlur(radius))
    block = strength or max(4, round(max(h, w) / 40))
    small = img.resize((max(1, -(-w // block)), max(1, -(-h // block))), Image.Resampling.BOX)
    return small.resize((w, h), Image.Resampling.NEAREST)


def _smooth(heat: np.ndarray, r: int) -> np.ndarray:
    """Two passes of a (2r+1)-box blur, each window clipped at the edges (the mean over the
    pixels inside the image): close to a Gaussian, so that the ranking picks regions rather than
    scattered pixels. torch's ``avg_pool2d`` without padding in the count, one axis at a time
    (the clipped box mean is separable: the same values to 1e-15, and O(r) instead of O(r^2)
    per pixel: 2.2 s instead of 30 s for a 2048x2048 map with r = 25); Pillow's blurs take
    8-bit images only, and the heat map's small differences need float64."""
    import torch

    pool = torch.nn.functional.avg_pool2d
    x = torch.from_numpy(np.asarray(heat, dtype=np.float64))[None, None]
    for _ in range(2):
        x = pool(x, (1, 2 * r + 1), stride=1, padding=(0, r), count_include_pad=False)
        x = pool(x, (2 * r + 1, 1), stride=1, padding=(r, 0), count_include_pad=False)
    out: np.ndarray = x[0, 0].numpy()
    return out


@dataclass(frozen=True)
class CensorStep:
    """One accepted step: the hidden fraction of the image after it, and the score it gave."""

    hidden_fraction: float
    score: float


@dataclass(frozen=True)
class CensorResult:
    image: np.ndarray  # uint8 HxWx3, the censored image at the original resolution
    mask: np.ndarray  # bool HxW, True where hidden
    score_before: float
    score_after: float
    target: float
    reached: bool
    steps: tuple[CensorStep, ...]
    #: The index in ``steps`` of the step returned (the lowest score); ``None`` when no step lowered the
    #: score and the input is returned unchanged (``kept_input``).
    best_step: int | None = None

    @property
    def kept_input(self) -> bool:
        """True when hiding never lowered the score: ``image`` is the input, unchanged."""
        return self.best_step is None

    @property
    def hidden_fraction(self) -> float:
        return float(self.mask.mean())


class Censor:
    """Hides the regions a heatmap marks until the Detector scores the image below a target.

    ``explainer``: any heatmap explainer, given the working copy (so its sizes are in the working
    copy's pixels); default: :class:`~nsfwlab.explain.occlusion.Occlusion` with ``box`` (default
    1/5 of the short side) and ``stride`` (default half a box) in pixels of the original image,
    about 80 windows per step. ``caps`` bound the working copy, the windows and the aspect ratio;
    at most ``max_steps`` explain-and-hide rounds run.
    """

    def __init__(self, detector: Detector | None = None, *, explainer: Explainer | None = None,
                 style: Style | str = Style.BLUR, strength: int | None = None, max_steps: int = 10,
                 increments: tuple[float, ...] = DEFAULT_INCREMENTS, box: int | None = None,
                 stride: int | None = None, caps: ExplainCaps | None = None) -> None:
        if max_steps < 1:
            raise ConfigError(f"max_steps must be at least 1, got {max_steps}")
        if not increments or any(not 0.0 < f <= 1.0 for f in increments):
            raise ConfigError(f"increments must be fractions in (0, 1], got {increments}")
        for name, value in (("strength", strength), ("box", box), ("stride", stride)):
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1 pixel, got {value}")
        if explainer is not None and (box is not None or stride is not None):
            raise ConfigError("box and stride set the default occlusion; give them to your explainer instead")
        self.style = option(Style, style, "style")
        self.detector = detector or Detector()
        self.explainer = explainer
        self.strength = strength
        self.max_steps = max_steps
        self.increments = tuple(sorted(increments))
        self.box, self.stride = box, stride
        self.caps = caps or ExplainCaps()

    def _explainer(self, height: int, width: int, scale: float) -> Explainer:
        """The explainer of a working copy of ``height`` x ``width``, ``scale`` times the original."""
        if self.explainer is not None:
            return self.explainer
        box = max(1, round(self.box * scale)) if self.box else max(8, round(min(height, width) / 5))
        stride = max(1, round(self.stride * scale)) if self.stride else max(1, box // 2)
        occ = Occlusion(self.detector, box=box, stride=stride, fill=Fill.MEAN, caps=self.caps)
        occ.explicit = self.box is not None or self.stride is not None  # a default grid may be coarsened
        return occ

    def censor(self, image: ImageInput, *, target: float = 0.2,
               progress: ProgressCallback | None = None) -> CensorResult:
        """Censor ``image`` until its NSFW score is below ``target``. Never modifies the input."""
        if not 0.0 < target <= 1.0:
            raise ConfigError(f"target must lie in (0, 1], got {target}", param="target")
        det = self.detector
        img = load_input(image, det.limits)
        work = working_copy(img, self.caps)
        scale = work.width / img.width if work.width >= work.height else work.height / img.height
        base = np.asarray(work)
        h, w = base.shape[:2]
        strength = max(1, round(self.strength * scale)) if self.strength else None
        hidden = hide(base, self.style, strength)
        mask = np.zeros((h, w), dtype=bool)
        before = float(score_variants(det, lambda _: img, 1)[0])
        current, score = base, before
        steps: list[CensorStep] = []
        best: tuple[int, np.ndarray, np.ndarray] | None = None  # (step index, mask, image) of the lowest score
        best_score = before
        explainer = self._explainer(h, w, scale)
        radius = max(1, round(min(h, w) / 80))
        for _ in range(self.max_steps):
            if score < target or mask.all():
                break
            heat = explainer.explain(Image.fromarray(current), progress=progress)
            smooth = _smooth(np.asarray(heat, dtype=np.float64), radius)
            candidates = self._candidates(smooth, mask)

            def render(i: int, masks: list[np.ndarray] = candidates) -> Image.Image:
                return Image.fromarray(np.where(masks[i][:, :, None], hidden, base))

            scores = score_variants(det, render, len(candidates), progress=progress)
            below = [i for i, s in enumerate(scores) if s < target]
            pick = below[0] if below else int(np.argmin(scores))
            mask = candidates[pick]
            current = np.where(mask[:, :, None], hidden, base)
            score = float(scores[pick])
            steps.append(CensorStep(float(mask.mean()), score))
            if score < best_score:
                best, best_score = (len(steps) - 1, mask, current), score
        return self._result(img, work, best, best_score, before, target, tuple(steps))

    def _result(self, img: Image.Image, work: Image.Image, best: tuple[int, np.ndarray, np.ndarray] | None,
                score: float, before: float, target: float, steps: tuple[CensorStep, ...]) -> CensorResult:
        """The lowest-scoring image, at the original's size and with its exact score; the input
        unchanged when nothing scored lower (also when a working copy's best, applied at full size,
        scores higher than the input)."""
        det = self.detector
        if best is not None and work is not img:
            current, mask = self._apply(img, best[1])
            score = float(score_variants(det, lambda _: Image.fromarray(current), 1)[0])
            if score >= before:
                best = None
        elif best is not None:
            current, mask = best[2], best[1]
        if best is None:
            current, mask, score = np.array(img), np.zeros((img.height, img.width), dtype=bool), before
        return CensorResult(image=np.ascontiguousarray(current, dtype=np.uint8), mask=mask, score_before=before,
                            score_after=score, target=target, reached=score < target, steps=steps,
                            best_step=None if best is None else best[0])

    def _apply(self, img: Image.Image, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A working copy's mask scaled to ``img`` (nearest neighbour: each pixel takes the mask
        value of the working-copy pixel its centre falls in) and ``img`` censored through it,
        from a hidden version of the original (so at the original's sharpness). Returns (image,
        mask) at full size, composed in row blocks (no full-size temporaries)."""
        rows = np.minimum(((np.arange(img.height) + 0.5) * mask.shape[0] / img.height).astype(np.intp),
                          mask.shape[0] - 1)
        cols = np.minimum(((np.arange(img.width) + 0.5) * mask.shape[1] / img.width).astype(np.intp),
                          mask.shape[1] - 1)
        full = mask[rows][:, cols]
        hidden = hide_image(img, self.style, self.strength)
        out = np.empty((img.height, img.width, 3), dtype=np.uint8)
        step = max(1, (1 << 20) // img.width)  # row blocks of about a megapixel: no full-size temporaries
        for top in range(0, img.height, step):
            box = (0, top, img.width, min(img.height, top + step))
            out[box[1] : box[3]] = np.where(full[box[1] : box[3], :, None], np.asarray(hidden.crop(box)),
                                            np.asarray(img.crop(box)))
        return out, full

    def _candidates(self, heat: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
        """Masks hiding the current mask plus the top pixels of ``heat`` among the visible ones,
        for each increment (smallest first, duplicates dropped)."""
        visible = np.flatnonzero(~mask.ravel())
        order = visible[np.argsort(-heat.ravel()[visible], kind="stable")]
        out: list[np.ndarray] = []
        last = -1
        for frac in self.increments:
            k = min(len(order), max(1, int(np.ceil(frac * mask.size))))
            if k == last:
                continue
            last = k
            m = mask.ravel().copy()
            m[order[:k]] = True
            out.append(m.reshape(mask.shape))
        return out


def box_mask(boxes: Sequence[dict], height: int, width: int) -> np.ndarray:
    """bool HxW, True inside any of ``boxes`` (``{"box": [x, y, w, h]}``, pixels; clipped to the image)."""
    mask = np.zeros((height, width), dtype=bool)
    for b in boxes:
        x, y, w, h = (int(v) for v in b["box"])
        mask[max(0, y) : max(0, y + h), max(0, x) : max(0, x + w)] = True
    return mask


class BoxCensor:
    """Hides a detector model's boxes (``Detector(model="nudenet-320n")``) until it scores the image
    below a target.

    ``classes``: the box classes to hide (default: the model's NSFW classes, those its score is made
    of); ``all_boxes=True`` hides every box, whatever its class. ``style`` and ``strength`` as for
    :func:`hide`; at most ``max_steps`` rounds of hiding run (each followed by a detection).
    """

    def __init__(self, detector: Detector, *, style: Style | str = Style.BLUR, strength: int | None = None,
                 classes: Sequence[str] | None = None, all_boxes: bool = False, max_steps: int = 3) -> None:
        zoo = detector.zoo
        if zoo is None or not zoo.is_detector:
            raise ConfigError(f"box censoring needs a detector model (nudenet-320n); {detector.model_id} gives no "
                              "boxes", param="model")
        if max_steps < 1:
            raise ConfigError(f"max_steps must be at least 1, got {max_steps}", param="max_steps")
        if strength is not None and strength < 1:
            raise ConfigError(f"strength must be at least 1 pixel, got {strength}", param="strength")
        if classes is not None and all_boxes:
            raise ConfigError("give classes or all_boxes, not both", param="classes")
        unknown = sorted(set(classes or ()) - set(zoo.classes))
        if unknown:
            raise ConfigError(f"unknown box class {unknown[0]!r}; {zoo.model_id} has: {', '.join(zoo.classes)}",
                              param="classes")
        if classes is not None and not classes:
            raise ConfigError("classes must name at least one class", param="classes")
        self.detector = detector
        self.style = option(Style, style, "style")
        self.strength = strength
        self.classes: frozenset[str] | None = None if all_boxes else frozenset(classes or zoo.nsfw_classes)
        self.max_steps = max_steps

    def censor(self, image: ImageInput, *, target: float = 0.2,
               progress: ProgressCallback | None = None) -> CensorResult:
        """Hide the wanted boxes of ``image``, and those found again while its NSFW score is at or
        above ``target``. Never modifies the input. ``score_before`` / ``score_after`` are the Detector's exact
        scores of the input and of the returned image (which a PNG keeps exactly)."""
        if not 0.0 < target <= 1.0:
            raise ConfigError(f"target must lie in (0, 1], got {target}", param="target")
        img = load_input(image, self.detector.limits)
        base = np.asarray(img)
        hidden = np.asarray(hide_image(img, self.style, self.strength))
        mask = np.zeros(base.shape[:2], dtype=bool)
        current = base
        res = self.detector.classify(img)
        before = score = float(res.score or 0.0)
        steps: list[CensorStep] = []
        for _ in range(self.max_steps):
            wanted = [b for b in res.boxes or [] if self.classes is None or b["class"] in self.classes]
            grown = mask | box_mask(wanted, img.height, img.width)
            if (steps and score < target) or (grown == mask).all():
                break  # the first detection's boxes are always hidden; later ones while over the target
            mask = grown
            current = np.where(mask[:, :, None], hidden, base)
            res = self.detector.classify(Image.fromarray(current))
            score = float(res.score or 0.0)
            steps.append(CensorStep(float(mask.mean()), score))
            if progress is not None:
                progress(1)
        if steps and score > before:  # never worse than the input
            current, mask, score = base, np.zeros_like(mask), before
        return CensorResult(image=np.ascontiguousarray(current, dtype=np.uint8), mask=mask, score_before=before,
                            score_after=score, target=target, reached=score < target, steps=tuple(steps),
                            best_step=len(steps) - 1 if mask.any() else None)
