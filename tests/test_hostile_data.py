"""Hostile training data (issue 17): FIFOs named like images, captions in odd encodings or of the wrong JSON type,
metadata rows that are not objects. Each is a counted skip or one clear ValueError naming the line, never a hang,
a traceback from deep inside, or a caption trained on as garbage."""

import io
import json
import os
import threading

import pytest
from PIL import Image

from latentdiff.data.dataset import DataConfig, build_dataloader, set_epoch
from latentdiff.data.decode import SkipError, decode_caption, probe_image
from latentdiff.data.sources import ImageFolderSource, SidecarSource

UTF8_ONLY = "save captions as UTF-8"


def png(size=(32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def load_all(config, batch_size=2):
    """(name -> caption, skip counts without zeros) of one epoch."""
    loader = build_dataloader(config, batch_size=batch_size)
    set_epoch(loader, 0)
    captions = {}
    for batch in loader:
        loader.dataset.skips.update(batch["skipped"])
        captions.update(zip(batch["names"], batch["captions"]))
    return captions, {k: v for k, v in loader.dataset.skips.counts.items() if v}, loader.dataset.skips


def bounded(fn, fifo, seconds=120):
    """fn() in a thread; if it is still blocked after `seconds` (opening the FIFO), unblock it and fail."""
    result = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as err:  # re-raised in the test's thread
            result["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # lets the blocked open() return
        pytest.fail(f"loading hung on the FIFO {fifo}")
    if "error" in result:
        raise result["error"]
    return result["value"]


# ---------------------------------------------------------------------------------------------- FIFOs
@pytest.mark.parametrize("bucketing", [False, True])  # True: headers are probed while the dataset is built
def test_a_fifo_named_like_an_image_is_skipped_not_waited_on(tmp_path, bucketing):
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(png())
        (tmp_path / name).with_suffix(".txt").write_text(f"caption {name}")
    os.mkfifo(tmp_path / "x.png")
    (tmp_path / "x.txt").write_text("a fifo")
    config = DataConfig(str(tmp_path), resolution=32, bucketing=bucketing, bucket_multiple=8)
    captions, counts, skips = bounded(lambda: load_all(config), tmp_path / "x.png")
    assert captions == {"a.png": "caption a.png", "b.png": "caption b.png", "c.png": "caption c.png"}
    assert counts == {"not_file": 1}
    assert "x.png: not_file (a FIFO, not a regular file)" in skips.summary()


def test_metadata_naming_a_fifo_or_a_folder_skips_them(tmp_path):
    (tmp_path / "a.png").write_bytes(png())
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "folder.png").mkdir()
    rows = [{"file_name": n, "text": n} for n in ("a.png", "fifo.png", "folder.png")]
    (tmp_path / "metadata.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    source = bounded(lambda: ImageFolderSource(tmp_path), tmp_path / "fifo.png")
    assert [r.name for r in source] == ["a.png"]
    assert [tuple(s) for s in source.skipped] == [("fifo.png", "not_file", "a FIFO, not a regular file"),
                                                  ("folder.png", "not_file", "a folder, not a regular file")]


def test_reading_a_fifo_path_never_opens_it(tmp_path):
    os.mkfifo(tmp_path / "late.png")  # e.g. replaced after the dataset was listed
    with pytest.raises(SkipError, match="not_file: a FIFO"):
        bounded(lambda: probe_image(str(tmp_path / "late.png"), 10**6), tmp_path / "late.png")


# ---------------------------------------------------------------------------------------------- caption encodings
def test_caption_encodings():
    assert decode_caption("a red circle".encode()) == "a red circle"
    assert decode_caption("\ufeffa red circle".encode("utf-8")) == "a red circle"  # UTF-8 with BOM
    assert decode_caption("a red circle ☀".encode("utf-16")) == "a red circle ☀"  # UTF-16 with BOM
    assert decode_caption(b"\xfe\xff" + "a red circle".encode("utf-16-be")) == "a red circle"  # big-endian
    assert decode_caption("a red circle".encode("utf-32")) == "a red circle"
    with pytest.raises(SkipError, match=r"^bad_caption: not UTF-8 text \(invalid continuation byte at byte 3\); "
                                        + UTF8_ONLY):
        decode_caption("café rouge".encode("latin-1"))
    with pytest.raises(SkipError, match=r"^bad_caption: contains NUL characters \(UTF-16 without a byte-order mark\?\)"):
        decode_caption("a red circle".encode("utf-16-le"))


def test_sidecar_captions_decode_or_are_counted_skips(tmp_path):
    captions = {"utf8.png": "a red circle".encode(), "bom8.png": "\ufeffa blue square".encode(),
                "utf16.png": "a green triangle".encode("utf-16"), "latin1.png": "caf\xe9 star".encode("latin-1"),
                "utf16_no_bom.png": "a pink cross".encode("utf-16-le")}
    for name, data in captions.items():
        (tmp_path / name).write_bytes(png())
        (tmp_path / name).with_suffix(".txt").write_bytes(data)
    got, counts, _ = load_all(DataConfig(str(tmp_path), resolution=32))
    assert got == {"utf8.png": "a red circle", "bom8.png": "a blue square", "utf16.png": "a green triangle"}
    assert counts == {"bad_caption": 2}
    skipped = {s.name: s.reason for s in SidecarSource(tmp_path).skipped}
    assert skipped == {"latin1.png": "bad_caption", "utf16_no_bom.png": "bad_caption"}


def test_webdataset_txt_captions_decode_the_same_way(tmp_path):
    import webdataset as wds

    with wds.TarWriter(str(tmp_path / "shard-000.tar")) as sink:
        sink.write({"__key__": "bom", "png": png(), "txt": "\ufeffa red circle".encode()})
        sink.write({"__key__": "latin1", "png": png(), "txt": "caf\xe9".encode("latin-1")})
        sink.write({"__key__": "object", "png": png(), "json": {"text": {"en": "a red circle"}}})
    got, counts, _ = load_all(DataConfig(str(tmp_path / "shard-000.tar"), resolution=32), batch_size=1)
    assert list(got.values()) == ["a red circle"]
    assert counts == {"bad_caption": 2}


# ---------------------------------------------------------------------------------------------- metadata.jsonl
@pytest.mark.parametrize("text, detail", [
    ({"en": "a red circle"}, "got an object"),
    (["a red circle", {"en": "x"}], "got a list holding an object"),
    (5, "got a number"),
    (True, "got a boolean"),
])
def test_a_caption_that_is_not_text_is_a_counted_skip(tmp_path, text, detail):
    for name in ("good.png", "bad.png"):
        (tmp_path / name).write_bytes(png())
    rows = [{"file_name": "good.png", "text": "a red circle"}, {"file_name": "bad.png", "text": text}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    source = ImageFolderSource(tmp_path)
    assert [(r.name, r.caption) for r in source] == [("good.png", "a red circle")]
    assert [tuple(s) for s in source.skipped] == [
        ("bad.png", "bad_caption", f"a caption must be a string or a list of strings, {detail}")]
    got, counts, _ = load_all(DataConfig(str(tmp_path), resolution=32))
    assert got == {"good.png": "a red circle"} and counts == {"bad_caption": 1}


@pytest.mark.parametrize("row, message", [
    (["a.png", "a red circle"],
     r'metadata.jsonl, line 2: expected a JSON object such as \{"file_name": "a.png", "text": "a caption"\}, '
     r"got a list$"),
    ("a.png", r"line 2: expected a JSON object .* got a str$"),
    ({"file_name": 5, "text": "a red circle"},
     r"metadata.jsonl, line 2: 'file_name' must be a string \(a path relative to .*\), got 5$"),
    ({"file_name": ["a.png"], "text": "a red circle"}, r"line 2: 'file_name' must be a string .* got \['a.png'\]$"),
])
def test_metadata_rows_of_the_wrong_shape_name_their_line(tmp_path, row, message):
    (tmp_path / "a.png").write_bytes(png())
    rows = [{"file_name": "a.png", "text": "a red circle"}, row]
    (tmp_path / "metadata.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    with pytest.raises(ValueError, match=message):
        ImageFolderSource(tmp_path)


def test_outside_root_message_names_the_option_and_the_flag(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "outside.png").write_bytes(png())
    (tmp_path / "data" / "metadata.jsonl").write_text(json.dumps({"file_name": "../outside.png", "text": "x"}))
    with pytest.raises(ValueError, match=r"or skip them: outside_root='skip' \(--outside-root skip in the training "
                                         r"scripts\)\.$"):
        ImageFolderSource(tmp_path / "data")
