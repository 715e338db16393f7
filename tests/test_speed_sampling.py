"""SpeeD's asymmetric timestep sampling (latentdiff/ddpm/speed.py) against the paper's released sampler."""

import pytest
import torch
from diffusers import DDPMScheduler

from latentdiff.ddpm.objective import DDPMObjective
from latentdiff.ddpm.speed import K, THRESHOLD, speed_split, speed_timesteps
from latentdiff.training.config import parse_config
from latentdiff.training.train_text_to_image import TextToImageConfig


def sd_scheduler(**kw) -> DDPMScheduler:
    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, **kw)


def test_tau_is_where_the_noise_level_stops_changing_and_steps_before_it_are_k_times_likelier():
    abar = sd_scheduler().alphas_cumprod
    p, tau = speed_split(abar)
    increment = torch.gradient((1 - abar.double()).sqrt())[0]
    assert increment[tau - 1] < THRESHOLD <= increment[tau - 2]  # argmax(grad < threshold) + 1, as the paper
    assert 500 < tau < 1000  # the SD schedule's convergence area is its last ~130 steps
    assert p.sum().item() == pytest.approx(1.0)
    assert p[0].item() / p[-1].item() == pytest.approx(K)
    assert torch.all(p[:tau] == p[0]) and torch.all(p[tau:] == p[-1])


def test_a_batch_is_draws_and_their_duals_around_tau():
    p, tau = speed_split(sd_scheduler().alphas_cumprod)
    t = speed_timesteps(p, tau, 9, torch.Generator().manual_seed(0))
    assert t.shape == (9,) and t.dtype == torch.long
    drawn, dual = t[:5], t[5:]
    assert torch.equal(dual, torch.where(drawn < tau, tau - drawn, drawn - tau)[:4])
    many = speed_timesteps(p, tau, 20000, torch.Generator().manual_seed(1))
    first = many[:10001]
    expected = (K * tau) / (K * tau + (1000 - tau))  # mass of the steps before tau
    assert (first < tau).float().mean().item() == pytest.approx(expected, abs=0.01)
    assert many.min() >= 0 and many.max() <= 999


def test_the_ddpm_objective_trains_on_speed_timesteps_and_is_reproducible():
    objective = DDPMObjective(sd_scheduler(), timestep_sampling="speed")
    z0 = torch.randn(64, 4, 8, 8)
    a = objective.perturb(z0, torch.Generator().manual_seed(3))
    b = objective.perturb(z0, torch.Generator().manual_seed(3))
    assert torch.equal(a.timesteps, b.timesteps) and torch.equal(a.noisy, b.noisy)
    p, tau = speed_split(objective.scheduler.alphas_cumprod)
    g = torch.Generator().manual_seed(3)
    torch.randn(z0.shape, generator=g)  # the objective draws the noise first, then the timesteps
    assert torch.equal(a.timesteps, speed_timesteps(p, tau, 64, g))
    with pytest.raises(ValueError, match="--timestep-shift"):
        DDPMObjective(sd_scheduler(), timestep_sampling="speed", timestep_shift=3.0)


def test_speed_is_a_ddpm_option_only(tmp_path):
    base = ["--train-data", str(tmp_path), "--vae", str(tmp_path)]
    assert parse_config(TextToImageConfig, [*base, "--timestep-sampling", "speed"]).timestep_sampling == "speed"
    with pytest.raises(ValueError, match="--timestep-sampling must be one of uniform, logit_normal for --process flow"):
        parse_config(TextToImageConfig, [*base, "--process", "flow", "--timestep-sampling", "speed"])
