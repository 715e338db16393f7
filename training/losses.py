"""The denoising loss of latent diffusion, per sample (the loop reduces and logs).

Forward process (Ho et al. 2020, eq. 4): z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps, through the noise
scheduler's `add_noise`. Targets: eps, or v = sqrt(abar_t) eps - sqrt(1 - abar_t) z_0 (Salimans & Ho 2022,
"Progressive Distillation", sec. 4). Weighting: min-SNR-gamma (Hang et al. 2023, eq. 9) through diffusers'
`compute_snr`. Noise offset: Guttenberg 2023, "Diffusion with Offset Noise".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr


@dataclass
class NoisedBatch:
    noisy: torch.Tensor  # z_t (B, C, h, w)
    timesteps: torch.Tensor  # t (B,), integer steps in [0, num_train_timesteps)
    target: torch.Tensor  # eps or v (B, C, h, w)


def add_noise(scheduler: DDPMScheduler, latents: torch.Tensor, noise_offset: float = 0.0,
              generator: torch.Generator | None = None) -> NoisedBatch:
    """Draw t and eps, noise the latents, and give the target the scheduler's prediction_type asks for."""
    b = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if noise_offset:
        # (B, C, 1, 1): a per-channel constant shift lets the model learn to change overall brightness
        offset = torch.randn((b, latents.shape[1], 1, 1), generator=generator, device=latents.device)
        noise = noise + noise_offset * offset.to(latents.dtype)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator,
                              device=latents.device).long()
    noisy = scheduler.add_noise(latents, noise, timesteps)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {kind!r}.")
    return NoisedBatch(noisy=noisy, timesteps=timesteps, target=target)


def diffusion_loss(model_pred: torch.Tensor, batch: NoisedBatch, scheduler: DDPMScheduler,
                   snr_gamma: float | None = None) -> torch.Tensor:
    """Per-sample loss (B,): mean squared error over (C, h, w), optionally min-SNR-gamma weighted."""
    mse = (model_pred.float() - batch.target.float()).pow(2).mean(dim=(1, 2, 3))  # (B,)
    if snr_gamma is None:
        return mse
    snr = compute_snr(scheduler, batch.timesteps)  # (B,)
    weight = torch.clamp(snr, max=snr_gamma)
    # min(SNR, gamma) / SNR for eps-prediction; / (SNR + 1) for v-prediction (Hang et al. 2023, sec. 3.4)
    weight = weight / (snr + 1) if scheduler.config.prediction_type == "v_prediction" else weight / snr
    return mse * weight
