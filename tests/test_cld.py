"""Critically-damped Langevin diffusion: kernel, HSM helpers and the two samplers (latentdiff.cld).

Everything runs in float64 on tiny tensors. The sampler tests drive the schedulers with the exact score of
Gaussian toy data x0 ~ N(mu, diag(s^2)): the marginal of u_t = (x_t, v_t) is then Gaussian per dimension with
mean Phi(B) (mu, 0) and covariance (K4) with var0x = s^2 (process.py), so eps_v = -l_vv grad_v log p_t(u) is
known in closed form.
"""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad, solve_ivp

from latentdiff.cld import CLD, CLDConfig, CLDExponentialODEScheduler, SSCSScheduler

MU = torch.tensor([1.5, -0.5], dtype=torch.float64)  # toy data mean, one entry per channel
S = torch.tensor([0.5, 2.0], dtype=torch.float64)  # toy data standard deviation
SCHEDULES = ("constant", "linear")


def exact_process(scheduler) -> CLD:
    """The scheduler's process without numerical_eps: the true marginals of the forward SDE."""
    keys = ("M", "gamma", "beta_schedule", "beta", "beta_min", "beta_max", "eps")
    return CLD(CLDConfig(**{k: scheduler.config[k] for k in keys}, numerical_eps=0.0))


def marginal(p: CLD, t: float, s: torch.Tensor = S):
    """Mean (m_x, m_v) and covariance (c_xx, c_xv, c_vv) of u_t per channel, (2,) each."""
    phi_xx, _, phi_vx, _ = p.transition(p.beta_int(t))
    return (phi_xx * MU, phi_vx * MU), p.covariance(t, var0x=s**2)


def exact_eps_v(scheduler, u: torch.Tensor, t: float, s: torch.Tensor = S) -> torch.Tensor:
    """eps_v = -l_vv(t) grad_v log p_t(u) for the Gaussian toy data; u is (n, 4, 1, 1) = (x, v) x 2 channels."""
    (m_x, m_v), (c_xx, c_xv, c_vv) = marginal(exact_process(scheduler), float(t), s)
    x, v = u.chunk(2, dim=1)  # (n, 2, 1, 1)

    def view(c):
        return c.view(1, 2, 1, 1)

    dx, dv = x - view(m_x), v - view(m_v)
    score_v = -(view(c_xx) * dv - view(c_xv) * dx) / view(c_xx * c_vv - c_xv**2)  # -(Sigma^{-1}(u - m))_v
    return -float(scheduler.process.cholesky(float(t))[2]) * score_v


def run_sampler(scheduler, u: torch.Tensor, generator=None, s: torch.Tensor = S) -> torch.Tensor:
    for t in scheduler.timesteps:
        u = scheduler.step(exact_eps_v(scheduler, u, t, s), t, u, generator=generator).prev_sample
    return u


