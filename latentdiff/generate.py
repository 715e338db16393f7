"""Generate images to files: what `latentdiff generate` does, usable from Python too."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any


from latentdiff.eval.seeded import generate_seeded
from latentdiff.images import make_grid, save_png
from latentdiff.loading import LoadedModel

# Bounds of a request, so that a mistyped or crafted value (steps 10^9 in a PNG's parameters) is refused at once
# instead of allocating gigabytes: a DDPM-family model has 1000 training timesteps; 64 images is a large batch for
# any GPU (run several requests for more); 4096 px is 8x Stable Diffusion 1.5's native size.
MAX_STEPS = 1000
MAX_IMAGES = 64
MAX_SIDE = 4096
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_value(name: str, value: Any) -> None:
    """A ValueError saying what to change unless `value` is a valid GenerationRequest field `name`."""
    problem = None
    if name == "prompt" and not (isinstance(value, str) and value.strip()):
        problem = "a non-empty string"
    elif name in ("negative_prompt", "sampler") and not (value is None or isinstance(value, str)):
        problem = "a string"
    elif name == "steps" and not (_is_whole(value) and 1 <= value <= MAX_STEPS):
        problem = f"a whole number from 1 to {MAX_STEPS}"
    elif name == "num_images" and not (_is_whole(value) and 1 <= value <= MAX_IMAGES):
        problem = f"a whole number from 1 to {MAX_IMAGES} (run several times for more)"
    elif name == "seed" and not (_is_whole(value) and SEED_RANGE[0] <= value <= SEED_RANGE[1]):
        problem = f"a whole number from {SEED_RANGE[0]} to {SEED_RANGE[1]}"
    elif name == "guidance" and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                     and math.isfinite(value)):
        problem = "a finite number"
    elif name in ("height", "width") and not (value is None or (_is_whole(value) and 1 <= value <= MAX_SIDE)):
        problem = f"a whole number of pixels from 1 to {MAX_SIDE}"
    if problem:
        raise ValueError(f"{name} must be {problem}, got {value!r}.")


@dataclass
class GenerationRequest:
    prompt: str  # what to draw
    negative_prompt: str | None = None  # what to guide away from
    sampler: str | None = None  # a named sampler; None keeps the model's saved scheduler
    steps: int = 20  # sampler steps
    guidance: float = 7.5  # classifier-free guidance scale (off at <= 1)
    seed: int = 0  # image i uses seed + i, so each image can be remade alone with -n 1
    num_images: int = 1  # how many images
    height: int | None = None  # pixels; None: the model's native size
    width: int | None = None  # pixels; None: the model's native size

    def __post_init__(self):
        for f in fields(self):
            check_value(f.name, getattr(self, f.name))
        if self.seed + self.num_images - 1 > SEED_RANGE[1]:
            raise ValueError(f"seed + num_images - 1 must be at most {SEED_RANGE[1]} (image i uses seed + i), "
                             f"got {self.seed} + {self.num_images} - 1.")


def output_paths(output: str | Path, num_images: int) -> list[Path]:
    """The files `generate_files` writes: `output`, or `stem-0.png` ... and `stem-grid.png` for several images."""
    output = Path(output)
    if num_images == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}.png") for i in range(num_images)] + [
        output.with_name(f"{output.stem}-grid.png")]


def check_output(output: str | Path, num_images: int, overwrite: bool = False) -> list[Path]:
    """The paths `generate_files` would write, or a ValueError when it could not write them (not a .png name,
    a folder that does not exist, a folder in the way) or they exist and `overwrite` is False. Call it before
    loading a model, so that a bad -o costs nothing."""
    output = Path(output)
    if output.suffix.lower() != ".png":
        raise ValueError(f"The output file must end in .png, got {output.name!r}.")
    parent = output.parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise ValueError(f"Cannot write {output}: the folder {parent} {what}. Create it, or choose another -o.")
    paths = output_paths(output, num_images)
    for path in paths:
        if path.is_dir():
            raise ValueError(f"Cannot write {path}: it is a folder. Name a .png file inside it, e.g. -o "
                             f"{path / 'image.png'}.")
    existing = [str(path) for path in paths if path.exists()]
    if existing and not overwrite:
        raise ValueError(f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; pass --overwrite "
                         "to replace, or choose another -o.")
    return paths


def generate_files(loaded: LoadedModel, request: GenerationRequest, output: str | Path,
                   overwrite: bool = False) -> list[Path]:
    """Run the pipeline and write PNGs (with their parameters in a text chunk); returns the paths written.

    One image goes to `output`; several go to `stem-0.png`, `stem-1.png`, ... plus `stem-grid.png`. The folder
    must exist; existing files are replaced only with `overwrite` (see `check_output`, which runs first).
    """
    paths = check_output(output, request.num_images, overwrite)
    pipe = loaded.pipe
    if request.sampler is not None:
        pipe.set_sampler(request.sampler)
    seeds = [request.seed + i for i in range(request.num_images)]  # image i can be made again alone with seed + i
    images = generate_seeded(pipe, request.prompt, seeds, negative_prompt=request.negative_prompt,
                             num_inference_steps=request.steps, guidance_scale=request.guidance,
                             height=request.height, width=request.width).images

    params = asdict(request) | {"model": loaded.source, "sampler": request.sampler or type(pipe.scheduler).__name__,
                                "height": images[0].height, "width": images[0].width}
    if len(images) == 1:
        return [save_png(images[0], paths[0], params)]
    written = [save_png(image, path, params | {"seed": request.seed + i, "num_images": 1})
               for i, (image, path) in enumerate(zip(images, paths))]
    written.append(save_png(make_grid(images), paths[-1]))
    return written
