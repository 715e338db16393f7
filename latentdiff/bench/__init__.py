"""Speed and quality benchmarks against the stock diffusers path or a baseline recipe, with their reports.

    generate       seconds per image: LatentDiffusionPipeline vs stock StableDiffusionPipeline (generate.py)
    train          training images/s: cached encoders vs per-step encoding (train.py)
    samplers       latent RMSE, score and s/image of samplers vs NFE (samplers.py)
    time-to-image  the fastest configuration with a correct image vs stock's default (time_to_image.py)
    speedrun       training recipes raced for a budget of training minutes: score vs minutes (speedrun.py)
    fine-tune      whether fine-tunes moved toward their training images: distance and retrieval (fine_tune.py)

`BENCHES` is the one list `latentdiff bench` registers its subcommands from: each module has `add_arguments(parser)`
and `run(args) -> int`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Bench:
    name: str  # the subcommand
    help: str  # one line for `latentdiff bench --help`
    description: str  # the subcommand's own --help text


BENCHES: list[Bench] = [
    Bench("generate", "seconds per image: LatentDiffusionPipeline vs StableDiffusionPipeline",
          "Time LatentDiffusionPipeline against stock diffusers StableDiffusionPipeline on the same weights and "
          "scheduler, in one run, and print the ratio."),
    Bench("train", "training images/s: cached encoders vs per-step encoding",
          "Images/s of train_text_to_image with its latent and text-embedding caches against the per-step work of "
          "diffusers' examples/text_to_image/train_text_to_image.py (VAE and text encode every step): same model, "
          "batch and data, in one run."),
    Bench("samplers", "latent RMSE, ShapesWorld score and s/image of samplers vs NFE",
          "For every named sampler x NFE (UNet evaluations per image): latent RMSE against a reference solution "
          "from the same noise and prompt, ShapesWorld score and seconds per image. Writes samplers.csv, .json and "
          ".png to --out."),
    Bench("time-to-image", "fastest configuration with a correct image vs stock's default",
          "Score and time samplers x steps (and a distilled student) against stock diffusers' default "
          "configuration (the folder's scheduler, 50 steps) in one run; report the fastest configuration within "
          "--tolerance of the best score and its speedup. Writes time_to_image.json and .png to --out."),
    Bench("speedrun", "training recipes raced for a budget of training minutes: score vs minutes",
          "Train each recipe from scratch in budget slices, score it on a fixed category-balanced prompt subset "
          "after every slice, and write score vs training minutes for all recipes to speedrun.json and "
          "speedrun.png in --out. Points already measured there are kept, so a stopped speedrun goes on."),
    Bench("fine-tune", "whether fine-tunes moved toward their training images, against the base model",
          "Draw a seeded subset of the training captions (those that name one image) with the base model and each "
          "tuned model (pipeline folders, or LoRA folders loaded onto --base), same seeds, and measure the pixel "
          "RMSE of each generation to its own training image and how often that image is the nearest (top-1, "
          "top-5). Prints a table with ratios to the base; writes fine_tune.json and fine_tune.png (training "
          "image, base, tuned per caption) to --out."),
]


def module_of(bench: Bench) -> ModuleType:
    """The module that implements `bench`, this package's module of the same name (`time-to-image`:
    time_to_image.py), imported on use and alone, so `latentdiff --help` and `latentdiff bench X` stay light."""
    return importlib.import_module(f"{__name__}.{bench.name.replace('-', '_')}")
