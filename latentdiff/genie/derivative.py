"""The teacher's d_γ ε along DDIM's ODE: the target GENIE's head is distilled on (Dockhorn et al. 2022, sec. 3.2).

With x_t = α_t x_0 + σ_t ε (VP: α² + σ² = 1), x̄ = x / α and γ = σ / α, DDIM's ODE is dx̄/dγ = ε_θ(x̄, γ) where

    ε_θ(x̄, γ) := ε_θ(x = α(γ) x̄, t(γ)),      α(γ) = (1 + γ²)^(-1/2),

and GENIE's Taylor step needs its total derivative along a direction v = dx̄/dγ (v = ε_θ on the plain ODE, the
guided ε_w with classifier-free guidance):

    d_γ ε_θ = ∂ε_θ/∂x̄ · v + ∂ε_θ/∂γ.

By the chain rule in the UNet's own inputs (x, t), with dα/dγ = −γ α³:

    dx/dγ = α v + x̄ dα/dγ = α v − γ α² x,        dt/dγ = 1 / (dγ/dt),
    d_γ ε_θ = J_x ε_θ · (α v − γ α² x) + ∂_t ε_θ · dt/dγ.

The x part is always a forward-mode Jacobian-vector product (`torch.func.jvp`) through the UNet. The t part has
two forms (`t_derivative`):

- "jvp": forward-mode AD in t as well. t is continuous, t(γ) a monotone cubic (PCHIP, Fritsch & Carlson 1980,
  through scipy) interpolation of the training table {(log γ_i, i)}: it hits every trained timestep exactly, is
  C¹, and diffusers' UNet takes float timesteps. This is the paper's target (its models are continuous-time).
- "secant" (default): ∂ε_θ/∂γ at fixed x as a central difference on the *trained* timesteps,
  [ε_θ(x, t + k) − ε_θ(x, t − k)] / (γ_{t+k} − γ_{t−k}), k = `t_window` (one-sided at the ends). A UNet trained
  only at integer t (DDPM) is free to do anything between them, and its sinusoidal embedding's fastest
  component turns once per 2π timesteps: the exact ∂_t ε_θ at a trained t is dominated by that sub-step
  wiggle, not by the trend over the hundreds of timesteps one sampler step spans. On assets/shapes-tiny the AD
  time part and the ±10-step secant differ by more than their own size (`pytest tests/test_genie.py -k wiggle
  -s`), and GENIE with the teacher's exact "jvp" derivative is worse than DDIM, while with the "secant" one
  (k = 100, the default: the best of 10, 25, 50, 100 there) it is better at 6 and 8 steps
  (`pytest tests/test_genie.py -m slow -k oracle -s`).

Both take the model output in any of the scheduler's prediction types and differentiate its ε form.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from latentdiff.pipelines.conversions import append_dims, to_epsilon

T_DERIVATIVES = ("secant", "jvp")


class GammaSchedule:
    """γ_t = σ_t / α_t = sqrt((1 − abar_t) / abar_t) on the trained timesteps, and a continuous t(γ) between them.

    alphas_cumprod: abar_t of the trained chain, (T,), e.g. `scheduler.alphas_cumprod`. Everything is float64.
    """

    def __init__(self, alphas_cumprod: torch.Tensor):
        from scipy.interpolate import PchipInterpolator

        abar = alphas_cumprod.detach().to(torch.float64).cpu()
        self.gammas = ((1 - abar) / abar).sqrt()  # (T,) γ_t, increasing in t
        log_gamma = self.gammas.log()
        if not bool((log_gamma.diff() > 0).all()):
            raise ValueError("GammaSchedule needs alphas_cumprod strictly decreasing in t (γ_t increasing), as a "
                             "noise schedule is; this one is not (a zero-terminal-SNR schedule has γ_T = inf).")
        # t as a function of λ = log γ: monotone cubic Hermite pieces t = sum_k c[k, i] (λ − λ_i)^(3 − k)
        pchip = PchipInterpolator(log_gamma.numpy(), np.arange(len(abar), dtype=np.float64))
        self._breaks = torch.from_numpy(pchip.x)  # (T,) λ_i
        self._coef = torch.from_numpy(pchip.c)  # (4, T - 1)

    @classmethod
    def from_scheduler(cls, scheduler) -> "GammaSchedule":
        return cls(scheduler.alphas_cumprod)

    @property
    def num_train_timesteps(self) -> int:
        return len(self.gammas)

    def gamma(self, timesteps: torch.Tensor) -> torch.Tensor:
        """γ_t (B,) float64 of trained timesteps t (B,), integers in [0, T)."""
        t = torch.as_tensor(timesteps)
        if t.is_floating_point() and not bool((t == t.round()).all()):
            raise ValueError("GammaSchedule.gamma takes trained (integer) timesteps; for a continuous time use "
                             "t_of_gamma's inverse direction: give γ and get t.")
        return self.gammas[t.long().cpu()].to(t.device)

    def t_of_gamma(self, gamma: torch.Tensor) -> torch.Tensor:
        """The continuous timestep t(γ) (B,), differentiable in γ (forward and reverse mode); t(γ_i) = i."""
        lam = gamma.to(torch.float64).log()
        breaks, coef = self._breaks.to(lam.device), self._coef.to(lam.device)
        i = (torch.searchsorted(breaks, lam.detach()) - 1).clamp(0, len(breaks) - 2)  # the piece holding λ
        d = lam - breaks[i]
        return ((coef[0, i] * d + coef[1, i]) * d + coef[2, i]) * d + coef[3, i]


def teacher_epsilon(unet, schedule: GammaSchedule, sample: torch.Tensor, timesteps: torch.Tensor,
                    encoder_hidden_states: torch.Tensor, prediction_type: str = "epsilon",
                    **unet_kwargs) -> torch.Tensor:
    """ε_θ(x_t, t) (B, C, h, w) in the ε parameterisation, at trained timesteps (B,)."""
    gamma = schedule.gamma(timesteps)
    alpha = (1 + gamma**2).rsqrt()
    out = unet(sample, timesteps, encoder_hidden_states, return_dict=False, **unet_kwargs)[0]
    return to_epsilon(out, sample, append_dims(alpha, sample), append_dims(gamma * alpha, sample), prediction_type)


def ode_derivative(
    unet,
    schedule: GammaSchedule,
    sample: torch.Tensor,
    timesteps: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    direction: torch.Tensor,
    *,
    prediction_type: str = "epsilon",
    t_derivative: str = "secant",
    t_window: int = 100,
    **unet_kwargs,
) -> torch.Tensor:
    """d_γ ε_θ (B, C, h, w) at (x_t, t) along dx̄/dγ = `direction` (see the module doc).

    sample: x_t (B, C, h, w); timesteps: trained timesteps (B,); encoder_hidden_states: (B, L, D);
    direction: v (B, C, h, w), ε_θ(x_t, t) itself on the plain ODE. The UNet's attention runs on PyTorch's math
    SDPA kernel here (the fused kernels have no forward-mode derivative). No gradient flows to the UNet.
    """
    if t_derivative not in T_DERIVATIVES:
        raise ValueError(f"t_derivative must be one of {T_DERIVATIVES}, got {t_derivative!r}.")
    if direction.shape != sample.shape:
        raise ValueError(f"direction {tuple(direction.shape)} must have the shape of sample {tuple(sample.shape)}.")
    timesteps = torch.as_tensor(timesteps, device=sample.device).long().expand(sample.shape[0])
    gamma64 = schedule.gamma(timesteps)  # (B,) float64
    alpha64 = (1 + gamma64**2).rsqrt()
    gamma, alpha = append_dims(gamma64, sample), append_dims(alpha64, sample)  # (B, 1, 1, 1)

    def eps_at(x: torch.Tensor, t: torch.Tensor, a, s) -> torch.Tensor:
        text = encoder_hidden_states
        if text is not None and text.shape[0] != x.shape[0]:  # the secant's batch [t + k; t − k]: (2B, L, D)
            text = text.repeat(x.shape[0] // text.shape[0], 1, 1)
        out = unet(x, t, text, return_dict=False, **unet_kwargs)[0]
        return to_epsilon(out, x, a, s, prediction_type)

    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
        if t_derivative == "jvp":
            x_bar = sample / alpha

            def eps_of(x_bar: torch.Tensor, g: torch.Tensor) -> torch.Tensor:  # ε_θ(x̄, γ), g (B,) float64
                a64 = (1 + g**2).rsqrt()
                a, s = append_dims(a64, x_bar), append_dims(g * a64, x_bar)
                t = schedule.t_of_gamma(g).to(x_bar.dtype)  # continuous timestep (B,)
                return eps_at(a * x_bar, t, a, s)

            return torch.func.jvp(eps_of, (x_bar, gamma64), (direction, torch.ones_like(gamma64)))[1]

        # x part: J_x ε_θ · dx/dγ at the trained t, dx/dγ = α v − γ α² x
        dx = alpha * direction - gamma * alpha**2 * sample
        x_part = torch.func.jvp(lambda x: eps_at(x, timesteps, alpha, gamma * alpha), (sample,), (dx,))[1]
        # t part: ∂ε_θ/∂γ at fixed x, a secant over ± t_window trained timesteps (one-sided at the ends)
        last = schedule.num_train_timesteps - 1
        t_hi, t_lo = (timesteps + t_window).clamp(max=last), (timesteps - t_window).clamp(min=0)
        g_hi, g_lo = schedule.gamma(t_hi), schedule.gamma(t_lo)
        a_hi, a_lo = (1 + g_hi**2).rsqrt(), (1 + g_lo**2).rsqrt()
        eps_hi, eps_lo = eps_at(
            torch.cat([sample, sample]), torch.cat([t_hi, t_lo]),
            append_dims(torch.cat([a_hi, a_lo]), sample), append_dims(torch.cat([g_hi * a_hi, g_lo * a_lo]), sample),
        ).chunk(2)
        return x_part + (eps_hi - eps_lo) / append_dims(g_hi - g_lo, sample)


def oracle_derivative(unet, schedule: GammaSchedule, encoder_hidden_states: torch.Tensor, guidance_scale: float = 1.0,
                      prediction_type: str = "epsilon", **kwargs) -> Callable:
    """fn(x_t (B, C, h, w), t, ε_w) -> the teacher's own d_γ ε_w: GENIE with a perfect head, at the cost of a JVP per
    step. For measuring what a head can reach. With guidance (scale > 1), encoder_hidden_states is [uncond; cond]
    (2B, L, D) and the derivative combines both branches along ε_w, as the pipeline does with a head."""

    def derivative(x: torch.Tensor, t, eps_w: torch.Tensor) -> torch.Tensor:
        guided = guidance_scale > 1
        x2, v2 = (torch.cat([x, x]), torch.cat([eps_w, eps_w])) if guided else (x, eps_w)
        t2 = torch.full((x2.shape[0],), int(t), device=x.device)
        d = ode_derivative(unet, schedule, x2, t2, encoder_hidden_states, v2, prediction_type=prediction_type, **kwargs)
        if guided:
            d_uncond, d_text = d.chunk(2)
            d = d_uncond + guidance_scale * (d_text - d_uncond)
        return d

    return derivative
