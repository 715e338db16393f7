"""Critically-damped Langevin diffusion (CLD): forward process, perturbation kernel and HSM loss.

Dockhorn, Vahdat, Kreis, "Score-Based Generative Modeling with Critically-Damped Langevin Diffusion",
ICLR 2022 (arXiv 2112.07068). Reference implementation: github.com/nv-tlabs/CLD-SGM (`sde_lib.py`).

The data x (already scaled to unit variance, e.g. VAE latents * scaling_factor) is paired with a velocity v
of the same shape; u = (x, v). Every data dimension evolves independently with the same 2x2 dynamics, so all
process quantities below are scalars per time t (shape (B,)) and act on each (x, v) pair alike.

Forward SDE (paper eq. 5), with Gamma = 2 sqrt(M) (critical damping, Gamma^2 = 4M; sec. 3.1):
    dx = M^{-1} v beta(t) dt
    dv = (-x - Gamma M^{-1} v) beta(t) dt + sqrt(2 Gamma beta(t)) dW
i.e. du = beta(t) A u dt + G(t) dW with A = [[0, 1/M], [-1, -Gamma/M]], G G^T = diag(0, 2 Gamma beta(t)).
In the integrated time B = beta_int(t) = int_0^t beta(s) ds the process is time homogeneous, so every kernel
quantity is a function of B only. With a = 2/Gamma, A has the double eigenvalue -a and (A + a I)^2 = 0, hence
    (K1) Phi(B) = exp(A B) = e^{-aB} [[1 + aB, a^2 B], [-B, 1 - aB]]            (valid for any real B)
    (K2) Q(B) = int_0^B Phi(s) diag(0, 2 Gamma) Phi(s)^T ds, with y = 2aB and E = e^{-y}:
         Q_xx = 1 - E (1 + y + y^2/2)  = P(3, y)  (regularised lower incomplete gamma: no cancellation)
         Q_xv = 2 a B^2 E
         Q_vv = M (1 - E (1 - y + y^2/2))
    (K3) mean:        mu_t = Phi(B) (x0, v0)
    (K4) covariance:  Sigma_t = Phi(B) diag(var0x, var0v) Phi(B)^T + Q(B)  (+ numerical_eps on the diagonal)
(K1)-(K4) are the paper's Appendix B.1 kernel (the closed forms of `CLD.mean` / `CLD.var` in CLD-SGM's
`sde_lib.py`, which expands (K4)); Sigma_t -> diag(1, M) as B -> infinity, the equilibrium N(0, I) x N(0, M I).

Hybrid score matching (HSM, sec. 3.2): the kernel conditions on x0 only and marginalises v0 ~ N(0, gamma M I),
i.e. (K3) with v0 = 0 and (K4) with var0x = 0, var0v = gamma M. With the Cholesky factor L_t L_t^T = Sigma_t,
    u_t = mu_t + L_t eps,  eps = (eps_x, eps_v) ~ N(0, I),
    grad_v log p(u_t | x0) = -(L_t^{-T} eps)_v = -eps_v / l_vv = -ell_t eps_v,   ell_t = 1 / l_vv
(L^{-T} is upper triangular, so its v row only sees eps_v). The network predicts eps_v, the score model is
s(u_t, t) = -eps_v_pred / l_vv, and the HSM objective lambda(t) ||s - grad_v log p(u_t|x0)||^2 becomes
lambda(t) / l_vv^2 ||eps_v_pred - eps_v||^2 (see `hsm_loss`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

BETA_SCHEDULES = ("constant", "linear")
HSM_WEIGHTINGS = ("eps", "ml")


@dataclass(frozen=True)
class CLDConfig:
    M: float = 0.25  # mass; the friction is derived, Gamma = 2 sqrt(M) (critical damping), so M = 0.25 -> Gamma = 1
    gamma: float = 0.04  # HSM initial velocity variance factor: v0 ~ N(0, gamma * M * I); 0 gives the DSM kernel
    beta_schedule: str = "constant"  # "constant": beta(t) = beta; "linear": beta_min + t (beta_max - beta_min)
    beta: float = 4.0  # constant schedule (the paper's CIFAR-10 setting): beta_int(1) = 4
    # Linear schedule. The defaults give beta_int(1) = 4.05, the same total as the constant schedule, so the
    # mismatch between the t = 1 marginal and the prior is equally small (about e^{-2a beta_int(1)}, a = 2/Gamma),
    # while the process moves more slowly near the data where the small-t detail is.
    beta_min: float = 0.1
    beta_max: float = 8.0
    eps: float = 1e-5  # smallest time: training draws t ~ U[eps, 1], samplers integrate from 1 down to eps
    # Added to Sigma_xx and Sigma_vv of the kernel (CLD-SGM's numerical_eps) so that l_xx and l_vv stay away from
    # 0 near t = 0; it dominates Sigma_xx for t below about 1e-3 with the defaults. 0 gives the exact kernel.
    numerical_eps: float = 1e-6

    def __post_init__(self):
        if not (math.isfinite(self.M) and self.M > 0):
            raise ValueError(f"M (the mass) must be a positive finite number, got {self.M}.")
        if not (math.isfinite(self.gamma) and self.gamma >= 0):
            raise ValueError(f"gamma must be >= 0 (v0 ~ N(0, gamma*M)); got {self.gamma}. Use 0.04 as in the paper.")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {self.beta_schedule!r}.")
        if self.beta_schedule == "constant" and not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta must be a positive finite number for the constant schedule, got {self.beta}.")
        if self.beta_schedule == "linear":
            if not (math.isfinite(self.beta_min) and math.isfinite(self.beta_max)):
                raise ValueError(f"beta_min and beta_max must be finite, got {self.beta_min}, {self.beta_max}.")
            if self.beta_min < 0 or self.beta_max <= 0 or self.beta_max < self.beta_min:
                raise ValueError(
                    f"the linear schedule needs 0 <= beta_min <= beta_max and beta_max > 0, got beta_min="
                    f"{self.beta_min}, beta_max={self.beta_max}.")
        if not (0 < self.eps < 1):
            raise ValueError(f"eps (the smallest time) must lie in (0, 1), got {self.eps}; 1e-5 is typical.")
        if not (math.isfinite(self.numerical_eps) and self.numerical_eps >= 0):
            raise ValueError(f"numerical_eps must be >= 0, got {self.numerical_eps}; 1e-6 is typical.")

    @property
    def Gamma(self) -> float:
        """Friction at critical damping, Gamma^2 = 4 M (sec. 3.1)."""
        return 2.0 * math.sqrt(self.M)


class Perturbed(NamedTuple):
    x_t: torch.Tensor  # (B, C, H, W)
    v_t: torch.Tensor  # (B, C, H, W)
    eps_x: torch.Tensor  # (B, C, H, W), the noise on x: u_t = mu_t + L_t (eps_x, eps_v)
    eps_v: torch.Tensor  # (B, C, H, W), the HSM regression target


def _f64(t: torch.Tensor | float, device: torch.device | None = None) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float64, device=device)


def _expand(c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) float64 coefficient -> (B, 1, ..., 1) in the dtype of `like`, for broadcasting over (B, C, H, W)."""
    return c.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


