"""Checkpoints through `accelerator.save_state`, written so that a kill during a save never breaks the latest.

Layout under `output_dir/checkpoints/`:
    checkpoint-0000100/      complete: model(s), optimizer, LR schedule, EMA, RNG states, `progress.json`
    .partial-0000200/        being written; never read, removed by the next save

A checkpoint is written into a `.partial-*` folder and renamed to `checkpoint-*` only when every process has
finished writing; a rename within one filesystem is atomic, so `latest_checkpoint` only ever sees complete ones.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator

PREFIX = "checkpoint-"
PARTIAL = ".partial-"
PROGRESS = "progress.json"  # {"step": int, ...}: the training position the state belongs to


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / PROGRESS).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    dirs = checkpoint_dirs(output_dir)
    return dirs[-1] if dirs else None


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """`--resume latest` -> the newest complete checkpoint (None if there is none yet); a path -> that path."""
    if resume in (None, "", "none"):
        return None
    if resume == "latest":
        return latest_checkpoint(output_dir)
    path = Path(resume)
    if not (path / PROGRESS).is_file():
        raise ValueError(f"--resume {resume}: not a complete checkpoint folder (no {PROGRESS}); use 'latest' or a "
                         f"folder under {Path(output_dir) / 'checkpoints'}.")
    return path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _quiet_tied_weights(logging.Filter):
    """Drop accelerate's "Removed shared tensor {...} while saving" (every checkpoint of a T5 text encoder, whose
    `shared` and `encoder.embed_tokens` are one tensor): transformers re-ties them on load, and a resumed run is
    bit-identical to an unbroken one (tests/test_text_models.py)."""

    logger = logging.getLogger("accelerate.utils.other")

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()

    def __enter__(self):
        self.logger.addFilter(self)

    def __exit__(self, *exc):
        self.logger.removeFilter(self)


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, step: int, keep: int,
                    extra: dict[str, Any] | None = None) -> Path:
    """Save the full training state at `step` atomically and keep only the newest `keep` checkpoints.

    Every process must call this (accelerate writes per-process RNG states).
    """
    root = Path(output_dir) / "checkpoints"
    final = root / f"{PREFIX}{step:07d}"
    partial = root / f"{PARTIAL}{step:07d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(PARTIAL + "*"):  # left by a run killed mid-save
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    with _quiet_tied_weights():
        accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / PROGRESS).write_text(json.dumps({"step": step, **(extra or {})}))
        for f in partial.rglob("*"):
            if f.is_file():
                with open(f, "rb") as handle:
                    os.fsync(handle.fileno())
        if final.exists():  # the same step saved by an earlier run: replace it
            shutil.rmtree(final)
        os.replace(partial, final)
        _fsync_dir(root)
        for old in checkpoint_dirs(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: Path) -> dict[str, Any]:
    """Restore the state saved by `save_checkpoint`; returns its progress record ({"step": ...})."""
    accelerator.load_state(str(path))
    return json.loads((path / PROGRESS).read_text())


def resume_progress(accelerator: Accelerator, resume: str | None, output_dir: str | Path) -> dict[str, Any]:
    """Restore `--resume`'s checkpoint, if there is one, and return its progress record over a fresh run's:
    step, epoch and batch 0, no time spent (records of older checkpoints may lack a key)."""
    progress = {"step": 0, "epoch": 0, "batch": 0, "train_seconds": 0.0, "wall_clock_seconds": 0.0}
    checkpoint = resolve_resume(resume, output_dir)
    if checkpoint is not None:
        progress |= load_checkpoint(accelerator, checkpoint)
        accelerator.print(f"resumed from {checkpoint} at step {progress['step']}")
    return progress


def batches_from(loader, epoch: int = 0, batch: int = 0, group: int = 1):
    """Yield (epoch, index, batch) from position (epoch, batch) on, epoch after epoch, without end.

    The position comes from a checkpoint's progress record, so a resumed run sees exactly the batches an
    uninterrupted one would (the batches before it are drawn and dropped: data order is seeded per epoch). With a
    map-style loader an epoch ends at a multiple of `group` batches (whole optimizer steps under gradient
    accumulation); a streamed one (webdataset shards) ends where the stream does.
    """
    from latentdiff.data.dataset import set_epoch

    while True:
        set_epoch(loader, epoch)
        try:
            usable = len(loader) // group * group
        except TypeError:  # a stream has no length
            usable = None
        yielded = False
        for i, item in enumerate(loader):
            if usable is not None and i >= usable:
                break
            if i >= batch:
                yielded = True
                yield epoch, i, item
        if not yielded and batch == 0:
            raise ValueError(f"The training data gives no full batch (of {group} micro-batches) in an epoch: use "
                             "more images or a smaller --batch-size.")
        epoch, batch = epoch + 1, 0
