"""The noise processes a model can be trained with, one row each: what generation needs to know about a process.

    PROCESSES["ddpm"]   the VP process of DDPM / Stable Diffusion (Ho et al. 2020): every diffusers VP scheduler
    PROCESSES["cld"]    critically-damped Langevin diffusion (Dockhorn et al. 2022): scheduling_cld.py

A row says how to recognise a scheduler config of the process, which config entries describe the process (they
carry over when the sampler changes), how the UNet's channels relate to the latent channels, and the four
generation-time hooks the pipeline's loop calls: the initial sample, the model input, the timestep in model units
and the final data latent. The pipeline asks the row; it never compares process names. Adding a process is one
file of its own plus one row here.

This file imports only torch, diffusers and its siblings, so it travels with the pipeline files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from diffusers.utils.torch_utils import randn_tensor

from . import flow_process, scheduling_cld
from .sampler_spec import SamplerSpec, SolverRun


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _same_channels(latent_channels: int) -> tuple[int, int]:
    return latent_channels, latent_channels


def gaussian_noise(scheduler, shape: tuple[int, ...], generator, device, dtype) -> torch.Tensor:
    """N(0, I) (B, C, h, w) scaled by the scheduler's `init_noise_sigma` (1 for VP, sigma_max for k-style)."""
    return randn_tensor(shape, generator=generator, device=device, dtype=dtype) * getattr(scheduler, "init_noise_sigma", 1.0)


