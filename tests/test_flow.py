"""Flow matching (rectified flow): the objective, the process row and its samplers, training a tiny model, stock
diffusers loading the saved folder, and the methods that refuse a flow model (LCM, GENIE)."""

import json

import numpy as np
import pytest
import torch
from diffusers import (DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler,
                       StableDiffusionPipeline)

from latentdiff import build_pipeline
from latentdiff.cli import main as cli_main
from latentdiff.flow import FlowObjective
from latentdiff.pipelines import LatentDiffusionPipeline, sampler_names
from latentdiff.pipelines.flow_process import flow_config
from latentdiff.pipelines.processes import process_of
from latentdiff.training import distill_lcm, train_text_to_image

from test_training import shapes16, train  # noqa: F401  (fixtures, helpers)

pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")  # tests/conftest.py

PROMPTS = ["a red circle", "two blue squares"]


def flow_pipe(sampler="flow-euler", shift=1.0) -> LatentDiffusionPipeline:
    pipe = build_pipeline("tiny")
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    pipe.set_sampler(sampler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------------------------- objective
def test_perturb_is_the_straight_path_and_the_target_its_velocity():
    z0 = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    objective = FlowObjective(timestep_sampling="uniform")
    noised = objective.perturb(z0, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)  # the same draws by hand: eps, then t
    eps = torch.randn(z0.shape, generator=g)
    t = torch.rand(6, generator=g)
    torch.testing.assert_close(noised.timesteps, 1000 * t)
    torch.testing.assert_close(noised.noisy, (1 - t.view(-1, 1, 1, 1)) * z0 + t.view(-1, 1, 1, 1) * eps)
    torch.testing.assert_close(noised.target, eps - z0)
    loss = objective.loss(noised.target + 0.5, noised)
    assert loss.shape == (6,) and torch.allclose(loss, torch.full((6,), 0.25))


def test_logit_normal_density_and_shift_move_the_timesteps():
    z0 = torch.zeros(4000, 1, 1, 1)
    ts = {}
    for name, objective in {"uniform": FlowObjective(timestep_sampling="uniform"),
                            "logit": FlowObjective(timestep_sampling="logit_normal"),
                            "shift3": FlowObjective(shift=3.0, timestep_sampling="logit_normal")}.items():
        ts[name] = objective.perturb(z0, generator=torch.Generator().manual_seed(0)).timesteps / 1000
    assert abs(float(ts["uniform"].mean()) - 0.5) < 0.02 and abs(float(ts["logit"].mean()) - 0.5) < 0.02
    assert float(ts["logit"].std()) < float(ts["uniform"].std())  # mass in the middle
    assert float(ts["shift3"].mean()) > 0.65  # towards noise (SD3 eq. 23)
    with pytest.raises(ValueError, match="--timestep-shift must be > 0"):
        FlowObjective(shift=0.0)


# ---------------------------------------------------------------------------------------------- process and samplers
@pytest.mark.parametrize("scheduler", [FlowMatchEulerDiscreteScheduler(), FlowMatchHeunDiscreteScheduler(),
                                       DPMSolverMultistepScheduler(use_flow_sigmas=True,
                                                                   prediction_type="flow_prediction")])
def test_flow_schedulers_are_recognised(scheduler):
    assert process_of(scheduler.config).name == "flow"
    assert process_of(DPMSolverMultistepScheduler().config).name == "ddpm"


def test_switching_flow_samplers_keeps_the_shift_and_refuses_other_processes():
    pipe = flow_pipe(shift=2.5)
    assert pipe.process == "flow" and pipe.sampler_names() == sampler_names("flow")
    for name in ("flow-heun", "flow-dpm++2m", "flow-unipc", "flow-euler"):
        pipe.set_sampler(name)
        config = pipe.scheduler.config
        assert config.get("shift", config.get("flow_shift")) == 2.5
    with pytest.raises(ValueError, match="'ddim' is for a DDPM-family.*flow-euler"):
        pipe.set_sampler("ddim")
    with pytest.raises(ValueError, match="'taylor2' is for a DDPM-family"):
        pipe.set_sampler("taylor2")  # GENIE's sampler solves the VP ODE
    with pytest.raises(ValueError, match="'flow-euler' is for a flow-matching"):
        build_pipeline("tiny").set_sampler("flow-euler")


@pytest.mark.parametrize("sampler, atol", [("flow-euler", 1e-4), ("flow-heun", 1e-4), ("flow-dpm++2m", 2e-2),
                                           ("flow-unipc", 2e-2)])
def test_samplers_follow_the_exact_velocity_to_the_data(sampler, atol):
    # For data that is one point c, the exact velocity is v(x_t, t) = (x_t - c) / t (eps = (x_t - (1 - t) c) / t):
    # every flow sampler, with guidance, must carry the noise to c. (The multistep solvers evaluate at integer
    # timesteps round(1000 sigma), a 0.1% mismatch with their sigma, hence their looser tolerance.)
    pipe = flow_pipe(sampler)
    c = torch.linspace(-1, 1, 4 * 8 * 8).reshape(1, 4, 8, 8)

    def velocity(sample, timestep, *args, **kwargs):
        t = (torch.as_tensor(timestep, dtype=sample.dtype) / 1000).reshape(-1, *([1] * (sample.ndim - 1)))
        return ((sample - c) / t,)

    pipe.unet.forward = velocity
    out = pipe(PROMPTS, num_inference_steps=6, guidance_scale=3.0, output_type="latent",
               generator=torch.Generator().manual_seed(0)).images
    torch.testing.assert_close(out, c.expand(2, -1, -1, -1), atol=atol, rtol=0)


# ---------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def flow_model(shapes16, tmp_path_factory):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    out = train(shapes16, tmp_path_factory.mktemp("flow") / "run", "--process", "flow", "--max-steps", "2",
                "--timestep-sampling", "logit_normal", "--timestep-shift", "2.0")
    AcceleratorState._reset_state(True)
    return out


