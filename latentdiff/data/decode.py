"""Safe image decoding: any file in, an RGB `PIL.Image` out, or a `SkipError` that says why not.

Training data is messy. One truncated JPEG must not end a three-day run, and silently dropping half of a
dataset must not go unnoticed either. So every file goes through `decode_image`, which

- rejects empty files, files that are not images, truncated and corrupt images, and decompression bombs
  (more than `max_pixels` pixels) with a `SkipError(reason)`;
- applies the EXIF orientation (`ImageOps.exif_transpose`), so a portrait photo stays portrait;
- converts every mode to RGB: alpha (LA, PA, RGBA, P with a transparent index) is composited on white,
  16-bit and 32-bit grey (I;16*, I) is scaled from 0..65535, float grey (F) from 0..1 (or 0..255 when its
  values go above 1), CMYK / YCbCr / LAB / HSV / 1-bit through Pillow's own conversion.

Captions are text files too: `decode_caption` reads UTF-8 (a byte-order mark is dropped) or BOM-marked UTF-16/32,
and anything else (Latin-1 bytes, UTF-16 without a BOM) is a `SkipError("bad_caption")`, never trained on as
garbage. `check_regular` refuses FIFOs, devices and folders before anything opens them (opening a FIFO waits
for a writer forever).

Skips are recorded as `SkipRecord(name, reason, detail)` and counted by a `SkipCounter`, which the data
loader's batches feed (see `latentdiff.data.dataset`) and which prints one summary at the end of training.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import os
import stat
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Iterator, NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "SKIP_REASONS",
    "SkipCounter",
    "SkipError",
    "SkipRecord",
    "check_regular",
    "decode_caption",
    "decode_image",
    "exif_size",
    "probe_image",
    "to_rgb",
]

SKIP_REASONS: tuple[str, ...] = (
    "truncated",        # the file ends before the image data does
    "corrupt",          # an image signature, but the data does not decode
    "empty",            # zero bytes
    "not_image",        # no image format recognises it (a text file named .png ...)
    "too_small",        # smaller than the training resolution, with min_size="skip"
    "bomb",             # more pixels than max_pixels (a decompression bomb, or just far too large)
    "missing_caption",  # no caption, with missing_caption="skip"
    "outside_root",     # a metadata file_name that resolves outside the dataset folder, with outside_root="skip"
    "missing_file",     # listed in the metadata but not there (or not readable)
    "not_file",         # not a regular file: a FIFO, a device or a folder named like an image
    "bad_caption",      # a caption that is not text: undecodable bytes, NULs, or a JSON object instead of a string
)
# Byte-order marks of the encodings a caption file may declare; UTF-32's first, since UTF-16 LE's is its prefix.
_CAPTION_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)

# File signatures of the formats we expect; an unreadable file that starts with one is "corrupt", else "not_image".
_MAGIC: tuple[bytes, ...] = (
    b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
)
_ORIENTATION = 0x0112  # the EXIF orientation tag; values 5..8 swap width and height


class SkipError(Exception):
    """A file that cannot be used for training; `reason` is one of SKIP_REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in SKIP_REASONS:
            raise ValueError(f"SkipError: reason must be one of {SKIP_REASONS}, got {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class SkipRecord(NamedTuple):
    """One skipped file: a stable name (relative path, 'shard.tar:key', 'row 17'), the reason and a detail."""

    name: str
    reason: str
    detail: str = ""


@dataclass
class SkipCounter:
    """Skipped files by reason. Names are deduplicated, so a file that is met in every epoch (or by several
    DataLoader workers) counts once. `update` takes the `skipped` list of a batch; `summary()` is the text
    the training script prints at the end; `warn()` emits it as one warning."""

    max_names: int = 20  # how many file names summary() lists; the counts always cover every file
    records: dict[str, SkipRecord] = field(default_factory=dict)  # name -> first record seen for it

    def add(self, record: SkipRecord) -> None:
        self.records.setdefault(record.name, record)

    def update(self, records: Iterable[SkipRecord] | "SkipCounter") -> None:
        """Add records: a batch's `skipped` list, another SkipCounter, or any iterable of SkipRecords."""
        for record in (records.records.values() if isinstance(records, SkipCounter) else records):
            self.add(SkipRecord(*record))  # tuples survive pickling / default_collate as plain sequences

    @property
    def counts(self) -> dict[str, int]:
        """{reason: number of distinct skipped files} for every reason in SKIP_REASONS (zeros included)."""
        c = Counter(r.reason for r in self.records.values())
        return {reason: c.get(reason, 0) for reason in SKIP_REASONS}

    @property
    def total(self) -> int:
        return len(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def summary(self) -> str:
        """'skipped 3 files (truncated 1, not_image 2)' and the first max_names names with their reasons."""
        if not self.records:
            return "skipped 0 files"
        counts = ", ".join(f"{reason} {n}" for reason, n in self.counts.items() if n)
        lines = [f"skipped {self.total} file{'s' if self.total != 1 else ''} ({counts})"]
        for record in list(self.records.values())[: self.max_names]:
            lines.append(f"  {record.name}: {record.reason}" + (f" ({record.detail})" if record.detail else ""))
        if self.total > self.max_names:
            lines.append(f"  ... and {self.total - self.max_names} more")
        return "\n".join(lines)

    def warn(self) -> None:
        """One warning with summary(), or nothing when no file was skipped."""
        if self.records:
            warnings.warn(self.summary(), RuntimeWarning, stacklevel=2)


def check_regular(path: str | os.PathLike) -> int:
    """The size of the regular file at `path` (links followed), or a SkipError: "missing_file" when it cannot be
    found or read, "not_file" for a FIFO, device or folder. Call it before opening a path from a dataset."""
    try:
        info = os.stat(path)
    except OSError as e:
        raise SkipError("missing_file", str(e)) from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode) else \
            "a device or socket"
        raise SkipError("not_file", f"{kind}, not a regular file")
    return info.st_size


def decode_caption(data: bytes) -> str:
    """The text of a caption file: UTF-8 (BOM dropped) or UTF-16/32 with a BOM; else SkipError("bad_caption")."""
    encoding = next((enc for bom, enc in _CAPTION_BOMS if data.startswith(bom)), "utf-8")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        raise SkipError("bad_caption", f"not UTF-8 text ({e.reason} at byte {e.start}); save captions as "
                                       "UTF-8") from None
    if "\x00" in text:  # valid UTF-8 but not text: typically UTF-16 without a byte-order mark
        raise SkipError("bad_caption", "contains NUL characters (UTF-16 without a byte-order mark?); save captions "
                                       "as UTF-8")
    return text


@contextlib.contextmanager
def _quiet_pil() -> Iterator[None]:
    """Pillow's per-file warnings (corrupt EXIF, palette transparency ...) off, so a big dataset does not
    print thousands of them; DecompressionBombWarning becomes an error (a SkipError('bomb') for the caller)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _open(data: bytes | str | os.PathLike, max_pixels: int) -> Image.Image:
    """Image.open (of bytes, or of a path: then only the header is read) with every failure mapped to a
    SkipError; checks the header size against max_pixels."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        size, head, fp = len(data), bytes(data[:16]), io.BytesIO(data)
    else:
        size, fp = check_regular(data), data
        try:
            with open(data, "rb") as f:
                head = f.read(16)
        except OSError as e:
            raise SkipError("missing_file", str(e)) from None
    if size == 0:
        raise SkipError("empty", "0 bytes")
    try:
        with _quiet_pil():
            image = Image.open(fp)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise SkipError("bomb", str(e)) from None
    except UnidentifiedImageError:
        reason = "corrupt" if head.startswith(_MAGIC) or head[8:12] == b"WEBP" else "not_image"
        raise SkipError(reason, "no image format recognises the data") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise SkipError("truncated" if "truncated" in str(e).lower() else "corrupt", str(e)) from None
    w, h = image.size
    if w < 1 or h < 1:
        raise SkipError("corrupt", f"size {w}x{h}")
    if w * h > max_pixels:
        raise SkipError("bomb", f"{w}x{h} = {w * h} pixels > max_pixels={max_pixels}")
    return image


def exif_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) after the EXIF orientation is applied, read from the header only."""
    w, h = image.size
    try:
        orientation = image.getexif().get(_ORIENTATION, 1)
    except Exception:  # unreadable EXIF: decode_image then keeps the stored orientation too
        orientation = 1
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def probe_image(data: bytes | str | os.PathLike, max_pixels: int) -> tuple[int, int]:
    """(width, height) after EXIF orientation from the header alone (no pixel decoding) of a file's bytes or
    path, or a SkipError for missing, empty, non-image, bomb and header-level corrupt files. Truncated or
    corrupt pixel data is found only by decode_image."""
    with _open(data, max_pixels) as image:
        return exif_size(image)


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode the bytes of an image file to an upright RGB image, or raise SkipError (see the module doc)."""
    image = _open(data, max_pixels)
    try:
        with _quiet_pil():
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise SkipError("bomb", str(e)) from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
        message = str(e)
        truncated = "truncated" in message.lower() or isinstance(e, EOFError)
        raise SkipError("truncated" if truncated else "corrupt", message) from None
    try:
        with _quiet_pil():
            image = ImageOps.exif_transpose(image)
    except Exception:  # a malformed EXIF block: keep the stored orientation rather than lose the image
        pass
    try:
        with _quiet_pil():
            return to_rgb(image)
    except (OSError, ValueError) as e:
        raise SkipError("corrupt", f"cannot convert mode {image.mode} to RGB: {e}") from None


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB; transparency is composited on white (see the module doc for the ranges)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _composite_on_white(image.convert("RGBA"))
    if mode == "P":
        if "transparency" in image.info or image.palette is not None and image.palette.mode == "RGBA":
            return _composite_on_white(image.convert("RGBA"))
        return image.convert("RGB")
    if mode.startswith("I") or mode == "F":  # I;16, I;16B, I;16L, I;16N, I, F: high-bit-depth grey
        a = np.asarray(image).astype(np.float64)  # (H, W)
        if mode == "F":
            a = a * 255.0 if np.nanmax(a, initial=0.0) <= 1.0 else a
        else:
            a = a / 257.0  # 0..65535 -> 0..255
        a = np.nan_to_num(a, nan=0.0).clip(0, 255).round().astype(np.uint8)
        return Image.fromarray(a).convert("RGB")  # (H, W) uint8 -> L -> RGB
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, RGBX
