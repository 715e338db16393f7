"""Held-out denoising loss: a model's training objective, unweighted, on fixed scenes it never trained on.

The ShapesWorld score passes or fails whole pictures, so early in training (and between recipes of similar
quality) it sits at a few percent, inside the noise of its ~100 images. The quantity the training loop lowers is
smoother: the objective's error on held-out data, measured the same way for every model, is the validation loss
that diffusion papers compare recipes with (e.g. Esser et al. 2024, "Scaling Rectified Flow Transformers", sec.
5.1, where it tracks their image scores).

What makes two models' numbers comparable here:
- the same scenes (a ShapesWorld stream named like `train_data`, rendered at the model's training resolution),
  their latents the VAE posterior *mean* times `scaling_factor` (no sampling noise);
- the same noise: `draws` passes over the scenes, draw d perturbing every batch with `torch.Generator` seeded
  `seed + d`, so the timesteps and noise are identical for every model of one process and prediction target;
- every run's own weighting and timestep density replaced by the plain one (uniform timesteps, no shift, no
  min-SNR weight, no offset noise): recipes that differ only in how they *train* are measured in the same units.
  Each process keeps its own target (eps or v for DDPM, the velocity for flow matching, CLD's score), so numbers
  compare across recipes of one process and prediction target only; `space` names it.
Conditioning: each scene's caption through the model's text encoder (no guidance), as the UNet was trained.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from latentdiff.data.procedural import ShapesWorldDataset, ShapesWorldStream
from latentdiff.objective import objective_row

# The plain objective every model is measured with (see the module docstring).
PLAIN = {"timestep_sampling": "uniform", "timestep_shift": 1.0, "snr_gamma": None, "noise_offset": 0.0}


def loss_space(training_config: dict[str, Any]) -> str:
    """What the loss is an error of: "ddpm/epsilon", "ddpm/v_prediction", "flow/velocity" or "cld/score"."""
    process = training_config.get("process", "ddpm")
    return {"ddpm": f"ddpm/{training_config.get('prediction_type', 'epsilon')}", "flow": "flow/velocity",
            "cld": "cld/score"}.get(process, process)


def plain_objective(pipe, training_config: dict[str, Any] | None):
    """(the model's training config, its objective with the plain weighting PLAIN) for a pipeline folder's model."""
    if training_config is None:
        path = Path(pipe.config._name_or_path) / "training_config.json"
        if not path.is_file():
            raise ValueError(f"{path.parent}: no training_config.json, so its process and target are unknown; "
                             "pass training_config=")
        training_config = json.loads(path.read_text())
    options = SimpleNamespace(**{**training_config, **PLAIN})
    process = training_config.get("process", "ddpm")
    return training_config, objective_row(process).build(dict(pipe.scheduler.config), options)


@torch.no_grad()
def embedded_batches(pipe, items: list[tuple[torch.Tensor, str]], batch_size: int):
    """[(z0 (B, C, h, w), text (B, 77, D))]: each (image (3, H, W), caption) pair's posterior-mean latent times
    `scaling_factor` and its caption as the pipeline embeds prompts (no guidance), in batches of `batch_size`."""
    vae, device = pipe.vae, pipe.unet.device
    texts = caption_batches(pipe, [caption for _, caption in items], batch_size)
    batches = []
    for start, text in zip(range(0, len(items), batch_size), texts):
        x = torch.stack([image for image, _ in items[start:start + batch_size]]).to(device, vae.dtype)  # (B, 3, H, W)
        z0 = vae.encode(x).latent_dist.mean.float() * vae.config.scaling_factor  # (B, C, h, w)
        batches.append((z0, text))  # (B, 77, D)
    return batches


@torch.no_grad()
def caption_batches(pipe, captions: list[str], batch_size: int) -> list[torch.Tensor]:
    """[text (B, 77, D)]: the captions as the pipeline embeds prompts (no guidance), in batches of `batch_size`
    (those of `embedded_batches`, so that other captions of the same images can reuse its latents)."""
    device = pipe.unet.device
    return [pipe.encode_prompt(captions[start:start + batch_size], device, do_classifier_free_guidance=False)[0]
            for start in range(0, len(captions), batch_size)]


@torch.no_grad()
def per_sample_losses(unet, objective, batches, *, draws: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(losses, timesteps), each (draws, N): the objective's unreduced loss of every item of `batches` under draw
    d's noise (`torch.Generator` seeded `seed + d`, drawn on the CPU), and the UNet timestep it was drawn at. Two
    calls with batches of the same shapes draw the same timesteps and noise."""
    device = unet.device
    losses, timesteps = [], []
    for d in range(draws):
        generator = torch.Generator(device="cpu").manual_seed(seed + d)
        row_l, row_t = [], []
        for z0, text in batches:
            noised = objective.perturb(z0.cpu(), generator)  # drawn on the CPU: the same numbers on any device
            for name, value in vars(noised).items():
                if isinstance(value, torch.Tensor):
                    setattr(noised, name, value.to(device))
            pred = unet(noised.noisy.to(unet.dtype), noised.timesteps, text.to(unet.dtype)).sample
            row_l.append(objective.loss(pred, noised).float().cpu())  # (B,)
            row_t.append(noised.timesteps.float().cpu())  # (B,)
        losses.append(torch.cat(row_l))
        timesteps.append(torch.cat(row_t))
    return torch.stack(losses), torch.stack(timesteps)  # (draws, N) each


def denoising_loss(pipe, source: str, *, training_config: dict[str, Any] | None = None, draws: int = 4,
                   seed: int = 0, batch_size: int = 64) -> dict[str, Any]:
    """{"loss": mean unweighted objective over `draws` x the scenes of `source`, "space": loss_space, ...}.

    `pipe`: a LatentDiffusionPipeline trained by train_text_to_image; its folder's training_config.json (or
    `training_config`) says which process and target it learnt. `source`: a ShapesWorld stream, e.g.
    "shapesworld:heldout?seed=1&n=256&fresh=false" (the held-out split's combinations) or
    "shapesworld:train?seed=1&n=256&fresh=false" (new scenes of the training split)."""
    if draws < 1 or batch_size < 1:
        raise ValueError(f"denoising_loss: draws and batch_size must be >= 1, got {draws} and {batch_size}")
    training_config, objective = plain_objective(pipe, training_config)
    data = ShapesWorldDataset(ShapesWorldStream.parse(source), int(training_config["resolution"]))

    # 1. The scenes' latents and caption embeddings, once
    items = [(it["pixel_values"], it["caption"]) for it in (data[i] for i in range(len(data)))]
    batches = embedded_batches(pipe, items, batch_size)

    # 2. The objective on each, with the same noise for every model
    losses, _ = per_sample_losses(pipe.unet, objective, batches, draws=draws, seed=seed)  # (draws, N)
    return {"loss": losses.double().mean().item(), "space": loss_space(training_config), "source": source,
            "draws": draws, "seed": seed, "images": len(data)}
