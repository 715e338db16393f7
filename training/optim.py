"""The optimizer and learning-rate schedule of a run, from its config (learning_rate, weight_decay, lr_scheduler,
lr_warmup_steps, max_steps; optionally adam_8bit, fused_adam and lr_cooldown_steps)."""

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
    cooldown = getattr(cfg, "lr_cooldown_steps", 0)
    if cooldown:
        schedule = with_cooldown(schedule, cfg.max_steps, cooldown)
    return optimizer, schedule


def with_cooldown(schedule: torch.optim.lr_scheduler.LambdaLR, max_steps: int, cooldown: int):
    """`schedule` times a linear fall to 0 over its last `cooldown` steps before `max_steps`: the
    warmup-stable-decay schedule (Hu et al. 2024, "MiniCPM", sec. 4; Hägele et al. 2024, "Scaling Laws and
    Compute-Optimal Training Beyond Fixed Training Durations"), whose constant phase can be resumed and cooled down
    from at any step. (diffusers.optimization has no such schedule; its piecewise_constant only steps.) Only the
    multipliers are functions of the step, so a checkpoint of the constant run resumes into it: the restored
    scheduler state keeps base_lrs and the step, and the multiplier is this one."""
    def cooled(inner):
        return lambda step: inner(step) * min(1.0, max(0.0, (max_steps - step) / cooldown))

    return torch.optim.lr_scheduler.LambdaLR(schedule.optimizer, [cooled(f) for f in schedule.lr_lambdas])
