"""CLD (critically-damped Langevin diffusion) in the pipeline, the named samplers, training and remote code.

The tiny preset with a CLD UNet (in_channels 8 = (x, v), out_channels 4 = eps_v) and random weights: the tests
check shapes, equivalence with a hand-written sampling loop and a hand-computed HSM loss, errors, round trips.
"""

import json

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler

from latentdiff import build_pipeline, hub
from latentdiff.cld import CLD, CLDConfig, CLDExponentialODEScheduler, SSCSScheduler, unet_timestep
from latentdiff.pipelines import LatentDiffusionPipeline, sampler_names
from latentdiff.presets import build_components, get_preset
from latentdiff.training import train_text_to_image
from latentdiff.cld.objective import CLDObjective
from latentdiff.presets import fit_unet

from test_training import shapes16, train, unet_weights  # noqa: F401  (fixtures, helpers)

pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")  # tests/conftest.py

PROMPTS = ["a red circle", "two blue squares"]


def make_cld_pipe(scheduler=None, seed=0) -> LatentDiffusionPipeline:
    parts = build_components(fit_unet("tiny", "cld"), seed=seed)
    parts["scheduler"] = scheduler if scheduler is not None else CLDExponentialODEScheduler(mixed_score=True)
    pipe = LatentDiffusionPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def cld_pipe():
    return make_cld_pipe()


def run(pipe, seed=0, **kw):
    kw = {"num_inference_steps": 4, "guidance_scale": 4.0, "output_type": "np", **kw}
    return pipe(PROMPTS, generator=torch.Generator().manual_seed(seed), **kw).images


# ---------------------------------------------------------------------------------------------- generation
@pytest.mark.parametrize("name", ["cld-ode", "cld-sscs"])
def test_both_cld_samplers_generate_with_and_without_guidance(cld_pipe, name):
    cld_pipe.set_sampler(name)
    assert cld_pipe.scheduler.config.mixed_score is True  # the model's parameterisation carried over
    guided, plain = run(cld_pipe), run(cld_pipe, guidance_scale=1.0)
    assert guided.shape == plain.shape == (2, 16, 16, 3)
    assert np.isfinite(guided).all() and np.abs(guided - plain).max() > 1e-4
    latents = run(cld_pipe, output_type="latent")
    assert latents.shape == (2, 4, 8, 8)  # only the x half of u = (x, v) comes out


@pytest.mark.parametrize("scheduler_class", [CLDExponentialODEScheduler, SSCSScheduler])
def test_pipeline_loop_matches_a_hand_written_cld_loop(scheduler_class):
    """The pipeline = prior from init_noise_sample, UNet on (x, v) and 999 t, guidance on the output, the mixed
    score (applied here by hand, with a scheduler told mixed_score=False), scheduler.step, the x half."""
    pipe = make_cld_pipe(scheduler_class(mixed_score=True))
    w, steps = 3.0, 4
    got = run(pipe, output_type="latent", num_inference_steps=steps, guidance_scale=w)

    scheduler = scheduler_class(mixed_score=False)
    process = scheduler.process
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(PROMPTS, torch.device("cpu"), 1, True)
        text = torch.cat([uncond, cond])  # (4, 77, 32)
        scheduler.set_timesteps(steps)
        g = torch.Generator().manual_seed(0)
        u = scheduler.init_noise_sample((2, 8, 8, 8), generator=g)  # (B, 2C, h, w)
        for t in scheduler.timesteps:
            out = pipe.unet(torch.cat([u, u]), t * 999, encoder_hidden_states=text).sample  # (2B, C, h, w)
            out_uncond, out_cond = out.chunk(2)
            net = out_uncond + w * (out_cond - out_uncond)
            eps_v = process.mixed_eps_v(net, u[:, 4:], t)
            u = scheduler.step(eps_v, t, u, generator=g).prev_sample
    torch.testing.assert_close(got, u[:, :4], atol=1e-5, rtol=1e-5)


def test_save_load_round_trip_draws_the_same_images(tmp_path):
    pipe = make_cld_pipe(SSCSScheduler(mixed_score=True, beta_schedule="linear"))
    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["scheduler"][1] == "SSCSScheduler"
    loaded = LatentDiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.scheduler, SSCSScheduler) and loaded.process == "cld"
    assert loaded.scheduler.config.beta_schedule == "linear" and loaded.scheduler.config.mixed_score is True
    np.testing.assert_array_equal(run(loaded), run(pipe))  # SSCS is stochastic: same generator, same noise


