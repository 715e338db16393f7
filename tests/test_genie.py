"""GENIE (Dockhorn et al. 2022): the teacher's d_γ ε by JVP, the Taylor scheduler, the head, distillation, pipeline."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from diffusers import DDIMScheduler
from safetensors.torch import load_file

from latentdiff import build_pipeline
from latentdiff.data.shapes import write_dataset
from latentdiff.genie import GammaSchedule, GENIEHead, GENIEScheduler, capture_genie_inputs, ode_derivative
from latentdiff.genie.derivative import oracle_derivative
from latentdiff.pipelines import LatentDiffusionPipeline
from latentdiff.presets import SD_PROCESS

MODEL = Path(__file__).resolve().parents[1] / "assets" / "shapes-tiny"


# ------------------------------------------------------------------------------------------------ toy model
class GaussianEps(torch.nn.Module):
    """The exact ε(x_t, t) for data x0 ~ N(μ, s² I) under γ(t) = exp(a + b t), with a UNet's call signature.

    x̄ = x0 + γ n ~ N(μ, (s² + γ²) I), so ε = E[n | x̄] = γ (x̄ − μ) / (s² + γ²), DDIM's ODE is solved by
    x̄(γ) − μ = (x̄(γ') − μ) sqrt((s² + γ²) / (s² + γ'²)), and d_γ ε along ε is (x̄ − μ) s² / (s² + γ²)².
    """

    def __init__(self, mu=0.3, s=0.5, a=math.log(0.03), b=math.log(15 / 0.03) / 999):
        super().__init__()
        self.mu, self.s, self.a, self.b = mu, s, a, b

    def gamma(self, t):
        return torch.exp(self.a + self.b * torch.as_tensor(t, dtype=torch.float64))

    def alphas_cumprod(self, n=1000):
        return 1 / (1 + self.gamma(torch.arange(n)) ** 2)

    def forward(self, x, t, encoder_hidden_states=None, return_dict=True):
        g = self.gamma(t).to(x.dtype).view(-1, *[1] * (x.ndim - 1)).expand(x.shape[0], *[1] * (x.ndim - 1))
        x_bar = x * (1 + g**2).sqrt()
        eps = g * (x_bar - self.mu) / (self.s**2 + g**2)
        return (eps,)

    def exact_derivative(self, x, t):
        g = self.gamma(t).to(x.dtype).view(-1, 1, 1, 1)
        return (x * (1 + g**2).sqrt() - self.mu) * self.s**2 / (self.s**2 + g**2) ** 2


def toy_config(toy: GaussianEps, **kw) -> dict:
    return {"num_train_timesteps": 1000, "trained_betas": betas_of(toy.alphas_cumprod()).tolist(), **kw}


def betas_of(abar: torch.Tensor) -> torch.Tensor:
    return 1 - abar / torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])


# ------------------------------------------------------------------------------------------------ derivative
def test_gamma_schedule_interpolates_the_trained_table():
    schedule = GammaSchedule(DDIMScheduler.from_config(SD_PROCESS).alphas_cumprod)
    t = torch.arange(0, 1000, 37)
    np.testing.assert_allclose(schedule.t_of_gamma(schedule.gamma(t)).numpy(), t.numpy(), atol=1e-8)
    g = torch.linspace(float(schedule.gammas[0]), float(schedule.gammas[-1]), 2001, dtype=torch.float64)
    g.requires_grad_(True)
    t_cont = schedule.t_of_gamma(g)
    (dt_dg,) = torch.autograd.grad(t_cont.sum(), g)
    assert (t_cont.diff() > 0).all() and (dt_dg > 0).all()  # monotone (PCHIP) and differentiable
    with pytest.raises(ValueError, match="integer"):
        schedule.gamma(torch.tensor([1.5]))


@pytest.mark.parametrize("mode", ["jvp", "secant"])
def test_derivative_of_gaussian_toy_is_the_closed_form(mode):
    toy = GaussianEps()
    schedule = GammaSchedule(toy.alphas_cumprod())
    t = torch.tensor([50, 300, 600, 900])
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    eps = toy(x, t)[0]
    d = ode_derivative(toy, schedule, x, t, None, eps, t_derivative=mode, t_window=1)
    exact = toy.exact_derivative(x, t)
    rel = float((d - exact).norm() / exact.norm())
    assert rel < (1e-9 if mode == "jvp" else 1e-4), rel  # the secant over ±1 step is second-order accurate


def test_jvp_derivative_matches_central_finite_difference(tiny_pipe):
    """The exact ("jvp") target against a central difference of ε(x̄, γ) = ε_θ(α(γ) x̄, t(γ)) along (v, 1)."""
    unet = tiny_pipe.unet.double().eval()
    schedule = GammaSchedule(DDIMScheduler.from_config(tiny_pipe.scheduler.config).alphas_cumprod)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    v = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    text = torch.randn(2, 77, 32, generator=g, dtype=torch.float64)
    t = torch.tensor([40, 60])  # small t: the float32 timestep embedding keeps the difference quotient exact
    gamma = schedule.gamma(t)
    d = ode_derivative(unet, schedule, x, t, text, v, t_derivative="jvp")

    def eps(x_bar, gam):  # ε_θ(x̄, γ)
        alpha = (1 + gam**2).rsqrt().view(-1, 1, 1, 1)
        return unet(alpha * x_bar, schedule.t_of_gamma(gam).float(), text).sample

    x_bar, delta = x * (1 + gamma**2).sqrt().view(-1, 1, 1, 1), 1e-4
    with torch.no_grad():
        fd = (eps(x_bar + delta * v, gamma + delta) - eps(x_bar - delta * v, gamma - delta)) / (2 * delta)
    rel = float((d - fd).norm() / fd.norm())
    assert rel < 1e-3, rel


def test_secant_derivative_is_x_jvp_plus_time_secant(tiny_pipe):
    unet = tiny_pipe.unet.double().eval()
    schedule = GammaSchedule(DDIMScheduler.from_config(tiny_pipe.scheduler.config).alphas_cumprod)
    g = torch.Generator().manual_seed(1)
    x, v = (torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(2))
    text = torch.randn(1, 77, 32, generator=g, dtype=torch.float64)
    t, k = torch.tensor([500]), 10
    d = ode_derivative(unet, schedule, x, t, text, v, t_derivative="secant", t_window=k)
    gam = schedule.gamma(t).view(-1, 1, 1, 1)
    alpha = (1 + gam**2).rsqrt()
    dx, delta = alpha * v - gam * alpha**2 * x, 1e-5  # dx/dγ = α v − γ α² x
    with torch.no_grad():
        x_part = (unet(x + delta * dx, t, text).sample - unet(x - delta * dx, t, text).sample) / (2 * delta)
        g_hi, g_lo = schedule.gamma(t + k), schedule.gamma(t - k)
        t_part = (unet(x, t + k, text).sample - unet(x, t - k, text).sample) / float(g_hi - g_lo)
    np.testing.assert_allclose(d.numpy(), (x_part + t_part).numpy(), rtol=1e-5, atol=1e-7)


def test_default_model_time_derivative_wiggles_between_trained_timesteps(report):
    """Why "secant" is the default: the exact ∂_t ε of a UNet trained at integer t is not the trend over steps."""
    unet = LatentDiffusionPipeline.from_pretrained(MODEL).unet.eval()
    schedule = GammaSchedule(DDIMScheduler.from_config(SD_PROCESS).alphas_cumprod)
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, 128, generator=g)
    rel = []
    for t in (300, 500):
        tt = torch.tensor([t, t])
        gam = schedule.gamma(tt).view(-1, 1, 1, 1).float()
        v = gam * (1 + gam**2).rsqrt() * x  # v = γ α x makes dx/dγ = α v − γ α² x = 0: only ∂ε/∂γ at fixed x is left
        exact = ode_derivative(unet, schedule, x, tt, text, v, t_derivative="jvp")
        smooth = ode_derivative(unet, schedule, x, tt, text, v, t_derivative="secant", t_window=10)
        rel.append(float((exact - smooth).norm() / smooth.norm()))
    report(f"default model: |AD ∂ε/∂γ − ±10-step secant| / |secant| at t = 300, 500: {rel[0]:.2f}, {rel[1]:.2f}")
    assert min(rel) > 0.5


@pytest.mark.slow
def test_oracle_genie_on_default_model(report):
    """GENIE with the teacher's own d_γ ε (a perfect head) against DDIM on assets/shapes-tiny, trailing spacing,
    guidance 5: RMS latent error from a DPM-Solver++(2M) 100-step solution of the same noise and prompts."""
    from diffusers import DPMSolverMultistepScheduler

    pipe = LatentDiffusionPipeline.from_pretrained(MODEL)
    unet, w = pipe.unet.eval(), 5.0
    prompts = ["a red circle", "two blue squares", "a green triangle to the left of a yellow star", "a purple cross"]
    with torch.no_grad():
        text, uncond = pipe.encode_prompt(prompts, torch.device("cpu"), 1, True)
    text2 = torch.cat([uncond, text])  # (2B, 77, D)
    x_T = torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    config = {**pipe.scheduler.config, "timestep_spacing": "trailing"}
    schedule = GammaSchedule(DDIMScheduler.from_config(config).alphas_cumprod)

    def sample(scheduler, steps, derivative=None):
        scheduler.set_timesteps(steps)
        x = x_T.clone()
        for t in scheduler.timesteps:
            with torch.no_grad():
                e_u, e_c = unet(torch.cat([x, x]), t, text2).sample.chunk(2)
                e = e_u + w * (e_c - e_u)
            kw = {} if derivative is None else {"derivative": derivative(x, t, e)}
            x = scheduler.step(e, t, x, **kw).prev_sample
        return x

    reference = sample(DPMSolverMultistepScheduler.from_config(config), 100)
    rows = {}
    for steps in (4, 6, 8):
        def rmse(x):
            return float((x - reference).pow(2).mean().sqrt())

        def genie(mode):
            oracle = oracle_derivative(unet, schedule, text2, w, t_derivative=mode, t_window=100)
            return sample(GENIEScheduler.from_config(config), steps, oracle)

        rows[steps] = (rmse(sample(GENIEScheduler.from_config(config), steps)), rmse(genie("secant")),
                       rmse(genie("jvp")))
    report("oracle GENIE, RMSE vs DPM++(2M) 100 steps (DDIM / secant k=100 / jvp): " + "; ".join(
        f"{n} steps {a:.3f} / {b:.3f} / {c:.3f}" for n, (a, b, c) in rows.items()))
    for steps in (6, 8):
        ddim, secant, jvp = rows[steps]
        assert secant < ddim and secant < jvp


# ------------------------------------------------------------------------------------------------ scheduler
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_scheduler_without_derivative_is_ddim(spacing):
    genie = GENIEScheduler.from_config({**SD_PROCESS, "timestep_spacing": spacing, "steps_offset": 1})
    ddim = DDIMScheduler.from_config(genie.config)
    assert genie.config.clip_sample is False and ddim.config.clip_sample is False
    genie.set_timesteps(7), ddim.set_timesteps(7)
    assert torch.equal(genie.timesteps, ddim.timesteps)
    g = torch.Generator().manual_seed(0)
    x = y = z = torch.randn(2, 4, 8, 8, generator=g)
    for t in genie.timesteps:
        out = torch.randn(2, 4, 8, 8, generator=g)
        x = genie.step(out, t, x).prev_sample
        y = ddim.step(out, t, y).prev_sample
        z = genie.step(out, t, z, derivative=torch.zeros_like(z)).prev_sample
    assert torch.equal(x, y)
    torch.testing.assert_close(z, y, rtol=0, atol=1e-6)


def test_taylor_step_beats_ddim_on_gaussian_toy(report):
    """With the exact ε and d_γ ε of Gaussian data, GENIE's second-order steps land much nearer the ODE's exact
    solution than DDIM's first-order ones at the same steps; with the oracle from `oracle_derivative` too."""
    toy = GaussianEps()
    schedule = GammaSchedule(toy.alphas_cumprod())
    x_T = torch.randn(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    oracle = oracle_derivative(toy, schedule, None, t_derivative="jvp")

    def sample(steps, derivative=None):
        s = GENIEScheduler.from_config(toy_config(toy, timestep_spacing="trailing"))
        s.set_timesteps(steps)
        x = x_T * (1 + toy.gamma(999) ** 2).rsqrt()  # x = α x̄ at t = 999, starting from x̄_T = x_T
        for t in s.timesteps:
            eps = toy(x, t.view(1))[0]
            x = s.step(eps, t, x, derivative=None if derivative is None else derivative(x, t, eps)).prev_sample
        return x

    g_T = float(toy.gamma(999))
    exact = toy.mu + (x_T - toy.mu) * toy.s / math.sqrt(toy.s**2 + g_T**2)  # the ODE's x̄(γ = 0) = x0 from x̄_T = x_T
    rows = []
    for steps in (4, 6, 8):
        err_ddim = float((sample(steps) - exact).abs().max())
        err_genie = float((sample(steps, lambda x, t, e: toy.exact_derivative(x, t.view(1))) - exact).abs().max())
        err_oracle = float((sample(steps, oracle) - exact).abs().max())
        rows.append((steps, err_ddim, err_genie))
        assert err_genie < 0.6 * err_ddim, (steps, err_ddim, err_genie)
        assert abs(err_oracle - err_genie) < 1e-6  # the teacher's JVP through `ode_derivative` is that derivative
    assert rows[-1][2] / rows[-1][1] < rows[0][2] / rows[0][1]  # and the gap widens with the steps (2nd vs 1st order)
    report("Gaussian toy, max error (DDIM, GENIE): " + ", ".join(f"{n} steps {a:.2e} / {b:.2e}" for n, a, b in rows))


def test_scheduler_rejects_stochastic_and_misshapen_derivatives():
    s = GENIEScheduler.from_config(SD_PROCESS)
    s.set_timesteps(4)
    x = torch.zeros(1, 4, 8, 8)
    with pytest.raises(ValueError, match="eta"):
        s.step(x, s.timesteps[0], x, eta=0.5, derivative=x)
    with pytest.raises(ValueError, match="shape"):
        s.step(x, s.timesteps[0], x, derivative=torch.zeros(1, 4, 4, 4))


# ------------------------------------------------------------------------------------------------ head
def test_head_starts_at_zero_and_round_trips_through_safetensors(tiny_pipe, tmp_path):
    unet = tiny_pipe.unet
    head = GENIEHead.for_unet(unet)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad(), capture_genie_inputs(unet) as captured:
        unet(x, torch.tensor([10, 900]), torch.randn(2, 77, 32))
    assert captured["features"].shape == (2, 16, 8, 8) and captured["temb"].shape == (2, 64)
    args = (captured["features"], x, torch.randn_like(x), captured["temb"], torch.tensor([0.1, 8.0]))
    assert torch.equal(head(*args), torch.zeros_like(x))  # zero-initialised output: GENIE starts as DDIM
    torch.nn.init.normal_(head.conv_out.weight, std=0.1)
    head.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    assert set(load_file(tmp_path / "diffusion_pytorch_model.safetensors")) == set(head.state_dict())
    loaded = GENIEHead.from_pretrained(tmp_path)
    def public(config):
        return {k: v for k, v in config.items() if not k.startswith("_")}

    assert public(loaded.config) == public(head.config)
    out = head(*args)
    assert out.abs().sum() > 0 and torch.equal(loaded(*args), out)
    with pytest.raises(ValueError, match="for_unet"):
        head(captured["features"][:, :8], *args[1:])


def test_head_cost_on_default_model_is_a_few_percent(report):
    unet = LatentDiffusionPipeline.from_pretrained(MODEL).unet
    head = GENIEHead.for_unet(unet)
    ratio = sum(p.numel() for p in head.parameters()) / sum(p.numel() for p in unet.parameters())
    report(f"GENIE head on the default model: {sum(p.numel() for p in head.parameters()):,} parameters, "
           f"{100 * ratio:.1f} % of the UNet's")
    assert ratio < 0.06


def test_head_learns_the_teacher_target(tiny_pipe):
    """A few hundred AdamW steps on one batch of teacher examples: the head fits d_γ ε (guided directions, both
    branches), from relative error 1 (the zero head) to well below."""
    from latentdiff.genie.distill import genie_loss, grid_timesteps, relative_error, teacher_example

    torch.manual_seed(0)
    unet = tiny_pipe.unet.eval()
    schedule = GammaSchedule(DDIMScheduler.from_config(tiny_pipe.scheduler.config).alphas_cumprod)
    grid = grid_timesteps(dict(tiny_pipe.scheduler.config), [4], ["trailing"])
    assert grid.tolist() == [999, 749, 499, 249]
    b = 4
    text = torch.randn(b, 77, 32)
    example = teacher_example(unet, schedule, torch.randn(b, 4, 8, 8), grid, text, torch.zeros(b, 77, 32),
                              torch.tensor([1.0, 2.0, 5.0, 7.5]))
    assert example.target.shape == (2 * b, 4, 8, 8) and example.features.shape == (2 * b, 16, 8, 8)
    head = GENIEHead.for_unet(unet, width=32)
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3)
    args = (example.features, example.sample, example.direction, example.temb, example.gamma)
    assert relative_error(head(*args), example) == 1.0
    for _ in range(300):
        loss = genie_loss(head(*args), example).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert relative_error(head(*args).detach(), example) < 0.3


