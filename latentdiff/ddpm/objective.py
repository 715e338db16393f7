"""The denoising objective of DDPM / VP latent diffusion, per sample.

Forward process (Ho et al. 2020, eq. 4): z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps, through the noise
scheduler's `add_noise`. Targets: eps, or v = sqrt(abar_t) eps - sqrt(1 - abar_t) z_0 (Salimans & Ho 2022,
"Progressive Distillation", sec. 4); with zero-terminal-SNR betas (Lin et al. 2024, "Common Diffusion Noise
Schedules and Sample Steps are Flawed", sec. 3.1; the scheduler's `rescale_betas_zero_snr`) the last step is pure
noise and v is the target that stays finite there. Weighting: min-SNR-gamma (Hang et al. 2023, eq. 9) through
diffusers' `compute_snr`. Noise offset: Guttenberg 2023, "Diffusion with Offset Noise". Timesteps: uniform over
the 1000 training steps, another density of `latentdiff.objective.timestep_density` mapped onto them, or SpeeD's
asymmetric sampling (latentdiff/ddpm/speed.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

from latentdiff.ddpm.speed import speed_split, speed_timesteps
from latentdiff.objective import TIMESTEP_DENSITIES, Noised, ObjectiveRow, timestep_density

PREDICTION_TYPES = ("epsilon", "v_prediction")
TIMESTEP_SAMPLINGS = (*TIMESTEP_DENSITIES, "speed")


@dataclass
class DDPMNoised(Noised):
    target: torch.Tensor  # eps or v (B, C, h, w)


@dataclass(frozen=True)
class DDPMObjective:
    scheduler: DDPMScheduler  # the trained process (betas, prediction_type)
    snr_gamma: float | None = 5.0  # min-SNR-gamma weighting; None: plain MSE
    noise_offset: float = 0.0  # offset-noise strength
    timestep_sampling: str = "uniform"  # "uniform", "logit_normal" or "speed" over the training timesteps
    timestep_shift: float = 1.0  # shift of the timestep density towards noise (objective.timestep_density)

    def __post_init__(self):
        kind = self.scheduler.config.prediction_type
        if kind not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {kind!r}.")
        if self.timestep_sampling not in TIMESTEP_SAMPLINGS:
            raise ValueError(f"--timestep-sampling must be one of {', '.join(TIMESTEP_SAMPLINGS)}, got "
                             f"{self.timestep_sampling!r}.")
        if self.timestep_sampling == "speed":
            if self.timestep_shift != 1.0:
                raise ValueError("--timestep-shift does not apply to --timestep-sampling speed; leave it at 1.")
            object.__setattr__(self, "_speed", speed_split(self.scheduler.alphas_cumprod))  # (p (T,), tau)

    def perturb(self, z0: torch.Tensor, generator: torch.Generator | None = None) -> DDPMNoised:
        """Draw t and eps, noise the latents (B, C, h, w), and give the target the prediction_type asks for."""
        b, T = z0.shape[0], self.scheduler.config.num_train_timesteps
        noise = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
        if self.noise_offset:
            # (B, C, 1, 1): a per-channel constant shift lets the model learn to change overall brightness
            offset = torch.randn((b, z0.shape[1], 1, 1), generator=generator, device=z0.device)
            noise = noise + self.noise_offset * offset.to(z0.dtype)
        if self.timestep_sampling == "speed":
            timesteps = speed_timesteps(*self._speed, b, generator, z0.device)  # (B,)
        elif self.timestep_sampling == "uniform" and self.timestep_shift == 1.0:
            timesteps = torch.randint(0, T, (b,), generator=generator, device=z0.device).long()
        else:
            u = timestep_density(self.timestep_sampling, b, generator, z0.device, shift=self.timestep_shift)  # (B,)
            timesteps = (u * T).long().clamp_(0, T - 1)
        noisy = self.scheduler.add_noise(z0, noise, timesteps)  # (B, C, h, w)
        if self.scheduler.config.prediction_type == "epsilon":
            target = noise
        else:
            target = self.scheduler.get_velocity(z0, noise, timesteps)
        return DDPMNoised(noisy=noisy, timesteps=timesteps, target=target)

    def loss(self, prediction: torch.Tensor, noised: DDPMNoised) -> torch.Tensor:
        """Per-sample loss (B,): mean squared error over (C, h, w), optionally min-SNR-gamma weighted."""
        mse = (prediction.float() - noised.target.float()).pow(2).mean(dim=(1, 2, 3))  # (B,)
        if self.snr_gamma is None:
            return mse
        snr = compute_snr(self.scheduler, noised.timesteps)  # (B,)
        weight = torch.clamp(snr, max=self.snr_gamma)
        # min(SNR, gamma) / SNR for eps-prediction; / (SNR + 1) for v-prediction (Hang et al. 2023, sec. 3.4).
        # With zero-terminal SNR the last step has SNR 0: its v weight is 0 / 1, finite.
        if self.scheduler.config.prediction_type == "v_prediction":
            return mse * weight / (snr + 1)
        return mse * weight / snr


def scheduler_config(options: Any, base: dict, pretrained: bool = False) -> dict:
    """The base VP process (the preset's, or the fine-tuned folder's) with the run's prediction type (and
    zero-terminal-SNR betas when asked for)."""
    config = {**base, "prediction_type": options.prediction_type}
    if getattr(options, "zero_terminal_snr", False):
        config.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")  # Lin et al. 2024, sec. 3.3
    return config


def build(config: dict, options: Any) -> DDPMObjective:
    scheduler = DDPMScheduler.from_config(config, prediction_type=options.prediction_type)
    return DDPMObjective(scheduler, options.snr_gamma, options.noise_offset, options.timestep_sampling,
                         options.timestep_shift)


def check(options: Any) -> None:
    if options.prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"--prediction-type must be epsilon or v_prediction, got {options.prediction_type!r}.")
    if getattr(options, "zero_terminal_snr", False) and options.prediction_type != "v_prediction":
        raise ValueError("--zero-terminal-snr needs --prediction-type v_prediction: at zero SNR the last step's eps "
                         "target carries no information about the data (Lin et al. 2024, sec. 3.2).")


DDPM_OBJECTIVE = ObjectiveRow(scheduler_config=scheduler_config, build=build, check=check,
                              timestep_samplings=TIMESTEP_SAMPLINGS)