# --- kernel ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", SCHEDULES)
def test_kernel_matches_moment_odes(schedule):
    p = CLD(CLDConfig(beta_schedule=schedule, numerical_eps=0.0))
    var0x, var0v = 0.3, p.config.gamma * p.M

    def rhs(t, y):  # y = (Phi (2x2), Sigma (2x2)) flattened: the mean ODE for both unit initial conditions
        dm, dS = p.moment_odes(t, y[:4].reshape(2, 2), y[4:].reshape(2, 2))
        return np.concatenate([dm.ravel(), dS.ravel()])

    ts = [1e-4, 0.01, 0.1, 0.3, 0.7, 1.0]
    y0 = np.concatenate([np.eye(2).ravel(), np.diag([var0x, var0v]).ravel()])
    sol = solve_ivp(rhs, (0.0, 1.0), y0, t_eval=ts, rtol=1e-10, atol=1e-12, method="DOP853")
    assert sol.success
    err = 0.0
    for k, t in enumerate(ts):
        x0, v0 = torch.tensor([[2.0], [0.0]], dtype=torch.float64), torch.tensor([[0.0], [1.0]], dtype=torch.float64)
        mu_x, mu_v = p.mean(x0, v0, torch.full((2,), t, dtype=torch.float64))  # columns of Phi
        phi = torch.stack([mu_x[:, 0] / torch.tensor([2.0, 1.0]), mu_v[:, 0] / torch.tensor([2.0, 1.0])]).numpy()
        s_xx, s_xv, s_vv = (float(c) for c in p.covariance(t, var0x, var0v))
        ode_S = sol.y[4:, k].reshape(2, 2)
        err = max(err, np.abs(phi - sol.y[:4, k].reshape(2, 2)).max(),
                  np.abs(np.array([[s_xx, s_xv], [s_xv, s_vv]]) - ode_S).max())
    print(f"kernel vs moment ODEs ({schedule}): max abs error {err:.1e}")
    assert err < 1e-5, err


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_marginal_at_one_is_the_prior(schedule):
    # Tolerance: the t = 1 marginal differs from N(0, I) x N(0, M I) by the mean coefficients
    # |phi_xx|, |phi_vx| <= (1 + aB) e^{-aB} (~3e-3 for beta_int(1) = 4 or 4.05, a = 2/Gamma = 2) times x0, and by
    # ~e^{-2aB} (2aB)^2 (~1e-5) plus numerical_eps (1e-6) in the covariance.
    p = CLD(CLDConfig(beta_schedule=schedule))
    B1 = float(p.beta_int(1.0))
    phi_xx, _, phi_vx, _ = (abs(float(c)) for c in p.transition(torch.tensor(B1)))
    bound = (1 + p.a * B1) * math.exp(-p.a * B1)
    assert max(phi_xx, phi_vx) <= bound < 5e-3
    for var0x in (0.0, 1.0):  # the HSM kernel and the marginal of unit-variance data
        s_xx, s_xv, s_vv = (float(c) for c in p.covariance(1.0, var0x=var0x))
        assert abs(s_xx - 1) < 1e-4 and abs(s_xv) < 1e-4 and abs(s_vv - p.M) < 1e-4


def test_perturb_has_kernel_moments():
    p = CLD()
    t = torch.tensor([1e-3, 0.05, 0.3, 1.0], dtype=torch.float64)
    x0 = torch.tensor([1.0, -2.0, 0.5, 1.5], dtype=torch.float64).view(4, 1, 1, 1).expand(4, 2, 64, 64)
    out = p.perturb(x0, t, generator=torch.Generator().manual_seed(0))
    assert all(o.shape == x0.shape for o in out)
    mu_x, mu_v = p.mean(x0, None, t)
    s_xx, s_xv, s_vv = p.covariance(t)
    n = 2 * 64 * 64  # i.i.d. draws per sample
    for b in range(4):
        dx, dv = (out.x_t[b] - mu_x[b]).flatten(), (out.v_t[b] - mu_v[b]).flatten()
        cov = torch.cov(torch.stack([dx, dv]), correction=0)

        def se(var):  # 5 standard errors of a mean
            return 5 * math.sqrt(var / n)

        assert abs(dx.mean()) < se(s_xx[b]) and abs(dv.mean()) < se(s_vv[b])
        for got, want, scale in ((cov[0, 0], s_xx[b], s_xx[b]), (cov[0, 1], s_xv[b], torch.sqrt(s_xx[b] * s_vv[b])),
                                 (cov[1, 1], s_vv[b], s_vv[b])):
            assert abs(got - want) < 5 * math.sqrt(2 / n) * scale
    # the Cholesky factor reproduces Sigma_t
    l_xx, l_vx, l_vv = p.cholesky(t)
    assert torch.allclose(l_xx**2, s_xx) and torch.allclose(l_xx * l_vx, s_xv) and torch.allclose(l_vx**2 + l_vv**2, s_vv)


