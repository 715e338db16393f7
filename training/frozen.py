"""Frozen models of a run (the VAE, a frozen text encoder, a distillation teacher) moved to its device and dtype."""

from __future__ import annotations

import torch


def place_frozen(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """`module.to(device, dtype)`, naming the dtype only when it changes. diffusers' `ModelMixin.to` warns "There are
    modules in AutoencoderKL that should be kept in float32: []" on every call that names a dtype, even a cast to the
    dtype the model already has (an fp32 run) and for a model with no such modules."""
    module.to(device)
    if module.dtype != dtype:
        module.to(dtype=dtype)
    return module
