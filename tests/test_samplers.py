import pytest
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from latentdiff.pipelines.samplers import SAMPLERS, make_scheduler
from latentdiff.presets import SD_PROCESS

REQUIRED = ["ddim", "euler", "euler_a", "heun", "dpm++2m", "dpm++2m_karras", "dpm++3m_sde", "unipc", "deis", "lcm"]


def test_required_samplers_exist():
    assert set(REQUIRED) <= set(SAMPLERS)


def test_named_options_and_process_carry_over():
    base = DDIMScheduler.from_config({**SD_PROCESS, "prediction_type": "v_prediction"}).config
    s = make_scheduler("dpm++3m_sde", base)
    assert isinstance(s, DPMSolverMultistepScheduler)
    assert s.config.algorithm_type == "sde-dpmsolver++" and s.config.solver_order == 3
    assert s.config.prediction_type == "v_prediction" and s.config.beta_end == SD_PROCESS["beta_end"]


def test_options_override_defaults():
    s = make_scheduler("dpm++2m", SD_PROCESS, solver_order=3, use_karras_sigmas=True)
    assert s.config.solver_order == 3 and s.config.use_karras_sigmas


def test_bad_names_and_options():
    with pytest.raises(ValueError, match="Unknown sampler 'k_lms'. Choose one of: ddim"):
        make_scheduler("k_lms", SD_PROCESS)
    with pytest.raises(ValueError, match=r"has no option\(s\) \['karras'\]"):
        make_scheduler("euler", SD_PROCESS, karras=True)


def test_ddim_from_a_config_without_clip_sample_does_not_clip_latents():
    """A folder saved with DPM-Solver has no `clip_sample`; DDIM/DDPM built from it must not fall back to their
    pixel-space default of clipping x0 to [-1, 1] (that moves DDIM 1.4 latent RMSE off the ODE solution)."""
    dpm_config = {k: v for k, v in SD_PROCESS.items() if k != "clip_sample"}  # as assets/shapes-tiny/scheduler has it
    for name in ("ddim", "ddpm"):
        assert make_scheduler(name, dpm_config).config.clip_sample is False
    assert make_scheduler("ddim", {**dpm_config, "clip_sample": True}).config.clip_sample is True  # an explicit choice stays
