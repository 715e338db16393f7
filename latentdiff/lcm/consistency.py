"""The mathematics of latent consistency distillation (LCD), one small function per concept.

Latent consistency models (Luo et al. 2023, "Latent Consistency Models", arXiv:2310.04378) distil a latent
diffusion teacher into a consistency function f_theta(z_t, w, c, t) that maps any point of the teacher's
guided probability-flow ODE trajectory to its origin z_0, so that 1-8 steps of LCMScheduler sample well.
One training step (Luo et al. 2023, Algorithm 1; diffusers' examples/consistency_distillation):

    n ~ U{0..N-1}, t_{n+k} = grid[n], t_n = max(t_{n+k} - k, 0)      skipping-step grid of N points, k = T / N
    z_{t_{n+k}} = sqrt(abar) z_0 + sqrt(1 - abar) eps                  forward process
    w ~ U[w_min, w_max]                                               guidance of the augmented ODE (eq. 9)
    z^Psi_{t_n} = DDIM(z_{t_{n+k}}, teacher with CFG at w)            one solver step, no gradient (eq. 10)
    loss = d(f_theta(z_{t_{n+k}}, w, c, t_{n+k}), f_theta^-(z^Psi_{t_n}, w, c, t_n))     (eq. 11)

f_theta(z, t) = c_skip(t) z + c_out(t) x0_hat(z, t) (eq. 6) satisfies the boundary condition f(z, 0) = z. theta^-
is an EMA of theta for full distillation, or theta itself (without gradient) for LCM-LoRA (Luo et al. 2023b,
arXiv:2311.05556), where the guidance scale is not an input but distilled into the adapter.

What diffusers already has, and is used here: the boundary scalings `LCMScheduler.
get_scalings_for_boundary_condition_discrete` (so training and sampling use one formula and one
`timestep_scaling`), the guidance embedding `StableDiffusionPipeline.get_guidance_scale_embedding`, and the
forward process `add_noise`. What it lacks, and is written here: a DDIM step batched over per-sample timesteps
(`DDIMScheduler.step` takes one scalar timestep), x0 / eps from a model output at per-sample timesteps, and the
per-sample LCM loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import LCMScheduler, StableDiffusionPipeline

from latentdiff.pipelines.conversions import alpha_sigma, append_dims, to_epsilon, to_x0

LOSSES = ("huber", "l2")


def predicted_origin_and_noise(model_output: torch.Tensor, timesteps: torch.Tensor, sample: torch.Tensor,
                               alphas_cumprod: torch.Tensor, prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0_hat, eps_hat), each (B, C, h, w), from a UNet output at per-sample timesteps (B,)."""
    alpha, sigma = alpha_sigma(alphas_cumprod, timesteps, sample)  # (B, 1, 1, 1) each
    return (to_x0(model_output, sample, alpha, sigma, prediction_type),
            to_epsilon(model_output, sample, alpha, sigma, prediction_type))


