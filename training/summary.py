"""The run summary, training_summary.json: what a run did, on what, how fast. Written beside the checkpoints and
into the result folder, where the model card reads it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from latentdiff.training.hardware import hardware_description
from latentdiff.training.run_clock import RunClock


def run_summary(accelerator, clock: RunClock, *, step: int, first_step: int, images_seen: int, data=None,
                **extra: Any) -> dict[str, Any]:
    """The fields every run reports, then `extra` (the script's own: final loss, epochs, ...)."""
    seconds = clock.train_seconds
    summary = {"steps": step, "wall_clock_seconds": clock.wall_clock_seconds, "seconds": clock.seconds,
               "train_seconds_all_invocations": clock.total_train_seconds, "train_seconds": seconds,
               "cpu_seconds_all_invocations": clock.cpu_seconds,
               "images_per_s": images_seen / seconds if seconds > 0 and step > first_step else None,
               "steps_per_s": (step - first_step) / seconds if seconds > 0 else None,
               "hardware": hardware_description(accelerator), "processes": accelerator.num_processes,
               "device": str(accelerator.device)}
    if data is not None:
        summary.update(skipped_files=data.dataset.skips.counts, **data.cache_stats())
    return summary | extra


def write_summary(summary: dict[str, Any], *folders: Path) -> None:
    for folder in folders:
        (Path(folder) / "training_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