def test_a_tiny_flow_model_trains_and_samples(flow_model):
    summary = json.loads((flow_model / "training_summary.json").read_text())
    assert summary["steps"] == 2 and np.isfinite(summary["final_loss"])
    pipe = LatentDiffusionPipeline.from_pretrained(flow_model / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.process == "flow" and isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
    assert pipe.scheduler.config.flow_shift == 2.0 and pipe.scheduler.config.prediction_type == "flow_prediction"
    for sampler in ("flow-dpm++2m", "flow-euler", "flow-heun"):
        pipe.set_sampler(sampler)
        a, b = (pipe(PROMPTS, num_inference_steps=3, guidance_scale=4.0, output_type="np",
                     generator=torch.Generator().manual_seed(0)).images for _ in range(2))
        assert a.shape == (2, 16, 16, 3) and np.isfinite(a).all() and np.array_equal(a, b)


def test_stock_diffusers_loads_the_flow_folder_and_draws_the_same_image(flow_model):
    ours = LatentDiffusionPipeline.from_pretrained(flow_model / "pipeline")
    stock = StableDiffusionPipeline.from_pretrained(flow_model / "pipeline", safety_checker=None)
    assert type(stock.scheduler) is DPMSolverMultistepScheduler
    images = [p(PROMPTS, num_inference_steps=4, guidance_scale=4.0, output_type="np",
                generator=torch.Generator().manual_seed(3)).images for p in (ours, stock)]
    np.testing.assert_allclose(images[0], images[1], atol=1e-5)


def test_generate_eval_and_bench_samplers_run_a_flow_model(flow_model, tmp_path, capsys):
    model = str(flow_model / "pipeline")
    assert cli_main(["generate", "a red circle", "--model", model, "--sampler", "flow-heun", "--steps", "3",
                     "-o", str(tmp_path / "x.png")]) == 0
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    assert cli_main(["eval", "--model", model, "--prompts", str(prompts), "--sampler", "flow-euler", "--steps", "3",
                     "--images-per-prompt", "1", "--json", str(tmp_path / "e.json")]) == 0
    assert cli_main(["bench", "samplers", "--model", model, "--prompts", str(prompts), "--nfe", "3,4",
                     "--reference-steps", "8", "--check-steps", "4", "--out", str(tmp_path / "b")]) == 0
    rows = json.loads((tmp_path / "b" / "samplers.json").read_text())["rows"]
    assert {r["sampler"] for r in rows} == {"flow-euler", "flow-heun", "flow-dpm++2m", "flow-unipc"}
    heun_even = [r for r in rows if r["sampler"] == "flow-heun" and r["nfe"] == 4]
    assert all(r["status"] == "ok" for r in rows if r not in heun_even)
    assert heun_even[0]["status"] == "skipped" and "no NFE of exactly 4" in heun_even[0]["reason"]  # 2 steps - 1


def test_lcm_and_genie_refuse_a_flow_teacher(flow_model, shapes16, tmp_path):
    with pytest.raises(ValueError, match="LCM distillation of .* needs a DDPM-family .* is a flow-matching"):
        distill_lcm.main(["--teacher", str(flow_model / "pipeline"), "--train-data", str(shapes16 / "data"),
                          "--resolution", "16", "--output-dir", str(tmp_path / "lcm")])
    from latentdiff.training import distill_genie

    with pytest.raises(ValueError, match="GENIE distillation of .* needs a DDPM-family .* is a flow-matching"):
        distill_genie.main(["--teacher", str(flow_model / "pipeline"), "--train-data", str(shapes16 / "data"),
                            "--output-dir", str(tmp_path / "genie")])


def test_flow_options_are_checked():
    base = ["--train-data", "d", "--vae", "v", "--process", "flow"]
    with pytest.raises(ValueError, match="--noise-offset"):
        train_text_to_image.parse_config(train_text_to_image.TextToImageConfig, base + ["--noise-offset", "0.1"])
    assert flow_config(shift=3)["flow_shift"] == 3.0
