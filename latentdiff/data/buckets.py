"""Aspect-ratio bucketing (NovelAI, "Improvements to Stable Diffusion", 2022): train on several (W, H)
shapes of about the same pixel count instead of centre-cropping everything to a square.

    buckets = make_buckets(512, multiple=64)           # [(256, 1024), (320, 768), ..., (512, 512), ..., (1024, 256)]
    b = assign_bucket((640, 480), buckets)             # index of the bucket with the nearest aspect ratio
    sampler = BucketBatchSampler(bucket_ids, batch_size=8, seed=0, rank=rank, world_size=world_size)
    sampler.set_epoch(epoch)                           # then: for batch in DataLoader(ds, batch_sampler=sampler)

Every batch holds images of one bucket, so they stack into one (B, 3, H, W) tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

__all__ = ["BucketBatchSampler", "BucketConfig", "assign_bucket", "make_buckets"]


@dataclass(frozen=True)
class BucketConfig:
    resolution: int = 512    # pixel budget: every bucket has at most resolution**2 pixels
    multiple: int = 64       # both sides are multiples of this (64 = VAE factor 8 x three UNet down-samplings)
    max_aspect: float = 4.0  # the widest bucket is at most max_aspect:1, the tallest 1:max_aspect

    def __post_init__(self):
        if not isinstance(self.multiple, int) or self.multiple < 1:
            raise ValueError(f"BucketConfig: multiple must be an int >= 1, got {self.multiple!r}")
        if not isinstance(self.resolution, int) or self.resolution < self.multiple or self.resolution % self.multiple:
            raise ValueError(f"BucketConfig: resolution ({self.resolution!r}) must be a positive multiple of "
                             f"multiple ({self.multiple}); change one of them (e.g. bucket_multiple=8 for small images)")
        if not self.max_aspect >= 1.0:
            raise ValueError(f"BucketConfig: max_aspect must be >= 1 (4.0 allows 1:4 .. 4:1), got {self.max_aspect!r}")

    def buckets(self) -> list[tuple[int, int]]:
        return make_buckets(self.resolution, self.multiple, self.max_aspect)


def make_buckets(resolution: int, multiple: int = 64, max_aspect: float = 4.0) -> list[tuple[int, int]]:
    """All (W, H) with sides multiples of `multiple`, W * H <= resolution**2 and aspect within
    [1/max_aspect, max_aspect], taking for each side the largest other side that fits (and the transpose);
    sorted by W / H."""
    BucketConfig(resolution, multiple, max_aspect)  # validates
    budget = resolution * resolution
    buckets = set()
    for w in range(multiple, budget // multiple + 1, multiple):
        h = budget // w // multiple * multiple
        if h >= multiple and max(w / h, h / w) <= max_aspect:
            buckets.update({(w, h), (h, w)})  # both orientations, so the set is symmetric
    return sorted(buckets, key=lambda wh: wh[0] / wh[1])


def assign_bucket(size: tuple[int, int], buckets: Sequence[tuple[int, int]]) -> int:
    """Index of the bucket whose aspect ratio is nearest (in log ratio) to that of `size` (w, h)."""
    w, h = size
    if w < 1 or h < 1:
        raise ValueError(f"assign_bucket: size must be positive, got {size}")
    target = math.log(w / h)
    return min(range(len(buckets)), key=lambda i: abs(math.log(buckets[i][0] / buckets[i][1]) - target))


class BucketBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of dataset indices, each batch from a single bucket; seeded, shardable over ranks.

    Each epoch: shuffle the members of every bucket (rng seeded by (seed, epoch)), cut them into batches,
    shuffle the batches, and give rank r the batches r, r + world_size, ... With even_batches (the default,
    as in accelerate) the batch list is padded by repeating its first batches so every rank gets the same
    number of steps (DDP needs that); with even_batches=False the ranks' batches are disjoint and cover
    every index exactly once. Every rank must use the same seed.

    Yields lists of (index, epoch) pairs: CaptionedImageDataset seeds captions and augmentations from them,
    which keeps them right with persistent DataLoader workers (that never see a set_epoch call).
    """

    def __init__(self, bucket_ids: Sequence[int], batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1, even_batches: bool = True):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"BucketBatchSampler: batch_size must be an int >= 1, got {batch_size!r}")
        if not isinstance(world_size, int) or world_size < 1 or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"BucketBatchSampler: need 0 <= rank < world_size, got rank={rank!r}, "
                             f"world_size={world_size!r}")
        self.bucket_ids = np.asarray(bucket_ids, dtype=np.int64)  # (N,) bucket of each dataset index
        if self.bucket_ids.size == 0:
            raise ValueError("BucketBatchSampler: no samples (every file was skipped?)")
        self.batch_size, self.seed, self.shuffle, self.drop_last = batch_size, seed, shuffle, drop_last
        self.rank, self.world_size, self.even_batches = rank, world_size, even_batches
        self.epoch = 0
        self.members = {int(b): np.flatnonzero(self.bucket_ids == b) for b in np.unique(self.bucket_ids)}

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch (as with DistributedSampler) to get a new order."""
        self.epoch = int(epoch)

    def _all_batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = []
        for b in sorted(self.members):
            idx = rng.permutation(self.members[b]) if self.shuffle else self.members[b]
            for s in range(0, len(idx), self.batch_size):
                if len(idx[s: s + self.batch_size]) == self.batch_size or not self.drop_last:
                    batches.append(idx[s: s + self.batch_size])
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.even_batches and batches and len(batches) % self.world_size:
            pad = self.world_size - len(batches) % self.world_size
            batches += [batches[i % len(batches)] for i in range(pad)]
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self._all_batches()[self.rank:: self.world_size]:
            yield [(int(i), self.epoch) for i in batch]

    def __len__(self) -> int:
        n = sum(len(m) // self.batch_size if self.drop_last else -(-len(m) // self.batch_size)
                for m in self.members.values())
        if self.even_batches:
            return -(-n // self.world_size)
        return len(range(self.rank, n, self.world_size))
