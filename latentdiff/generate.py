"""Generate images to files: what `latentdiff generate` does, usable from Python too."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from latentdiff.images import make_grid, save_png
from latentdiff.loading import LoadedModel


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


def generate_files(loaded: LoadedModel, request: GenerationRequest, output: str | Path) -> list[Path]:
    """Run the pipeline and write PNGs (with their parameters in a text chunk); returns the paths written.

    One image goes to `output`; several go to `stem-0.png`, `stem-1.png`, ... plus `stem-grid.png`.
    """
    if request.num_images < 1:
        raise ValueError(f"The number of images must be >= 1, got {request.num_images}.")
    output = Path(output)
    if output.suffix.lower() != ".png":
        raise ValueError(f"The output file must end in .png, got {output.name!r}.")
    pipe = loaded.pipe
    if request.sampler is not None:
        pipe.set_sampler(request.sampler)
    device = pipe._execution_device
    generators = [torch.Generator(device).manual_seed(request.seed + i) for i in range(request.num_images)]
    images = pipe(
        request.prompt,
        negative_prompt=request.negative_prompt,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance,
        num_images_per_prompt=request.num_images,
        height=request.height,
        width=request.width,
        generator=generators,
    ).images

    params = asdict(request) | {"model": loaded.source, "sampler": request.sampler or type(pipe.scheduler).__name__,
                                "height": images[0].height, "width": images[0].width}
    if len(images) == 1:
        return [save_png(images[0], output, params)]
    paths = [save_png(image, output.with_name(f"{output.stem}-{i}.png"), params | {"seed": request.seed + i,
                                                                                     "num_images": 1})
             for i, image in enumerate(images)]
    paths.append(save_png(make_grid(images), output.with_name(f"{output.stem}-grid.png")))
    return paths
