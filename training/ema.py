"""An exponential moving average of a model's weights (diffusers' EMAModel), and a context that swaps it in."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from diffusers.training_utils import EMAModel


def make_ema(model, accelerator, decay: float, *, warmup: bool = True) -> EMAModel:
    """diffusers' EMAModel of `model`'s parameters on the accelerator's device, saved with every checkpoint. With
    `warmup`, diffusers' EMA warm-up (the decay grows from 0); without it a constant `decay` (e.g. LCM's theta^-)."""
    ema = EMAModel(model.parameters(), decay=decay, use_ema_warmup=warmup, min_decay=0.0 if warmup else decay,
                   model_cls=type(model), model_config=model.config)
    ema.to(accelerator.device)
    accelerator.register_for_checkpointing(ema)
    return ema


@contextmanager
def ema_weights(ema: EMAModel | None, model) -> Iterator[None]:
    """Inside the block `model` holds the EMA weights (and is in eval mode); its own weights and mode come back
    after. Without EMA only the mode changes."""
    was_training = model.training
    if ema is not None:
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
        if ema is not None:
            ema.restore(model.parameters())
