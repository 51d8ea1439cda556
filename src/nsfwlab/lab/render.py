"""Genomes of coloured shapes, and their rendering.

A genome is a flat vector of ``count * genes_per_shape(kind)`` numbers in [0, 1], one block of
genes per shape, drawn in order (later shapes over earlier ones):

- circle: ``cx, cy, radius, r, g, b, alpha`` (centre in canvas fractions, radius up to a quarter
  of the canvas side, colour 0..1 of 255, opacity 0..1);
- triangle: ``x1, y1, x2, y2, x3, y3, r, g, b, alpha``.

:func:`render_population` draws a whole population in one call (Pillow, hard edges, integer
alpha blending in shape order) and returns uint8 RGB images: the pixels of the PNG that is
written, so scoring them is scoring the file. An image does not depend on the population it was
drawn in.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["GENES", "ShapeKind", "describe_shapes", "genes_per_shape", "genome_length", "render",
           "render_population"]


class ShapeKind(StrEnum):
    CIRCLE = "circle"
    TRIANGLE = "triangle"


#: The genes of one shape, in genome order.
GENES: dict[ShapeKind, tuple[str, ...]] = {
    ShapeKind.CIRCLE: ("cx", "cy", "radius", "r", "g", "b", "alpha"),
    ShapeKind.TRIANGLE: ("x1", "y1", "x2", "y2", "x3", "y3", "r", "g", "b", "alpha"),
}

#: Largest circle radius as a fraction of the canvas side.
MAX_RADIUS = 0.25


def genes_per_shape(kind: ShapeKind | str) -> int:
    return len(GENES[ShapeKind(kind)])


def genome_length(kind: ShapeKind | str, count: int) -> int:
    if count < 1:
        raise ConfigError(f"the shape count must be at least 1, got {count}")
    return count * genes_per_shape(kind)


def _as_population(genomes: Any, kind: ShapeKind) -> np.ndarray:
    pop = np.asarray(genomes, dtype=np.float32)
    if pop.ndim != 2 or pop.shape[1] == 0 or pop.shape[1] % genes_per_shape(kind):
        raise ConfigError(f"a {kind.value} population must be (P, count*{genes_per_shape(kind)}), got {pop.shape}")
    return np.clip(pop, 0.0, 1.0).reshape(len(pop), -1, genes_per_shape(kind))


def render_population(genomes: Any, kind: ShapeKind | str, size: int = 256,
                      background: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """Draw P genomes in one call: ``(P, L)`` genes in [0, 1] -> ``(P, size, size, 3)`` uint8 RGB.

    Genes outside [0, 1] are clipped. Shapes are composited in order with Pillow's alpha blend
    (``ImageDraw`` in RGBA mode over an RGB canvas: integer ``(fill * a + dst * (255 - a)) / 255``).
    Pillow rasterises each shape only over its own bounding box, in C: on this project's 2-core
    machine it drew 50 circles in ~3 ms and 100 triangles in ~7 ms per image, 5-20x faster than a
    population-vectorised torch renderer (which must touch every member's union box per shape).
    """
    kind = ShapeKind(kind)
    if size < 8:
        raise ConfigError(f"the canvas must be at least 8 pixels, got {size}")
    pop = _as_population(genomes, kind).astype(np.float64)
    out = np.empty((len(pop), size, size, 3), dtype=np.uint8)
    for i, shapes in enumerate(pop):
        out[i] = _draw(shapes, kind, size, background)
    return out


def _draw(shapes: np.ndarray, kind: ShapeKind, size: int, background: tuple[int, int, int]) -> np.ndarray:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), tuple(int(c) for c in background))
    draw = ImageDraw.Draw(image, "RGBA")
    fills = np.rint(shapes[:, -4:] * 255.0).astype(int).tolist()
    geometry = (shapes[:, :-4] * size).tolist()
    for geo, fill in zip(geometry, fills, strict=True):
        if kind is ShapeKind.CIRCLE:
            cx, cy, r = geo[0], geo[1], geo[2] * MAX_RADIUS
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(fill))
        else:
            draw.polygon([(geo[0], geo[1]), (geo[2], geo[3]), (geo[4], geo[5])], fill=tuple(fill))
    return np.asarray(image)


def render(genome: Any, kind: ShapeKind | str, size: int = 256,
           background: tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """One genome -> ``(size, size, 3)`` uint8 RGB (the population renderer with P = 1)."""
    return render_population(np.asarray(genome, dtype=np.float32)[None], kind, size, background)[0]


def describe_shapes(genome: Any, kind: ShapeKind | str, size: int = 256) -> list[dict[str, Any]]:
    """One dict per shape in pixel units (centre, radius or vertices; RGB 0..255; alpha 0..1)."""
    kind = ShapeKind(kind)
    shapes = _as_population(np.asarray(genome)[None], kind)[0].astype(np.float64)
    out: list[dict[str, Any]] = []
    for g in shapes:
        colour = [round(float(c) * 255.0, 3) for c in g[-4:-1]]
        item: dict[str, Any] = {"type": kind.value}
        if kind is ShapeKind.CIRCLE:
            item.update(center=[round(float(g[0]) * size, 3), round(float(g[1]) * size, 3)],
                        radius=round(float(g[2]) * MAX_RADIUS * size, 3))
        else:
            item["vertices"] = [[round(float(g[i]) * size, 3), round(float(g[i + 1]) * size, 3)] for i in (0, 2, 4)]
        item.update(rgb=colour, alpha=round(float(g[-1]), 6))
        out.append(item)
    return out
