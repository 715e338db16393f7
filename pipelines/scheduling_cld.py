"""Samplers for critically-damped Langevin diffusion (CLD) models, as diffusers schedulers.

A sample is the phase-space state u = (x, v) concatenated on channels, (B, 2C, ...), x first. The model output
is the predicted velocity noise eps_v (B, C, ...), the HSM target of `cld_process.py` (guided by the caller if it
uses classifier-free guidance). With `mixed_score=True` (a model trained with the paper's mixed score, sec. 3.2)
the model output is the network's residual and `step` turns it into eps_v with `CLD.mixed_eps_v`, as diffusers'
schedulers turn a `prediction_type` into their update. The score the samplers use is s = -eps_v / l_vv(t).
Times are continuous, t in [eps, 1]; `timesteps` runs from 1 down to eps and holds the times at which the model
is evaluated. All 2x2 coefficients are computed in float64 in
`set_timesteps`; a step is then a few scalar-times-tensor operations in max(float32, sample dtype).

Time grids t_0 = 1 > t_1 > ... > t_K = eps ("linear": t_i = eps + (1 - eps)(1 - i/K);
"quadratic": t_i = eps + (1 - eps)(1 - i/K)^2, smaller steps near the data; CLD-SGM's "striding").

A diffusers UNet sees the continuous time through `unet_timestep(t)`, the one mapping training and sampling share.

This file imports only torch, numpy, diffusers and its sibling `cld_process.py`, so that it can travel next to
published weights with the pipeline files (remote code, `trust_remote_code=True`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from .cld_process import CLD, CLDConfig

TIMESTEP_SPACINGS = ("linear", "quadratic")
QUADRATURE_NODES = 64  # Gauss-Legendre nodes per step for the exponential-integrator coefficients
ODE_HOLDS = ("x0", "eps_v")
# The UNet's time input for a continuous CLD time t in [eps, 1] is UNET_TIME_SCALE * t, i.e. [0, 999]: the range of
# the discrete DDPM timesteps that a diffusers UNet's sinusoidal embedding (diffusers `Timesteps`, which takes
# floats) is made for; the continuous-time convention of score_sde (Song et al. 2021, `labels = t * 999`).
UNET_TIME_SCALE = 999.0


def unet_timestep(t: torch.Tensor) -> torch.Tensor:
    """The UNet's timestep input for CLD time t (any shape, float): t * 999. Training and the pipeline both call
    this, so that a model is sampled with the time embedding it was trained with."""
    return t * UNET_TIME_SCALE


# The scheduler config entries that describe a CLD process (CLDConfig's fields) and the model's output
# parameterisation: what carries over when the sampler changes.
CLD_PROCESS_KEYS = ("M", "gamma", "beta_schedule", "beta", "beta_min", "beta_max", "eps", "numerical_eps",
                    "mixed_score")


# ---- the CLD row of processes.PROCESSES: recognising a CLD model and its generation-time hooks
def is_cld_config(config: dict) -> bool:
    """A scheduler config of a CLD sampler: it has the mass M and the HSM gamma."""
    return "M" in config and "gamma" in config


def unet_channels(latent_channels: int) -> tuple[int, int]:
    """A CLD UNet sees u = (x, v), 2C channels, and predicts eps_v, C channels."""
    return 2 * latent_channels, latent_channels


def initial_noise(scheduler, shape: tuple[int, ...], generator, device, dtype) -> torch.Tensor:
    """The phase-space prior u = (x, v) (B, 2C, h, w), carried to timesteps[0] by the scheduler itself."""
    return scheduler.init_noise_sample(shape, generator=generator, device=device, dtype=dtype)


def data_latents(u: torch.Tensor) -> torch.Tensor:
    """The data latent x (B, C, h, w) of a phase-space state u = (x, v) (B, 2C, h, w)."""
    return u.chunk(2, dim=1)[0]


def describe(config: dict) -> str:
    """The process of a CLD scheduler config in one line (model cards)."""
    return (f"critically-damped Langevin diffusion, M {config.get('M')}, gamma {config.get('gamma')}, "
            f"{config.get('beta_schedule')} beta{', mixed score' if config.get('mixed_score') else ''}, predicts eps_v")


def time_grid(num_intervals: int, eps: float, spacing: str) -> torch.Tensor:
    """t_0 = 1 > ... > t_K = eps, (K + 1,) float64 holding float32-representable values, so that the float32
    `timesteps` a model sees are exactly the times the float64 step coefficients are computed for."""
    s = torch.linspace(1.0, 0.0, num_intervals + 1, dtype=torch.float64)  # 1 - i/K
    if spacing == "quadratic":
        s = s**2
    return _f32_exact(eps + (1.0 - eps) * s)


def _f32_exact(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32).to(torch.float64)


class _CLDScheduler(SchedulerMixin, ConfigMixin):
    """What both CLD schedulers share: the process, the prior, the timestep lookup and input checks.

    Config shared by both: the process (M, gamma, beta_schedule, beta, beta_min, beta_max, eps, numerical_eps: see
    `CLDConfig`), timestep_spacing, and mixed_score: True for a model trained with the mixed-score
    parameterisation, whose output `step` passes through `CLD.mixed_eps_v` first (the pipeline feeds it the raw,
    guided network output)."""

    order = 1
    init_noise_sigma = 1.0  # the prior is drawn by `init_noise_sample`, not by scaling N(0, I)

    def _setup(self, timestep_spacing: str, **process_kwargs) -> None:
        self.process = CLD(CLDConfig(**process_kwargs))  # validates the process arguments (ValueError)
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {timestep_spacing!r}.")
        self.timesteps: torch.Tensor | None = None
        self.num_inference_steps: int | None = None

    @staticmethod
    def _check_steps(num_inference_steps: int, minimum: int = 1, why: str = "") -> None:
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) \
                or num_inference_steps < minimum:
            raise ValueError(f"num_inference_steps must be an int >= {minimum}{why}, got {num_inference_steps!r}.")

    def _index(self, timestep: float | torch.Tensor) -> int:
        """Position of `timestep` in self.timesteps (matched to float32 round-off)."""
        if self.timesteps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step().")
        t = float(timestep)
        diff = (self._t_eval - t).abs()  # (N,) float64
        i = int(diff.argmin())
        if diff[i] > 1e-7 * self._t_eval[i]:
            raise ValueError(f"timestep {t} is not one of scheduler.timesteps; pass the values of "
                             f"scheduler.timesteps in order.")
        return i

    def _split(self, model_output: torch.Tensor, sample: torch.Tensor, i: int):
        """(x, v, eps_v), each (B, C, ...), in max(float32, sample dtype); eps_v from the mixed score if configured."""
        if sample.ndim < 2 or sample.shape[1] != 2 * model_output.shape[1] or \
                sample.shape[:1] + sample.shape[2:] != model_output.shape[:1] + model_output.shape[2:]:
            raise ValueError(f"sample must be (x, v) concatenated on channels, (B, 2C, ...), and model_output "
                             f"eps_v (B, C, ...); got sample {tuple(sample.shape)}, model_output "
                             f"{tuple(model_output.shape)}.")
        work = torch.promote_types(sample.dtype, torch.float32)
        x, v = sample.to(work).chunk(2, dim=1)  # (B, C, ...) each
        eps_v = model_output.to(work)
        if self.config.mixed_score:  # eps_v = network output + l_vv v / Sigma_vv (cld_process.py, mixed_eps_v)
            eps_v = self.process.mixed_eps_v(eps_v, v, self._t_eval[i])
        return x, v, eps_v

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """CLD needs no input scaling; present because diffusers sampling loops call it."""
        return sample

    def init_noise_sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                          device: torch.device | str | None = None,
                          dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The prior u_1 = (x, v), x ~ N(0, I), v ~ N(0, M I), concatenated on channels: shape (B, 2C, ...)."""
        if len(shape) < 2 or shape[1] % 2:
            raise ValueError(f"shape must be (B, 2C, ...) with an even channel count (x then v), got {shape}.")
        half = (shape[0], shape[1] // 2, *shape[2:])
        x = randn_tensor(half, generator=generator, device=device, dtype=dtype)  # (B, C, ...)
        v = randn_tensor(half, generator=generator, device=device, dtype=dtype) * math.sqrt(self.process.M)
        return torch.cat([x, v], dim=1)  # (B, 2C, ...)


class SSCSScheduler(_CLDScheduler):
    """Symmetric Splitting CLD Sampler (SSCS; Dockhorn et al. 2022, sec. 3.3 and its algorithm in the appendix).

    The reverse SDE in generative time s (t = 1 - s) is split into
      A (linear, exact): dx = -M^{-1} v beta ds, dv = (x - Gamma M^{-1} v) beta ds + sqrt(2 Gamma beta) dW,
      S (score, Euler):  dv = 2 Gamma beta (s(u, t) + M^{-1} v) ds,
    and each interval [t_{n+1}, t_n] is integrated as A(half) S(full) A(half). A is the forward linear SDE with
    the momentum flipped (A_rev = P A P, P = diag(1, -1)), so its transition over an integrated time b =
    beta_int(t) - beta_int(t') > 0 is Gaussian with mean P Phi(b) P u and covariance P Q(b) P ((K1), (K2) of
    cld_process.py): exact, drawn with its Cholesky factor.

    Because the score is needed at the state after the first half step, and a diffusers loop evaluates the
    model on `sample` before calling `step`, the sample handed around sits *after* the first half step:
      - timesteps[n] = tau_n = (t_n + t_{n+1}) / 2 (the time reached by A(half); the score is evaluated there;
        CLD-SGM evaluates it at t_n, which is first order in the time dependence),
      - `init_noise_sample` draws the prior at t = 1 and applies the first A(half) to tau_0,
      - step n: S over the whole interval, v += dB_n 2 Gamma (s + v / M), dB_n = beta_int(t_n) - beta_int(t_{n+1}),
        then A from tau_n to tau_{n+1} (two consecutive half steps of an exact flow are one exact step),
        or from tau_{K-1} to t_K = eps after the last interval.
    With denoise_final=True (the paper's final denoising step) the last model evaluation is at t = eps and
    takes one noise-free Euler step of the full reverse SDE from eps to 0 (CLD-SGM `denoising_fn`):
      x -= dB v / M,  v += dB (x + Gamma v / M + 2 Gamma s),  dB = beta_int(eps).
    num_inference_steps counts model evaluations: K = num_inference_steps - 1 intervals plus the denoising
    step, or K = num_inference_steps intervals without it.
    """

    @register_to_config
    def __init__(self, M: float = 0.25, gamma: float = 0.04, beta_schedule: str = "constant", beta: float = 4.0,
                 beta_min: float = 0.1, beta_max: float = 8.0, eps: float = 1e-5, numerical_eps: float = 1e-6,
                 timestep_spacing: str = "quadratic", denoise_final: bool = True, mixed_score: bool = False):
        self._setup(timestep_spacing, M=M, gamma=gamma, beta_schedule=beta_schedule, beta=beta,
                    beta_min=beta_min, beta_max=beta_max, eps=eps, numerical_eps=numerical_eps)

    def _linear_flow(self, b: torch.Tensor) -> torch.Tensor:
        """Reverse-time A transition over integrated time b > 0: (..., 7) float64 rows
        (phi_xx, phi_xv, phi_vx, phi_vv, l_xx, l_vx, l_vv) with mean Phi_rev u and noise L_rev z."""
        p = self.process
        phi_xx, phi_xv, phi_vx, phi_vv = p.transition(b)
        q_xx, q_xv, q_vv = p.noise_covariance(b)
        l_xx = torch.sqrt(q_xx)
        l_vx = -q_xv / l_xx  # P Q P flips the sign of the xv entry
        l_vv = torch.sqrt(torch.clamp(q_vv - l_vx**2, min=0.0))
        return torch.stack([phi_xx, -phi_xv, -phi_vx, phi_vv, l_xx, l_vx, l_vv], dim=-1)

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        denoise = self.config.denoise_final
        self._check_steps(num_inference_steps, 2 if denoise else 1,
                          " with denoise_final=True (the last evaluation is the denoising step)" if denoise else "")
        p, eps = self.process, self.config.eps
        K = num_inference_steps - 1 if denoise else num_inference_steps
        t = time_grid(K, eps, self.config.timestep_spacing)  # (K + 1,)
        tau = _f32_exact(0.5 * (t[:-1] + t[1:]))  # (K,) evaluation times
        B_t, B_tau = p.beta_int(t), p.beta_int(tau)
        B_next = torch.cat([B_tau[1:], B_t[K:]])  # where A takes the state after step n
        self._dB_score = B_t[:-1] - B_t[1:]  # (K,)
        self._l_vv = p.cholesky_at(B_tau)[2]  # (K,)
        self._flow = self._linear_flow(B_tau - B_next)  # (K, 7)
        self._flow_init = self._linear_flow(B_t[0] - B_tau[0])  # (7,), t = 1 -> tau_0
        self._dB_denoise = float(p.beta_int(t[K]))  # from t_K = eps (float32-rounded) to 0
        self._l_vv_denoise = float(p.cholesky(t[K])[2])
        t_eval = torch.cat([tau, t[K:]]) if denoise else tau
        self._t_eval = t_eval
        self.timesteps = t_eval.to(device=device, dtype=torch.float32)
        self.num_inference_steps = num_inference_steps

    def _apply_flow(self, x: torch.Tensor, v: torch.Tensor, row: torch.Tensor,
                    generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        phi_xx, phi_xv, phi_vx, phi_vv, l_xx, l_vx, l_vv = (float(c) for c in row)
        z_x = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        z_v = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_new = phi_xx * x + phi_xv * v + l_xx * z_x
        v_new = phi_vx * x + phi_vv * v + l_vx * z_x + l_vv * z_v
        return x_new, v_new

    def init_noise_sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                          device: torch.device | str | None = None,
                          dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The prior at t = 1 carried by the first analytical half step to timesteps[0], (B, 2C, ...).
        Call set_timesteps first."""
        if self.timesteps is None:
            raise ValueError("call set_timesteps(num_inference_steps) before init_noise_sample(): SSCS applies "
                             "its first analytical half step there.")
        u = super().init_noise_sample(shape, generator=generator, device=device, dtype=dtype)
        work = torch.promote_types(dtype, torch.float32)
        x, v = self._apply_flow(*u.to(work).chunk(2, dim=1), self._flow_init, generator)
        return torch.cat([x, v], dim=1).to(dtype)

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True) -> SchedulerOutput | tuple:
        i = self._index(timestep)
        x, v, eps_v = self._split(model_output, sample, i)  # (B, C, ...) each
        Gamma, M = self.process.Gamma, self.process.M
        if i == len(self._dB_score):  # the final denoising step at t = eps (only with denoise_final)
            dB = self._dB_denoise
            score = -eps_v / self._l_vv_denoise
            x, v = x - dB * v / M, v + dB * (x + Gamma * v / M + 2 * Gamma * score)
        else:
            score = -eps_v / float(self._l_vv[i])  # s(u, tau_i) = -eps_v / l_vv
            v = v + float(self._dB_score[i]) * 2 * Gamma * (score + v / M)  # S: Euler over the whole interval
            x, v = self._apply_flow(x, v, self._flow[i], generator)  # A: tau_i -> tau_{i+1} (or eps)
        prev_sample = torch.cat([x, v], dim=1).to(sample.dtype)  # (B, 2C, ...)
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)


class CLDExponentialODEScheduler(_CLDScheduler):
    """Probability-flow ODE sampler with exponential-integrator steps (DEIS, Zhang & Chen 2023; gDDIM, Zhang et
    al. 2023), deterministic, first order. num_inference_steps = number of steps = model evaluations, at
    t_0 = 1, ..., t_{N-1}; the last step ends at t_N = eps.

    The probability-flow ODE of CLD (Song et al. 2021, sec. 4.3, applied to eq. 5), with s = -eps_v / l_vv,
    is per dimension and in the integrated time B = beta_int(t)
        (E1) du/dB = A u + (0, Gamma / l_vv(B)) eps_v(u, t),
    linear in u apart from the network term. Every step is u_{n+1} = P_n u_n + q_n eps_v(u_n, t_n) with a 2x2
    P_n and a 2-vector q_n computed in float64 by `set_timesteps`; `hold` says which quantity is frozen over
    the step when integrating (E1) exactly:

    hold="x0" (default; gDDIM's deterministic step with its R_t parameterisation, fed from eps_v). The kernel
    score is affine in x0 (cld_process.py (K3)), so the HSM-optimal eps_v = l_vv (Sigma_t^{-1}(u - mu_t x0_hat))_v
    determines the posterior mean x0_hat = E[x0 | u_t]:
        (E2) x0_hat = (l_vv eps_v - v + rho x) / (rho phi_xx - phi_vx),  rho = l_vx / l_xx > 0,
    (denominator > 0 for t > 0); gDDIM's full noise R_t^{-1}(u - mu_t x0_hat) follows, although HSM only
    predicts eps_v. For fixed x0 the probability-flow ODE of the Gaussian kernel maps
    u - mu_t x0 linearly, u_{t'} - mu_{t'} x0 = Psi(t', t) (u_t - mu_t x0), with Psi = R_{t'} R_t^{-1} for gDDIM's
    square root R_t (R_t R_t^T = Sigma_t, dR/dB = (A + Gamma e_v e_v^T Sigma^{-1}) R). Writing R_t = L_t O(theta_t)
    with the Cholesky factor L_t and a rotation O, the skew part of that ODE gives dtheta/dB = -l_vv / (M l_xx)
    (only the (x, v) entry 1/M of A survives in (L^{-1} A L)_xv), so
        (E3) Psi(t_{n+1}, t_n) = L_{n+1} O(dtheta_n) L_n^{-1},  dtheta_n = (1/M) int_{B_{n+1}}^{B_n} l_vv/l_xx dr,
        (E4) u_{n+1} = mu_{n+1} x0_hat + Psi (u_n - mu_n x0_hat),   mu_t = (phi_xx(B), phi_vx(B)),
    i.e. gDDIM's noise R_t^{-1}(u - mu_t x0_hat) (equivalently x0_hat) is held constant. The step is exact when
    the data is a single point; for spread-out data it is first order, like DDIM. dtheta is the only quadrature.

    hold="eps_v" (a plain exponential integrator on the Cholesky parameterisation): eps_v held at its value at
    (u_n, t_n), the linear drift integrated exactly,
        (E5) u_{n+1} = Phi(B_{n+1} - B_n) u_n + c_n eps_v,
             c_n = -int_{B_{n+1}}^{B_n} Phi(B_{n+1} - r) (0, Gamma / l_vv(r)) dr,
    with Phi the closed form (K1) (negative argument: backward in time). eps_v of the Cholesky factor is not
    constant along probability-flow trajectories (it rotates with eps_x), and 1/l_vv grows like B^{-1/2} near
    t = 0, so this needs many more steps than "x0" (see tests/test_cld.py); kept for comparison.

    Both integrals are 64-point Gauss-Legendre rules in s = log r (dr = r ds), which makes the power-law
    behaviour of l_vv and l_xx near r = 0 smooth, in float64. L_t is the training kernel's Cholesky factor
    (including numerical_eps); with numerical_eps > 0 (E3) is exact only up to O(numerical_eps), which matters
    for t below about 1e-3.
    """

    @register_to_config
    def __init__(self, M: float = 0.25, gamma: float = 0.04, beta_schedule: str = "constant", beta: float = 4.0,
                 beta_min: float = 0.1, beta_max: float = 8.0, eps: float = 1e-5, numerical_eps: float = 1e-6,
                 timestep_spacing: str = "quadratic", hold: str = "x0", mixed_score: bool = False):
        self._setup(timestep_spacing, M=M, gamma=gamma, beta_schedule=beta_schedule, beta=beta,
                    beta_min=beta_min, beta_max=beta_max, eps=eps, numerical_eps=numerical_eps)
        if hold not in ODE_HOLDS:
            raise ValueError(f"hold must be one of {ODE_HOLDS}, got {hold!r}.")

    @staticmethod
    def _log_quadrature(f, B_lo: torch.Tensor, B_hi: torch.Tensor) -> torch.Tensor:
        """int_{B_lo}^{B_hi} f(r) dr for 0 < B_lo < B_hi (elementwise), Gauss-Legendre in s = log r."""
        nodes, weights = np.polynomial.legendre.leggauss(QUADRATURE_NODES)
        nodes, weights = torch.from_numpy(nodes), torch.from_numpy(weights)  # (Q,)
        lo, hi = torch.log(B_lo)[..., None], torch.log(B_hi)[..., None]  # (..., 1)
        r = torch.exp(0.5 * (hi - lo) * nodes + 0.5 * (hi + lo))  # (..., Q) points in B
        return (0.5 * (hi - lo) * weights * r * f(r)).sum(-1)  # r: dr = r ds

    def step_coefficients(self, B_from: torch.Tensor, B_to: torch.Tensor) -> torch.Tensor:
        """(..., 6) float64 rows (P_xx, P_xv, P_vx, P_vv, q_x, q_v) of u_{n+1} = P u_n + q eps_v for steps from
        B_from down to B_to (0 < B_to < B_from, elementwise)."""
        p = self.process
        if self.config.hold == "eps_v":  # (E5)
            phi = torch.stack(p.transition(B_to - B_from), dim=-1)  # (..., 4)

            def integrand(r: torch.Tensor, k: int) -> torch.Tensor:  # Phi(B_to - r)_{.v} Gamma / l_vv(r)
                return p.transition(B_to[..., None] - r)[k] * p.Gamma / p.cholesky_at(r)[2]

            c_x = -self._log_quadrature(lambda r: integrand(r, 1), B_to, B_from)
            c_v = -self._log_quadrature(lambda r: integrand(r, 3), B_to, B_from)
            return torch.cat([phi, torch.stack([c_x, c_v], dim=-1)], dim=-1)
        # hold == "x0": (E2)-(E4)
        l_xx, l_vx, l_vv = p.cholesky_at(B_from)
        k_xx, k_vx, k_vv = p.cholesky_at(B_to)

        def ratio(r: torch.Tensor) -> torch.Tensor:  # l_vv / l_xx
            r_xx, _, r_vv = p.cholesky_at(r)
            return r_vv / r_xx

        dtheta = self._log_quadrature(ratio, B_to, B_from) / p.M
        cos, sin = torch.cos(dtheta), torch.sin(dtheta)
        # Psi = L_to O(dtheta) L_from^{-1}, with L^{-1} = [[1/l_xx, 0], [-l_vx/(l_xx l_vv), 1/l_vv]]
        i_xx, i_vx, i_vv = 1 / l_xx, -l_vx / (l_xx * l_vv), 1 / l_vv
        o_xx, o_xv = cos * i_xx - sin * i_vx, -sin * i_vv  # O L^{-1}
        o_vx, o_vv = sin * i_xx + cos * i_vx, cos * i_vv
        psi_xx, psi_xv = k_xx * o_xx, k_xx * o_xv  # L_to O L^{-1}
        psi_vx, psi_vv = k_vx * o_xx + k_vv * o_vx, k_vx * o_xv + k_vv * o_vv
        m_x, _, m_v, _ = p.transition(B_from)  # mu_n per unit x0
        n_x, _, n_v, _ = p.transition(B_to)  # mu_{n+1} per unit x0
        rho = l_vx / l_xx
        den = rho * m_x - m_v  # (E2): x0_hat = (l_vv eps_v - v + rho x) / den
        d_x = n_x - (psi_xx * m_x + psi_xv * m_v)  # d = mu_{n+1} - Psi mu_n, so (E4) = Psi u + d x0_hat
        d_v = n_v - (psi_vx * m_x + psi_vv * m_v)
        return torch.stack([psi_xx + d_x * rho / den, psi_xv - d_x / den,
                            psi_vx + d_v * rho / den, psi_vv - d_v / den,
                            d_x * l_vv / den, d_v * l_vv / den], dim=-1)

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        self._check_steps(num_inference_steps)
        t = time_grid(num_inference_steps, self.config.eps, self.config.timestep_spacing)  # (N + 1,)
        B = self.process.beta_int(t)
        self._coef = self.step_coefficients(B[:-1], B[1:])  # (N, 6)
        self._t_eval = t[:-1]
        self.timesteps = t[:-1].to(device=device, dtype=torch.float32)
        self.num_inference_steps = num_inference_steps

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True) -> SchedulerOutput | tuple:
        """One step u_{n+1} = P_n u_n + q_n eps_v; `generator` is unused (the ODE is deterministic)."""
        i = self._index(timestep)
        x, v, eps_v = self._split(model_output, sample, i)  # (B, C, ...) each
        p_xx, p_xv, p_vx, p_vv, q_x, q_v = (float(c) for c in self._coef[i])
        x, v = p_xx * x + p_xv * v + q_x * eps_v, p_vx * x + p_vv * v + q_v * eps_v
        prev_sample = torch.cat([x, v], dim=1).to(sample.dtype)  # (B, 2C, ...)
        if not return_dict:
            return (prev_sample,)
        return SchedulerOutput(prev_sample=prev_sample)
