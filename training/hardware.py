"""One line that says what a run trained on, for training summaries and model cards."""

from __future__ import annotations

import os
import platform

import torch
from accelerate import Accelerator


def hardware_description(accelerator: Accelerator) -> str:
    """E.g. "1 x NVIDIA H100 80GB HBM3" or "CPU: 2 cores (x86_64), 1 process"."""
    processes = accelerator.num_processes
    if accelerator.device.type == "cuda":
        return f"{processes} x {torch.cuda.get_device_name(accelerator.device)}"
    plural = "es" if processes > 1 else ""
    return f"CPU: {os.cpu_count()} cores ({platform.machine()}), {processes} process{plural}"
