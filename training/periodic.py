"""What happens after each optimizer step besides the update: logs and the progress bar, then checkpoints and
sample grids at their cadences, with the training clock paused, then whether the run is over.

    after = AfterStep(accelerator, clock, out, cfg, validate=lambda step: ..., bar=tqdm(...))
    for epoch, i, batch in data.batches(progress):
        ...one optimizer step...
        step += 1
        if after(step, epoch, i + 1, loss=loss.mean().item(), images=len(x)):
            break

The checkpoint comes before the grid, so a validation that fails never costs the checkpoint of its step; a failing
grid is reported in one line and training goes on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from latentdiff.training.checkpoint import save_checkpoint
from latentdiff.training.run_clock import RunClock, due


WARMUP = 3  # first steps of an invocation left out of the steady-state throughput (allocator, lazy init, compiling)


class AfterStep:
    def __init__(self, accelerator, clock: RunClock, out: Path, cfg: Any, validate: Callable[[int], None] | None,
                 bar=None, images_per_step: int = 0):
        """`cfg` has max_steps, checkpoint_every, keep_checkpoints, validation_every and optionally stop_after and
        time_budget_minutes. `images_per_step` (all processes) feeds the images/s figure."""
        self.accelerator, self.clock, self.out, self.cfg = accelerator, clock, Path(out), cfg
        self.validate, self.bar, self.images_per_step = validate, bar, images_per_step
        self.images_seen = 0  # this invocation, all processes
        self.steps = 0  # optimizer steps of this invocation
        self._steady: tuple[float, int] | None = None  # (train seconds, images) after this invocation's warm-up
        self.logs: dict[str, float] = {}
        self.stopped_early = False  # --stop-after ended this invocation before max_steps

    def __call__(self, step: int, epoch: int, next_batch: int, **logs: float) -> bool:
        """Log, checkpoint and validate as due after optimizer step `step`; True when the loop should end."""
        cfg, clock = self.cfg, self.clock
        self.images_seen += self.images_per_step
        self.steps += 1
        if self.steps == WARMUP:
            self._steady = (clock.train_seconds, self.images_seen)
        self.logs = {**logs, "images_per_s": self.images_seen / max(clock.train_seconds, 1e-9)}
        self.accelerator.log(self.logs, step=step)
        if self.bar is not None:
            self.bar.update()
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in self.logs.items() if k != "lr"})
        stop_after = getattr(cfg, "stop_after", None)
        out_of_time = clock.out_of_time()  # the same on every rank
        with clock.paused():  # checkpoints and grids are not training time
            if due(step, cfg.checkpoint_every, cfg.max_steps, stop_after, now=out_of_time):
                # the position of the next batch, so that a resumed run continues with exactly that batch
                save_checkpoint(self.accelerator, self.out, step, cfg.keep_checkpoints,
                                extra=clock.progress(epoch, next_batch))
            if self.validate is not None and due(step, cfg.validation_every, cfg.max_steps, now=out_of_time):
                try:
                    self.validate(step)
                except Exception as err:  # a grid is a picture: it never ends a run that has checkpointed
                    self.accelerator.print(f"warning: the sample grid of step {step} failed ({type(err).__name__}: "
                                           f"{err}); training goes on")
        if out_of_time:
            self.accelerator.print(f"time budget of {cfg.time_budget_minutes} min spent at step {step}")
            return True
        if stop_after is not None and step >= stop_after and step < cfg.max_steps:
            self.accelerator.print(f"stopping at step {step} (--stop-after); go on with --resume latest")
            self.stopped_early = True
            return True
        return step >= cfg.max_steps

    @property
    def steady_images_per_s(self) -> float | None:
        """Images/s after the warm-up steps (None when the run was too short to have any)."""
        if self._steady is None:
            return None
        seconds, images = self.clock.train_seconds - self._steady[0], self.images_seen - self._steady[1]
        return images / seconds if seconds > 0 and images > 0 else None
