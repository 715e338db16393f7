"""Seeded generation: which seed each image gets, and the one generator policy every caller shares.

`latentdiff generate`, `latentdiff eval`, the benches, hub card samples and training's sample grids all draw image
noise through `generators(seeds)`: one CPU `torch.Generator` per image. Noise drawn on the CPU and then moved is
the same on every device, so a seed gives the same image on a laptop, a GPU or CI (diffusers' `randn_tensor`
draws on a generator's own device and moves the result).

Seeds: image j of prompt i of a prompt set gets `seed + i * k + j` (k images per prompt), so any image can be made
again alone; `plan_batches` cuts a prompt set into pipeline calls of at most `batch_size` images with those seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch


def generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image, seeded."""
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


@dataclass
class SeededBatch:
    prompts: list[Any]  # the prompts of one pipeline call (strings, or (prompt, spec) pairs)
    seeds: list[int]  # one per image: prompts x images_per_prompt, image j of prompt i after i


def plan_batches(prompts: Sequence[Any], k: int, batch_size: int, seed: int) -> list[SeededBatch]:
    """Pipeline calls of up to `batch_size` images (at least one prompt each), k images per prompt."""
    per_call = max(1, batch_size // k)  # prompts per pipeline call
    batches = []
    for first in range(0, len(prompts), per_call):
        chunk = list(prompts[first:first + per_call])
        batches.append(SeededBatch(chunk, [seed + (first + i) * k + j for i in range(len(chunk)) for j in range(k)]))
    return batches


def generate_seeded(pipe, prompts: str | list[str], seeds: Sequence[int], **kwargs):
    """`pipe(prompts, generator=generators(seeds), num_images_per_prompt=len(seeds) / len(prompts), **kwargs)`;
    the pipeline's output object."""
    n = 1 if isinstance(prompts, str) else len(prompts)
    if len(seeds) % n:
        raise ValueError(f"{len(seeds)} seeds for {n} prompts: give the same number of images to every prompt")
    return pipe(prompts, num_images_per_prompt=len(seeds) // n, generator=generators(seeds), **kwargs)
