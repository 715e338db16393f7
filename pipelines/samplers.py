"""Named samplers: short names for diffusers schedulers and the options that make each one.

A sampler is a diffusers scheduler built with ``from_config`` from the pipeline's current scheduler, so the
noise process it was trained with (betas, number of training steps, prediction type, timestep spacing) carries
over and only the update rule changes. Nothing here re-implements a sampler that diffusers has.

Two noise processes, two families of samplers: "ddpm" (the VP process of DDPM / Stable Diffusion, all diffusers
schedulers) and "cld" (critically-damped Langevin diffusion, Dockhorn et al. 2022: our `scheduling_cld.py`, for
which diffusers has no scheduler). A sampler only runs models of its own process; `make_scheduler` refuses the
other family with a ValueError that names the right samplers.

This file imports only diffusers and its siblings `scheduling_cld.py` and `scheduling_genie.py`, so that it can
travel next to published weights with the pipeline file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .scheduling_cld import CLDExponentialODEScheduler, SSCSScheduler
from .scheduling_genie import GENIEScheduler

PROCESSES = ("ddpm", "cld")  # the noise processes a sampler can belong to (the training script's --process)


@dataclass(frozen=True)
class SamplerSpec:
    scheduler_class: type[SchedulerMixin]  # the diffusers scheduler that implements the update rule
    options: dict[str, Any] = field(default_factory=dict)  # config entries that make this named variant
    description: str = ""  # one line for --help and the web page
    process: str = "ddpm"  # the noise process it samples: "ddpm" (VP) or "cld"


# Config entries that describe the trained noise process rather than a sampler. Only these carry over from
# the current scheduler, so that switching e.g. from "dpm++2m_karras" to "euler" does not drag Karras sigmas
# (or any other sampler-specific option) along.
PROCESS_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
    "timestep_spacing",
    "steps_offset",
    "rescale_betas_zero_snr",
    "set_alpha_to_one",
    "clip_sample",
    "clip_sample_range",
    "sample_max_value",
    "thresholding",
    "dynamic_thresholding_ratio",
    "timestep_type",
    # A latent consistency model's distillation grid and boundary scalings (training/distill_lcm.py), so that
    # set_sampler("lcm") on an LCM folder keeps the ones it was distilled with.
    "original_inference_steps",
    "timestep_scaling",
)
# The same for CLD schedulers: the process (CLDConfig's fields) and the model's output parameterisation.
CLD_PROCESS_KEYS = ("M", "gamma", "beta_schedule", "beta", "beta_min", "beta_max", "eps", "numerical_eps",
                    "mixed_score")

SAMPLERS: dict[str, SamplerSpec] = {
    "ddim": SamplerSpec(DDIMScheduler, {}, "DDIM (Song et al. 2021), deterministic first order"),
    "ddpm": SamplerSpec(DDPMScheduler, {}, "DDPM ancestral sampling (Ho et al. 2020)"),
    "pndm": SamplerSpec(PNDMScheduler, {"skip_prk_steps": True}, "PLMS / PNDM (Liu et al. 2022)"),
    "lms": SamplerSpec(LMSDiscreteScheduler, {}, "linear multistep (k-diffusion)"),
    "euler": SamplerSpec(EulerDiscreteScheduler, {}, "Euler (Karras et al. 2022, Alg. 2 without churn)"),
    "euler_a": SamplerSpec(EulerAncestralDiscreteScheduler, {}, "Euler ancestral (stochastic)"),
    "heun": SamplerSpec(HeunDiscreteScheduler, {}, "Heun, second order (Karras et al. 2022, Alg. 1)"),
    "dpm2": SamplerSpec(KDPM2DiscreteScheduler, {}, "DPM-Solver-2 in k-diffusion form"),
    "dpm++2m": SamplerSpec(
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
        "DPM-Solver++(2M) (Lu et al. 2022)",
    ),
    "dpm++2m_karras": SamplerSpec(
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
        "DPM-Solver++(2M) with Karras sigmas",
    ),
    "dpm++2m_sde": SamplerSpec(
        DPMSolverMultistepScheduler,
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
        "DPM-Solver++(2M) SDE (stochastic)",
    ),
    "dpm++3m_sde": SamplerSpec(
        DPMSolverMultistepScheduler,
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
        "DPM-Solver++(3M) SDE (stochastic)",
    ),
    "dpm++2s": SamplerSpec(
        DPMSolverSinglestepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}, "DPM-Solver++(2S)"
    ),
    "unipc": SamplerSpec(UniPCMultistepScheduler, {}, "UniPC (Zhao et al. 2023), bh2, order 2"),
    "deis": SamplerSpec(DEISMultistepScheduler, {}, "DEIS (Zhang & Chen 2023), order 2"),
    "lcm": SamplerSpec(LCMScheduler, {}, "latent consistency sampling: for LCM-distilled models, 1-8 steps"),
    "taylor2": SamplerSpec(GENIEScheduler, {"clip_sample": False},  # an ODE solver: x0 clipping would leave the ODE
                           "GENIE (Dockhorn et al. 2022), 2nd-order Taylor with a learned derivative; needs "
                           "pipe.genie_head"),
    "cld-sscs": SamplerSpec(SSCSScheduler, {}, "CLD: symmetric splitting SDE sampler (Dockhorn et al. 2022)", "cld"),
    "cld-ode": SamplerSpec(CLDExponentialODEScheduler, {},
                           "CLD: probability-flow ODE, exponential integrator (gDDIM step), deterministic", "cld"),
}

# Other names a sampler answers to; `sampler_names()` lists only the canonical ones.
SAMPLER_ALIASES: dict[str, str] = {"genie": "taylor2"}


def process_of(config: Any) -> str:
    """The noise process a scheduler config describes: "cld" for a CLD scheduler's (it has the mass M), else "ddpm"."""
    return "cld" if "M" in config and "gamma" in config else "ddpm"