def test_score_and_hsm_loss():
    p = CLD()
    t = torch.tensor([0.01, 0.2, 0.9], dtype=torch.float64)
    x0 = torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = p.perturb(x0, t, generator=torch.Generator().manual_seed(2))
    # -eps_v / l_vv is grad_v log N(u_t; mu_t, Sigma_t), computed here by autograd
    mu_x, mu_v = p.mean(x0, None, t)
    s_xx, s_xv, s_vv = (c.view(3, 1, 1, 1) for c in p.covariance(t))
    v = out.v_t.clone().requires_grad_(True)
    dx, dv = out.x_t - mu_x, v - mu_v
    logp = -0.5 * (s_vv * dx**2 - 2 * s_xv * dx * dv + s_xx * dv**2) / (s_xx * s_vv - s_xv**2)
    (grad_v,) = torch.autograd.grad(logp.sum(), v)
    assert torch.allclose(p.score_v(out.eps_v, t), grad_v, rtol=1e-8, atol=1e-8)
    # losses are per sample; "eps" is the plain MSE, "ml" multiplies by Gamma beta(t) / l_vv^2
    pred = out.eps_v + 0.1
    mse = p.hsm_loss(pred, out.eps_v, t, "eps")
    assert mse.shape == (3,) and torch.allclose(mse, torch.full((3,), 0.01, dtype=mse.dtype))
    ml = p.hsm_loss(pred, out.eps_v, t, "ml")
    assert torch.allclose(ml, 0.01 * p.Gamma * p.beta(t) / p.cholesky(t)[2] ** 2)
    # mixed score: -eps_v_pred / l_vv = -v / Sigma_vv - network_out / l_vv
    net = torch.randn_like(x0)
    mixed = p.mixed_eps_v(net, out.v_t, t)
    l_vv = p.cholesky(t)[2].view(3, 1, 1, 1)
    assert torch.allclose(-mixed / l_vv, -out.v_t / s_vv - net / l_vv)


# --- samplers --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", SCHEDULES)
def test_sscs_recovers_gaussian_data(schedule):
    g = torch.Generator().manual_seed(0)
    sch = SSCSScheduler(beta_schedule=schedule)
    sch.set_timesteps(200)
    assert sch.timesteps[0] < 1 and abs(float(sch.timesteps[-1]) - sch.config.eps) < 1e-9  # last: denoising
    u = sch.init_noise_sample((20000, 4, 1, 1), generator=g, dtype=torch.float64)
    x = run_sampler(sch, u, generator=g)[:, :2, 0, 0]  # (n, 2)
    mean_err = (x.mean(0) - MU).abs().max().item()
    var_err = (x.var(0) / S**2 - 1).abs().max().item()
    print(f"SSCS {schedule}: |mean - mu| = {mean_err:.4f}, |var / s^2 - 1| = {var_err:.4f}")
    # Monte Carlo standard errors with n = 20000: mean <= 0.014, relative variance 0.01
    assert mean_err < 0.05 and var_err < 0.06


def push_moments(scheduler, N: int, s: torch.Tensor = S):
    """Output x mean and variance of the ODE sampler started from the exact t = 1 marginal. With the exact
    Gaussian score every step is affine in u, so pushing the mean and mean + columns of the Cholesky factor
    gives the output moments exactly (no Monte Carlo)."""
    (m_x, m_v), (c_xx, c_xv, c_vv) = marginal(exact_process(scheduler), 1.0, s)
    l_xx = c_xx.sqrt()
    l_vx = c_xv / l_xx
    l_vv = (c_vv - l_vx**2).sqrt()
    points = torch.stack([torch.cat([m_x, m_v]), torch.cat([m_x + l_xx, m_v + l_vx]),
                          torch.cat([m_x, m_v + l_vv])]).view(3, 4, 1, 1)
    scheduler.set_timesteps(N)
    out = run_sampler(scheduler, points, s=s)[:, :, 0, 0]  # (3, 4)
    mean = out[0]
    cols = out[1:] - mean  # (2, 4): images of the Cholesky columns
    cov_x = (cols[:, :2] ** 2).sum(0)  # x variance per channel
    return mean, cov_x, cols


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_ode_recovers_gaussian_data(schedule):
    # Deterministic (push_moments): the errors are discretisation errors only. Both holds are first order, so
    # doubling the steps halves the variance error.
    errors = {}
    for hold in ("x0", "eps_v"):
        for N in (10, 200, 400):
            mean, var_x, _ = push_moments(CLDExponentialODEScheduler(beta_schedule=schedule, hold=hold), N)
            errors[hold, N] = ((mean[:2] - MU).abs().max().item(), (var_x / S**2 - 1).abs().max().item())
    print(f"ODE {schedule}: (|mean - mu|, |var / s^2 - 1|) = " + ", ".join(
        f"{h}@{n}: ({m:.1e}, {v:.4f})" for (h, n), (m, v) in errors.items()))
    for hold in ("x0", "eps_v"):
        assert errors[hold, 400][0] < 1e-6 and errors[hold, 400][1] < 0.05, (hold, errors[hold, 400])
        assert 0.35 < errors[hold, 400][1] / errors[hold, 200][1] < 0.65, (hold, errors)
    assert errors["x0", 10][1] < 0.8  # gDDIM-style hold stays stable at 10 steps (~0.6 low, like DDIM here)


