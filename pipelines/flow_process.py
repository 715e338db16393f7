"""Flow matching (rectified flow) as a noise process: recognising its schedulers and their shared config.

Rectified flow (Liu et al. 2023, "Flow Straight and Fast"; Lipman et al. 2023, "Flow Matching for Generative
Modeling"; Esser et al. 2024, SD3, sec. 2-3): x_t = (1 - t) x0 + t eps for t in [0, 1], and the UNet predicts the
velocity v = eps - x0 at timestep input 1000 t. Sampling integrates dx/dt = v from t = 1 (noise) to 0 with diffusers'
schedulers: FlowMatchEulerDiscreteScheduler (first order), FlowMatchHeunDiscreteScheduler (second order) and the
multistep solvers in their flow mode (use_flow_sigmas=True, prediction_type="flow_prediction"), whose
DPMSolverMultistepScheduler is what a flow model is saved with: stock `StableDiffusionPipeline` runs it unchanged.

The schedulers spell the timestep shift (SD3 eq. 23, t' = s t / (1 + (s - 1) t)) two ways, `shift` and
`flow_shift`; `normalise` writes both, so that switching samplers keeps it. Generation needs no hook of its own:
N(0, I) noise, the scheduler's timesteps as the UNet's, the final sample as the latent (processes.py defaults).

This file imports only diffusers and its sibling sampler_spec.py, so it travels with the pipeline files.
"""

from __future__ import annotations

from diffusers import (
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

from .sampler_spec import SamplerSpec, SolverRun

FLOW_PROCESS_KEYS = ("num_train_timesteps", "shift", "flow_shift", "use_flow_sigmas", "prediction_type")
FLOW_PREDICTION = "flow_prediction"  # diffusers' name for the velocity target eps - x0


def is_flow_config(config: dict) -> bool:
    """A scheduler config of a flow-matching sampler: a FlowMatch* scheduler's (a `shift` and no betas) or a
    multistep solver's in flow mode."""
    return config.get("prediction_type") == FLOW_PREDICTION or config.get("use_flow_sigmas") is True or (
        "shift" in config and "beta_start" not in config)


def normalise(config: dict) -> dict:
    """The config with the timestep shift under both names, and the flow mode of multistep solvers on."""
    shift = config.get("flow_shift", config.get("shift", 1.0))
    return {**config, "shift": shift, "flow_shift": shift, "use_flow_sigmas": True, "prediction_type": FLOW_PREDICTION}


def describe(config: dict) -> str:
    """The process of a flow scheduler config in one line (model cards)."""
    shift = config.get("flow_shift", config.get("shift", 1.0))
    return f"rectified flow (flow matching), timestep shift {shift}, predicts the velocity eps - x0"


def flow_config(num_train_timesteps: int = 1000, shift: float = 1.0) -> dict:
    """The scheduler config that describes a flow-matching model: its time scale and timestep shift."""
    return normalise({"num_train_timesteps": num_train_timesteps, "shift": float(shift)})


_FLOW_MODE = {"use_flow_sigmas": True, "prediction_type": FLOW_PREDICTION}
SAMPLERS: dict[str, SamplerSpec] = {
    "flow-euler": SamplerSpec(FlowMatchEulerDiscreteScheduler, {}, "flow matching: Euler, first order", "flow"),
    "flow-heun": SamplerSpec(FlowMatchHeunDiscreteScheduler, {}, "flow matching: Heun, second order (2 NFE a step)",
                             "flow"),
    "flow-dpm++2m": SamplerSpec(DPMSolverMultistepScheduler,
                                {"algorithm_type": "dpmsolver++", "solver_order": 2, **_FLOW_MODE},
                                "flow matching: DPM-Solver++(2M), second-order multistep", "flow"),
    "flow-unipc": SamplerSpec(UniPCMultistepScheduler, dict(_FLOW_MODE), "flow matching: UniPC, bh2, order 2", "flow"),
}
BENCH_SAMPLERS = ("flow-euler", "flow-heun", "flow-dpm++2m", "flow-unipc")
# the straight-line ODE integrated with 1000 Euler steps, checked against 250 Heun steps (500 NFE)
REFERENCE, REFERENCE_CHECK = SolverRun("flow-euler", 1000), SolverRun("flow-heun", 250)