# ------------------------------------------------------------------------------------------------ pipeline
def run(pipe, **kw):
    kw = {"num_inference_steps": 4, "guidance_scale": 5.0, "output_type": "np",
          "generator": torch.Generator().manual_seed(0), **kw}
    return pipe("a red circle", **kw).images


def test_pipeline_genie_needs_a_head_and_matches_ddim_with_a_zero_head(tiny_pipe, tmp_path):
    assert "taylor2" in tiny_pipe.sampler_names() and "genie" not in tiny_pipe.sampler_names()
    assert isinstance(tiny_pipe.set_sampler("genie").scheduler, GENIEScheduler)  # the paper's name is an alias
    tiny_pipe.set_sampler("taylor2")
    with pytest.raises(ValueError, match="needs a GENIE head"):
        run(tiny_pipe)
    tiny_pipe.register_modules(genie_head=GENIEHead.for_unet(tiny_pipe.unet))  # zero output: d_γ ε = 0
    genie = run(tiny_pipe)
    assert genie.shape == (1, 16, 16, 3) and np.isfinite(genie).all()
    tiny_pipe.set_sampler("ddim", clip_sample=False)
    np.testing.assert_allclose(run(tiny_pipe), genie, atol=1e-6)


def test_pipeline_genie_uses_the_head_with_and_without_guidance(tiny_pipe, tmp_path):
    head = GENIEHead.for_unet(tiny_pipe.unet)
    torch.nn.init.normal_(head.conv_out.weight, std=0.02)
    tiny_pipe.register_modules(genie_head=head)
    for guidance in (1.0, 5.0):
        tiny_pipe.set_sampler("ddim", clip_sample=False)
        ddim = run(tiny_pipe, guidance_scale=guidance)
        tiny_pipe.set_sampler("taylor2")
        genie = run(tiny_pipe, guidance_scale=guidance)
        assert genie.shape == (1, 16, 16, 3) and np.abs(genie - ddim).max() > 1e-4
    # the head is a pipeline component: saved, and loaded back by class from model_index.json
    tiny_pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["genie_head"] == ["latentdiff.pipelines.genie_head",
                                                                                     "GENIEHead"]
    loaded = LatentDiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.genie_head, GENIEHead) and isinstance(loaded.scheduler, GENIEScheduler)
    np.testing.assert_allclose(run(loaded), genie, atol=1e-6)


