"""The flow-matching objective (rectified flow), per sample.

Conditional flow matching with the straight (optimal-transport) path (Lipman et al. 2023, eq. 20-23; Liu et al.
2023, "Flow Straight and Fast", eq. 1):

    t ~ p(t),   eps ~ N(0, I),   x_t = (1 - t) x0 + t eps,   target v = dx_t/dt = eps - x0,
    loss = || v_theta(x_t, 1000 t, c) - (eps - x0) ||^2            (mean over C, h, w)

p(t): uniform, or the logit-normal density of SD3 (Esser et al. 2024, sec. 3.1, eq. 19: t = sigmoid(n),
n ~ N(m, s)), which puts more samples mid-way where the velocity is hardest to predict. The timestep shift of SD3
(sec. 5.3.2, eq. 23), t' = s t / (1 + (s - 1) t), moves them towards noise; sampling applies the same shift (the
saved scheduler's `shift`). The UNet sees 1000 t, the units of diffusers' flow schedulers' timesteps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from latentdiff.objective import Noised, ObjectiveRow, TIMESTEP_DENSITIES, timestep_density
from latentdiff.pipelines.flow_process import flow_config, normalise


@dataclass
class FlowNoised(Noised):
    target: torch.Tensor  # the velocity eps - x0 (B, C, h, w)


@dataclass(frozen=True)
class FlowObjective:
    num_train_timesteps: int = 1000  # the UNet's timestep input is this times t
    shift: float = 1.0  # SD3's timestep shift s (1: none)
    timestep_sampling: str = "logit_normal"  # "uniform" or "logit_normal"
    logit_mean: float = 0.0  # m of the logit-normal density
    logit_std: float = 1.0  # s of the logit-normal density

    def __post_init__(self):
        if self.timestep_sampling not in TIMESTEP_DENSITIES:
            raise ValueError(f"--timestep-sampling must be one of {', '.join(TIMESTEP_DENSITIES)}, got "
                             f"{self.timestep_sampling!r}.")
        if not self.shift > 0:
            raise ValueError(f"--timestep-shift must be > 0, got {self.shift}.")

    def perturb(self, z0: torch.Tensor, generator: torch.Generator | None = None) -> FlowNoised:
        """Draw eps and t, and the point x_t (B, C, h, w) of the straight path from x0 to eps."""
        eps = torch.randn(z0.shape, generator=generator, device=z0.device, dtype=z0.dtype)
        t = timestep_density(self.timestep_sampling, z0.shape[0], generator, z0.device, shift=self.shift,
                             mean=self.logit_mean, std=self.logit_std)  # (B,) in (0, 1), shifted (SD3 eq. 23)
        t_ = t.to(z0.dtype).view(-1, *([1] * (z0.ndim - 1)))  # (B, 1, 1, 1)
        noisy = (1 - t_) * z0 + t_ * eps
        return FlowNoised(noisy=noisy, timesteps=t * self.num_train_timesteps, target=eps - z0)

    def loss(self, prediction: torch.Tensor, noised: FlowNoised) -> torch.Tensor:
        """Per-sample mean squared velocity error (B,)."""
        return (prediction.float() - noised.target.float()).pow(2).mean(dim=(1, 2, 3))


def scheduler_config(options: Any, base: dict, pretrained: bool = False) -> dict:
    """A fine-tuned folder's own flow config, or for a from-scratch run 1000 timesteps and the run's
    --timestep-shift, which sampling then applies too."""
    return normalise(dict(base)) if pretrained else flow_config(1000, options.timestep_shift)


def build(config: dict, options: Any) -> FlowObjective:
    config = normalise(dict(config))
    return FlowObjective(int(config.get("num_train_timesteps", 1000)), float(config["shift"]),
                         options.timestep_sampling)


def check(options: Any) -> None:
    if options.noise_offset:
        raise ValueError("--noise-offset is offset noise for the DDPM process; leave it at 0 with --process flow.")


FLOW_OBJECTIVE = ObjectiveRow(scheduler_config=scheduler_config, build=build, check=check)
