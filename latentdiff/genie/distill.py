"""Distilling GENIE's head (Dockhorn et al. 2022, sec. 3.2): the pieces `training/distill_genie.py` loops over.

One example: a training latent x_0, noised to x_t = α_t x_0 + σ_t n at a timestep t (as the paper's code does,
runners/train_genie_base.py: the probability-flow ODE keeps the forward marginals, so q(x_t) is where the sampler
goes; it does not integrate teacher ODE trajectories), a caption and its guidance weight w. The teacher (frozen
UNet) gives ε_u, ε_c on [uncond; cond], its last features and time embedding; the direction of the guided ODE is
v = ε_u + w (ε_c − ε_u); the target is each branch's d_γ ε along v (`derivative.ode_derivative`), and the head
learns both branches from their own features, with v as its ε input. w = 1 is the unguided ODE (v = ε_c).

Timesteps: "grid" (default) draws t from the GENIE sampler's own timesteps for the step counts it will run
(e.g. 4 ... 10, in every timestep spacing), where the head is used; "uniform" from all trained timesteps.
Loss: the paper's code's γ_t²-weighted squared error, per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latentdiff.genie.derivative import GammaSchedule, ode_derivative
from latentdiff.pipelines.conversions import append_dims, to_epsilon
from latentdiff.pipelines.scheduling_genie import GENIEScheduler, capture_genie_inputs

TIMESTEP_SAMPLING = ("grid", "uniform")


@dataclass
class GenieExample:
    """A batch of 2B head inputs and targets: the uncond half first, then the cond half."""

    features: torch.Tensor  # the UNet's last decoder features (2B, C0, h, w)
    sample: torch.Tensor  # x_t (2B, C, h, w)
    direction: torch.Tensor  # v = ε_u + w (ε_c − ε_u), the head's ε input (2B, C, h, w)
    temb: torch.Tensor  # the UNet's time embedding (2B, D)
    gamma: torch.Tensor  # γ_t (2B,)
    target: torch.Tensor  # the teacher's d_γ ε along v (2B, C, h, w)


def grid_timesteps(scheduler_config: dict, steps: list[int] | tuple[int, ...],
                   spacings: list[str] | tuple[str, ...] = ("leading", "trailing", "linspace")) -> torch.Tensor:
    """All timesteps at which the GENIE sampler evaluates the head for these step counts and timestep spacings
    (diffusers' "leading", "trailing", "linspace"; with repeats), (N,)."""
    found = []
    for spacing in spacings:
        for n in steps:
            scheduler = GENIEScheduler.from_config(scheduler_config, timestep_spacing=spacing)
            scheduler.set_timesteps(int(n))
            found.append(scheduler.timesteps)
    return torch.cat(found).long()


def sample_timesteps(n: int, mode: str, num_train_timesteps: int, grid: torch.Tensor | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """(n,) integer timesteps: from `grid` ("grid") or uniformly from [0, num_train_timesteps) ("uniform")."""
    if mode == "uniform":
        return torch.randint(0, num_train_timesteps, (n,), generator=generator)
    if mode == "grid":
        return grid[torch.randint(0, len(grid), (n,), generator=generator)]
    raise ValueError(f"timestep sampling must be one of {TIMESTEP_SAMPLING}, got {mode!r}.")


@torch.no_grad()
def teacher_example(unet, schedule: GammaSchedule, latents: torch.Tensor, timesteps: torch.Tensor,
                    text: torch.Tensor, uncond_text: torch.Tensor, guidance: torch.Tensor, *,
                    prediction_type: str = "epsilon", t_derivative: str = "secant", t_window: int = 100,
                    generator: torch.Generator | None = None) -> GenieExample:
    """Noise the latents, run the frozen teacher and compute the targets (see the module doc).

    latents: x_0 (B, C, h, w); timesteps (B,); text, uncond_text: (B, L, D); guidance: w (B,).
    """
    gamma = schedule.gamma(timesteps.cpu()).to(latents.device)  # (B,) float64
    alpha = (1 + gamma**2).rsqrt()

    def col(v: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, 1, 1, 1) in the latents' dtype
        return append_dims(v, latents)

    noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(latents.device)
    x_t = col(alpha) * latents + col(gamma * alpha) * noise  # x_t = α x0 + σ n  (B, C, h, w)

    x2, t2 = torch.cat([x_t, x_t]), torch.cat([timesteps, timesteps]).to(latents.device)  # [uncond; cond]
    text2 = torch.cat([uncond_text, text])  # (2B, L, D)
    with capture_genie_inputs(unet) as captured:
        out = unet(x2, t2, text2, return_dict=False)[0]  # (2B, C, h, w)
    a2, g2 = torch.cat([alpha, alpha]), torch.cat([gamma, gamma])
    eps_uncond, eps_text = to_epsilon(out, x2, col(a2), col(g2 * a2), prediction_type).chunk(2)
    v = eps_uncond + col(guidance) * (eps_text - eps_uncond)  # direction of the guided ODE (B, C, h, w)
    v2 = torch.cat([v, v])
    target = ode_derivative(unet, schedule, x2, t2, text2, v2, prediction_type=prediction_type,
                            t_derivative=t_derivative, t_window=t_window)  # (2B, C, h, w)
    return GenieExample(features=captured["features"], sample=x2, direction=v2, temb=captured["temb"],
                        gamma=g2.to(latents.dtype), target=target)


def genie_loss(prediction: torch.Tensor, example: GenieExample) -> torch.Tensor:
    """Per-sample loss (2B,): γ_t² |k_ψ − d_γ ε|², averaged over (C, h, w) (the paper's code weights by γ_t²)."""
    err = (prediction.float() - example.target.float()).pow(2).mean(dim=(1, 2, 3))
    return example.gamma.float() ** 2 * err


def relative_error(prediction: torch.Tensor, example: GenieExample) -> float:
    """|k_ψ − d_γ ε| / |d_γ ε| over the batch: 1 for the untrained (zero) head, 0 for a perfect one."""
    target = example.target.float()
    return float((prediction.detach().float() - target).norm() / target.norm().clamp_min(1e-12))