def scaled_model_input(scheduler, sample: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The scheduler's `scale_model_input` where it has one (k-style schedulers divide by sqrt(sigma^2 + 1))."""
    scale = getattr(scheduler, "scale_model_input", None)
    return sample if scale is None else scale(sample, t)


# Config entries of VP schedulers that describe the trained process rather than a sampler. Only these carry over
# from the current scheduler, so that switching e.g. from "dpm++2m_karras" to "euler" does not drag Karras sigmas
# (or any other sampler-specific option) along.
VP_PROCESS_KEYS = (
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
    "timestep_spacing", "steps_offset", "rescale_betas_zero_snr", "set_alpha_to_one", "clip_sample",
    "clip_sample_range", "sample_max_value", "thresholding", "dynamic_thresholding_ratio", "timestep_type",
    # A latent consistency model's distillation grid and boundary scalings (training/distill_lcm.py), so that
    # set_sampler("lcm") on an LCM folder keeps the ones it was distilled with.
    "original_inference_steps", "timestep_scaling",
)


@dataclass(frozen=True)
class Process:
    name: str  # what --process and SamplerSpec.process call it
    description: str  # one line for messages
    default_sampler: str  # the named sampler (samplers.py) a new model of this process is saved with
    recognise: Callable[[dict], bool]  # is this scheduler config one of this process's?
    process_keys: tuple[str, ...]  # scheduler config entries that describe the process (kept across samplers)
    unet_channels: Callable[[int], tuple[int, int]] = _same_channels  # latent channels C -> (UNet in, UNet out)
    samplers: dict[str, SamplerSpec] = field(default_factory=dict)  # named samplers of its own (samplers.py adds them)
    normalise: Callable[[dict], dict] = _identity  # a scheduler config -> the same process in every sampler's terms
    # whether StableDiffusionPipeline's legacy scheduler-config fix-ups (steps_offset -> 1, clip_sample -> False) are
    # applied to diffusers' schedulers of this process when a pipeline is built, as stock applies them
    stock_config_fixups: bool = False
    # benchmarks (latentdiff bench samplers): the samplers compared by default, a reference solution of the
    # sampling ODE (a fine, exact solver) and an independent solver it is checked against
    # one line of the process's settings in a scheduler config, for model cards
    describe: Callable[[dict], str] = lambda c: (f"{c.get('num_train_timesteps')} training steps, {c.get('beta_schedule')}"
                                                 f" betas, predicts {c.get('prediction_type')}")
    bench_samplers: tuple[str, ...] = ()
    reference: SolverRun | None = None
    reference_check: SolverRun | None = None
    # generation-time hooks, in the order the loop calls them
    initial_noise: Callable[..., torch.Tensor] = gaussian_noise  # (scheduler, shape, generator, device, dtype)
    model_input: Callable[..., torch.Tensor] = scaled_model_input  # (scheduler, sample, t) -> the UNet's input
    model_timestep: Callable[[torch.Tensor], torch.Tensor] = _identity  # scheduler t -> the UNet's timestep input
    data_latents: Callable[[torch.Tensor], torch.Tensor] = _identity  # final sample -> data latent (B, C, h, w)

    def matches_unet(self, unet_config: Any) -> bool:
        """Whether a UNet's channel counts fit this process."""
        return self.unet_channels(unet_config.out_channels) == (unet_config.in_channels, unet_config.out_channels)


def _is_vp(config: dict) -> bool:
    return not any(row.recognise(config) for name, row in PROCESSES.items() if name != "ddpm")


PROCESSES: dict[str, Process] = {
    "ddpm": Process(
        "ddpm", "a DDPM-family (VP) model", "dpm++2m", lambda c: _is_vp(c), VP_PROCESS_KEYS, stock_config_fixups=True,
        bench_samplers=("ddim", "euler", "heun", "lms", "dpm++2m", "dpm++2m_karras", "unipc", "deis"),
        # "trailing": timesteps 999, 998, ..., 0, the whole trained chain. (With the usual "leading" spacing and
        # steps_offset 1, 1000 steps would start at t = 1000, past the end of the noise schedule.) No clipping of
        # the predicted x0 to [-1, 1] (DDIMScheduler's default, meant for pixels): latents are not bounded, and
        # clipping changes the limit the sampler converges to. Checked against DPM-Solver++(3M) at 500 steps.
        reference=SolverRun("ddim", 1000, {"timestep_spacing": "trailing", "clip_sample": False}),
        reference_check=SolverRun("dpm++2m", 500, {"solver_order": 3, "timestep_spacing": "trailing"})),
    "cld": Process(
        "cld", "a CLD model (critically-damped Langevin diffusion)", "cld-ode", scheduling_cld.is_cld_config,
        scheduling_cld.CLD_PROCESS_KEYS, unet_channels=scheduling_cld.unet_channels,
        initial_noise=scheduling_cld.initial_noise, model_timestep=scheduling_cld.unet_timestep,
        data_latents=scheduling_cld.data_latents, describe=scheduling_cld.describe, bench_samplers=("cld-ode", "cld-sscs"),
        # the probability-flow ODE on its default (quadratic) time grid, checked on a linear grid
        reference=SolverRun("cld-ode", 1000), reference_check=SolverRun("cld-ode", 500, {"timestep_spacing": "linear"})),
    "flow": Process(
        "flow", "a flow-matching (rectified flow) model", "flow-dpm++2m", flow_process.is_flow_config,
        flow_process.FLOW_PROCESS_KEYS, samplers=flow_process.SAMPLERS, normalise=flow_process.normalise,
        describe=flow_process.describe, bench_samplers=flow_process.BENCH_SAMPLERS, reference=flow_process.REFERENCE,
        reference_check=flow_process.REFERENCE_CHECK),
}


def process_of(config: Any) -> Process:
    """The row of the process a scheduler config (any scheduler's `config`) describes."""
    config = dict(config)
    for name, row in PROCESSES.items():
        if name != "ddpm" and row.recognise(config):
            return row
    return PROCESSES["ddpm"]


def get_process(name: str) -> Process:
    if name not in PROCESSES:
        raise ValueError(f"Unknown process {name!r}; choose one of {', '.join(PROCESSES)}.")
    return PROCESSES[name]


def require_process(scheduler_config: Any, name: str, what: str) -> None:
    """A ValueError unless the scheduler config is of process `name`: for methods made for one process (e.g. LCM
    and GENIE distil a VP teacher)."""
    found = process_of(scheduler_config)
    if found.name != name:
        raise ValueError(f"{what} needs {get_process(name).description}, but this model is {found.description}.")
