"""The optimizer and learning-rate schedule of a run, from its config (learning_rate, weight_decay, lr_scheduler,
lr_warmup_steps, max_steps; optionally adam_8bit and fused_adam)."""

from __future__ import annotations

from typing import Any

import torch
from diffusers.optimization import get_scheduler


def optimizer_and_schedule(cfg: Any, params: list) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over `params` (bitsandbytes' 8-bit AdamW with cfg.adam_8bit) and diffusers' named LR schedule."""
    if getattr(cfg, "adam_8bit", False):
        try:
            import bitsandbytes as bnb
        except ImportError as err:
            raise ValueError("--adam-8bit needs bitsandbytes and a CUDA GPU: pip install bitsandbytes") from err
        optimizer = bnb.optim.AdamW8bit(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    else:
        # fused: one kernel for all parameters instead of a loop over them (None: PyTorch's default choice)
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                      fused=getattr(cfg, "fused_adam", False) or None)
    schedule = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                             num_training_steps=cfg.max_steps)
    return optimizer, schedule
