"""Find the objects in a ShapesWorld-style image: flat-coloured shapes on a plain background.

1. Every pixel takes the nearest colour of the palette (the world's colours plus the background).
2. Each colour's pixels split into 8-connected components; components smaller than `min_area` (a fraction
   of the image: anti-aliased edges, specks of a generated image) are dropped.
3. A component's shape is the template that overlaps it best: every shape of the world is drawn
   (`shape_polygon`, the renderer's own geometry) into the component's bounding box at a few rotations,
   and the highest intersection-over-union wins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from latentdiff.data.shapes import ShapesWorldConfig
from latentdiff.data.shapes_render import shape_polygon

_ROTATIONS = (-8.0, 0.0, 8.0)  # the renderer jitters polygons by up to +-8 degrees
_SUPERSAMPLE = 4  # templates are drawn at 4x and box-averaged, like the renderer's anti-aliasing


@dataclass(frozen=True)
class Detection:
    color: str  # palette colour of the component
    shape: str  # best-matching shape template
    cx: float  # bounding-box centre, fraction of the image width
    cy: float  # ... of the image height
    r: float  # half the larger bounding-box side, fraction of the image side
    area: float  # pixels in the component, fraction of the image
    iou: float  # overlap with the chosen template (how shape-like the blob is)


def _template(shape: str, box: tuple[int, int, int, int], rotation: float, size: tuple[int, int]) -> np.ndarray:
    """(h, w) boolean mask of `shape` filling pixel box (x0, y0, x1, y1) (exclusive ends) of a crop `size`."""
    w, h = size
    S = _SUPERSAMPLE
    canvas = Image.new("L", (w * S, h * S), 0)
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2 * S, (y0 + y1) / 2 * S, max(x1 - x0, y1 - y0) / 2 * S
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(shape_polygon(shape, cx, cy, r, rotation), fill=255)
    small = np.asarray(canvas, dtype=np.float32).reshape(h, S, w, S).mean(axis=(1, 3))  # (h, w) coverage
    return small >= 127.5


def classify_shape(mask: np.ndarray, shapes: tuple[str, ...]) -> tuple[str, float]:
    """Best (shape, IoU) for a boolean component mask."""
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    pad = 2
    crop = np.pad(mask[y0:y1, x0:x1], pad)  # (h + 4, w + 4)
    h, w = crop.shape
    box = (pad, pad, pad + (x1 - x0), pad + (y1 - y0))
    best, best_iou = shapes[0], -1.0
    for shape in shapes:
        for rotation in ((0.0,) if shape == "circle" else _ROTATIONS):
            t = _template(shape, box, rotation, (w, h))
            iou = float((t & crop).sum() / max((t | crop).sum(), 1))
            if iou > best_iou:
                best, best_iou = shape, iou
    return best, best_iou


def detect_objects(image: Image.Image | np.ndarray, config: ShapesWorldConfig | None = None,
                   min_area: float = 0.004) -> list[Detection]:
    """The objects of an RGB image (PIL or (H, W, 3) uint8), largest first."""
    config = ShapesWorldConfig() if config is None else config
    if not 0 < min_area < 1:
        raise ValueError(f"detect_objects: min_area is a fraction of the image in (0, 1), got {min_area}")
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"detect_objects: expected an (H, W, 3) RGB image, got shape {rgb.shape}")
    H, W, _ = rgb.shape
    names = list(config.colors)
    palette = np.array([config.colors[c] for c in names] + [config.background], dtype=np.float32)  # (C + 1, 3)
    dist = ((rgb[:, :, None, :] - palette[None, None]) ** 2).sum(-1)  # (H, W, C + 1)
    label = dist.argmin(-1)  # (H, W): index into names, len(names) = background
    found = []
    eight = np.ones((3, 3), dtype=bool)
    for k, color in enumerate(names):
        components, n = ndimage.label(label == k, structure=eight)
        if n == 0:
            continue
        areas = ndimage.sum_labels(np.ones_like(components), components, index=np.arange(1, n + 1))
        for j in np.nonzero(areas >= min_area * H * W)[0]:
            mask = components == j + 1
            shape, iou = classify_shape(mask, config.shapes)
            ys, xs = np.nonzero(mask)
            found.append(Detection(color, shape, cx=(xs.min() + xs.max() + 1) / 2 / W,
                                   cy=(ys.min() + ys.max() + 1) / 2 / H,
                                   r=max(xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()) / 2 / max(H, W),
                                   area=float(areas[j]) / (H * W), iou=iou))
    return sorted(found, key=lambda d: -d.area)
