"""One line that says what a run trained on, for training summaries and model cards."""

from __future__ import annotations

import os
import platform

import torch
from accelerate import Accelerator


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU as a timing needs it: its model name and, on x86, its family, model and widest vector unit ("AMD
    EPYC (family 23 model 1, AVX2)", "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz (family 6 model 143,
    AVX-512)"), from /proc/cpuinfo (or `cpuinfo`, its text) on Linux, else what `platform` knows. The name alone
    is not enough: two virtual machines both called "AMD EPYC" with 2 cores ran the same training 2.4x apart
    (a first-generation EPYC, family 23 model 1, and one whose family was not recorded), and the speedrun
    refuses to mix minutes from machines whose descriptions differ."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return platform.processor() or platform.machine()
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():  # the first processor's block is enough: the cores of one VM are alike
        key, sep, value = line.partition(":")
        if not sep:
            if fields:
                break
            continue
        fields.setdefault(key.strip().lower(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" not in fields:
        return name
    flags = set(fields.get("flags", "").split())
    vector = next((label for flag, label in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"))
                   if flag in flags), "no AVX")
    return f"{name} (family {fields['cpu family']} model {fields.get('model', '?')}, {vector})"


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
