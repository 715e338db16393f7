"""Validation samples during training: fixed prompts and seeds, drawn into one PNG grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from latentdiff.eval.seeded import generate_seeded
from latentdiff.images import make_grid


@torch.no_grad()
def sample_images(pipe, prompts: list[str], seed: int, steps: int, guidance: float) -> list[Image.Image]:
    """One image per prompt, prompt i drawn with seed + i."""
    pipe.set_progress_bar_config(disable=True)
    return generate_seeded(pipe, prompts, [seed + i for i in range(len(prompts))], num_inference_steps=steps,
                           guidance_scale=guidance).images


@torch.no_grad()
def sample_grid(pipe, prompts: list[str], seed: int, steps: int, guidance: float, out: Path) -> Image.Image:
    """One image per prompt, prompt i drawn with seed + i, tiled row by row; saved to `out`."""
    images = sample_images(pipe, prompts, seed, steps, guidance)
    grid = make_grid(images, cols=min(len(images), 8))
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return grid


@torch.no_grad()
def steps_grid(pipe, prompts: list[str], seed: int, steps: list[int], guidance: float, out: Path) -> Image.Image:
    """One row per step count, one column per prompt (same seeds in every row), for few-step samplers; saved to
    `out`."""
    images = [image for n in steps for image in sample_images(pipe, prompts, seed, n, guidance)]
    grid = make_grid(images, cols=len(prompts))
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return grid


def log_image(accelerator, tag: str, image: Image.Image, step: int) -> None:
    """Send a PIL image to the tensorboard tracker, if there is one."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image(tag, np.asarray(image), step, dataformats="HWC")