def test_wrong_scheduler_or_sampler_raises_and_says_what_to_use(cld_pipe, tiny_pipe):
    assert cld_pipe.sampler_names() == ["cld-sscs", "cld-ode"] and "cld-ode" not in tiny_pipe.sampler_names()
    cld_pipe.scheduler = DPMSolverMultistepScheduler()
    with pytest.raises(ValueError, match="DPMSolverMultistepScheduler is for a DDPM-family.*is a CLD model.*cld-sscs, cld-ode"):
        run(cld_pipe)
    tiny_pipe.scheduler = CLDExponentialODEScheduler()
    with pytest.raises(ValueError, match="is for a CLD model.*but this UNet .in_channels 4, out_channels 4. is a DDPM-family"):
        run(tiny_pipe)
    ok = make_cld_pipe()
    with pytest.raises(ValueError, match="'ddim' is for a DDPM-family.*choose one of: cld-sscs, cld-ode"):
        ok.set_sampler("ddim")
    with pytest.raises(ValueError, match="'cld-ode' is for a CLD model.*choose one of: ddim"):
        build_pipeline("tiny").set_sampler("cld-ode")
    assert sampler_names("cld") == ["cld-sscs", "cld-ode"] and "cld-ode" in sampler_names()


# ---------------------------------------------------------------------------------------------- training step
@pytest.mark.parametrize("weighting, mixed", [("eps", True), ("ml", False)])
def test_cld_step_loss_is_hsm_loss_by_hand(weighting, mixed):
    process = CLD(CLDConfig())
    objective = CLDObjective(process, weighting, mixed)
    x0 = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    batch = objective.perturb(x0, generator=torch.Generator().manual_seed(2))
    net = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    loss = objective.loss(net, batch)

    # the same draws by hand: t ~ U[eps, 1], then eps_x, eps_v; the HSM kernel (v0 marginalised) from its factors
    g = torch.Generator().manual_seed(2)
    eps = process.config.eps
    t = eps + (1 - eps) * torch.rand(3, generator=g)
    eps_x, eps_v = torch.randn(x0.shape, generator=g), torch.randn(x0.shape, generator=g)
    t64 = t.double()
    phi_xx, _, phi_vx, _ = (c.view(3, 1, 1, 1) for c in process.transition(process.beta_int(t64)))
    l_xx, l_vx, l_vv = (c.view(3, 1, 1, 1) for c in process.cholesky(t64))
    x_t = (phi_xx * x0 + l_xx * eps_x).float()
    v_t = (phi_vx * x0 + l_vx * eps_x + l_vv * eps_v).float()
    torch.testing.assert_close(batch.t, t)
    torch.testing.assert_close(batch.timesteps, t * 999)
    torch.testing.assert_close(batch.noisy, torch.cat([x_t, v_t], dim=1))
    torch.testing.assert_close(batch.eps_v, eps_v)

    s_vv = process.covariance(t64)[2].view(3, 1, 1, 1)
    pred = net + (l_vv / s_vv).float() * v_t if mixed else net  # mixed score: eps_v = net + l_vv v / Sigma_vv
    mse = (pred - eps_v).pow(2).mean(dim=(1, 2, 3))
    weight = process.Gamma * process.beta(t64) / l_vv.flatten() ** 2 if weighting == "ml" else torch.ones(3)
    torch.testing.assert_close(loss, mse * weight.float())
    torch.testing.assert_close(loss, process.hsm_loss(pred, batch.eps_v, batch.t, weighting))


def test_unet_time_mapping_is_shared():
    assert float(unet_timestep(torch.tensor(1.0))) == 999.0 and float(unet_timestep(torch.tensor(0.5))) == 499.5