@dataclass
class DDIMSolver:
    """The ODE solver Psi of LCD: deterministic DDIM (Song et al. 2021, eq. 12 with sigma = 0) on the skipping-step
    grid t = k-1, 2k-1, ..., T-1 (k = T / N), the grid LCMScheduler samples on (its `original_inference_steps` = N).
    """

    timesteps: torch.Tensor  # (N,) long, ascending: the grid t_{n+k} for n = 0..N-1
    alphas_cumprod_prev: torch.Tensor  # (N,) abar at the grid point below each one (abar_0 below the first)
    skip: int  # k, the number of training timesteps between grid points

    @classmethod
    def from_scheduler(cls, scheduler, num_ddim_timesteps: int) -> "DDIMSolver":
        """The grid of `num_ddim_timesteps` points over the noise process of `scheduler` (any diffusers scheduler
        with `alphas_cumprod`)."""
        total = scheduler.config.num_train_timesteps
        if not 1 <= num_ddim_timesteps <= total:
            raise ValueError(f"num_ddim_timesteps (--num-ddim-timesteps) must be in [1, {total}] (the noise process's "
                             f"num_train_timesteps), got {num_ddim_timesteps}.")
        skip = total // num_ddim_timesteps
        grid = torch.arange(1, num_ddim_timesteps + 1) * skip - 1  # (N,)
        abar = scheduler.alphas_cumprod
        prev = torch.cat([abar[:1], abar[grid[:-1]]])  # (N,)
        return cls(timesteps=grid, alphas_cumprod_prev=prev, skip=skip)

    def sample_timesteps(self, batch: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        """(index n, t_{n+k}, t_n), each (B,): a uniform grid point and the one below it (0 below the first)."""
        index = torch.randint(0, len(self.timesteps), (batch,), device=device)  # (B,)
        start = self.timesteps.to(device)[index]
        end = torch.clamp(start - self.skip, min=0)
        return index, start, end

    def step(self, x0: torch.Tensor, eps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """z_{t_n} = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev) eps_hat, each (B, C, h, w); index (B,)."""
        abar_prev = append_dims(self.alphas_cumprod_prev.to(index.device)[index], x0)  # (B, 1, 1, 1)
        return abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps


def boundary_scalings(lcm_scheduler: LCMScheduler, timesteps: torch.Tensor, like: torch.Tensor):
    """(c_skip, c_out), each (B, 1, 1, 1), at per-sample timesteps (B,): LCMScheduler's own formula (eq. 6 with
    sigma_data = 0.5 and t scaled by `timestep_scaling`), c_skip(0) = 1, c_out(0) = 0."""
    c_skip, c_out = lcm_scheduler.get_scalings_for_boundary_condition_discrete(timesteps.double())
    return append_dims(c_skip, like), append_dims(c_out, like)


def guidance_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) guidance w -> (B, dim) sinusoidal embedding, the UNet's `timestep_cond` (diffusers' function; it uses
    no pipeline state, so it is called unbound). Pipelines embed guidance_scale - 1, so w here is the sampler's
    guidance_scale - 1, and the teacher target below is guided with scale 1 + w."""
    return StableDiffusionPipeline.get_guidance_scale_embedding(None, w.float().cpu(), embedding_dim=dim).to(w.device)


def sample_guidance(batch: int, w_min: float, w_max: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """w ~ U[w_min, w_max], (B,)."""
    return w_min + (w_max - w_min) * torch.rand(batch, device=device)


def consistency_function(unet, sample: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor,
                         w_embedding: torch.Tensor | None, lcm_scheduler: LCMScheduler,
                         alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """f(z_t, w, c, t) = c_skip(t) z_t + c_out(t) x0_hat(z_t, t), (B, C, h, w) (Luo et al. 2023, eq. 6 and 8)."""
    output = unet(sample, timesteps, encoder_hidden_states=text, timestep_cond=w_embedding).sample  # (B, C, h, w)
    x0, _ = predicted_origin_and_noise(output, timesteps, sample, alphas_cumprod, lcm_scheduler.config.prediction_type)
    c_skip, c_out = boundary_scalings(lcm_scheduler, timesteps, sample)
    return c_skip * sample + c_out * x0


@torch.no_grad()
def teacher_ddim_step(teacher, sample: torch.Tensor, timesteps: torch.Tensor, index: torch.Tensor, text: torch.Tensor,
                      uncond: torch.Tensor, w: torch.Tensor, solver: DDIMSolver, alphas_cumprod: torch.Tensor,
                      prediction_type: str) -> torch.Tensor:
    """z^Psi_{t_n} (B, C, h, w): one DDIM step of the teacher from z_{t_{n+k}} with classifier-free guidance
    x_hat = x_c + w (x_c - x_u) (Luo et al. 2023, eq. 10; Ho & Salimans 2022), applied to x0 and eps alike."""
    both = teacher(torch.cat([sample, sample]), torch.cat([timesteps, timesteps]),
                   encoder_hidden_states=torch.cat([text, uncond])).sample  # (2B, C, h, w)
    x0, eps = predicted_origin_and_noise(both, torch.cat([timesteps, timesteps]), torch.cat([sample, sample]),
                                         alphas_cumprod, prediction_type)
    (x0_c, x0_u), (eps_c, eps_u) = x0.chunk(2), eps.chunk(2)  # (B, C, h, w) each
    w = append_dims(w, sample)
    return solver.step(x0_c + w * (x0_c - x0_u), eps_c + w * (eps_c - eps_u), index)


def consistency_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "huber", huber_c: float = 1e-3) -> torch.Tensor:
    """Per-sample distance d (B,): pseudo-Huber sqrt(|x - y|^2 + c^2) - c (Song & Dhariwal 2023, "Improved
    Techniques for Training Consistency Models", sec. 3.3; elementwise, as diffusers' LCM scripts) or squared error,
    averaged over (C, h, w)."""
    diff = pred.float() - target.float()  # (B, C, h, w)
    if kind == "l2":
        return diff.pow(2).mean(dim=tuple(range(1, diff.ndim)))
    if kind == "huber":
        return (torch.sqrt(diff.pow(2) + huber_c**2) - huber_c).mean(dim=tuple(range(1, diff.ndim)))
    raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}.")