def test_pipeline_step_is_the_guided_taylor_step(tiny_pipe):
    """The pipeline's GENIE step by hand: the head on [uncond; cond] features with the guided ε_w as direction for
    both halves, d = d_u + w (d_c − d_u), then GENIEScheduler.step(ε_w, t, x, derivative=d)."""
    head = GENIEHead.for_unet(tiny_pipe.unet)
    torch.nn.init.normal_(head.conv_out.weight, std=0.05)
    tiny_pipe.register_modules(genie_head=head)
    tiny_pipe.set_sampler("taylor2", timestep_spacing="trailing")
    w, x_T = 4.0, torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    ours = tiny_pipe("a red circle", num_inference_steps=3, guidance_scale=w, latents=x_T, output_type="latent").images

    with torch.no_grad():
        text, uncond = tiny_pipe.encode_prompt("a red circle", torch.device("cpu"), 1, True)
        scheduler = GENIEScheduler.from_config(tiny_pipe.scheduler.config)
        scheduler.set_timesteps(3)
        x = x_T
        for t in scheduler.timesteps:
            with capture_genie_inputs(tiny_pipe.unet) as captured:
                e_u, e_c = tiny_pipe.unet(torch.cat([x, x]), t, torch.cat([uncond, text])).sample.chunk(2)
            e_w = e_u + w * (e_c - e_u)
            gamma = torch.full((2,), scheduler.gamma(t))
            d_u, d_c = head(captured["features"], torch.cat([x, x]), torch.cat([e_w, e_w]), captured["temb"],
                            gamma).chunk(2)
            x = scheduler.step(e_w, t, x, derivative=d_u + w * (d_c - d_u)).prev_sample
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------ distillation
def test_distillation_runs_resumes_and_writes_the_head(tmp_path, fresh_accelerator_state):
    from latentdiff.training import distill_genie

    write_dataset(tmp_path / "data", n=8, size=16, seed=0, progress=False)
    build_pipeline("tiny", seed=0).save_pretrained(tmp_path / "teacher")
    out = tmp_path / "out"
    argv = ["--teacher", str(tmp_path / "teacher"), "--train-data", str(tmp_path / "data"), "--output-dir", str(out),
            "--batch-size", "4", "--learning-rate", "1e-3", "--lr-warmup-steps", "0", "--checkpoint-every", "2",
            "--validation-every", "1000", "--validation-steps", "2", "--validation-prompts", "a red circle",
            "--grid-steps", "2", "3", "--grid-spacings", "trailing", "--t-window", "5"]
    distill_genie.main(argv + ["--max-steps", "2"])
    AcceleratorState._reset_state(True)
    distill_genie.main(argv + ["--max-steps", "4", "--resume", "latest"])

    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["steps"] == 4 and math.isfinite(summary["final_loss"])
    assert 0 < summary["final_relative_error"] < 2 and summary["head_parameters"] < summary["unet_parameters"]
    head = GENIEHead.from_pretrained(out / "genie_head")
    assert (out / "genie_head" / "diffusion_pytorch_model.safetensors").is_file()
    assert head.conv_out.weight.abs().sum() > 0  # trained away from the zero initialisation
    assert (out / "samples" / "step-0000004-genie.png").is_file()
    pipe = LatentDiffusionPipeline.from_pretrained(out / "pipeline")  # the teacher with its head
    pipe.set_progress_bar_config(disable=True)
    pipe.set_sampler("taylor2")
    assert run(pipe).shape == (1, 16, 16, 3)