# ---------------------------------------------------------------------------------------------- training runs
def test_cld_training_run_writes_a_folder_the_pipeline_samples(shapes16, tmp_path):
    out = train(shapes16, tmp_path / "cld", "--process", "cld", "--max-steps", "2", "--validation-every", "2")
    assert (out / "samples" / "step-0000002.png").is_file()
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["steps"] == 2 and np.isfinite(summary["final_loss"])
    pipe = LatentDiffusionPipeline.from_pretrained(out / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, CLDExponentialODEScheduler) and pipe.process == "cld"
    assert pipe.unet.config.in_channels == 8 and pipe.unet.config.out_channels == 4
    config = pipe.scheduler.config
    assert (config.M, config.gamma, config.beta_schedule, config.mixed_score) == (0.25, 0.04, "constant", True)
    images = run(pipe, num_inference_steps=3)
    assert images.shape == (2, 16, 16, 3) and np.isfinite(images).all()


def test_killed_and_resumed_cld_run_ends_with_the_same_weights(shapes16, tmp_path):
    from accelerate.state import AcceleratorState

    args = ("--process", "cld", "--max-steps", "3", "--checkpoint-every", "10", "--use-ema", "true")
    straight = train(shapes16, tmp_path / "straight", *args)
    AcceleratorState._reset_state(True)
    train(shapes16, tmp_path / "sliced", *args, "--stop-after", "1")
    AcceleratorState._reset_state(True)
    sliced = train(shapes16, tmp_path / "sliced", *args, "--resume", "latest")
    a, b = unet_weights(straight), unet_weights(sliced)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6


def test_cld_options_and_pretrained_process_are_checked(shapes16, tmp_path):
    base = ["--train-data", str(shapes16 / "data"), "--vae", str(shapes16 / "vae")]
    with pytest.raises(ValueError, match="--process must be one of ddpm, cld"):
        train_text_to_image.parse_config(train_text_to_image.TextToImageConfig, base + ["--process", "edm"])
    with pytest.raises(ValueError, match="--cld-loss-weighting must be one of eps, ml"):
        train_text_to_image.parse_config(train_text_to_image.TextToImageConfig,
                                         base + ["--process", "cld", "--cld-loss-weighting", "snr"])
    with pytest.raises(ValueError, match="--cld-mass.*M \\(the mass\\) must be a positive"):
        train_text_to_image.parse_config(train_text_to_image.TextToImageConfig,
                                         base + ["--process", "cld", "--cld-mass", "-1"])
    with pytest.raises(ValueError, match="--noise-offset"):
        train_text_to_image.parse_config(train_text_to_image.TextToImageConfig,
                                         base + ["--process", "cld", "--noise-offset", "0.1"])
    build_pipeline("tiny").save_pretrained(tmp_path / "ddpm")
    with pytest.raises(ValueError, match="--process cld needs a CLD.*is a DDPM-family.*model.*--process ddpm"):
        train_text_to_image.main(["--pretrained", str(tmp_path / "ddpm"), "--train-data", str(shapes16 / "data"),
                                  "--output-dir", str(tmp_path / "out"), "--process", "cld"])


# ---------------------------------------------------------------------------------------------- remote code
def test_staged_cld_folder_loads_in_stock_diffusers_with_remote_code(cld_pipe, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no saved login plays a part
    monkeypatch.delenv("HF_TOKEN", raising=False)
    cld_pipe.save_pretrained(tmp_path / "model")
    staged = hub.stage_folder(tmp_path / "model", tmp_path / "stage", "someone/cld", samples=False)
    assert staged.loader == "remote-code" and staged.validated
    files = {f.path for f in staged.files}
    assert {"pipeline_latent_diffusion.py", "samplers.py", "scheduling_cld.py", "cld_process.py",
            "scheduler/scheduling_cld.py", "scheduler/cld_process.py"} <= files
    index = json.loads((staged.folder / "model_index.json").read_text())
    assert index["scheduler"] == ["scheduling_cld", "CLDExponentialODEScheduler"]
    assert "critically-damped Langevin diffusion" in (staged.folder / "README.md").read_text()

    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(staged.folder)
    loaded = DiffusionPipeline.from_pretrained(staged.folder, trust_remote_code=True)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded).__name__ == "LatentDiffusionPipeline"
    assert type(loaded.scheduler).__name__ == "CLDExponentialODEScheduler" and loaded.scheduler.config.mixed_score
    np.testing.assert_allclose(run(loaded), run(cld_pipe), atol=1e-6)
    loaded.set_sampler("cld-sscs")  # the samplers and the CLD scheduler travelled with the pipeline file
    assert type(loaded.scheduler).__name__ == "SSCSScheduler" and run(loaded).shape == (2, 16, 16, 3)
