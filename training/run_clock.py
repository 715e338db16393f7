"""The run's clock: training and wall-clock seconds summed over resumed invocations, and the time budget.

    clock = RunClock(accelerator, cfg.time_budget_minutes, progress)  # progress: the resumed checkpoint's record
    ...one optimizer step...
    out_of_time = clock.out_of_time()  # the same answer on every rank
    with clock.paused():  # validation grids and checkpoints are not training time
        if due(step, cfg.checkpoint_every, cfg.max_steps, now=out_of_time):
            save_checkpoint(accelerator, out, step, keep, extra=clock.progress(epoch, i + 1))
    ...
    clock.stop()  # training is over; writing the result is not training time either

Training time stops while paused and after `stop()`; wall-clock time never stops.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from time import perf_counter, process_time
from typing import Any

import torch
from accelerate import Accelerator


def due(step: int, every: int, *at: int | None, now: bool = False) -> bool:
    """Whether a periodic job (validation grid, checkpoint) runs after optimizer step `step`: every `every` steps,
    at any of the steps `at` (e.g. max_steps; None entries are ignored), or `now` (e.g. the time budget is spent)."""
    return now or step % every == 0 or step in at


class RunClock:
    """Seconds of one run that may span several invocations (`--resume`), started at this invocation's loop."""

    def __init__(self, accelerator: Accelerator, budget_minutes: float | None, progress: dict[str, Any]):
        self.accelerator = accelerator
        self.budget = None if budget_minutes is None else 60.0 * budget_minutes  # training seconds, all invocations
        self.earlier_train = float(progress.get("train_seconds", 0.0))  # of the invocations before this one
        self.earlier_wall = float(progress.get("wall_clock_seconds", 0.0))
        self.earlier_cpu = float(progress.get("cpu_seconds", 0.0))
        self.start, self.cpu_start = perf_counter(), process_time()
        self._paused = 0.0  # seconds spent in `paused()` in this invocation
        self._stopped_at: float | None = None  # when the training clock stopped (a pause, or `stop()`)

    @property
    def seconds(self) -> float:
        """Wall-clock seconds of this invocation."""
        return perf_counter() - self.start

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
        """Training seconds of all invocations (what the time budget counts)."""
        return self.earlier_train + self.train_seconds

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent in this block (validation, checkpoints) is not training time."""
        if self._stopped_at is not None:
            raise RuntimeError("RunClock.paused(): the clock is already paused or stopped.")
        self._stopped_at = perf_counter()
        try:
            yield
        finally:
            self._paused += perf_counter() - self._stopped_at
            self._stopped_at = None

    def stop(self) -> None:
        """Training is over: the training clock stops for good (the wall clock goes on)."""
        if self._stopped_at is None:
            self._stopped_at = perf_counter()

    def out_of_time(self) -> bool:
        """Whether the time budget is spent (False without one). Every rank gets the same answer, the slowest
        rank's clock (max over ranks), so all ranks stop at the same step: call it on every rank."""
        if self.budget is None:
            return False
        spent = torch.tensor(self.total_train_seconds, device=self.accelerator.device)
        return self.accelerator.reduce(spent, "max").item() >= self.budget

    def progress(self, epoch: int, batch: int) -> dict[str, Any]:
        """The progress record of a checkpoint beyond its step (`save_checkpoint(extra=...)`): the position of the
        next batch and both clocks, which a resumed run's clock goes on from."""
        return {"epoch": epoch, "batch": batch, "train_seconds": self.total_train_seconds,
                "wall_clock_seconds": self.wall_clock_seconds, "cpu_seconds": self.cpu_seconds}
