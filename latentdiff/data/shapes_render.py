"""ShapesWorld rendering: a scene spec -> an anti-aliased RGB PIL image.

Shapes are drawn with `PIL.ImageDraw` at `supersample` times the target size and reduced with LANCZOS
(after an exact 2x box pre-reduction, see `render`), which anti-aliases the edges. Rendering is a pure
function of the spec: every random choice (position, size, jittered colour, rotation) was made by the
sampler in `latentdiff.data.shapes` and stored there.

Geometry convention (shared with the sampler): an object with centre (cx, cy) and half-extent r, all as
fractions of the image side, fills the axis-aligned box [cx - r, cx + r] x [cy - r, cy + r] in its larger
dimension and never leaves it, whatever its rotation. The sampler's non-overlap test on boxes is
therefore exact for every shape.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw

if TYPE_CHECKING:  # imported for type hints only; shapes.py imports this module
    from latentdiff.data.shapes import SceneSpec

# Shape outlines in unit coordinates (x right, y down), before rotation and normalisation to the box.
_STAR_INNER = 0.5  # inner / outer radius of the star; fatter than the classic 0.38 so it survives 12 px
_CROSS_HALF_WIDTH = 0.36  # half the arm width of the plus sign, as a fraction of the half-extent

_w = _CROSS_HALF_WIDTH
_UNIT_POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)],
    "triangle": [(0.0, -1.0), (1.0, math.sqrt(3.0) - 1.0), (-1.0, math.sqrt(3.0) - 1.0)],  # equilateral, apex up
    "diamond": [(0.0, -1.0), (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0)],
    "cross": [(-_w, -1.0), (_w, -1.0), (_w, -_w), (1.0, -_w), (1.0, _w), (_w, _w),
              (_w, 1.0), (-_w, 1.0), (-_w, _w), (-1.0, _w), (-1.0, -_w), (-_w, -_w)],
    "star": [
        ((1.0 if k % 2 == 0 else _STAR_INNER) * math.cos(math.radians(-90.0 + 36.0 * k)),
         (1.0 if k % 2 == 0 else _STAR_INNER) * math.sin(math.radians(-90.0 + 36.0 * k)))
        for k in range(10)
    ],  # five points, one pointing up
}
del _w

SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond")


def shape_polygon(shape: str, cx: float, cy: float, r: float, rotation: float = 0.0) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape, rotated by `rotation` degrees (clockwise on screen) and then scaled and
    shifted so that it fills the box [cx - r, cx + r] x [cy - r, cy + r] in its larger dimension.
    Coordinates are in whatever unit cx, cy, r use (pixels when drawing)."""
    if shape not in _UNIT_POLYGONS:
        raise ValueError(f"shape_polygon: {shape!r} is not a polygon; choose one of {sorted(_UNIT_POLYGONS)}")
    c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    pts = [(c * x - s * y, s * x + c * y) for x, y in _UNIT_POLYGONS[shape]]  # y points down: clockwise
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    mx, my = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2  # centre of the vertex bounding box
    half = max(max(xs) - min(xs), max(ys) - min(ys)) / 2
    return [(cx + r * (x - mx) / half, cy + r * (y - my) / half) for x, y in pts]


def render(spec: "SceneSpec", size: int = 64, supersample: int = 4) -> Image.Image:
    """Draw `spec` as a `size` x `size` RGB image, supersampled `supersample` times then LANCZOS-reduced."""
    if not isinstance(size, int) or not 8 <= size <= 4096:
        raise ValueError(f"render: size must be an int in [8, 4096], got {size!r}")
    if not isinstance(supersample, int) or not 1 <= supersample <= 16:
        raise ValueError(f"render: supersample must be an int in [1, 16], got {supersample!r}")
    S = size * supersample  # side of the canvas we draw on
    image = Image.new("RGB", (S, S), tuple(spec.background))
    draw = ImageDraw.Draw(image)
    for obj in spec.objects:
        if obj.shape not in SHAPE_NAMES:
            raise ValueError(f"render: unknown shape {obj.shape!r}; choose one of {SHAPE_NAMES}")
        cx, cy, r = obj.cx * S, obj.cy * S, obj.r * S  # pixels on the canvas
        fill = tuple(int(v) for v in obj.rgb)
        if obj.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon(shape_polygon(obj.shape, cx, cy, r, obj.rotation), fill=fill)
    if supersample > 1:
        # reducing_gap=2: a box reduce() to twice the output size, then LANCZOS for the last factor of 2;
        # PIL documents this as close to a plain LANCZOS resize, and it is 2x faster at 4x supersampling.
        image = image.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0)
    return image
