"""Validation samples during training: fixed prompts and seeds, drawn into one PNG grid."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from latentdiff.data.dataset import choose_caption
from latentdiff.data.sources import Record
from latentdiff.eval.seeded import generate_seeded
from latentdiff.images import make_grid

DATA_PROMPTS = 4  # captions of the training data in the default sample grid (then "")
STREAM_POOL = 256  # a stream of shards (no random access) gives its first this-many captions to draw from


def prompts_from_data(dataset, seed: int, n: int = DATA_PROMPTS) -> list[str]:
    """The default prompts of a run's sample grids: `n` different captions of its training data, drawn with `seed`
    (from a map-style dataset's `caption_at(i)`, or from the first STREAM_POOL captions of a stream's shards), then ""
    for an unconditional picture. Fewer when the data has fewer different captions."""
    rng = np.random.default_rng(seed)
    if hasattr(dataset, "caption_at"):
        picks = rng.choice(len(dataset), size=min(len(dataset), 8 * n), replace=False)
        captions = (dataset.caption_at(int(i)) for i in picks)
    else:
        records = dataset.source.iter_records(dataset.source.shards)
        pool = [r.caption for r in islice((r for r in records if isinstance(r, Record)), STREAM_POOL)]
        captions = (pool[int(i)] for i in rng.permutation(len(pool)))
    chosen: list[str] = []
    for caption in captions:
        text = choose_caption(caption, rng).strip()
        if text and text not in chosen:
            chosen.append(text)
        if len(chosen) == n:
            break
    return chosen + [""]


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
