"""The explain/censor option enums, in a module free of heavy imports (no torch, no matplotlib),
so the CLI and HTTP schema can use them without loading a model stack."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ..errors import ConfigError

__all__ = ["Baseline", "ExplainCaps", "Fill", "Method", "Reduction", "Style"]


@dataclass(frozen=True)
class ExplainCaps:
    """Bounds on the work and memory of explain and censor (docs/explain.md, "Caps").

    ``max_work_side``: explainers work on a copy of the image whose long side is at most this
    many pixels (images under it are used as they are; heatmaps come back at the working size).
    ``max_windows``: occlusion and sliding windows score at most this many windows per image
    (default grids are coarsened to fit; an explicit box/stride that needs more is refused).
    ``max_output_side``: pictures (overlays, grids) are drawn at most this large on the long side.
    ``max_aspect``: images longer than this many times their width (or wider than their height)
    are refused.
    """

    max_work_side: int = 2048
    max_windows: int = 4096
    max_output_side: int = 4096
    max_aspect: float = 20.0

    def __post_init__(self) -> None:
        for name in ("max_work_side", "max_windows", "max_output_side"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.max_aspect >= 1.0:
            raise ConfigError(f"max_aspect must be at least 1, got {self.max_aspect}")


class Method(StrEnum):
    OCCLUSION = "occlusion"
    SLIDING_WINDOW = "sliding-window"
    GRADCAM = "gradcam"
    GUIDED_BACKPROP = "guided-backprop"
    DECONVNET = "deconvnet"
    INTEGRATED_GRADIENTS = "integrated-gradients"
    ALL = "all"


class Fill(StrEnum):
    """What replaces the occluded box."""

    MEAN = "mean"  # the preprocessing's mean colour (PreprocessConfig.mean_bgr): zero after mean subtraction
    BLACK = "black"
    GREY = "grey"
    BLUR = "blur"  # a strongly blurred copy of the image: removes detail, keeps colour


class Reduction(StrEnum):
    """How a (3, H, W) attribution becomes one value per pixel."""

    ABS = "abs"  # sum of absolute values over channels: where the evidence is, either sign
    POSITIVE = "positive"  # channel sum, negatives set to 0: what pushes the target up
    SIGNED = "signed"  # channel sum, signed


class Baseline(StrEnum):
    """The reference image of integrated gradients."""

    BLACK = "black"
    MEAN = "mean"  # the preprocessing's mean colour (zero input after mean subtraction)


class Style(StrEnum):
    """How censored regions are hidden."""

    BLUR = "blur"
    PIXELATE = "pixelate"
    BOX = "box"  # solid black
