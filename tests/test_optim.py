"""The run's optimizer and LR schedule (training/optim.py): the warmup-stable-decay cooldown."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from latentdiff.training.optim import optimizer_and_schedule
from latentdiff.training.train_text_to_image import TextToImageConfig, describe_run


def run(cooldown: int, steps: int, state=None):
    cfg = SimpleNamespace(learning_rate=1.0, weight_decay=0.0, lr_scheduler="constant_with_warmup", lr_warmup_steps=2,
                          max_steps=10, lr_cooldown_steps=cooldown)
    optimizer, schedule = optimizer_and_schedule(cfg, [torch.nn.Parameter(torch.zeros(1))])
    if state is not None:
        optimizer.load_state_dict(state[0])
        schedule.load_state_dict(state[1])
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return lrs, (optimizer.state_dict(), schedule.state_dict())


def test_the_lr_warms_up_stays_and_falls_linearly_to_zero_over_the_cooldown():
    lrs, _ = run(cooldown=4, steps=11)
    assert lrs == pytest.approx([0, 0.5, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25, 0])
    assert run(cooldown=0, steps=11)[0] == pytest.approx([0, 0.5] + [1] * 9)  # no cooldown: as diffusers' schedule


def test_a_constant_runs_checkpoint_resumes_into_its_cooldown():
    # the constant run's first 6 steps, then its state loaded into a run that cools down over its last 4 (6..9)
    _, state = run(cooldown=0, steps=6)
    resumed, _ = run(cooldown=4, steps=5, state=state)
    assert resumed == pytest.approx([1, 0.75, 0.5, 0.25, 0])


def test_a_cooldown_longer_than_the_run_is_one_clear_error():
    with pytest.raises(ValueError, match="--lr-cooldown-steps"):
        TextToImageConfig(train_data="d", preset="tiny", vae="v", max_steps=10, lr_cooldown_steps=11)


def test_the_runs_first_lines_say_when_it_cools_down():
    cfg = TextToImageConfig(train_data="d", preset="tiny", vae="v", max_steps=10, lr_cooldown_steps=4)
    assert describe_run(cfg).splitlines()[-1] == "LR cooldown: linearly to 0 over steps 6..10 (--lr-cooldown-steps 4)"
    assert "cooldown" not in describe_run(TextToImageConfig(train_data="d", preset="tiny", vae="v", max_steps=10))
