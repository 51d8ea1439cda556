"""The explain/censor option enums, in a module free of heavy imports (no torch, no matplotlib),
so the CLI and HTTP schema can use them without loading a model stack."""

from __future__ import annotations

from enum import Enum

__all__ = ["Baseline", "Fill", "Method", "Reduction", "Style"]


class Method(str, Enum):
    OCCLUSION = "occlusion"
    SLIDING_WINDOW = "sliding-window"
    GRADCAM = "gradcam"
    GUIDED_BACKPROP = "guided-backprop"
    DECONVNET = "deconvnet"
    INTEGRATED_GRADIENTS = "integrated-gradients"
    ALL = "all"


class Fill(str, Enum):
    """What replaces the occluded box."""

    MEAN = "mean"  # the preprocessing's mean colour (PreprocessConfig.mean_bgr): zero after mean subtraction
    BLACK = "black"
    GREY = "grey"
    BLUR = "blur"  # a strongly blurred copy of the image: removes detail, keeps colour


class Reduction(str, Enum):
    """How a (3, H, W) attribution becomes one value per pixel."""

    ABS = "abs"  # sum of absolute values over channels: where the evidence is, either sign
    POSITIVE = "positive"  # channel sum, negatives set to 0: what pushes the target up
    SIGNED = "signed"  # channel sum, signed


class Baseline(str, Enum):
    """The reference image of integrated gradients."""

    BLACK = "black"
    MEAN = "mean"  # the preprocessing's mean colour (zero input after mean subtraction)


class Style(str, Enum):
    """How censored regions are hidden."""

    BLUR = "blur"
    PIXELATE = "pixelate"
    BOX = "box"  # solid black
