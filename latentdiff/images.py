"""Saving generated images: PNGs that carry their generation parameters, and grids."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from PIL import Image, PngImagePlugin

PARAMETERS_KEY = "latentdiff"  # the PNG text chunk that holds the generation parameters as JSON


def make_grid(images: Sequence[Image.Image], cols: int | None = None, pad: int = 2,
              background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Tile equally sized images into one picture, row by row (cols defaults to a near-square layout)."""
    if not images:
        raise ValueError("make_grid needs at least one image.")
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w + (cols + 1) * pad, rows * h + (rows + 1) * pad), background)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid.paste(image.convert("RGB"), (pad + c * (w + pad), pad + r * (h + pad)))
    return grid


def save_png(image: Image.Image, path: str | Path, parameters: dict[str, Any] | None = None) -> Path:
    """Write a PNG; `parameters` go into a text chunk that `read_parameters` (and `latentdiff info`) read back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    if parameters is not None:
        info.add_text(PARAMETERS_KEY, json.dumps(parameters, sort_keys=True))
    image.save(path, format="PNG", pnginfo=info)
    return path


def read_parameters(path: str | Path) -> dict[str, Any] | None:
    """The generation parameters stored by `save_png`, or None when the PNG has none; a ValueError when its
    chunk is not a JSON object (a file edited or crafted by hand)."""
    with Image.open(path) as image:
        text = getattr(image, "text", {}).get(PARAMETERS_KEY)
    if not text:
        return None
    try:
        params = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: its {PARAMETERS_KEY!r} text chunk is not valid JSON ({err}); it was not written "
                         "by latentdiff, or was changed since.") from None
    if not isinstance(params, dict):
        kind = {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(params), "null")
        raise ValueError(f"{path}: its {PARAMETERS_KEY!r} text chunk holds a JSON {kind}, not the "
                         "object of parameters latentdiff writes; it was not written by latentdiff, or was changed "
                         "since.")
    return params
