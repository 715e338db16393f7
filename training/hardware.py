"""One line that says what a run trained on, for training summaries and model cards."""

from __future__ import annotations

import os
import platform

import torch
from accelerate import Accelerator


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC", "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"), from /proc/cpuinfo
    on Linux, else what `platform` knows; two machines with the same core count can differ by 2x in speed."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_description() -> str:
    """E.g. "CPU: AMD EPYC, 2 cores (x86_64)": which machine a CPU timing was made on."""
    return f"CPU: {cpu_model()}, {os.cpu_count()} cores ({platform.machine()})"


def machine_description() -> str:
    """This machine as a timing comparison needs it: the first GPU's name, or `cpu_description()`."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return cpu_description()


def hardware_description(accelerator: Accelerator) -> str:
    """E.g. "1 x NVIDIA H100 80GB HBM3" or "CPU: AMD EPYC, 2 cores (x86_64), 1 process"."""
    processes = accelerator.num_processes
    if accelerator.device.type == "cuda":
        return f"{processes} x {torch.cuda.get_device_name(accelerator.device)}"
    plural = "es" if processes > 1 else ""
    return f"{cpu_description()}, {processes} process{plural}"
