"""A dataset folder with broken files of every kind goes through a DataLoader to the end, and the summary
counts each skipped file under the right reason (with 0 and 2 workers, square and bucketed)."""

import io
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from latentdiff.data.dataset import CaptionedImageDataset, DataConfig, build_dataloader, build_dataset, set_epoch
from latentdiff.data.shapes import write_dataset
from latentdiff.data.sources import ImageFolderSource


from messy import (broken_files, encode, expected_counts, good_files, make_messy, messy_config,  # noqa: E402
                   noise, png_header)


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    return make_messy(tmp_path_factory.mktemp("messy"))


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("bucketing", [False, True])
def test_broken_files_skipped_and_counted(messy, num_workers, bucketing):
    config = messy_config(messy, bucketing=bucketing, bucket_multiple=8)
    loader = build_dataloader(config, batch_size=4, num_workers=num_workers)
    skips = loader.dataset.skips
    good_names = {f"images/0000/{i:08d}.png" for i in range(20)} | set(good_files())
    for epoch in range(2):
        set_epoch(loader, epoch)
        names = []
        for batch in loader:
            skips.update(batch["skipped"])
            assert 0 < batch["pixel_values"].shape[0] == len(batch["captions"]) <= 4
            assert torch.isfinite(batch["pixel_values"]).all()
            names += batch["names"]
        assert set(names) == good_names  # every good file, none of the broken ones
        assert len(names) == len(loader.dataset)  # broken files were replaced, batches kept their size
    counts = {k: v for k, v in skips.counts.items() if v}
    assert counts == expected_counts(), skips.summary()
    assert {r.name: r.reason for r in skips.records.values()} == {n: r for n, (_, r) in broken_files().items()}
    summary = skips.summary()
    assert summary.startswith(f"skipped {len(broken_files())} files (truncated 2, corrupt 1, empty 1")
    assert "broken/bomb.png: bomb" in summary and "../outside.png: outside_root" in summary


def test_good_oddities_decode_right(messy):
    dataset = build_dataset(messy_config(messy))
    by_name = {dataset.source[i].name: pos for pos, i in enumerate(dataset.indices)}
    rgba = dataset[by_name["modes/rgba.png"]]["pixel_values"]  # left half opaque red, right transparent
    assert (rgba[:, :, -6:] == 1).all()  # composited on white
    assert rgba[0, :, :6].mean() > 0.99 and rgba[1, :, :6].mean() < -0.99
    rotated = dataset[by_name["rotated.jpg"]]
    assert rotated["original_size"] == (48, 36)  # (h, w): portrait after EXIF orientation 6


def test_policies_default_to_errors(messy):
    with pytest.raises(ValueError, match="outside the dataset folder"):
        build_dataset(DataConfig(str(messy), resolution=32))
    with pytest.raises(ValueError, match="broken/nocaption.png"):
        build_dataset(DataConfig(str(messy), resolution=32, outside_root="skip"))


def test_all_broken_is_a_clear_error(tmp_path):
    for i in range(5):
        (tmp_path / f"{i}.png").write_bytes(b"not an image")
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps({"file_name": f"{i}.png", "text": "x"})
                                                       for i in range(5)))
    loader = build_dataloader(DataConfig(str(tmp_path), resolution=32), batch_size=2)
    with pytest.raises(RuntimeError, match=r"(?s)the first 5 images .* all failed.*not_image 5"):
        next(iter(loader))
    with pytest.raises(ValueError, match="(?s)no usable images.*not_image 5"):  # bucketing scans the headers first
        build_dataset(DataConfig(str(tmp_path), resolution=32, bucketing=True, bucket_multiple=8))


def test_broken_bucket_gives_empty_batch_not_error(tmp_path):
    """Once good images were seen, a bucket whose files all fail only yields an empty batch with the skips."""
    (tmp_path / "good.png").write_bytes(encode(noise(32, 32)))
    (tmp_path / "wide.png").write_bytes(encode(noise(64, 16))[:300])  # header fine, data truncated
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "good.png", "text": "g"}) + "\n" +
                                             json.dumps({"file_name": "wide.png", "text": "w"}) + "\n")
    dataset = CaptionedImageDataset(ImageFolderSource(tmp_path),
                                    DataConfig(str(tmp_path), resolution=32, bucketing=True, bucket_multiple=8))
    assert dataset.bucket_ids[0] != dataset.bucket_ids[1]
    assert dataset[0]["caption"] == "g"
    item = dataset[1]
    assert "pixel_values" not in item and item["skipped"][0].reason == "truncated"
    from latentdiff.data.dataset import collate

    batch = collate([item])
    assert batch["pixel_values"].shape == (0, 3, 16, 64) and batch["captions"] == []
