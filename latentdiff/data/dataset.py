"""Captioned image datasets for training: a source, safe decoding, transforms and buckets, put together.

    config = DataConfig(train_data="data/shapes", resolution=64)
    loader = build_dataloader(config, batch_size=16, num_workers=2, rank=rank, world_size=world_size)
    for epoch in range(epochs):
        set_epoch(loader, epoch)
        for batch in loader:
            loader.dataset.skips.update(batch["skipped"])   # skipped files travel inside batches
            if not batch["captions"]: continue                # empty only if a whole bucket / share is broken
            pixel_values = batch["pixel_values"]              # (B, 3, H, W) in [-1, 1]
            ...
    print(loader.dataset.skips.summary())

Skipped files and workers: the datasets yield good samples only, and every file skipped on the way rides
along in the `skipped` list of the next batch (SkipRecord(name, reason, detail)); the main process adds
them to `dataset.skips` (a SkipCounter that also holds what was skipped while listing and scanning the
source). That works with any number of DataLoader workers and needs no shared state. A map-style batch
keeps its size: a broken file is replaced by the next file of the same bucket.

Batches (`collate`): {"pixel_values": (B, 3, H, W) float32 in [-1, 1], "captions": [str] * B,
"keys": [content hash] * B (latent cache keys), "names": [str] * B, "original_sizes": (B, 2) long (h, w),
"crop_top_lefts": (B, 2) long, "skipped": [SkipRecord]}.
"""

from __future__ import annotations

import hashlib
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from latentdiff.data.buckets import BucketBatchSampler, BucketConfig, assign_bucket
from latentdiff.data.decode import SkipCounter, SkipError, SkipRecord, decode_image, probe_image
from latentdiff.data.procedural import ShapesWorldDataset, ShapesWorldStream, is_procedural
from latentdiff.data.sources import (
    KINDS, MISSING_CAPTION_POLICIES, OUTSIDE_ROOT_POLICIES, Record, WebDatasetSource, open_source, split_for_slot,
)
from latentdiff.data.transforms import ImageTransform, TransformConfig, check_size

__all__ = [
    "FAIL_FAST_AFTER",
    "CaptionedImageDataset",
    "DataConfig",
    "StreamingCaptionedDataset",
    "build_dataloader",
    "build_dataset",
    "choose_caption",
    "collate",
    "content_key",
    "set_epoch",
]

FAIL_FAST_AFTER = 64  # a worker whose first this-many files all fail raises instead of skipping on


