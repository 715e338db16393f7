"""The training step of critically-damped Langevin diffusion (CLD; Dockhorn, Vahdat, Kreis, ICLR 2022), per sample.

Hybrid score matching (HSM, sec. 3.2), for data x0 = the VAE latents (already times scaling_factor):
    t ~ U[eps, 1],   u_t = (x_t, v_t) ~ p(u_t | x0)   (v0 ~ N(0, gamma M I) marginalised; `CLD.perturb`),
the UNet sees u_t concatenated on channels, (B, 2C, h, w), the continuous time through `unet_timestep` (the one
mapping the pipeline uses too) and the text embeddings; its output (B, C, h, w) is the eps_v prediction, or with
the mixed score (sec. 3.2) the residual that `CLD.mixed_eps_v` turns into it; the loss is `CLD.hsm_loss` with the
weighting lambda(t) ("eps": ell_t^{-2}, what the paper trains with; "ml": maximum likelihood).

`CLDObjective.perturb` and `.loss` are the CLD counterparts of `losses.add_noise` and `losses.diffusion_loss`, so
the training loop calls one or the other pair. The model setup for `--process cld` is here too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from latentdiff.cld import CLD, unet_timestep
from latentdiff.presets import Preset


@dataclass
class CLDBatch:
    noisy: torch.Tensor  # u_t = (x_t, v_t) concatenated on channels, (B, 2C, h, w): the UNet's input
    timesteps: torch.Tensor  # unet_timestep(t), (B,) float32: the UNet's time input
    t: torch.Tensor  # (B,) float32 continuous times in [eps, 1]
    v_t: torch.Tensor  # (B, C, h, w), what the mixed score needs
    eps_v: torch.Tensor  # (B, C, h, w), the HSM regression target


@dataclass(frozen=True)
class CLDObjective:
    process: CLD  # the forward process (M, gamma, beta schedule, eps)
    weighting: str = "eps"  # HSM weighting lambda(t): "eps" (the paper's) or "ml" (maximum likelihood)
    mixed_score: bool = True  # the UNet predicts the residual to the Gaussian-part score (sec. 3.2)

    def perturb(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> CLDBatch:
        """Draw t ~ U[eps, 1] and u_t ~ p(u_t | x0) for latents x0 (B, C, h, w)."""
        eps = self.process.config.eps
        # float32 times: the UNet sees exactly the t the (float64) kernel is evaluated at, as in the samplers
        t = eps + (1 - eps) * torch.rand(x0.shape[0], generator=generator, device=x0.device)  # (B,)
        u = self.process.perturb(x0, t, generator=generator)
        noisy = torch.cat([u.x_t, u.v_t], dim=1)  # (B, 2C, h, w)
        return CLDBatch(noisy=noisy, timesteps=unet_timestep(t), t=t, v_t=u.v_t, eps_v=u.eps_v)

    def loss(self, model_output: torch.Tensor, batch: CLDBatch) -> torch.Tensor:
        """Per-sample HSM loss (B,) of the UNet's output (B, C, h, w) on `batch`."""
        eps_v_pred = self.process.mixed_eps_v(model_output, batch.v_t, batch.t) if self.mixed_score else model_output
        return self.process.hsm_loss(eps_v_pred, batch.eps_v, batch.t, self.weighting)


def cld_preset(preset: Preset) -> Preset:
    """The preset with a UNet for CLD: it sees u = (x, v), 2 x the latent channels, and predicts eps_v."""
    channels = preset.vae["latent_channels"]
    return dataclasses.replace(preset, unet={**preset.unet, "in_channels": 2 * channels, "out_channels": channels})
