"""Named samplers: short names for diffusers schedulers and the options that make each one.

A sampler is a diffusers scheduler built with ``from_config`` from the pipeline's current scheduler, so the
noise process it was trained with (betas, number of training steps, prediction type, timestep spacing) carries
over and only the update rule changes. Nothing here re-implements a sampler that diffusers has.

Each sampler belongs to one noise process of `processes.PROCESSES` ("ddpm": the VP process of DDPM / Stable
Diffusion, all diffusers VP schedulers; "cld": critically-damped Langevin diffusion, our `scheduling_cld.py`, for
which diffusers has no scheduler). A sampler only runs models of its own process; `make_scheduler` refuses
another process's with a ValueError that names the right samplers.

This file imports only diffusers and its siblings (`processes.py`, the schedulers), so that it can
travel next to published weights with the pipeline file.
"""

from __future__ import annotations

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

from .processes import PROCESSES, get_process, process_of
from .sampler_spec import SamplerSpec
from .scheduling_cld import CLDExponentialODEScheduler, SSCSScheduler
from .scheduling_genie import GENIEScheduler



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
    # the samplers a process row brings with it (processes.py)
    **{name: spec for row in PROCESSES.values() for name, spec in row.samplers.items()},
}

# Other names a sampler answers to; `sampler_names()` lists only the canonical ones.
SAMPLER_ALIASES: dict[str, str] = {"genie": "taylor2"}


def sampler_names(process: str | None = None) -> list[str]:
    """All named samplers, or those for models of one noise process ("ddpm" or "cld")."""
    if process is not None:
        get_process(process)  # ValueError for an unknown name
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
    if spec.process != family.name:
        raise ValueError(
            f"Sampler {name!r} is for {get_process(spec.process).description}, but this scheduler config is of "
            f"{family.description}; choose one of: {', '.join(sampler_names(family.name))}."
        )
    accepted = set(spec.scheduler_class._get_init_keys(spec.scheduler_class)) - {"self"}
    base_config = family.normalise(dict(base_config))
    process = {k: base_config[k] for k in family.process_keys if k in base_config and k in accepted}
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
