"""Finding and loading a model: a local folder, a hub repo id, a preset, or the shipped default model."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_MODEL_ENV = "LATENTDIFF_DEFAULT_MODEL"
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def default_model_path() -> Path | None:
    """The trained default model: $LATENTDIFF_DEFAULT_MODEL, else assets/shapes-tiny of this checkout, if present."""
    candidates = [os.environ.get(DEFAULT_MODEL_ENV), Path(__file__).resolve().parents[1] / "assets" / "shapes-tiny"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "model_index.json").is_file():
            return Path(candidate)
    return None


@dataclass
class LoadedModel:
    pipe: "LatentDiffusionPipeline"  # noqa: F821 (imported lazily)
    source: str  # what was loaded: a folder, a repo id, or "preset:NAME (random weights)"
    random_weights: bool  # True when no trained model was found and a random-weight preset stands in


def resolve_device(device: str | None) -> torch.device:
    """The torch.device for a --device value (auto: CUDA when there is one); a ValueError when this machine or
    PyTorch build cannot use it."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"Unknown device {device!r}: use cpu, cuda, cuda:N or auto.") from err
    if resolved.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise ValueError("CUDA is not available in this PyTorch build; use --device cpu.")
        if not torch.cuda.is_available():
            raise ValueError("CUDA is not available: this PyTorch build finds no GPU (check the driver and "
                             "CUDA_VISIBLE_DEVICES); use --device cpu.")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"There is no {resolved}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                             "use cuda:0 .. cuda:N-1 or auto.")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("MPS (Apple GPU) is not available on this machine; use --device cpu.")
    return resolved


def load_model(model: str | None = None, device: str | None = None, dtype: torch.dtype | None = None,
               fallback_preset: str = "small", genie_head: str | None = None) -> LoadedModel:
    """Load `model` (folder, repo id or `preset:NAME`); with None, the default model or a random preset.
    `genie_head`: a GENIE head folder (or repo id) to attach as the pipeline's `genie_head`, for the "taylor2"
    sampler (`training/distill_genie.py` writes one as OUTPUT_DIR/genie_head).

    Raises ValueError with a message saying what to change when `model` is neither a pipeline folder nor a
    repo id.
    """
    from latentdiff.presets import PRESETS, build_pipeline

    target = resolve_device(device)  # before loading: a device this machine lacks costs no loading time
    random_weights = False
    if model is None:
        path = default_model_path()
        if path is None:
            model, random_weights = f"preset:{fallback_preset}", True
        else:
            model = str(path)

    if model.startswith("preset:"):
        name = model.split(":", 1)[1]
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r} in --model; choose one of: {', '.join(PRESETS)}.")
        pipe, source, random_weights = build_pipeline(name), f"{model} (random weights)", True
    elif Path(model).is_dir():
        if not (Path(model) / "model_index.json").is_file():
            raise ValueError(f"{model} is a folder but not a pipeline folder (it has no model_index.json).")
        pipe, source = load_pipeline(model), model
    elif REPO_ID.match(model) and not Path(model).exists():
        pipe, source = load_pipeline(model), model
    else:
        raise ValueError(
            f"Model {model!r} not found: pass a pipeline folder (with model_index.json), a hub repo id such as "
            "user/name, or preset:NAME."
        )
    if genie_head is not None:
        pipe, source = attach_genie_head(pipe, genie_head), f"{source} + GENIE head {genie_head}"
    pipe = pipe.to(target) if dtype is None else pipe.to(target, dtype)
    return LoadedModel(pipe=pipe, source=source, random_weights=random_weights)


def load_pipeline(model: str | Path, **kwargs) -> "LatentDiffusionPipeline":  # noqa: F821 (imported lazily)
    """`LatentDiffusionPipeline.from_pretrained(model, **kwargs)` with one progress bar for the load: diffusers'
    "Loading pipeline components", without the "Loading weights" bar transformers adds for each model it loads
    inside it (the text encoder). Download bars are huggingface_hub's own and stay."""
    from transformers.utils import logging as transformers_logging

    from latentdiff.pipelines import LatentDiffusionPipeline

    previous = transformers_logging.set_tqdm_hook(lambda tqdm, args, kw: tqdm(*args, **{**kw, "disable": True}))
    try:
        return LatentDiffusionPipeline.from_pretrained(model, **kwargs)
    finally:
        transformers_logging.set_tqdm_hook(previous)


def attach_genie_head(pipe, head: str) -> "LatentDiffusionPipeline":  # noqa: F821 (imported lazily)
    """`pipe` with the GENIE head of folder or repo id `head` registered as its `genie_head` component (saved with
    the pipeline by `save_pretrained`). Raises ValueError when the head does not fit the pipeline's UNet."""
    from latentdiff.pipelines.genie_head import GENIEHead

    if not Path(head).is_dir() and not (REPO_ID.match(head) and not Path(head).exists()):
        raise ValueError(f"GENIE head {head!r} not found: pass the folder distill_genie wrote (OUTPUT_DIR/genie_head) "
                         "or a hub repo id.")
    loaded = GENIEHead.from_pretrained(head)
    expected = GENIEHead.for_unet(pipe.unet).config
    keys = ("in_channels", "feature_channels", "temb_channels")
    if any(loaded.config[k] != expected[k] for k in keys):
        made_for = ", ".join(f"{k}={loaded.config[k]}" for k in keys)
        needed = ", ".join(f"{k}={expected[k]}" for k in keys)
        raise ValueError(f"GENIE head {head} was made for a UNet with {made_for}, but this pipeline's UNet needs "
                         f"{needed}: distil a head for this model with latentdiff.training.distill_genie.")
    pipe.register_modules(genie_head=loaded.to(pipe.unet.device, pipe.unet.dtype))
    return pipe


def model_flags(args) -> list[str]:
    """The --model and --genie-head flags of parsed `args` as given, for the command line a result records."""
    return ([f"--model={args.model}"] if args.model else []) + (
        [f"--genie-head={args.genie_head}"] if getattr(args, "genie_head", None) else [])