def test_load_model_attaches_a_genie_head_and_refuses_one_that_does_not_fit(tmp_path):
    from latentdiff.bench.samplers import ReferenceSpec, SamplerBenchConfig, bench_samplers
    from latentdiff.eval import read_prompt_set
    from latentdiff.loading import load_model

    tiny = build_pipeline("tiny", seed=0)
    GENIEHead.for_unet(tiny.unet).save_pretrained(tmp_path / "head")
    loaded = load_model("preset:tiny", genie_head=str(tmp_path / "head"))
    assert isinstance(loaded.pipe.genie_head, GENIEHead) and "GENIE head" in loaded.source
    loaded.pipe.set_progress_bar_config(disable=True)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(Path(__file__).resolve().parents[1].joinpath("assets/prompts/indist.jsonl").read_text()
                       .splitlines()[0] + "\n")
    result = bench_samplers(loaded.pipe, read_prompt_set(prompts), SamplerBenchConfig(nfe=(2,), reference=ReferenceSpec("ddim", 2)),
                            progress=False)
    assert result.config.samplers[-1] == "taylor2"  # a pipeline with a head benches its Taylor sampler too

    GENIEHead(in_channels=8, feature_channels=32, temb_channels=128).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="was made for a UNet with in_channels=8"):
        load_model("preset:tiny", genie_head=str(tmp_path / "other"))
    with pytest.raises(ValueError, match="GENIE head .* not found"):
        load_model("preset:tiny", genie_head=str(tmp_path / "missing"))