@dataclass
class DataConfig:
    train_data: str                      # imagefolder / sidecar folder, save_to_disk folder, hub name, or .tar shards
    kind: str = "auto"                   # "auto", "imagefolder", "sidecar", "hf" or "webdataset" (see sources.py)
    caption_column: str = "text"         # caption column (imagefolder metadata, datasets, webdataset .json)
    image_column: str = "image"          # image column of a `datasets` dataset
    split: str = "train"                 # split of a DatasetDict folder or a hub dataset
    resolution: int = 512                # square side; with bucketing the pixel budget is resolution**2
    center_crop: bool = True             # False: a random crop (seeded per sample and epoch; not cacheable)
    random_flip: bool = False            # horizontal flip with p=0.5; off because captions say left/right
    bucketing: bool = False              # aspect-ratio buckets instead of square crops (see buckets.py)
    bucket_multiple: int = 64            # bucket sides are multiples of this
    max_aspect: float = 4.0              # buckets span aspect ratios 1:max_aspect .. max_aspect:1
    min_size: str = "upscale"            # an image smaller than its target: "upscale" or "skip" (too_small)
    missing_caption: str = "error"       # no caption: "error" (ValueError), "empty" (train on ""), "skip"
    outside_root: str = "error"          # a metadata file_name outside the folder: "error" (ValueError) or "skip"
    max_pixels: int = 89_478_485         # larger images are decompression bombs, skipped (PIL's default limit)
    resample: str = "bicubic"            # resize filter: "bicubic", "bilinear", "lanczos" or "box"
    seed: int = 0                        # seeds shuffling, caption choice, random crops and flips
    shuffle_buffer: int = 256            # webdataset only: samples held in the shuffle buffer (1 = shard order)

    def __post_init__(self):
        for name, allowed in (("kind", KINDS), ("missing_caption", MISSING_CAPTION_POLICIES),
                              ("outside_root", OUTSIDE_ROOT_POLICIES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"DataConfig: {name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not isinstance(self.max_pixels, int) or self.max_pixels < 1:
            raise ValueError(f"DataConfig: max_pixels must be an int >= 1, got {self.max_pixels!r}")
        if not isinstance(self.shuffle_buffer, int) or self.shuffle_buffer < 1:
            raise ValueError(f"DataConfig: shuffle_buffer must be an int >= 1, got {self.shuffle_buffer!r}")
        self.transform_config()  # validate resolution, min_size, resample
        self.bucket_config()     # validate bucket_multiple, max_aspect

    def transform_config(self) -> TransformConfig:
        return TransformConfig(self.resolution, self.center_crop, self.random_flip, self.min_size, self.resample)

    def bucket_config(self) -> BucketConfig | None:
        """The bucket settings, or None without bucketing."""
        return BucketConfig(self.resolution, self.bucket_multiple, self.max_aspect) if self.bucketing else None

    def targets(self) -> list[tuple[int, int]]:
        """The (W, H) shapes images are cropped to: the buckets, or the one square."""
        buckets = self.bucket_config()
        return buckets.buckets() if buckets else [(self.resolution, self.resolution)]


def content_key(data: bytes) -> str:
    """The cache key of a file: a hash of its bytes (32 hex digits)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def choose_caption(caption: str | Sequence[str], rng: np.random.Generator) -> str:
    """The caption, or one of several chosen with rng."""
    if isinstance(caption, str):
        return caption
    return caption[int(rng.integers(len(caption)))]


def _sample_rngs(seed: int, epoch: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """(caption rng, augmentation rng) of one sample in one epoch: independent of workers and batch order."""
    caption_seq, augment_seq = np.random.SeedSequence([seed, epoch, index]).spawn(2)
    return np.random.default_rng(caption_seq), np.random.default_rng(augment_seq)


class _SampleMaker:
    """Record -> sample dict (decode, transform, caption, key); raises SkipError."""

    def __init__(self, config: DataConfig):
        self.config = config
        self.transform = ImageTransform(config.transform_config())
        self.targets = config.targets()

    def __call__(self, record: Record, epoch: int, index: int, bucket: int | None = None) -> dict[str, Any]:
        try:
            data = record.read()
        except OSError as e:
            raise SkipError("missing_file", str(e)) from None
        image = decode_image(data, self.config.max_pixels)
        if bucket is None:
            bucket = assign_bucket(image.size, self.targets) if self.config.bucketing else 0
        target = self.targets[bucket]
        caption_rng, augment_rng = _sample_rngs(self.config.seed, epoch, index)
        sample = self.transform(image, target, augment_rng)
        sample.update(caption=choose_caption(record.caption, caption_rng), key=content_key(data),
                      name=record.name, bucket=bucket, target_size=(target[1], target[0]))
        return sample


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples into a batch (see the module doc); samples without pixel_values only bring their
    `skipped` records. All samples must have one size (use BucketBatchSampler with bucketing)."""
    good = [s for s in samples if "pixel_values" in s]
    skipped = [SkipRecord(*r) for s in samples for r in s.get("skipped", ())]
    shapes = {tuple(s["pixel_values"].shape) for s in good}
    if len(shapes) > 1:
        raise ValueError(f"collate: samples of different sizes {sorted(shapes)}; batch them with BucketBatchSampler")
    if good:
        pixel_values = torch.stack([s["pixel_values"] for s in good])  # (B, 3, H, W)
    else:
        h, w = samples[0]["target_size"] if samples else (0, 0)
        pixel_values = torch.empty(0, 3, h, w)
    return {
        "pixel_values": pixel_values,
        "captions": [s["caption"] for s in good],
        "keys": [s["key"] for s in good],
        "names": [s["name"] for s in good],
        "original_sizes": torch.tensor([s["original_size"] for s in good], dtype=torch.long).reshape(-1, 2),
        "crop_top_lefts": torch.tensor([s["crop_top_left"] for s in good], dtype=torch.long).reshape(-1, 2),
        "skipped": skipped,
    }


class CaptionedImageDataset(Dataset):
    """Map-style dataset over an imagefolder, sidecar or `datasets` source.

    `dataset[(i, epoch)]` (or `dataset[i]`, epoch 0) is a sample dict: "pixel_values" (3, H, W) in [-1, 1],
    "caption", "key" (content hash), "name", "original_size" (h, w), "crop_top_left", "bucket",
    "target_size" (H, W), and "skipped": the files that failed on the way to it. A file that fails is
    replaced by the next file of its bucket (so batches keep their size and shape); only when every file
    of the bucket fails does the item come back without pixel_values (collate then drops it).

    With bucketing, building the dataset reads every image header (not the pixels) to find its bucket;
    files whose header already fails are skipped then and counted in `skips`.
    """

    def __init__(self, source: Any, config: DataConfig, *, scan_threads: int = 8):
        if isinstance(source, WebDatasetSource):
            raise ValueError("CaptionedImageDataset: webdataset shards stream; use StreamingCaptionedDataset")
        self.source, self.config = source, config
        self.make = _SampleMaker(config)
        self.skips = SkipCounter()  # the main process's count; add batch["skipped"] to it
        self.skips.update(getattr(source, "skipped", ()))
        # 1. Which source entries to use, and their buckets
        if config.bucketing:
            self.indices, self.bucket_ids = self._scan(scan_threads)
        else:
            self.indices, self.bucket_ids = list(range(len(source))), [0] * len(source)
        if not self.indices:
            raise ValueError(f"CaptionedImageDataset: no usable images in {config.train_data!r}; "
                             f"{self.skips.summary()}")
        # 2. Members of each bucket, for substitutes
        self._members: dict[int, list[int]] = {}
        self._rank_in_bucket: list[int] = []
        for pos, b in enumerate(self.bucket_ids):
            self._rank_in_bucket.append(len(self._members.setdefault(b, [])))
            self._members[b].append(pos)
        self._bad: set[int] = set()  # positions this process found broken (each worker has its own)
        self._good = self._failures = 0

    def _scan(self, threads: int) -> tuple[list[int], list[int]]:
        targets, c = self.make.targets, self.config

        def probe(i: int) -> int | SkipRecord:  # the bucket, or why the file is skipped
            record = self.source[i]
            try:
                size = probe_image(record.path if record.data is None else record.data, c.max_pixels)
                bucket = assign_bucket(size, targets)
                check_size(size, targets[bucket], c.min_size)
                return bucket
            except SkipError as e:
                return SkipRecord(record.name, e.reason, e.detail)

        with ThreadPoolExecutor(max(1, threads)) as pool:
            results = list(pool.map(probe, range(len(self.source)), chunksize=64))
        indices, buckets = [], []
        for i, result in enumerate(results):
            if isinstance(result, SkipRecord):
                self.skips.add(result)
            else:
                indices.append(i)
                buckets.append(result)
        return indices, buckets

    def __len__(self) -> int:
        return len(self.indices)

    def caption_at(self, pos: int) -> str | tuple[str, ...]:
        """The caption (or captions to choose from) of item `pos`, without reading its image."""
        return self.source[self.indices[pos]].caption

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        pos, epoch = (int(item[0]), int(item[1])) if isinstance(item, (tuple, list)) else (int(item), 0)
        bucket = self.bucket_ids[pos]
        members, start = self._members[bucket], self._rank_in_bucket[pos]
        skipped: list[SkipRecord] = []
        for k in range(len(members)):  # the item itself, then its bucket's next files as substitutes
            p = members[(start + k) % len(members)]
            if p in self._bad:
                continue
            record = self.source[self.indices[p]]
            try:
                sample = self.make(record, epoch, self.indices[p], bucket)
            except SkipError as e:
                self._bad.add(p)
                self._failures += 1
                skipped.append(SkipRecord(record.name, e.reason, e.detail))
                if self._good == 0 and self._failures >= min(FAIL_FAST_AFTER, len(self)):
                    raise RuntimeError(self._fail_message(skipped)) from None
                continue
            self._good += 1
            sample["skipped"] = skipped
            return sample
        w, h = self.make.targets[bucket]
        return {"skipped": skipped, "target_size": (h, w)}

    def _fail_message(self, skipped: list[SkipRecord]) -> str:
        counter = SkipCounter()
        counter.update(skipped)
        return (f"CaptionedImageDataset: the first {self._failures} images read from {self.config.train_data!r} "
                f"all failed; is this the right data?\n{counter.summary()}")


def _shuffled(items: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """A shuffle buffer: hold `size` items, emit a random one as each new item arrives."""
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = int(rng.integers(size))
        buffer[j], item = item, buffer[j]
        yield item
    rng.shuffle(buffer)
    yield from buffer


class StreamingCaptionedDataset(IterableDataset):
    """webdataset shards as a stream of ready batches (use DataLoader(batch_size=None)).

    Every (rank, DataLoader worker) pair reads its own share: shards slot, slot + slots, ... when there
    are at least as many shards as readers, else every shard with every slots-th sample kept (slots =
    world_size * num_workers). Shard order is shuffled per epoch (the same on every rank), samples go
    through a shuffle buffer; with bucketing a batch is emitted when one bucket has batch_size samples,
    and partial buckets at the end of the stream are emitted too (unless drop_last). Ranks may get
    different numbers of batches: for multi-GPU runs, stop by a step count rather than an epoch end.
    Call set_epoch(epoch) before each epoch (the DataLoader must not keep persistent workers).
    """

    def __init__(self, source: WebDatasetSource, config: DataConfig, batch_size: int, *, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True, drop_last: bool = False):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"StreamingCaptionedDataset: batch_size must be an int >= 1, got {batch_size!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"StreamingCaptionedDataset: need 0 <= rank < world_size, got {rank}, {world_size}")
        self.source, self.config, self.batch_size = source, config, batch_size
        self.rank, self.world_size, self.shuffle, self.drop_last = rank, world_size, shuffle, drop_last
        self.make = _SampleMaker(config)
        self.skips = SkipCounter()  # the main process's count; add batch["skipped"] to it
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # 1. This reader's share of the shards
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        slot, slots = self.rank * workers + worker, self.world_size * workers
        shards = list(self.source.shards)
        if self.shuffle:
            np.random.default_rng([self.config.seed, self.epoch]).shuffle(shards)
        shards, stride, offset = split_for_slot(shards, slot, slots)
        records = self.source.iter_records(shards, stride, offset)
        if self.shuffle and self.config.shuffle_buffer > 1:
            records = _shuffled(records, self.config.shuffle_buffer,
                                np.random.default_rng([self.config.seed, self.epoch, slot]))

        # 2. Decode into per-bucket buffers; a batch is yielded one step late so trailing skips can ride on it
        buffers: dict[int, list[dict[str, Any]]] = {}
        pending: list[SkipRecord] = []
        held: dict[str, Any] | None = None
        good = failures = 0
        for record in records:
            if isinstance(record, SkipRecord):
                pending.append(record)
                continue
            try:
                sample = self.make(record, self.epoch, zlib.crc32(record.name.encode()))
            except SkipError as e:
                pending.append(SkipRecord(record.name, e.reason, e.detail))
                failures += 1
                if good == 0 and failures >= FAIL_FAST_AFTER:
                    counter = SkipCounter()
                    counter.update(pending)
                    raise RuntimeError(f"StreamingCaptionedDataset: the first {failures} images read from "
                                       f"{shards} all failed; is this the right data?\n{counter.summary()}") from None
                continue
            good += 1
            buffer = buffers.setdefault(sample["bucket"], [])
            buffer.append(sample)
            if len(buffer) == self.batch_size:
                batch = collate(buffers.pop(sample["bucket"]))
                batch["skipped"], pending = pending, []
                if held is not None:
                    yield held
                held = batch

        # 3. Partial buckets, then the held batch with whatever was skipped after it
        for bucket in sorted(buffers):
            if self.drop_last:
                continue
            batch = collate(buffers[bucket])
            batch["skipped"], pending = pending, []
            if held is not None:
                yield held
            held = batch
        if held is None and pending:  # nothing good in this share: an empty batch carries the skips
            w, h = self.make.targets[0]
            held = collate([{"skipped": pending, "target_size": (h, w)}])
        elif held is not None:
            held["skipped"] = held["skipped"] + pending
        if held is not None:
            yield held


def build_dataset(config: DataConfig, *, batch_size: int | None = None, rank: int = 0, world_size: int = 1,
                  shuffle: bool = True, drop_last: bool = False) -> CaptionedImageDataset | StreamingCaptionedDataset:
    """The dataset for config.train_data: map-style for folders and datasets, streaming (needs batch_size)
    for webdataset shards, rendered on the fly for `shapesworld:` (latentdiff.data.procedural)."""
    if is_procedural(config.train_data):
        return ShapesWorldDataset(ShapesWorldStream.parse(config.train_data), config.resolution)
    source = open_source(config.train_data, config.kind, caption_column=config.caption_column,
                         image_column=config.image_column, split=config.split,
                         missing_caption=config.missing_caption, outside_root=config.outside_root)
    if isinstance(source, WebDatasetSource):
        if batch_size is None:
            raise ValueError("build_dataset: webdataset shards are batched in the stream; pass batch_size")
        return StreamingCaptionedDataset(source, config, batch_size, rank=rank, world_size=world_size,
                                         shuffle=shuffle, drop_last=drop_last)
    return CaptionedImageDataset(source, config)


def build_dataloader(config: DataConfig, batch_size: int, *, num_workers: int = 0, rank: int = 0,
                     world_size: int = 1, shuffle: bool = True, drop_last: bool = False, even_batches: bool = True,
                     pin_memory: bool = False) -> DataLoader:
    """A DataLoader of collated batches for this rank (see the module doc for the loop).

    Pass this process's rank and world size (accelerator.process_index, accelerator.num_processes) and do
    not hand the loader to accelerator.prepare: it is already sharded; move batches to the device yourself.
    Map-style data: each batch from one bucket, BucketBatchSampler (seeded, even_batches pads ranks to equal
    length). webdataset: StreamingCaptionedDataset. Call set_epoch(loader, epoch) before every epoch.
    """
    dataset = build_dataset(config, batch_size=batch_size, rank=rank, world_size=world_size, shuffle=shuffle,
                            drop_last=drop_last)
    # A DataLoader draws a base seed for its workers each time it is iterated, from the global torch RNG unless
    # it has a generator of its own. That draw would shift the training noise after a resume (the iterator is
    # created at a different point), so the loader gets its own generator.
    generator = torch.Generator().manual_seed(config.seed)
    if isinstance(dataset, StreamingCaptionedDataset):
        return DataLoader(dataset, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                          generator=generator)
    sampler = BucketBatchSampler(dataset.bucket_ids, batch_size, seed=config.seed, shuffle=shuffle,
                                 drop_last=drop_last, rank=rank, world_size=world_size, even_batches=even_batches)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0, generator=generator)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Set the epoch of a loader from build_dataloader (its batch sampler, or its streaming dataset)."""
    for obj in (loader.batch_sampler, loader.dataset):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
