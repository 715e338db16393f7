"""Aspect buckets: the bucket list, nearest-aspect assignment, one-bucket batches, seeded rank sharding."""

import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from latentdiff.data.buckets import BucketBatchSampler, BucketConfig, assign_bucket, make_buckets
from latentdiff.data.dataset import DataConfig, build_dataloader, set_epoch


def test_make_buckets():
    buckets = make_buckets(512, 64)
    assert (512, 512) in buckets and (256, 1024) in buckets and (1024, 256) in buckets
    for w, h in buckets:
        assert w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 and max(w / h, h / w) <= 4
    assert set(buckets) == {(h, w) for w, h in buckets}  # symmetric
    ratios = [w / h for w, h in buckets]
    assert ratios == sorted(ratios)
    assert all(w * h >= 0.75 * 512 * 512 for w, h in buckets)  # each uses most of the budget
    assert max(w / h for w, h in make_buckets(512, 64, max_aspect=2.0)) <= 2.0
    with pytest.raises(ValueError, match="bucket_multiple=8"):
        make_buckets(32, 64)
    with pytest.raises(ValueError, match="max_aspect must be >= 1"):
        BucketConfig(512, 64, 0.5)


def test_assign_bucket_nearest_aspect():
    buckets = make_buckets(512, 64)
    assert buckets[assign_bucket((1000, 1000), buckets)] == (512, 512)
    assert buckets[assign_bucket((1920, 1080), buckets)] == (640, 384)  # 1.78: 1.67 is nearer than 2.2
    assert buckets[assign_bucket((100, 1000), buckets)] == (256, 1024)  # beyond 1:4 -> the tallest
    for size in [(640, 480), (480, 640), (300, 900), (1200, 500)]:
        chosen = buckets[assign_bucket(size, buckets)]
        best = min(abs(math.log(size[0] / size[1]) - math.log(w / h)) for w, h in buckets)
        assert abs(math.log(size[0] / size[1]) - math.log(chosen[0] / chosen[1])) == best


def batches_of(sampler, epoch=0):
    sampler.set_epoch(epoch)
    return [[i for i, e in batch] for batch in sampler]


def test_sampler_one_bucket_per_batch_seeded():
    rng = np.random.default_rng(0)
    bucket_ids = rng.integers(0, 5, 103)
    sampler = BucketBatchSampler(bucket_ids, batch_size=4, seed=1)
    batches = batches_of(sampler)
    assert len(batches) == len(sampler)
    assert all(len({bucket_ids[i] for i in b}) == 1 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(103))  # every index once
    assert batches == batches_of(BucketBatchSampler(bucket_ids, batch_size=4, seed=1))  # seeded
    assert batches != batches_of(sampler, epoch=1)  # set_epoch reshuffles
    assert batches != batches_of(BucketBatchSampler(bucket_ids, batch_size=4, seed=2))
    assert all(e == 3 for batch in (sampler.set_epoch(3) or sampler) for _, e in batch)  # (index, epoch) pairs
    dropped = BucketBatchSampler(bucket_ids, batch_size=4, drop_last=True)
    assert all(len(b) == 4 for b in batches_of(dropped)) and len(dropped) == len(batches_of(dropped))


@pytest.mark.parametrize("world_size", [2, 3])
def test_sampler_rank_sharding(world_size):
    bucket_ids = np.random.default_rng(0).integers(0, 3, 50)
    # even_batches=False: disjoint and covering
    shards = [batches_of(BucketBatchSampler(bucket_ids, 4, seed=5, rank=r, world_size=world_size, even_batches=False))
              for r in range(world_size)]
    flat = [i for s in shards for b in s for i in b]
    assert sorted(flat) == list(range(50))
    for r, s in enumerate(shards):
        assert len(s) == len(BucketBatchSampler(bucket_ids, 4, rank=r, world_size=world_size, even_batches=False))
    # even_batches=True (default): every rank the same number of steps, covering, repeats only as padding
    samplers = [BucketBatchSampler(bucket_ids, 4, seed=5, rank=r, world_size=world_size) for r in range(world_size)]
    shards = [batches_of(s) for s in samplers]
    assert len({len(s) for s in shards}) == 1 and all(len(s) == len(shards[0]) for s in samplers)
    flat = [i for s in shards for b in s for i in b]
    assert set(flat) == set(range(50)) and len(flat) - 50 < world_size * 4
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        BucketBatchSampler(bucket_ids, 4, rank=2, world_size=2)


def _image_bytes(w, h, fmt="PNG", exif=None):
    buffer = io.BytesIO()
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2] = (255, 0, 0)  # top half red, bottom half blue
    a[h // 2:] = (0, 0, 255)
    kw = {"exif": exif} if exif is not None else {}
    Image.fromarray(a).save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def test_bucketed_dataloader(tmp_path):
    sizes = [(64, 32), (32, 64), (40, 40), (96, 32), (50, 60), (33, 47)] * 3
    meta = []
    for i, (w, h) in enumerate(sizes):
        (tmp_path / f"{i}.png").write_bytes(_image_bytes(w, h))
        meta.append({"file_name": f"{i}.png", "text": f"{w}x{h}"})
    # stored 32 x 48 (w x h) rotated by EXIF orientation 8 (90 degrees counter-clockwise): upright 48 x 32
    exif = Image.Exif()
    exif[0x0112] = 8
    (tmp_path / "rot.jpg").write_bytes(_image_bytes(32, 48, "JPEG", exif))
    meta.append({"file_name": "rot.jpg", "text": "rotated"})
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(m) for m in meta))

    config = DataConfig(str(tmp_path), resolution=32, bucketing=True, bucket_multiple=8)
    buckets = config.targets()
    loader = build_dataloader(config, batch_size=3, num_workers=2)
    for epoch in range(2):
        set_epoch(loader, epoch)
        seen = []
        for batch in loader:
            b, _, h, w = batch["pixel_values"].shape
            for caption, (oh, ow) in zip(batch["captions"], batch["original_sizes"].tolist()):
                assert buckets[assign_bucket((ow, oh), buckets)] == (w, h)  # one bucket, the right one
                if caption == "rotated":
                    assert (ow, oh) == (48, 32) and (w, h) == (40, 24)
                    x = batch["pixel_values"][batch["captions"].index("rotated")]  # (3, 24, 40)
                    # stored top red / bottom blue, turned 90 degrees counter-clockwise: left red, right blue
                    assert x[0, :, :4].mean() > 0.9 and x[2, :, :4].mean() < -0.9
                    assert x[2, :, -4:].mean() > 0.9 and x[0, :, -4:].mean() < -0.9
            seen += batch["captions"]
        assert sorted(seen) == sorted(m["text"] for m in meta)
