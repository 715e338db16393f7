"""The training objective of critically-damped Langevin diffusion (CLD; Dockhorn, Vahdat, Kreis, ICLR 2022), per sample.

Hybrid score matching (HSM, sec. 3.2), for data x0 = the VAE latents (already times scaling_factor):
    t ~ U[eps, 1],   u_t = (x_t, v_t) ~ p(u_t | x0)   (v0 ~ N(0, gamma M I) marginalised; `CLD.perturb`),
the UNet sees u_t concatenated on channels, (B, 2C, h, w), the continuous time through `unet_timestep` (the one
mapping the pipeline uses too) and the text embeddings; its output (B, C, h, w) is the eps_v prediction, or with
the mixed score (sec. 3.2) the residual that `CLD.mixed_eps_v` turns into it; the loss is `CLD.hsm_loss` with the
weighting lambda(t) ("eps": ell_t^-2, what the paper trains with; "ml": maximum likelihood).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from latentdiff.objective import Noised, ObjectiveRow
from latentdiff.pipelines.cld_process import CLD, CLDConfig, HSM_WEIGHTINGS
from latentdiff.pipelines.scheduling_cld import CLD_PROCESS_KEYS, unet_timestep


@dataclass
class CLDNoised(Noised):
    t: torch.Tensor  # (B,) float32 continuous times in [eps, 1]
    v_t: torch.Tensor  # (B, C, h, w), what the mixed score needs
    eps_v: torch.Tensor  # (B, C, h, w), the HSM regression target


@dataclass(frozen=True)
class CLDObjective:
    process: CLD  # the forward process (M, gamma, beta schedule, eps)
    weighting: str = "eps"  # HSM weighting lambda(t): "eps" (the paper's) or "ml" (maximum likelihood)
    mixed_score: bool = True  # the UNet predicts the residual to the Gaussian-part score (sec. 3.2)

    def perturb(self, z0: torch.Tensor, generator: torch.Generator | None = None) -> CLDNoised:
        """Draw t ~ U[eps, 1] and u_t ~ p(u_t | x0) for latents x0 (B, C, h, w)."""
        eps = self.process.config.eps
        # float32 times: the UNet sees exactly the t the (float64) kernel is evaluated at, as in the samplers
        t = eps + (1 - eps) * torch.rand(z0.shape[0], generator=generator, device=z0.device)  # (B,)
        u = self.process.perturb(z0, t, generator=generator)
        noisy = torch.cat([u.x_t, u.v_t], dim=1)  # (B, 2C, h, w)
        return CLDNoised(noisy=noisy, timesteps=unet_timestep(t), t=t, v_t=u.v_t, eps_v=u.eps_v)

    def loss(self, prediction: torch.Tensor, noised: CLDNoised) -> torch.Tensor:
        """Per-sample HSM loss (B,) of the UNet's output (B, C, h, w)."""
        eps_v_pred = (self.process.mixed_eps_v(prediction, noised.v_t, noised.t) if self.mixed_score
                      else prediction)
        return self.process.hsm_loss(eps_v_pred, noised.eps_v, noised.t, self.weighting)


def scheduler_config(options: Any, base: dict, pretrained: bool = False) -> dict:
    """The CLD scheduler config of the run: a fine-tuned folder's own (its process and mixed score apply), or for
    a from-scratch run the options' process (validated by CLDConfig) and mixed score."""
    if pretrained:
        return dict(base)
    process = dict(M=options.cld_mass, gamma=options.cld_gamma, beta_schedule=options.cld_beta_schedule)
    CLDConfig(**process)
    return {**process, "mixed_score": options.cld_mixed_score}


def build(config: dict, options: Any) -> CLDObjective:
    process = CLD(CLDConfig(**{k: config[k] for k in CLD_PROCESS_KEYS if k in config and k != "mixed_score"}))
    return CLDObjective(process, options.cld_loss_weighting, bool(config.get("mixed_score", True)))


def check(options: Any) -> None:
    try:
        scheduler_config(options, {}, pretrained=False)
    except ValueError as err:
        raise ValueError(f"--cld-beta-schedule / --cld-mass / --cld-gamma: {err}") from None
    if options.cld_loss_weighting not in HSM_WEIGHTINGS:
        raise ValueError(f"--cld-loss-weighting must be one of {', '.join(HSM_WEIGHTINGS)}, got "
                         f"{options.cld_loss_weighting!r}.")
    if options.noise_offset:
        raise ValueError("--noise-offset is offset noise for the DDPM process; CLD draws its own noise. "
                         "Leave it at 0 with --process cld.")


CLD_OBJECTIVE = ObjectiveRow(scheduler_config=scheduler_config, build=build, check=check)
