"""SpeeD's asymmetric timestep sampling (Wang et al. 2024, "A Closer Look at Time Steps is Worthy of Triple
Speed-Up for Diffusion Model Training", sec. 4.1-4.2; arXiv:2405.17403).

The noise level sigma_t = sqrt(1 - abar_t) of a VP process stops changing near the end of the process: there the
noisy latent is almost pure noise whatever z_0 was (the paper's "convergence area"), and training steps spent on
it teach little. SpeeD splits the timesteps at tau, the first step whose increment d sigma_t / dt falls below a
threshold (1e-4 in the paper's code), and samples steps before tau k times as often as steps after it (k = 5 in
the paper's code: tanh(...) + 1.5 is 2.5 or 0.5). Half of each batch is drawn from that density; the other half
are the drawn steps' "duals" around tau (t < tau -> tau - t, t >= tau -> t - tau), which pairs easy and hard
steps in every batch (the paper's symmetric sampling, ablated in its table 6).

The paper also proposes a change-aware loss weighting; like the authors' released sampler (its `weights` are
None) we leave it out: min-SNR (`--snr-gamma`) is this project's weighting and stays a separate option.
"""

from __future__ import annotations

import torch

THRESHOLD = 1e-4  # d sigma_t / dt below this: the convergence area (the paper's code)
K = 5.0  # how much more often steps before tau are drawn than steps after it (2.5 / 0.5 in the paper's code)


def speed_split(alphas_cumprod: torch.Tensor, threshold: float = THRESHOLD, k: float = K
                ) -> tuple[torch.Tensor, int]:
    """(p, tau): the sampling probabilities (T,) over the training steps and the first step of the convergence
    area. With no step below the threshold, tau = T and p is uniform."""
    sigma = (1 - alphas_cumprod.double()).sqrt()  # (T,)
    increment = torch.gradient(sigma)[0]  # (T,) d sigma / dt, central differences as np.gradient
    below = (increment < threshold).nonzero()
    tau = int(below[0]) + 1 if len(below) else len(sigma)  # as the paper's argmax(grad < 1e-4) + 1
    p = torch.where(torch.arange(len(sigma)) < tau, k, 1.0).double()
    return p / p.sum(), tau


def speed_timesteps(p: torch.Tensor, tau: int, batch: int, generator: torch.Generator | None = None,
                    device=None) -> torch.Tensor:
    """(B,) training steps: batch // 2 + 1 drawn from p, then their duals around tau, cut to `batch`."""
    if generator is not None:
        p = p.to(generator.device)  # multinomial draws on the generator's device
    t = torch.multinomial(p, batch // 2 + 1, replacement=True, generator=generator)  # (B // 2 + 1,)
    dual = torch.where(t < tau, tau - t, t - tau).clamp_(0, len(p) - 1)
    return torch.cat([t, dual])[:batch].to(device)
