"""Latent consistency distillation: the LCD maths against diffusers' own schedulers, and short real runs of
training/distill_lcm.py (LoRA and full) whose results load in stock diffusers with LCMScheduler."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from diffusers import DDIMScheduler, DDPMScheduler, LCMScheduler, StableDiffusionPipeline
from peft.utils import get_peft_model_state_dict
from PIL import Image
from safetensors.torch import load_file

from latentdiff import LatentDiffusionPipeline, build_pipeline
from latentdiff.data.shapes import write_dataset
from latentdiff.pipelines.samplers import make_scheduler
from latentdiff.presets import SD_PROCESS
from latentdiff.training import distill_lcm
from latentdiff.training.config import parse_config
from latentdiff.training.distill_lcm import DistillLCMConfig, build_student
from latentdiff.lcm.consistency import (DDIMSolver, boundary_scalings, consistency_function, consistency_loss,
                                     guidance_embedding, predicted_origin_and_noise, teacher_ddim_step)


pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")  # tests/conftest.py


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """16 ShapesWorld images of 16x16 and a tiny-preset teacher pipeline folder."""
    root = tmp_path_factory.mktemp("lcm")
    write_dataset(root / "data", n=16, size=16, seed=0, progress=False)
    build_pipeline("tiny", seed=0).save_pretrained(root / "teacher")
    return root


def distill(root: Path, out: Path, *extra: str) -> Path:
    distill_lcm.main(["--teacher", str(root / "teacher"), "--train-data", str(root / "data"), "--resolution", "16",
                      "--batch-size", "8", "--output-dir", str(out), "--validation-every", "1000",
                      "--validation-steps", "1", "2", "--validation-prompts", "a red circle", "two blue squares",
                      "--lr-warmup-steps", "0", *extra])
    return out


def stock_images(pipe, steps: int, guidance: float = 1.0) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe("a red circle", num_inference_steps=steps, guidance_scale=guidance, output_type="np",
                generator=torch.Generator().manual_seed(0)).images


# ------------------------------------------------------------------------------------------------ the maths
def test_boundary_scalings_match_the_formula_and_lcm_scheduler():
    lcm = LCMScheduler.from_config(SD_PROCESS)  # timestep_scaling 10, sigma_data 0.5
    t = torch.tensor([0, 19, 499, 999])
    c_skip, c_out = boundary_scalings(lcm, t, torch.zeros(4, 4, 2, 2))
    assert c_skip.shape == (4, 1, 1, 1)
    for i, ti in enumerate(t.tolist()):
        s = 10.0 * ti
        assert c_skip[i].item() == pytest.approx(0.25 / (s * s + 0.25), rel=1e-6)
        assert c_out[i].item() == pytest.approx(s / (s * s + 0.25) ** 0.5, rel=1e-6)
    assert c_skip[0].item() == 1.0 and c_out[0].item() == 0.0  # f(z, 0) = z


def test_ddim_solver_is_diffusers_ddim_step_on_the_lcm_grid():
    process = DDPMScheduler.from_config(SD_PROCESS)
    solver = DDIMSolver.from_scheduler(process, 50)
    ddim = DDIMScheduler.from_config(SD_PROCESS, timestep_spacing="trailing", set_alpha_to_one=False)
    ddim.set_timesteps(50)
    lcm = LCMScheduler.from_config(SD_PROCESS, original_inference_steps=50)
    lcm.set_timesteps(50)
    # one grid: the solver's, DDIM's trailing 50 steps, and the 50-step schedule LCMScheduler samples from
    assert solver.timesteps.tolist() == sorted(ddim.timesteps.tolist()) == sorted(lcm.timesteps.tolist())
    assert solver.timesteps[0] == 19 and solver.timesteps[-1] == 999 and solver.skip == 20

    torch.manual_seed(0)
    index = torch.tensor([0, 1, 25, 49])  # t = 19 (steps to t = 0 / abar_0), 39, 519, 999
    t = solver.timesteps[index]
    z, eps = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    x0, eps_hat = predicted_origin_and_noise(eps, t, z, process.alphas_cumprod, "epsilon")
    ours = solver.step(x0, eps_hat, index)  # batched over per-sample timesteps
    for i in range(4):
        theirs = ddim.step(eps[i : i + 1], int(t[i]), z[i : i + 1]).prev_sample
        torch.testing.assert_close(ours[i : i + 1], theirs, atol=1e-5, rtol=1e-5)


def test_lcm_sampler_keeps_the_distillation_grid():
    distilled = make_scheduler("lcm", SD_PROCESS, original_inference_steps=25, timestep_scaling=5.0)
    again = make_scheduler("lcm", dict(distilled.config))  # what set_sampler("lcm") does on an LCM folder
    assert again.config.original_inference_steps == 25 and again.config.timestep_scaling == 5.0


def test_v_prediction_inverts_the_forward_process():
    process = DDPMScheduler.from_config(SD_PROCESS, prediction_type="v_prediction")
    torch.manual_seed(1)
    x0, eps, t = torch.randn(3, 4, 4, 4), torch.randn(3, 4, 4, 4), torch.tensor([5, 400, 990])
    z = process.add_noise(x0, eps, t)
    x0_hat, eps_hat = predicted_origin_and_noise(process.get_velocity(x0, eps, t), t, z, process.alphas_cumprod,
                                                 "v_prediction")
    torch.testing.assert_close(x0_hat, x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(eps_hat, eps, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="prediction_type must be"):
        predicted_origin_and_noise(z, t, z, process.alphas_cumprod, "x0")


def test_teacher_step_is_guided_ddim_and_consistency_function_keeps_the_boundary(tiny_pipe):
    unet = tiny_pipe.unet
    process = DDPMScheduler.from_config(tiny_pipe.scheduler.config)
    solver = DDIMSolver.from_scheduler(process, 50)
    ddim = DDIMScheduler.from_config(tiny_pipe.scheduler.config, timestep_spacing="trailing", set_alpha_to_one=False,
                                     clip_sample=False)  # the DPM-Solver config has no clip_sample; DDIM would clip
    ddim.set_timesteps(50)
    torch.manual_seed(0)
    z = torch.randn(2, 4, 8, 8)
    text = tiny_pipe.encode_prompt(["a red circle", "two blue squares"], "cpu", 1, False)[0]  # (2, 77, 32)
    uncond = tiny_pipe.encode_prompt([""] * 2, "cpu", 1, False)[0]
    index = torch.tensor([10, 30])
    t, w = solver.timesteps[index], torch.tensor([0.0, 3.0])
    ours = teacher_ddim_step(unet, z, t, index, text, uncond, w, solver, process.alphas_cumprod, "epsilon")
    for i in range(2):  # classifier-free guidance with scale 1 + w, then one DDIM step
        with torch.no_grad():
            e_c = unet(z[i : i + 1], t[i], encoder_hidden_states=text[i : i + 1]).sample
            e_u = unet(z[i : i + 1], t[i], encoder_hidden_states=uncond[i : i + 1]).sample
        guided = e_u + (1 + w[i]) * (e_c - e_u)
        torch.testing.assert_close(ours[i : i + 1], ddim.step(guided, int(t[i]), z[i : i + 1]).prev_sample,
                                   atol=1e-5, rtol=1e-5)

    lcm = LCMScheduler.from_config(tiny_pipe.scheduler.config)
    with torch.no_grad():
        at_zero = consistency_function(unet, z, torch.zeros(2, dtype=torch.long), text, None, lcm, process.alphas_cumprod)
    torch.testing.assert_close(at_zero, z)  # c_skip(0) = 1, c_out(0) = 0


def test_full_student_starts_as_the_teacher_and_embeds_guidance_like_the_pipelines(tiny_pipe):
    cfg = DistillLCMConfig(teacher="t", train_data="d", mode="full", time_cond_proj_dim=64)
    student = build_student(tiny_pipe.unet, cfg)
    assert student.config.time_cond_proj_dim == 64
    w = torch.tensor([1.5, 7.0])
    emb = guidance_embedding(w, 64)  # (2, 64)
    torch.testing.assert_close(emb, StableDiffusionPipeline.get_guidance_scale_embedding(tiny_pipe, w, 64))
    z, t = torch.randn(2, 4, 8, 8), torch.tensor([100, 900])
    text = tiny_pipe.encode_prompt(["a red circle"] * 2, "cpu", 1, False)[0]
    with torch.no_grad():
        torch.testing.assert_close(student(z, t, text, timestep_cond=emb).sample, tiny_pipe.unet(z, t, text).sample)


def test_losses_are_per_sample():
    pred, target = torch.zeros(2, 4, 3, 3), torch.zeros(2, 4, 3, 3)
    target[1] = 2.0
    l2, huber = consistency_loss(pred, target, "l2"), consistency_loss(pred, target, "huber", huber_c=0.5)
    torch.testing.assert_close(l2, torch.tensor([0.0, 4.0]))
    torch.testing.assert_close(huber, torch.tensor([0.0, (4.25**0.5) - 0.5]))


def test_invalid_options_raise_value_errors():
    base = ["--teacher", "t", "--train-data", "d"]
    for extra, message in ((["--mode", "distil"], "--mode must be one of"),
                           (["--w-min", "8", "--w-max", "4"], "--w-min <= --w-max"),
                           (["--loss", "l1"], "--loss must be one of"),
                           (["--ema-decay", "1.0"], "--ema-decay must be in"),
                           (["--num-ddim-timesteps", "0"], "--num-ddim-timesteps must be >= 1"),
                           (["--validation-steps", "1", "80"], r"--validation-steps must be")):
        with pytest.raises(ValueError, match=message):
            parse_config(DistillLCMConfig, base + extra)
    assert parse_config(DistillLCMConfig, base + ["--mode", "full"]).validation_guidance == 5.0  # 1 + mid w
    recipe = Path(__file__).parents[1] / "training" / "recipes" / "lcm-shapes-tiny.yaml"
    assert parse_config(DistillLCMConfig, ["--config", str(recipe)]).mode == "full"  # the shipped recipe is valid
    with pytest.raises(ValueError, match=r"--num-ddim-timesteps\) must be in \[1, 1000\]"):
        DDIMSolver.from_scheduler(DDPMScheduler.from_config(SD_PROCESS), 2000)


# ------------------------------------------------------------------------------------------------ real runs
def test_lora_distillation_resumes_and_loads_in_stock_diffusers(setup, tmp_path):
    out = distill(setup, tmp_path / "lora", "--mode", "lora", "--lora-rank", "4", "--max-steps", "2",
                  "--learning-rate", "1e-2", "--validation-every", "2", "--checkpoint-every", "2")
    grid = Image.open(out / "samples" / "step-0000002.png")
    assert grid.size == (2 * 16 + 3 * 2, 2 * 16 + 3 * 2)  # 2 prompts x (1, 2) LCM steps
    AcceleratorState._reset_state(True)
    distill(setup, out, "--mode", "lora", "--lora-rank", "4", "--max-steps", "3", "--learning-rate", "1e-2",
            "--resume", "latest")
    summary = json.loads((out / "lora" / "training_summary.json").read_text())
    assert summary["steps"] == 3 and summary["mode"] == "lora" and summary["hardware"].startswith("CPU")
    assert summary["final_loss"] is not None and np.isfinite(summary["final_loss"])
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()

    # stock diffusers: the teacher + load_lora_weights + LCMScheduler, 4 steps at guidance 1
    pipe = StableDiffusionPipeline.from_pretrained(setup / "teacher", safety_checker=None)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    teacher = stock_images(pipe, 4)
    pipe.load_lora_weights(out / "lora")
    saved = load_file(out / "lora" / "pytorch_lora_weights.safetensors")
    loaded = get_peft_model_state_dict(pipe.unet, adapter_name=pipe.get_active_adapters()[0])
    assert {"unet." + k for k in loaded} == set(saved) and any(".conv1." in k for k in saved)  # every layer arrived
    assert all(torch.equal(loaded[k[len("unet."):]], saved[k]) for k in saved)
    student = stock_images(pipe, 4)
    assert student.shape == (1, 16, 16, 3) and np.isfinite(student).all()
    assert np.abs(student - teacher).max() > 1e-3


def test_full_distillation_writes_a_pipeline_stock_diffusers_samples_in_1_and_4_steps(setup, tmp_path):
    out = distill(setup, tmp_path / "full", "--mode", "full", "--max-steps", "2", "--time-cond-proj-dim", "32",
                  "--learning-rate", "1e-3", "--loss", "l2")
    assert json.loads((out / "training_summary.json").read_text())["steps"] == 2
    stock = StableDiffusionPipeline.from_pretrained(out / "pipeline", safety_checker=None)
    assert isinstance(stock.scheduler, LCMScheduler) and stock.unet.config.time_cond_proj_dim == 32
    assert stock.scheduler.config.original_inference_steps == 50
    one, four = stock_images(stock, 1, guidance=5.0), stock_images(stock, 4, guidance=5.0)
    assert np.isfinite(one).all() and np.isfinite(four).all() and np.abs(one - four).max() > 1e-3
    ours = LatentDiffusionPipeline.from_pretrained(out / "pipeline")
    np.testing.assert_allclose(stock_images(ours, 4, guidance=5.0), four, atol=1e-5)  # same guidance embedding