class CLD:
    """The CLD forward process of `config`. All time functions take t of shape (B,) (or a scalar) and return
    float64 tensors of the same shape on t's device."""

    def __init__(self, config: CLDConfig | None = None):
        self.config = config if config is not None else CLDConfig()
        self.M = self.config.M
        self.Gamma = self.config.Gamma
        self.a = 2.0 / self.Gamma  # minus the (double) eigenvalue of A, a = Gamma / (2M)

    # --- schedule ----------------------------------------------------------------------------------------

    def beta(self, t: torch.Tensor | float) -> torch.Tensor:
        """beta(t)."""
        c = self.config
        t = _f64(t)
        if c.beta_schedule == "constant":
            return torch.full_like(t, c.beta)
        return c.beta_min + t * (c.beta_max - c.beta_min)

    def beta_int(self, t: torch.Tensor | float) -> torch.Tensor:
        """B(t) = int_0^t beta(s) ds."""
        c = self.config
        t = _f64(t)
        if c.beta_schedule == "constant":
            return c.beta * t
        return c.beta_min * t + 0.5 * (c.beta_max - c.beta_min) * t**2

    # --- per-dimension 2x2 algebra in integrated time B ----------------------------------------------------

    def transition(self, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(K1) Phi(B) = exp(A B) as (phi_xx, phi_xv, phi_vx, phi_vv); B may be negative (backward in time)."""
        a, B = self.a, _f64(B)
        e = torch.exp(-a * B)
        return e * (1 + a * B), e * (a * a * B), -e * B, e * (1 - a * B)

    def noise_covariance(self, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(K2) Q(B) = int_0^B Phi(s) G G^T Phi(s)^T ds (per unit beta) as (q_xx, q_xv, q_vv), for B >= 0.
        Written without cancellation, so it stays accurate in float64 for B down to ~1e-300."""
        a, B = self.a, _f64(B)
        y = 2 * a * B
        E = torch.exp(-y)
        q_xx = torch.special.gammainc(torch.full_like(y, 3.0), y)  # 1 - E (1 + y + y^2/2)
        q_xv = 2 * a * B * B * E
        q_vv = self.M * (-torch.expm1(-y) + E * y * (1 - 0.5 * y))  # M (1 - E (1 - y + y^2/2)), all terms >= 0
        return q_xx, q_xv, q_vv

    # --- perturbation kernel ---------------------------------------------------------------------------

    def mean(self, x0: torch.Tensor, v0: torch.Tensor | None, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(K3) kernel mean (mu_x, mu_v) given (x0, v0), each shaped like x0 (B, C, H, W).

        v0=None is the HSM kernel p(u_t | x0) with v0 ~ N(0, gamma M I) integrated out: its mean is the v0 = 0
        mean (mu_x = phi_xx x0, mu_v = phi_vx x0) and its covariance is `covariance(t)` (var0v = gamma M).
        With a given v0 use `covariance(t, var0v=0.0)` for the matching covariance."""
        phi_xx, phi_xv, phi_vx, phi_vv = self.transition(self.beta_int(_f64(t, x0.device)))
        mu_x = _expand(phi_xx, x0) * x0
        mu_v = _expand(phi_vx, x0) * x0
        if v0 is not None:
            mu_x = mu_x + _expand(phi_xv, v0) * v0
            mu_v = mu_v + _expand(phi_vv, v0) * v0
        return mu_x, mu_v

    def covariance(self, t: torch.Tensor | float, var0x: float | torch.Tensor = 0.0,
                   var0v: float | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(K4) Sigma_t = Phi diag(var0x, var0v) Phi^T + Q + numerical_eps I as (s_xx, s_xv, s_vv), float64.

        Defaults are the HSM kernel: var0x = 0 (x0 given), var0v = gamma M. var0x > 0 gives the marginal of
        Gaussian data x0 ~ N(., var0x) (used by the tests for an exact score)."""
        return self.covariance_at(self.beta_int(t), var0x, var0v)

    def covariance_at(self, B: torch.Tensor | float, var0x: float | torch.Tensor = 0.0,
                      var0v: float | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`covariance` as a function of the integrated time B = beta_int(t) >= 0."""
        if var0v is None:
            var0v = self.config.gamma * self.M
        B = _f64(B)
        phi_xx, phi_xv, phi_vx, phi_vv = self.transition(B)
        q_xx, q_xv, q_vv = self.noise_covariance(B)
        ne = self.config.numerical_eps
        s_xx = phi_xx**2 * var0x + phi_xv**2 * var0v + q_xx + ne
        s_xv = phi_xx * phi_vx * var0x + phi_xv * phi_vv * var0v + q_xv
        s_vv = phi_vx**2 * var0x + phi_vv**2 * var0v + q_vv + ne
        return s_xx, s_xv, s_vv

    def cholesky(self, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Lower-triangular L_t = [[l_xx, 0], [l_vx, l_vv]] with L_t L_t^T = Sigma_t (HSM kernel), float64."""
        return self.cholesky_at(self.beta_int(t))

    def cholesky_at(self, B: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`cholesky` as a function of the integrated time B = beta_int(t) >= 0."""
        s_xx, s_xv, s_vv = self.covariance_at(B)
        l_xx = torch.sqrt(s_xx)
        l_vx = s_xv / l_xx
        l_vv = torch.sqrt(torch.clamp(s_vv - l_vx**2, min=0.0))  # clamp: float64 round-off only
        return l_xx, l_vx, l_vv

    def perturb(self, x0: torch.Tensor, t: torch.Tensor,
                generator: torch.Generator | None = None) -> Perturbed:
        """Sample u_t ~ p(u_t | x0) (HSM kernel): x0 (B, C, H, W) unit-variance data, t (B,) in [eps, 1]."""
        if x0.ndim < 2 or t.shape != (x0.shape[0],):
            raise ValueError(f"expected x0 (B, C, ...) and t (B,), got x0 {tuple(x0.shape)} and t {tuple(t.shape)}.")
        eps_x = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)  # (B, C, H, W)
        eps_v = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)  # (B, C, H, W)
        mu_x, mu_v = self.mean(x0, None, t)
        l_xx, l_vx, l_vv = self.cholesky(_f64(t, x0.device))
        x_t = mu_x + _expand(l_xx, x0) * eps_x
        v_t = mu_v + _expand(l_vx, x0) * eps_x + _expand(l_vv, x0) * eps_v
        return Perturbed(x_t=x_t, v_t=v_t, eps_x=eps_x, eps_v=eps_v)

    def prior_sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                     device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """The equilibrium prior x ~ N(0, I), v ~ N(0, M I), each of `shape` (B, C, H, W)."""
        x = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        v = torch.randn(shape, generator=generator, device=device, dtype=dtype) * math.sqrt(self.M)
        return x, v

    # --- score parameterisation and loss ------------------------------------------------------------------

    def score_v(self, eps_v: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """s(u_t, t) = -eps_v / l_vv = -ell_t eps_v: the v-score from an eps_v prediction (sec. 3.2).
        t is (B,) or a scalar; the result has eps_v's shape and dtype."""
        l_vv = self.cholesky(_f64(t, eps_v.device))[2]
        l_vv = l_vv.expand(eps_v.shape[0]) if l_vv.ndim == 0 else l_vv
        return -eps_v / _expand(l_vv, eps_v)

    def mixed_eps_v(self, network_out: torch.Tensor, v_t: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """Mixed score (sec. 3.2 / App.; CLD-SGM `get_score_fn` with mixed_score=True): the network models only
        the residual to the Gaussian-part score -v_t / Sigma_vv(t),
            s = -v_t / Sigma_vv - ell_t network_out,
        which in eps_v form (s = -eps_v / l_vv) is eps_v_pred = network_out + l_vv v_t / Sigma_vv.
        Sigma_vv is the vv entry of the HSM kernel covariance (var0x = 0, var0v = gamma M), as in CLD-SGM.
        Use the returned eps_v_pred in `hsm_loss` and in the samplers."""
        tt = _f64(t, v_t.device)
        tt = tt.expand(v_t.shape[0]) if tt.ndim == 0 else tt
        s_vv = self.covariance(tt)[2]
        l_vv = self.cholesky(tt)[2]
        return network_out + _expand(l_vv / s_vv, v_t) * v_t

    def hsm_loss(self, eps_v_pred: torch.Tensor, eps_v: torch.Tensor, t: torch.Tensor,
                 weighting: str = "eps") -> torch.Tensor:
        """Per-sample HSM loss (B,): lambda(t) E ||s_theta - grad_v log p(u_t|x0)||^2 with s = -eps_v / l_vv,
        i.e. lambda(t) / l_vv^2 * mean over (C, H, W) of (eps_v_pred - eps_v)^2 (a mean, not a sum: a constant
        factor d = C*H*W away from the paper's sum).

        weighting:
          "eps": lambda(t) = l_vv^2 = ell_t^{-2}, the plain eps_v regression the paper trains with (sec. 3.2).
          "ml":  lambda(t) = Gamma beta(t) = g(t)^2 / 2 for the v diffusion g^2 = 2 Gamma beta, the maximum
                 likelihood weighting (CLD-SGM `loss_multiplier`); the loss becomes Gamma beta(t) / l_vv^2 * mse.
        """
        if weighting not in HSM_WEIGHTINGS:
            raise ValueError(f"weighting must be one of {HSM_WEIGHTINGS}, got {weighting!r}.")
        if eps_v_pred.shape != eps_v.shape or t.shape != (eps_v.shape[0],):
            raise ValueError(f"expected eps_v_pred and eps_v of one shape (B, C, ...) and t (B,), got "
                             f"{tuple(eps_v_pred.shape)}, {tuple(eps_v.shape)}, {tuple(t.shape)}.")
        work = torch.promote_types(eps_v.dtype, torch.float32)
        mse = (eps_v_pred.to(work) - eps_v.to(work)).pow(2).flatten(1).mean(dim=1)  # (B,)
        if weighting == "eps":
            return mse
        tt = _f64(t, eps_v.device)
        weight = self.Gamma * self.beta(tt) / self.cholesky(tt)[2] ** 2  # (B,) float64
        return mse * weight.to(mse.dtype)

    # --- moment equations (for tests and diagnostics) ----------------------------------------------------

    def moment_odes(self, t: float, m: np.ndarray, S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Right-hand sides of the mean and covariance ODEs of the linear SDE du = f(t) u dt + G(t) dW
        (the standard moment equations, e.g. Saerkkae & Solin, Applied SDEs, 2019, ch. 6), in float64:
            dm/dt = f(t) m,   dS/dt = f(t) S + S f(t)^T + G(t) G(t)^T,
        f(t) = beta(t) A, G G^T = diag(0, 2 Gamma beta(t)). m is (2,) or (2, k); S is (2, 2)."""
        b = float(self.beta(t))
        f = b * np.array([[0.0, 1.0 / self.M], [-1.0, -self.Gamma / self.M]])
        GGt = np.array([[0.0, 0.0], [0.0, 2.0 * self.Gamma * b]])
        m, S = np.asarray(m, dtype=np.float64), np.asarray(S, dtype=np.float64)
        return f @ m, f @ S + S @ f.T + GGt
