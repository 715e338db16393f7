"""Each source kind through build_dataloader: imagefolder, sidecar .txt, datasets, webdataset shards."""

import io
import json
import pytest
import torch
from PIL import Image

from latentdiff.data.dataset import DataConfig, build_dataloader, build_dataset, set_epoch
from latentdiff.data.shapes import write_dataset
from latentdiff.data.sources import (
    HFDatasetSource, ImageFolderSource, SidecarSource, WebDatasetSource, detect_kind, open_source, split_for_slot,
)


def png(color=(200, 30, 30), size=(32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A 20-image ShapesWorld imagefolder at 32 px."""
    return write_dataset(tmp_path_factory.mktemp("shapes") / "shapes", n=20, size=32, progress=False)


def rows(folder):
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


def run_epoch(loader, epoch=0):
    set_epoch(loader, epoch)
    captions, names, shapes_seen = [], [], set()
    for batch in loader:
        loader.dataset.skips.update(batch["skipped"])
        assert batch["pixel_values"].dtype == torch.float32
        assert -1 <= batch["pixel_values"].min() and batch["pixel_values"].max() <= 1
        shapes_seen.add(tuple(batch["pixel_values"].shape[1:]))
        captions += batch["captions"]
        names += batch["names"]
    return captions, names, shapes_seen


def test_imagefolder(shapes):
    loader = build_dataloader(DataConfig(str(shapes), resolution=32), batch_size=6)
    assert detect_kind(str(shapes)) == "imagefolder"
    captions, names, seen = run_epoch(loader)
    expected = {r["file_name"]: r["text"] for r in rows(shapes)}
    assert sorted(names) == sorted(expected) and seen == {(3, 32, 32)}
    assert dict(zip(names, captions)) == expected
    assert len(loader) == 4 and loader.dataset.skips.total == 0


def test_imagefolder_list_captions_seeded(tmp_path):
    for i in range(4):
        (tmp_path / f"{i}.png").write_bytes(png())
    meta = [{"file_name": f"{i}.png", "text": [f"cap {i} a", f"cap {i} b", f"cap {i} c"]} for i in range(4)]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(m) for m in meta))
    config = DataConfig(str(tmp_path), resolution=32, seed=3)
    dataset = build_dataset(config)
    per_epoch = [[dataset[(i, epoch)]["caption"] for i in range(4)] for epoch in range(6)]
    assert per_epoch[0] == [build_dataset(config)[(i, 0)]["caption"] for i in range(4)]  # seeded
    assert len({tuple(e) for e in per_epoch}) > 1  # and changes with the epoch
    assert all(c.startswith(f"cap {i} ") for e in per_epoch for i, c in enumerate(e))


def test_outside_root_rejected(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (tmp_path / "outside.png").write_bytes(png())
    (root / "ok.png").write_bytes(png())
    (root / "metadata.jsonl").write_text(json.dumps({"file_name": "ok.png", "text": "ok"}) + "\n" +
                                         json.dumps({"file_name": "../outside.png", "text": "escape"}) + "\n")
    with pytest.raises(ValueError, match=r"'\.\./outside\.png' resolves to .* outside the dataset folder"):
        ImageFolderSource(root)
    source = ImageFolderSource(root, outside_root="skip")
    assert [r.name for r in source.records] == ["ok.png"]
    assert [(s.name, s.reason) for s in source.skipped] == [("../outside.png", "outside_root")]


def test_missing_caption_policies(tmp_path):
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(png())
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "a red square"}) + "\n" +
                                             json.dumps({"file_name": "b.png"}) + "\n")
    with pytest.raises(ValueError, match=r"1 images have no caption: 'b.png'.*missing_caption='empty'"):
        ImageFolderSource(tmp_path)
    assert [r.caption for r in ImageFolderSource(tmp_path, missing_caption="empty")] == ["a red square", ""]
    skipping = ImageFolderSource(tmp_path, missing_caption="skip")
    assert len(skipping) == 1 and skipping.skipped[0].reason == "missing_caption"
    with pytest.raises(ValueError, match="no column 'caption'"):
        ImageFolderSource(tmp_path, caption_column="caption")


def test_sidecar_nested(tmp_path):
    (tmp_path / "x" / "y").mkdir(parents=True)
    files = {"top.png": "top caption", "x/mid.jpg": "mid caption", "x/y/deep.webp": " deep caption\n"}
    for name, caption in files.items():
        fmt = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}[name.rsplit(".", 1)[1]]
        Image.new("RGB", (40, 32), (10, 100, 200)).save(tmp_path / name, format=fmt)
        (tmp_path / name).with_suffix(".txt").write_text(caption)
    Image.new("RGB", (32, 32)).save(tmp_path / "x" / "nocap.png")
    (tmp_path / "notes.md").write_text("not an image, ignored")
    assert detect_kind(str(tmp_path)) == "sidecar"
    with pytest.raises(ValueError, match="x/nocap.png"):
        build_dataloader(DataConfig(str(tmp_path), resolution=32), batch_size=2)
    loader = build_dataloader(DataConfig(str(tmp_path), resolution=32, missing_caption="empty"), batch_size=2)
    captions, names, _ = run_epoch(loader)
    expected = {k: v.strip() for k, v in files.items()} | {"x/nocap.png": ""}
    assert dict(zip(names, captions)) == expected


def test_hf_dataset_from_disk(tmp_path, shapes):
    import datasets

    records = rows(shapes)
    ds = datasets.Dataset.from_dict({
        "img": [str(shapes / r["file_name"]) for r in records],
        "caption": [r["text"] for r in records],
    }).cast_column("img", datasets.Image())
    ds.save_to_disk(str(tmp_path / "ds"))
    assert detect_kind(str(tmp_path / "ds")) == "hf"
    with pytest.raises(ValueError, match="no column 'image'.*pass image_column="):
        build_dataset(DataConfig(str(tmp_path / "ds"), resolution=32, caption_column="caption"))
    config = DataConfig(str(tmp_path / "ds"), resolution=32, image_column="img", caption_column="caption")
    captions, names, seen = run_epoch(build_dataloader(config, batch_size=8, num_workers=2))
    assert sorted(captions) == sorted(r["text"] for r in records) and len(names) == 20
    # the same pixels and keys as reading the folder itself
    a = build_dataset(config)[(0, 0)]
    b = build_dataset(DataConfig(str(shapes), resolution=32))[(0, 0)]
    assert a["key"] == b["key"] and torch.equal(a["pixel_values"], b["pixel_values"])
    # bytes column, a DatasetDict folder, and in-memory datasets
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"image": [png()], "text": ["red"]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    source = HFDatasetSource.from_path(str(tmp_path / "dd"), split="train")
    assert source[0].read() == png() and source[0].caption == "red"
    with pytest.raises(ValueError, match="has splits \\['train'\\], not 'test'"):
        HFDatasetSource.from_path(str(tmp_path / "dd"), split="test")


def write_shards(folder, n_shards, per_shard, extra=None):
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    keys = []
    for s in range(n_shards):
        with wds.TarWriter(str(folder / f"shard-{s:03d}.tar")) as sink:
            for j in range(per_shard):
                key = f"s{s}_{j:03d}"
                color = (s * 40 % 256, j * 20 % 256, 100)
                if j % 2:
                    sink.write({"__key__": key, "png": png(color), "txt": f"caption {key}"})
                else:
                    sink.write({"__key__": key, "jpg": _jpeg(color), "json": {"text": f"caption {key}"}})
                keys.append(f"caption {key}")
            for sample in (extra or {}).get(s, []):
                sink.write(sample)
    return keys


def _jpeg(color):
    buffer = io.BytesIO()
    Image.new("RGB", (48, 32), color).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_webdataset_streams_every_sample_once(tmp_path, num_workers):
    captions = write_shards(tmp_path / "shards", n_shards=4, per_shard=5)
    assert detect_kind(str(tmp_path / "shards")) == "webdataset"
    config = DataConfig(str(tmp_path / "shards"), resolution=32, shuffle_buffer=8)
    loader = build_dataloader(config, batch_size=4, num_workers=num_workers)
    for epoch in range(2):
        seen, names, shapes_seen = run_epoch(loader, epoch)
        assert sorted(seen) == sorted(captions) and shapes_seen == {(3, 32, 32)}
    # brace patterns and globs name the same shards
    assert WebDatasetSource(str(tmp_path / "shards" / "shard-{000..003}.tar")).shards == \
        WebDatasetSource(str(tmp_path / "shards" / "*.tar")).shards


@pytest.mark.parametrize("n_shards", [8, 1])  # enough shards to split by shard; one shard split by sample
def test_webdataset_rank_and_worker_sharding(tmp_path, n_shards):
    captions = write_shards(tmp_path / "shards", n_shards=n_shards, per_shard=24 // n_shards)
    config = DataConfig(str(tmp_path / "shards"), resolution=32, bucketing=True, bucket_multiple=8)
    per_rank = []
    for rank in range(2):
        loader = build_dataloader(config, batch_size=3, num_workers=2, rank=rank, world_size=2)
        per_rank.append(run_epoch(loader)[0])
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(captions)
    assert min(len(p) for p in per_rank) > 0


def test_split_for_slot():
    shards = [f"{i}.tar" for i in range(5)]
    assert split_for_slot(shards, 1, 2) == (["1.tar", "3.tar"], 1, 0)
    assert split_for_slot(shards[:1], 3, 4) == (["0.tar"], 4, 3)
    with pytest.raises(ValueError):
        split_for_slot(shards, 2, 2)


def test_webdataset_broken_samples_counted(tmp_path):
    extra = {0: [{"__key__": "trunc", "png": png()[:60], "txt": "truncated"},
                 {"__key__": "nocap", "png": png()},
                 {"__key__": "noimage", "txt": "a caption without an image"}]}
    captions = write_shards(tmp_path / "shards", n_shards=2, per_shard=3, extra=extra)
    (tmp_path / "shards" / "shard-002.tar").write_bytes((tmp_path / "shards" / "shard-001.tar").read_bytes()[:1500])
    with pytest.raises(ValueError, match="shard-000.tar:nocap has no caption"):
        run_epoch(build_dataloader(DataConfig(str(tmp_path / "shards"), resolution=32), batch_size=2))
    config = DataConfig(str(tmp_path / "shards"), resolution=32, missing_caption="skip")
    for num_workers in (0, 2):
        loader = build_dataloader(config, batch_size=2, num_workers=num_workers)
        seen, _, _ = run_epoch(loader)
        counts = loader.dataset.skips.counts
        assert sorted(seen) == sorted(captions)  # the cut copy of shard 1 breaks inside its first member
        assert {k: v for k, v in counts.items() if v} == {"truncated": 1, "missing_caption": 1, "not_image": 1,
                                                            "corrupt": 1}, loader.dataset.skips.summary()


def test_open_source_kinds(tmp_path, shapes):
    assert isinstance(open_source(str(shapes)), ImageFolderSource)
    assert isinstance(open_source(str(shapes / "images"), kind="sidecar", missing_caption="empty"), SidecarSource)
    with pytest.raises(ValueError, match="kind must be one of"):
        open_source(str(shapes), kind="zip")
    with pytest.raises(ValueError, match="no metadata.jsonl"):
        open_source(str(tmp_path), kind="imagefolder")
    with pytest.raises(ValueError, match="no .tar shards"):
        WebDatasetSource(str(tmp_path / "*.tar"))
    with pytest.raises(ValueError, match="missing_caption must be one of"):
        DataConfig(str(shapes), missing_caption="drop")
