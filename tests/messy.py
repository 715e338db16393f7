"""A messy captioned-image folder for tests: valid oddities and one broken file of each kind."""

import io
import json
import struct
import zlib

import numpy as np
from PIL import Image

from latentdiff.data.dataset import DataConfig
from latentdiff.data.shapes import write_dataset


def encode(image, fmt="PNG", **kw):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def noise(w=40, h=36, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def png_header(w, h):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def good_files():
    """Unusual but valid images: every mode, an EXIF-rotated JPEG."""
    rgba = np.zeros((36, 40, 4), np.uint8)
    rgba[..., 0], rgba[:, :20, 3] = 255, 255
    palette = noise().convert("P")
    palette.info["transparency"] = 0
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "modes/l.png": encode(noise().convert("L")),
        "modes/la.png": encode(noise().convert("LA")),
        "modes/p.png": encode(noise().convert("P")),
        "modes/p_transparent.png": encode(palette),
        "modes/rgba.png": encode(Image.fromarray(rgba, "RGBA")),
        "modes/cmyk.jpg": encode(noise().convert("CMYK"), "JPEG"),
        "modes/i16.png": encode(Image.fromarray((np.arange(40 * 36).reshape(36, 40) * 40).astype(np.uint16))),
        "rotated.jpg": encode(noise(48, 36), "JPEG", exif=exif),
    }


# file_name -> (bytes or None for "do not create", reason)
def broken_files():
    png, jpg = encode(noise()), encode(noise(), "JPEG")
    corrupt = bytearray(png)
    corrupt[80:200] = bytes(120)
    return {
        "broken/truncated.png": (png[: len(png) // 2], "truncated"),
        "broken/truncated.jpg": (jpg[: len(jpg) // 2], "truncated"),
        "broken/corrupt.png": (bytes(corrupt), "corrupt"),
        "broken/empty.png": (b"", "empty"),
        "broken/text.png": (b"just some text\n" * 10, "not_image"),
        "broken/bomb.png": (png_header(50_000, 50_000), "bomb"),
        "broken/small.png": (encode(noise(16, 16)), "too_small"),
        "broken/missing.png": (None, "missing_file"),
        "broken/nocaption.png": (png, "missing_caption"),
        "../outside.png": (png, "outside_root"),
    }


def make_messy(parent):
    """20 ShapesWorld images + the good oddities + one broken file of each kind, in one imagefolder."""
    root = write_dataset(parent / "data", n=20, size=32, progress=False)
    meta = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    for name, data in good_files().items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        meta.append({"file_name": name, "text": f"good {name}"})
    for name, (data, reason) in broken_files().items():
        if data is not None:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        meta.append({"file_name": name} | ({} if reason == "missing_caption" else {"text": f"bad {name}"}))
    rng = np.random.default_rng(0)
    meta = [meta[i] for i in rng.permutation(len(meta))]  # broken files spread through the list
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(m) for m in meta) + "\n")
    return root


def expected_counts():
    counts = {}
    for _, reason in broken_files().values():
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def messy_config(root, **kw):
    return DataConfig(str(root), resolution=32, min_size="skip", missing_caption="skip", outside_root="skip",
                      **kw)
