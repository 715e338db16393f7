"""The held-out denoising loss (latentdiff/eval/denoising_loss.py): the speedrun's lower-noise companion of the
score."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from latentdiff.eval.denoising_loss import denoising_loss, loss_space

SCENES = "shapesworld:heldout?seed=1&n=16&fresh=false"
EPS = {"process": "ddpm", "prediction_type": "epsilon", "snr_gamma": 5.0, "timestep_sampling": "speed",
       "timestep_shift": 1.0, "noise_offset": 0.1, "resolution": 16}


class ZeroUNet(torch.nn.Module):
    """Predicts 0 everywhere: its eps-space error is E[eps^2] = 1 whatever the timesteps."""

    dtype, device = torch.float32, torch.device("cpu")

    def forward(self, sample, timesteps, encoder_hidden_states):
        return SimpleNamespace(sample=torch.zeros_like(sample))


def parts(pipe, unet=None):
    return SimpleNamespace(vae=pipe.vae, unet=unet or pipe.unet, encode_prompt=pipe.encode_prompt,
                           scheduler=pipe.scheduler, config=pipe.config)


def test_every_run_is_measured_unweighted_with_uniform_timesteps(tiny_pipe):
    # a zero prediction's eps error is 1 in expectation; min-SNR weights, SpeeD timesteps or offset noise (this run's
    # training options) would move it far from 1, and they must not apply to the measurement
    zero = parts(tiny_pipe, ZeroUNet())
    got = denoising_loss(zero, SCENES, training_config=EPS, draws=4)
    assert got["loss"] == pytest.approx(1.0, abs=0.1) and got["space"] == "ddpm/epsilon" and got["images"] == 16
    plain = {**EPS, "snr_gamma": None, "timestep_sampling": "uniform", "noise_offset": 0.0}
    assert denoising_loss(zero, SCENES, training_config=plain, draws=4)["loss"] == got["loss"]


def test_the_same_model_gives_the_same_number_and_another_model_another(tiny_pipe):
    from latentdiff import build_pipeline

    a = denoising_loss(parts(tiny_pipe), SCENES, training_config=EPS, draws=2)
    assert denoising_loss(parts(tiny_pipe), SCENES, training_config=EPS, draws=2) == a
    other = build_pipeline("tiny", seed=1)
    assert denoising_loss(parts(other), SCENES, training_config=EPS, draws=2)["loss"] != a["loss"]
    # more draws: more timesteps and noise per scene, a different (not a repeated) sample
    assert denoising_loss(parts(tiny_pipe), SCENES, training_config=EPS, draws=3)["loss"] != a["loss"]


def test_a_folder_without_its_training_config_is_one_clear_error(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path / "m")
    from latentdiff.pipelines import LatentDiffusionPipeline

    pipe = LatentDiffusionPipeline.from_pretrained(str(tmp_path / "m"))
    with pytest.raises(ValueError, match="training_config.json"):
        denoising_loss(pipe, SCENES)
    (tmp_path / "m" / "training_config.json").write_text(json.dumps(EPS))
    assert denoising_loss(pipe, SCENES, draws=1)["space"] == "ddpm/epsilon"
    with pytest.raises(ValueError, match="draws"):
        denoising_loss(pipe, SCENES, draws=0)


def test_the_loss_space_names_process_and_target():
    assert loss_space({"process": "ddpm", "prediction_type": "v_prediction"}) == "ddpm/v_prediction"
    assert loss_space({"process": "flow"}) == "flow/velocity" and loss_space({"process": "cld"}) == "cld/score"