def sampler_names(process: str | None = None) -> list[str]:
    """All named samplers, or those for models of one noise process ("ddpm" or "cld")."""
    if process is not None and process not in PROCESSES:
        raise ValueError(f"Unknown process {process!r}; choose one of {PROCESSES}.")
    return [name for name, spec in SAMPLERS.items() if process is None or spec.process == process]


def make_scheduler(name: str, base_config: dict[str, Any], **options: Any) -> SchedulerMixin:
    """Build the named sampler for the noise process described by ``base_config`` (any scheduler's config).

    ``options`` are scheduler config entries that override the named defaults, e.g.
    ``make_scheduler("dpm++2m", config, use_karras_sigmas=True)`` or ``make_scheduler("ddim", config,
    timestep_spacing="trailing")``.
    """
    name = SAMPLER_ALIASES.get(name, name)
    if name not in SAMPLERS:
        raise ValueError(f"Unknown sampler {name!r}. Choose one of: {', '.join(SAMPLERS)}.")
    spec = SAMPLERS[name]
    family = process_of(base_config)
    if spec.process != family:
        kind = {"cld": "a CLD model (critically-damped Langevin diffusion)", "ddpm": "a DDPM-family (VP) model"}
        raise ValueError(
            f"Sampler {name!r} is for {kind[spec.process]}, but this scheduler config is of {kind[family]}; "
            f"choose one of: {', '.join(sampler_names(family))}."
        )
    accepted = set(spec.scheduler_class._get_init_keys(spec.scheduler_class)) - {"self"}
    keys = CLD_PROCESS_KEYS if family == "cld" else PROCESS_KEYS
    process = {k: base_config[k] for k in keys if k in base_config and k in accepted}
    if "clip_sample" in accepted and "clip_sample" not in process:
        # DDIM/DDPM default to clipping x0 to [-1, 1], which suits pixels, not latents (ours reach |z| ~ 5):
        # a config saved by a scheduler without the key (e.g. DPM-Solver) must not turn clipping on.
        process["clip_sample"] = False
    unknown = set(options) - accepted
    if unknown:
        raise ValueError(
            f"Sampler {name!r} ({spec.scheduler_class.__name__}) has no option(s) {sorted(unknown)}; "
            f"it accepts: {', '.join(sorted(accepted))}."
        )
    return spec.scheduler_class.from_config(process, **{**spec.options, **options})