def test_ode_x0_hold_is_exact_for_a_single_data_point():
    # gDDIM's property: with the exact score of one data point the x0-hold step solves the ODE exactly, so 3
    # steps land on the kernel's mean and covariance at t = eps.
    s0 = torch.zeros(2, dtype=torch.float64)
    sch = CLDExponentialODEScheduler(numerical_eps=0.0)
    mean, _, cols = push_moments(sch, 3, s0)
    p = exact_process(sch)
    eps = sch.config.eps
    (m_x, m_v), (c_xx, c_xv, c_vv) = marginal(p, eps, s0)
    cov = cols.T @ cols  # (4, 4) over (x1, x2, v1, v2)
    assert torch.allclose(mean, torch.cat([m_x, m_v]), rtol=1e-8, atol=1e-10)
    for c in range(2):
        got = torch.tensor([cov[c, c], cov[c, c + 2], cov[c + 2, c + 2]])
        want = torch.tensor([c_xx[c], c_xv[c], c_vv[c]])
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-14), (got, want)


def test_ode_coefficients_match_scipy():
    p_sched = CLDExponentialODEScheduler(numerical_eps=0.0)
    p = p_sched.process
    # (E3): Psi = L_to O(dtheta) L_from^{-1} solves dz/dB = (A + Gamma e_v e_v^T Sigma^{-1}) z
    def H(B):
        s_xx, s_xv, s_vv = (float(c) for c in p.covariance_at(B))
        h = np.array([[0.0, 1 / p.M], [-1.0, -p.Gamma / p.M]])
        h[1] += p.Gamma * np.array([-s_xv, s_xx]) / (s_xx * s_vv - s_xv**2)
        return h

    worst = {}
    for B_from, B_to in ((4.0, 3.0), (0.5, 0.1), (0.04, 4e-4)):  # the last one is stiff (Sigma^{-1} ~ B^{-3})
        sol = solve_ivp(lambda B, z: (H(B) @ z.reshape(2, 2)).ravel(), (B_from, B_to), np.eye(2).ravel(),
                        rtol=1e-11, atol=1e-13, method="LSODA")
        # P = Psi + d k^T: recover Psi from P applied to a vector orthogonal to k = (rho, -1) / den
        coef = p_sched.step_coefficients(torch.tensor(B_from, dtype=torch.float64),
                                         torch.tensor(B_to, dtype=torch.float64))
        l_xx, l_vx, _ = p.cholesky_at(B_from)
        w = torch.tensor([1.0, float(l_vx / l_xx)], dtype=torch.float64)  # k^T w = 0
        Pw = torch.stack([coef[0] * w[0] + coef[1] * w[1], coef[2] * w[0] + coef[3] * w[1]]).numpy()
        want = sol.y[:, -1].reshape(2, 2) @ w.numpy()
        worst["Psi"] = max(worst.get("Psi", 0.0), np.abs(Pw - want).max() / np.abs(want).max())
        assert np.allclose(Pw, want, rtol=1e-6, atol=1e-9), (Pw, want)
    # (E5): c_n = -int Phi(B_to - r) (0, Gamma / l_vv(r)) dr, including a wide last step near t = eps
    sch = CLDExponentialODEScheduler(hold="eps_v")
    q = sch.process
    for B_from, B_to in ((4.0, 3.0), (0.04, float(q.beta_int(1e-5)))):
        coef = sch.step_coefficients(torch.tensor(B_from, dtype=torch.float64),
                                     torch.tensor(B_to, dtype=torch.float64))
        for k, j in ((4, 1), (5, 3)):
            def f(s, B_to=B_to, j=j):  # the integrand in s = log r (adaptive quadrature, not Gauss-Legendre)
                r = math.exp(s)
                return r * float(q.transition(torch.tensor(B_to - r, dtype=torch.float64))[j]) * q.Gamma / float(q.cholesky_at(r)[2])

            want = -quad(f, math.log(B_to), math.log(B_from), epsabs=1e-14, epsrel=1e-12, limit=200)[0]
            worst["c"] = max(worst.get("c", 0.0), abs(float(coef[k]) - want) / max(1.0, abs(want)))
            assert abs(float(coef[k]) - want) < 1e-9 * max(1.0, abs(want)), (k, float(coef[k]), want)
    print(f"ODE coefficients vs scipy, max relative error: {worst}")


