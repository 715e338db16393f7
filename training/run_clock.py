"""The run's clock: wall-clock and training seconds summed over resumed invocations, and the time budgets.

    started = perf_counter()  # first thing in main(): the wall-clock budget counts from here
    ...
    clock = RunClock(accelerator, cfg.time_budget_minutes, progress, cfg.train_time_budget_minutes, started)
    ...one optimizer step...
    spent = clock.spent()  # share of the budget used, the same on every rank; >= 1: out of time
    with clock.paused("checkpoint"):  # checkpoints and validation grids are not training time
        save_checkpoint(accelerator, out, step, keep, extra=clock.progress(epoch, i + 1))
    ...
    clock.stop()  # training is over; writing the result is not training time either

Two budgets, either or both:
- `budget_minutes` (--time-budget-minutes) is wall clock: everything since `started`, over all invocations, grids,
  checkpoints and the final save included. The run stops early enough for what its end still needs: `spent()`
  adds to the time so far the last step, the longest grid and twice the longest checkpoint (one for the final
  checkpoint, one for the final folder, which holds no more than a checkpoint: the trained weights without their
  optimizer state).
- `train_budget_minutes` (--train-time-budget-minutes) counts training time only: the pauses are left out (for
  comparing recipes at equal training time, as `latentdiff bench speedrun` does).

Training time stops while paused and after `stop()`; wall-clock time never stops.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from time import perf_counter, process_time
from typing import Any

import torch
from accelerate import Accelerator

GRIDS = 4  # sample grids at this many evenly spaced points of a run (by steps or time), besides its end


def due(step: int, every: int, *at: int | None, now: bool = False) -> bool:
    """Whether a periodic job (validation grid, checkpoint) runs after optimizer step `step`: every `every` steps,
    at any of the steps `at` (e.g. max_steps; None entries are ignored), or `now` (e.g. the time budget is spent)."""
    return now or step % every == 0 or step in at


def grid_point(step: int, max_steps: int, spent: float) -> int:
    """How many of the GRIDS + 1 evenly spaced points of a run (the last one its end) it has passed at optimizer step
    `step`, having used the share `spent` of its time budget: by steps or by time, whichever is further. A grid is
    due when this grows from one step to the next."""
    return max(step * (GRIDS + 1) // max_steps, math.floor(min(spent, 1.0) * (GRIDS + 1)))


class RunClock:
    """Seconds of one run that may span several invocations (`--resume`)."""

    def __init__(self, accelerator: Accelerator, budget_minutes: float | None, progress: dict[str, Any],
                 train_budget_minutes: float | None = None, started: float | None = None):
        """`progress`: the resumed checkpoint's record; `started`: the perf_counter() at which this invocation began
        (default: now), from which its wall clock counts; its training clock starts now."""
        self.accelerator = accelerator
        self.budget = None if budget_minutes is None else 60.0 * budget_minutes  # wall-clock seconds, all invocations
        self.train_budget = None if train_budget_minutes is None else 60.0 * train_budget_minutes  # training seconds
        self.earlier_train = float(progress.get("train_seconds", 0.0))  # of the invocations before this one
        self.earlier_wall = float(progress.get("wall_clock_seconds", 0.0))
        self.earlier_cpu = float(progress.get("cpu_seconds", 0.0))
        self.start, self.cpu_start = perf_counter(), process_time()
        self.started = self.start if started is None else started
        self._paused = 0.0  # seconds spent in `paused()` in this invocation
        self._stopped_at: float | None = None  # when the training clock stopped (a pause, or `stop()`)
        self.longest: dict[str, float] = {}  # the longest pause of each kind ("checkpoint", "grid"), seconds
        self._last_check = 0.0  # training seconds of this invocation at the previous `spent()`
        self._last_step = 0.0  # training seconds between the last two `spent()` calls: about one step
        self.shares = (0.0, 0.0)  # the shares of the wall-clock and training-time budgets at the last `spent()`

    @property
    def seconds(self) -> float:
        """Wall-clock seconds of this invocation."""
        return perf_counter() - self.started

    @property
    def wall_clock_seconds(self) -> float:
        """Wall-clock seconds of all invocations."""
        return self.earlier_wall + self.seconds

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds of this process (user + system, all its threads) over all invocations: what a run cost on a
        shared machine, whatever else ran beside it."""
        return self.earlier_cpu + process_time() - self.cpu_start

    @property
    def train_seconds(self) -> float:
        """Training seconds of this invocation: pauses left out; frozen while paused and after `stop()`."""
        now = perf_counter() if self._stopped_at is None else self._stopped_at
        return now - self.start - self._paused

    @property
    def total_train_seconds(self) -> float:
        """Training seconds of all invocations (what the training-time budget counts)."""
        return self.earlier_train + self.train_seconds

    @contextmanager
    def paused(self, what: str = "pause") -> Iterator[None]:
        """Time spent in this block (validation, checkpoints) is not training time; the longest block of each kind
        `what` is kept, for what the wall-clock budget must leave room for."""
        if self._stopped_at is not None:
            raise RuntimeError("RunClock.paused(): the clock is already paused or stopped.")
        self._stopped_at = perf_counter()
        try:
            yield
        finally:
            took = perf_counter() - self._stopped_at
            self._paused += took
            self.longest[what] = max(self.longest.get(what, 0.0), took)
            self._stopped_at = None

    def stop(self) -> None:
        """Training is over: the training clock stops for good (the wall clock goes on)."""
        if self._stopped_at is None:
            self._stopped_at = perf_counter()

    @property
    def end_reserve(self) -> float:
        """Wall-clock seconds the end of the run still needs, as measured so far: one more step, the final grid, the
        final checkpoint and the final folder (no larger than a checkpoint)."""
        return self._last_step + self.longest.get("grid", 0.0) + 2 * self.longest.get("checkpoint", 0.0)

    def spent(self) -> float:
        """The share of the time budget used, after an optimizer step: the larger of the wall clock's (with the
        `end_reserve` added) and the training clock's; 0.0 without a budget. >= 1 means out of time. Every rank
        gets the same answer, the slowest rank's (max over ranks), so all ranks stop at the same step: call it once
        per step on every rank (it also times the step)."""
        now = self.train_seconds
        self._last_step, self._last_check = now - self._last_check, now
        if self.budget is None and self.train_budget is None:
            return 0.0
        shares = torch.tensor([(self.wall_clock_seconds + self.end_reserve) / self.budget if self.budget else 0.0,
                               self.total_train_seconds / self.train_budget if self.train_budget else 0.0],
                              device=self.accelerator.device)
        self.shares = tuple(self.accelerator.reduce(shares, "max").tolist())  # (wall clock, training time)
        return max(self.shares)

    def out_of_time(self) -> bool:
        """Whether a time budget is spent (False without one); the same on every rank, like `spent()`."""
        return self.spent() >= 1.0

    @property
    def spent_budget(self) -> str:
        """The config field of the budget the last `spent()` found used up: "time_budget_minutes" (wall clock) or
        "train_time_budget_minutes"."""
        return "time_budget_minutes" if self.shares[0] >= 1.0 else "train_time_budget_minutes"

    def progress(self, epoch: int, batch: int) -> dict[str, Any]:
        """The progress record of a checkpoint beyond its step (`save_checkpoint(extra=...)`): the position of the
        next batch and the clocks, which a resumed run's clock goes on from."""
        return {"epoch": epoch, "batch": batch, "train_seconds": self.total_train_seconds,
                "wall_clock_seconds": self.wall_clock_seconds, "cpu_seconds": self.cpu_seconds}
