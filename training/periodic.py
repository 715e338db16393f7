"""What happens after each optimizer step besides the update: logs and the progress bar, then checkpoints and
sample grids at their cadences, with the training clock paused, then whether the run is over.

    after = AfterStep(accelerator, clock, out, cfg, validate=lambda step: ..., bar=tqdm(...))
    for epoch, i, batch in data.batches(progress):
        ...one optimizer step...
        step += 1
        if after(step, epoch, i + 1, loss=loss.mean().item(), images=len(x)):
            break
    after.stop_reason  # "max_steps", "stop_after", "time_budget_minutes" or "train_time_budget_minutes"

Sample grids come every `cfg.validation_every` steps where that is set, else at GRIDS evenly spaced points of the
run (by steps, or by the time budget where one ends the run sooner), and always at its end. The checkpoint comes
before the grid, so a validation that fails never costs the checkpoint of its step; a failing grid is reported in
one line and training goes on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from latentdiff.training.checkpoint import save_checkpoint
from latentdiff.training.run_clock import RunClock, due, grid_point


WARMUP = 3  # first steps of an invocation left out of the steady-state throughput (allocator, lazy init, compiling)


class AfterStep:
    def __init__(self, accelerator, clock: RunClock, out: Path, cfg: Any, validate: Callable[[int], None] | None,
                 bar=None, images_per_step: int = 0):
        """`cfg` has max_steps, checkpoint_every, keep_checkpoints, validation_every (None: GRIDS evenly spaced
        grids) and optionally stop_after. `images_per_step` (all processes) feeds the images/s figure."""
        self.accelerator, self.clock, self.out, self.cfg = accelerator, clock, Path(out), cfg
        self.validate, self.bar, self.images_per_step = validate, bar, images_per_step
        self.images_seen = 0  # this invocation, all processes
        self.steps = 0  # optimizer steps of this invocation
        self._steady: tuple[float, int] | None = None  # (train seconds, images) after this invocation's warm-up
        self._grid_point: int | None = None  # grid_point() after the previous step
        self.logs: dict[str, float] = {}
        self.stop_reason: str | None = None  # the setting that ended the loop, once it has

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
        spent = clock.spent()  # share of the time budget used, the same on every rank (0.0 without one)
        out_of_time = spent >= 1.0
        grid = self.validate is not None and self._grid_due(step, spent, out_of_time)
        # A wall-clock budget leaves room for the final checkpoint and folder as long as the last checkpoint took:
        # the first grid also writes one when none has been timed yet.
        timing = grid and clock.budget is not None and "checkpoint" not in clock.longest
        if due(step, cfg.checkpoint_every, cfg.max_steps, stop_after, now=out_of_time or timing):
            with clock.paused("checkpoint"):  # checkpoints and grids are not training time
                # the position of the next batch, so that a resumed run continues with exactly that batch
                save_checkpoint(self.accelerator, self.out, step, cfg.keep_checkpoints,
                                extra=clock.progress(epoch, next_batch))
        if grid:
            with clock.paused("grid"):
                try:
                    self.validate(step)
                except Exception as err:  # a grid is a picture: it never ends a run that has checkpointed
                    self.accelerator.print(f"warning: the sample grid of step {step} failed ({type(err).__name__}: "
                                           f"{err}); training goes on")
        if out_of_time:
            self.stop_reason = clock.spent_budget
            budget = getattr(cfg, self.stop_reason)
            self.accelerator.print(f"--{self.stop_reason.replace('_', '-')} {budget:g} spent at step {step}"
                                   + (" (the final grid and save included)"
                                      if self.stop_reason == "time_budget_minutes" else ""))
            return True
        if stop_after is not None and step >= stop_after and step < cfg.max_steps:
            self.accelerator.print(f"stopping at step {step} (--stop-after); go on with --resume latest")
            self.stop_reason = "stop_after"
            return True
        if step >= cfg.max_steps:
            self.stop_reason = "max_steps"
        return self.stop_reason is not None

    def _grid_due(self, step: int, spent: float, out_of_time: bool) -> bool:
        """Whether a sample grid is due after `step`: every cfg.validation_every steps where that is set, else when
        the run passes one of GRIDS evenly spaced points; at the end of the run either way."""
        every, max_steps = self.cfg.validation_every, self.cfg.max_steps
        if every is not None:
            return due(step, every, max_steps, now=out_of_time)
        before = self._grid_point if self._grid_point is not None else grid_point(step - 1, max_steps, spent)
        self._grid_point = grid_point(step, max_steps, spent)
        return self._grid_point > before or step >= max_steps or out_of_time

    @property
    def stopped_early(self) -> bool:
        """--stop-after ended this invocation before max_steps (resume to go on)."""
        return self.stop_reason == "stop_after"

    @property
    def steady_images_per_s(self) -> float | None:
        """Images/s after the warm-up steps (None when the run was too short to have any)."""
        if self._steady is None:
            return None
        seconds, images = self.clock.train_seconds - self._steady[0], self.images_seen - self._steady[1]
        return images / seconds if seconds > 0 and images > 0 else None
