"""Safe decoding and transforms: every broken kind is classified, every mode becomes upright RGB."""

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from latentdiff.data.decode import SkipCounter, SkipError, SkipRecord, decode_image, probe_image, to_rgb
from latentdiff.data.transforms import ImageTransform, TransformConfig, resize_and_crop, to_tensor

MAX = 89_478_485


def encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def noise_rgb(w: int = 48, h: int = 32, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def png_header_only(w: int, h: int) -> bytes:
    """A PNG whose IHDR claims w x h (a decompression bomb's header) and no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def corrupt_png() -> bytes:
    data = bytearray(encode(noise_rgb()))
    data[60:160] = bytes(100)  # inside IDAT: a valid header, a broken zlib stream
    return bytes(data)


def exif_rotated_jpeg() -> bytes:
    """Stored 48 x 32, left half red, right half blue, with EXIF orientation 6 (display rotated 90 degrees
    clockwise): upright it is 32 x 48 with red on top."""
    a = np.zeros((32, 48, 3), np.uint8)
    a[:, :24] = (255, 0, 0)
    a[:, 24:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.fromarray(a), "JPEG", exif=exif, quality=95)


BROKEN = {
    "truncated": [lambda: encode(noise_rgb())[:400], lambda: encode(noise_rgb(), "JPEG")[:600]],
    "corrupt": [corrupt_png],
    "empty": [lambda: b""],
    "not_image": [lambda: b"a text file, renamed to .png\n", lambda: bytes(range(256)) * 4],
    "bomb": [lambda: png_header_only(100_000, 100_000)],
}


@pytest.mark.parametrize("reason,make", [(r, m) for r, makers in BROKEN.items() for m in makers])
def test_broken_files_are_classified(reason, make):
    with pytest.raises(SkipError) as info:
        decode_image(make(), MAX)
    assert info.value.reason == reason


def test_max_pixels_is_configurable():
    data = encode(noise_rgb(40, 40))
    assert decode_image(data, 1600).size == (40, 40)
    with pytest.raises(SkipError, match="bomb"):
        decode_image(data, 1599)
    with pytest.raises(SkipError, match="bomb"):
        probe_image(data, 1599)


def test_probe_reads_header_and_exif_size(tmp_path):
    path = tmp_path / "r.jpg"
    path.write_bytes(exif_rotated_jpeg())
    assert probe_image(str(path), MAX) == (32, 48)
    assert probe_image(path.read_bytes(), MAX) == (32, 48)
    with pytest.raises(SkipError, match="missing_file"):
        probe_image(str(tmp_path / "nope.png"), MAX)


def test_exif_orientation_applied():
    image = decode_image(exif_rotated_jpeg(), MAX)
    assert image.size == (32, 48)  # portrait, as displayed
    a = np.asarray(image).astype(int)
    assert a[5, 16, 0] > 200 and a[5, 16, 2] < 60    # top: red
    assert a[42, 16, 2] > 200 and a[42, 16, 0] < 60  # bottom: blue


def test_alpha_composited_on_white():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, :4] = (255, 0, 0, 128)  # left: half-transparent red; right: fully transparent black
    out = np.asarray(decode_image(encode(Image.fromarray(rgba, "RGBA")), MAX)).astype(int)
    assert (out[:, 4:] == 255).all()
    assert np.abs(out[0, 0] - (255, 127, 127)).max() <= 1
    la = Image.fromarray(np.zeros((8, 8), np.uint8)).convert("LA")
    la.putalpha(0)
    assert (np.asarray(decode_image(encode(la), MAX)) == 255).all()


def test_palette_with_transparency():
    p = Image.new("P", (8, 8), 0)
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    p.paste(1, (0, 0, 4, 8))
    p.info["transparency"] = 0  # index 0 (black) is transparent
    out = np.asarray(decode_image(encode(p), MAX)).astype(int)
    assert (out[:, 4:] == 255).all() and tuple(out[0, 0]) == (10, 200, 30)
    plain = Image.new("P", (8, 8), 1)
    plain.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert tuple(np.asarray(decode_image(encode(plain), MAX))[0, 0]) == (10, 200, 30)


def test_sixteen_bit_and_float_grey_scaled():
    a = np.array([[0, 32896, 65535, 1000]], dtype=np.uint16)
    i16 = Image.fromarray(a)
    assert i16.mode == "I;16"
    out = np.asarray(decode_image(encode(i16), MAX))
    assert out.shape == (1, 4, 3) and list(out[0, :, 0]) == [0, 128, 255, 4]
    assert list(np.asarray(to_rgb(Image.fromarray(a.astype(np.int32))))[0, :, 1]) == [0, 128, 255, 4]
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert list(np.asarray(to_rgb(f))[0, :, 2]) == [0, 128, 255]


@pytest.mark.parametrize("mode,fmt", [("L", "PNG"), ("1", "PNG"), ("CMYK", "JPEG"), ("RGB", "WEBP"),
                                      ("RGB", "BMP"), ("RGB", "GIF")])
def test_modes_become_rgb(mode, fmt):
    image = Image.new("RGB", (16, 12), (200, 30, 30)).convert(mode)
    out = decode_image(encode(image, fmt), MAX)
    assert out.mode == "RGB" and out.size == (16, 12)
    if mode == "CMYK":
        assert np.abs(np.asarray(out).astype(int)[6, 8] - (200, 30, 30)).max() < 12


def test_skip_counter_dedupes_and_summarises():
    counter = SkipCounter(max_names=2)
    counter.update([SkipRecord("a.png", "truncated"), SkipRecord("b.png", "empty"), ("a.png", "truncated", "")])
    counter.update([SkipRecord("c.png", "empty", "0 bytes")])
    assert counter.total == 3 and counter.counts["empty"] == 2 and counter.counts["truncated"] == 1
    text = counter.summary()
    assert text.startswith("skipped 3 files (truncated 1, empty 2)") and "a.png: truncated" in text
    assert "... and 1 more" in text
    with pytest.warns(RuntimeWarning, match="skipped 3 files"):
        counter.warn()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SkipCounter().warn()  # nothing skipped: no warning
    with pytest.raises(ValueError, match="reason must be one of"):
        SkipError("weird")


def test_to_tensor_range_and_layout():
    a = np.zeros((2, 3, 3), np.uint8)
    a[0, 0] = (255, 0, 128)
    t = to_tensor(Image.fromarray(a))
    assert t.shape == (3, 2, 3) and t.dtype == torch.float32
    assert t[:, 0, 0].tolist() == pytest.approx([1.0, -1.0, 128 / 127.5 - 1], abs=1e-6)
    assert t.min() >= -1 and t.max() <= 1


def test_resize_and_crop_covers_target():
    image = noise_rgb(100, 50)
    out, (top, left) = resize_and_crop(image, (32, 32))
    assert out.size == (32, 32) and top == 0 and left == 16  # shorter side to 32: 64 x 32, centre crop
    out, _ = resize_and_crop(image, (40, 24))
    assert out.size == (40, 24)
    rng = np.random.default_rng(0)
    lefts = {resize_and_crop(image, (32, 32), center=False, rng=rng)[1][1] for _ in range(30)}
    assert len(lefts) > 5 and all(0 <= x <= 32 for x in lefts)


def test_image_transform_flip_and_min_size():
    a = np.zeros((32, 32, 3), np.uint8)
    a[:, :16] = 255  # left half white
    image = Image.fromarray(a)
    out = ImageTransform(TransformConfig(resolution=32))(image)
    assert out["pixel_values"][0, 0, 0] == 1 and not out["flipped"]  # flip is off by default
    flip = ImageTransform(TransformConfig(resolution=32, random_flip=True))
    results = [flip(image, rng=np.random.default_rng(s)) for s in range(20)]
    assert any(r["flipped"] for r in results) and not all(r["flipped"] for r in results)
    for r in results:
        assert r["pixel_values"][0, 0, 0] == (-1 if r["flipped"] else 1)
    small = Image.new("RGB", (16, 40))
    assert ImageTransform(TransformConfig(resolution=32))(small)["pixel_values"].shape == (3, 32, 32)
    with pytest.raises(SkipError, match="too_small"):
        ImageTransform(TransformConfig(resolution=32, min_size="skip"))(small)
    with pytest.raises(ValueError, match="min_size must be one of"):
        TransformConfig(min_size="crop")
