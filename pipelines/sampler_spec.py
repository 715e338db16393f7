"""What a named sampler is: a diffusers scheduler class, the config options that make the variant, and the noise
process it samples (samplers.py lists them; a process row of processes.py may bring its own). No imports beyond the
standard library and diffusers, so every pipeline file can use it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diffusers.schedulers.scheduling_utils import SchedulerMixin


@dataclass(frozen=True)
class SamplerSpec:
    scheduler_class: type[SchedulerMixin]  # the diffusers scheduler that implements the update rule
    options: dict[str, Any] = field(default_factory=dict)  # config entries that make this named variant
    description: str = ""  # one line for --help and the web page
    process: str = "ddpm"  # the noise process it samples: a key of processes.PROCESSES


@dataclass(frozen=True)
class SolverRun:
    """A sampler run of a given length: what benchmarks use as a process's reference solution."""

    sampler: str  # named sampler
    steps: int  # num_inference_steps
    options: dict[str, Any] = field(default_factory=dict)  # set_sampler options