# --- arguments and round trips -------------------------------------------------------------------------------

def test_bad_arguments_raise():
    for kwargs in ({"M": 0.0}, {"M": -1.0}, {"gamma": -0.1}, {"beta_schedule": "cosine"}, {"beta": 0.0},
                   {"beta_schedule": "linear", "beta_min": 5.0, "beta_max": 1.0}, {"eps": 0.0}, {"eps": 1.0},
                   {"numerical_eps": -1e-6}):
        with pytest.raises(ValueError):
            CLDConfig(**kwargs)
    with pytest.raises(ValueError):
        SSCSScheduler(M=-1.0)
    with pytest.raises(ValueError):
        CLDExponentialODEScheduler(timestep_spacing="karras")
    with pytest.raises(ValueError):
        CLDExponentialODEScheduler(hold="v")
    ode, sscs = CLDExponentialODEScheduler(), SSCSScheduler()
    with pytest.raises(ValueError):
        ode.step(torch.zeros(1, 2), 1.0, torch.zeros(1, 4))  # before set_timesteps
    for n in (0, -3, 2.5):
        with pytest.raises(ValueError):
            ode.set_timesteps(n)
    with pytest.raises(ValueError):
        sscs.set_timesteps(1)  # one evaluation is the denoising step; nothing left for the splitting
    ode.set_timesteps(4)
    with pytest.raises(ValueError):
        ode.step(torch.zeros(1, 3, 2, 2), ode.timesteps[0], torch.zeros(1, 4, 2, 2))  # C != 2C / 2
    with pytest.raises(ValueError):
        ode.step(torch.zeros(1, 2, 2, 2), 0.123, torch.zeros(1, 4, 2, 2))  # not a scheduler timestep
    with pytest.raises(ValueError):
        CLD().hsm_loss(torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(2), "snr")


@pytest.mark.parametrize("cls, kwargs", [
    (SSCSScheduler, {"beta_schedule": "linear", "M": 0.5, "timestep_spacing": "linear", "denoise_final": False}),
    (CLDExponentialODEScheduler, {"beta": 3.0, "gamma": 0.02, "hold": "eps_v"}),
])
def test_save_load_round_trip(tmp_path, cls, kwargs):
    sch = cls(**kwargs)
    sch.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path)

    def public(config):  # diffusers adds private bookkeeping keys such as _use_default_values
        return {k: v for k, v in dict(config).items() if not k.startswith("_")}

    assert public(loaded.config) == public(sch.config)
    assert all(public(loaded.config)[k] == v for k, v in kwargs.items())
    outputs = []
    for s in (sch, loaded):
        s.set_timesteps(5)
        g = torch.Generator().manual_seed(3)
        u = s.init_noise_sample((2, 4, 3, 3), generator=g, dtype=torch.float64)
        eps_v = torch.randn(2, 2, 3, 3, generator=g, dtype=torch.float64)
        outputs.append(s.step(eps_v, s.timesteps[1], u, generator=g).prev_sample)
    assert torch.equal(sch.timesteps, loaded.timesteps)
    assert torch.equal(outputs[0], outputs[1])
