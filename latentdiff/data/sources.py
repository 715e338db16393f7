"""Where captioned images come from: four on-disk conventions, one `Record` per image.

    ImageFolderSource   a Hugging Face imagefolder: metadata.jsonl (or metadata.csv) with `file_name` and a
                        caption column ("text"); a list caption means one is chosen per sample (seeded)
    SidecarSource       images with a caption file next to them (kohya: photo.jpg + photo.txt), nested folders
    HFDatasetSource     a `datasets.Dataset` (`save_to_disk` folder, or a hub name with `load_dataset`)
    WebDatasetSource    webdataset .tar shards ({key}.png|jpg|jpeg|webp + {key}.txt or {key}.json), streamed

The first three are map-style (len, [i]); they check every entry when built, so a file_name that escapes
the folder or a missing caption fails at once (ValueError naming the entries) rather than hours into
training, or, by option, is skipped and counted. Sources only list and read files; decoding and checking
the pixels is `latentdiff.data.decode`, seeding and batching is `latentdiff.data.dataset`.

    source = open_source("data/shapes")                  # kind="auto": a folder with metadata.jsonl
    record = source[0]                                   # Record(name, caption, path | data)
    data = record.read()                                 # the file's bytes
"""

from __future__ import annotations

import csv
import glob
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from latentdiff.data.decode import SkipError, SkipRecord, check_regular, decode_caption

__all__ = [
    "IMAGE_EXTENSIONS",
    "HFDatasetSource",
    "ImageFolderSource",
    "Record",
    "SidecarSource",
    "WebDatasetSource",
    "detect_kind",
    "open_source",
    "resolve_inside",
    "split_for_slot",
]

KINDS: tuple[str, ...] = ("auto", "imagefolder", "sidecar", "hf", "webdataset")
MISSING_CAPTION_POLICIES: tuple[str, ...] = ("error", "empty", "skip")
OUTSIDE_ROOT_POLICIES: tuple[str, ...] = ("error", "skip")
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
WDS_IMAGE_KEYS: tuple[str, ...] = ("png", "jpg", "jpeg", "webp")  # members of a webdataset sample, in preference order
_MAX_LISTED = 10  # how many entries a ValueError names


@dataclass(frozen=True)
class Record:
    """One image entry: a stable name for messages, its caption(s), and where its bytes are."""

    name: str                             # relative path, "row 17", or "shard.tar:key"
    caption: str | tuple[str, ...]        # one caption, or several to choose from per sample
    path: str | None = None               # a file to read ...
    data: bytes | None = None             # ... or the bytes themselves

    def read(self) -> bytes:
        """The file's bytes; OSError (FileNotFoundError ...) when it cannot be read, SkipError("not_file") when it
        is a FIFO, device or folder (which are never opened: a FIFO would block)."""
        if self.data is not None:
            return self.data
        check_regular(self.path)
        with open(self.path, "rb") as f:
            return f.read()


def _check_policy(value: str, allowed: tuple[str, ...], field: str) -> None:
    if value not in allowed:
        raise ValueError(f"{field} must be one of {allowed}, got {value!r}")


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_MAX_LISTED])
    return shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


def resolve_inside(root: Path, file_name: str) -> Path:
    """root / file_name, resolved (symlinks followed); ValueError naming the entry when that lies outside root."""
    root = Path(root).resolve()
    path = (root / file_name).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"file_name {file_name!r} resolves to {path}, outside the dataset folder {root}")
    return path


def _normalize_caption(caption: Any) -> str | tuple[str, ...] | None:
    """A caption value as stored -> a stripped string, a tuple of them, or None when there is none; a value that
    is not text (a JSON object, a number, a list holding one) is a SkipError("bad_caption"), never its repr."""
    if caption is None:
        return None
    if isinstance(caption, str):
        return caption.strip()
    if isinstance(caption, (list, tuple)) and all(isinstance(c, str) or c is None for c in caption):
        captions = tuple(c.strip() for c in caption if c is not None)
        return captions or None
    if isinstance(caption, (list, tuple)):
        odd = next(c for c in caption if not (isinstance(c, str) or c is None))
        got = f"a list holding {_json_type(odd)}"
    else:
        got = _json_type(caption)
    raise SkipError("bad_caption", f"a caption must be a string or a list of strings, got {got}")


def _json_type(value: Any) -> str:
    """What a decoded JSON value is, in words, for messages."""
    names = {dict: "an object", list: "a list", tuple: "a list", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), f"a {type(value).__name__}")


class _Checked:
    """Applies the missing-caption and outside-root policies while a map-style source lists its entries."""

    def __init__(self, missing_caption: str, outside_root: str, where: str):
        _check_policy(missing_caption, MISSING_CAPTION_POLICIES, "missing_caption")
        _check_policy(outside_root, OUTSIDE_ROOT_POLICIES, "outside_root")
        self.missing_caption, self.outside_root, self.where = missing_caption, outside_root, where
        self.skipped: list[SkipRecord] = []
        self._missing: list[str] = []
        self._outside: list[str] = []

    def caption(self, name: str, caption: Any) -> str | tuple[str, ...] | None:
        """The normalised caption, "" (policy empty), or None (skip this entry)."""
        try:
            caption = _normalize_caption(caption)
        except SkipError as e:
            self.skip(name, e)
            return None
        if caption is not None:
            return caption
        if self.missing_caption == "empty":
            return ""
        if self.missing_caption == "skip":
            self.skipped.append(SkipRecord(name, "missing_caption"))
        else:
            self._missing.append(name)
        return None

    def skip(self, name: str, error: SkipError) -> None:
        """An entry that can never be used (not a regular file, a caption that is not text): counted, skipped."""
        self.skipped.append(SkipRecord(name, error.reason, error.detail))

    def outside(self, name: str, error: ValueError) -> None:
        if self.outside_root == "skip":
            self.skipped.append(SkipRecord(name, "outside_root", str(error)))
        else:
            self._outside.append(str(error))

    def raise_errors(self) -> None:
        if self._outside:
            raise ValueError(f"{self.where}: {len(self._outside)} entries point outside the dataset folder: "
                             f"{_listing(self._outside)}. Fix the metadata, or skip them: outside_root='skip' "
                             f"(--outside-root skip in the training scripts).")
        if self._missing:
            raise ValueError(f"{self.where}: {len(self._missing)} images have no caption: {_listing(self._missing)}. "
                             f"Add captions, or pass missing_caption='empty' (train with \"\") or 'skip' "
                             f"(--missing-caption in the training scripts).")


class _MapSource:
    """A list of Records (len, [i]) plus the entries skipped while listing them."""

    records: list[Record]
    skipped: list[SkipRecord]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Record:
        return self.records[i]


def _read_metadata(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield line_no, json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}, line {line_no}: not valid JSON ({e})") from None
    else:
        with open(path, encoding="utf-8", newline="") as f:
            for line_no, row in enumerate(csv.DictReader(f), 2):
                yield line_no, row


class ImageFolderSource(_MapSource):
    """A Hugging Face imagefolder: `root/metadata.jsonl` (or metadata.csv), one row per image with
    `file_name` (relative to root) and the caption column (a string, or a list to choose from)."""

    def __init__(self, root: str | Path, caption_column: str = "text", *, missing_caption: str = "error",
                 outside_root: str = "error"):
        self.root = Path(root)
        metadata = [self.root / m for m in ("metadata.jsonl", "metadata.csv") if (self.root / m).is_file()]
        if not metadata:
            raise ValueError(f"ImageFolderSource: {self.root} has no metadata.jsonl or metadata.csv; for images with "
                             f".txt captions beside them use kind='sidecar'")
        check = _Checked(missing_caption, outside_root, f"ImageFolderSource({self.root})")
        self.records = []
        columns: set[str] = set()
        for line_no, row in _read_metadata(metadata[0]):
            where = f"{metadata[0]}, line {line_no}"
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object such as {{\"file_name\": \"a.png\", "
                                 f"\"{caption_column}\": \"a caption\"}}, got {_json_type(row)}")
            file_name = row.get("file_name")
            if not file_name:
                raise ValueError(f"{where}: no 'file_name'; every row needs one")
            if not isinstance(file_name, str):
                raise ValueError(f"{where}: 'file_name' must be a string (a path relative to {self.root}), "
                                 f"got {file_name!r}")
            try:
                path = resolve_inside(self.root, file_name)
            except ValueError as e:
                check.outside(file_name, e)
                continue
            columns.update(row)
            try:
                check_regular(path)
            except SkipError as e:
                if e.reason != "missing_file":  # (a missing file is counted when it is read, like an unreadable one)
                    check.skip(file_name, e)
                    continue
            caption = check.caption(file_name, row.get(caption_column))
            if caption is not None:
                self.records.append(Record(file_name, caption, path=str(path)))
        if columns and caption_column not in columns:
            raise ValueError(f"ImageFolderSource: {metadata[0]} has no column {caption_column!r} "
                             f"(columns: {sorted(columns)}); pass caption_column=")
        check.raise_errors()
        self.skipped = check.skipped


class SidecarSource(_MapSource):
    """Images anywhere under `root` (nested folders, sorted), each captioned by the text file with the same
    stem next to it (kohya's convention: photo.jpg + photo.txt)."""

    def __init__(self, root: str | Path, caption_extension: str = ".txt", *, missing_caption: str = "error",
                 outside_root: str = "error", extensions: Sequence[str] = IMAGE_EXTENSIONS):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"SidecarSource: {self.root} is not a folder")
        check = _Checked(missing_caption, outside_root, f"SidecarSource({self.root})")
        self.records = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            for filename in sorted(filenames):
                if os.path.splitext(filename)[1].lower() not in extensions:
                    continue
                name = os.path.relpath(os.path.join(dirpath, filename), self.root)
                try:  # a symlink inside the folder may still point out of it
                    path = resolve_inside(self.root, name)
                except ValueError as e:
                    check.outside(name, e)
                    continue
                text_file = Path(dirpath) / (os.path.splitext(filename)[0] + caption_extension)
                try:
                    check_regular(path)
                    text = decode_caption(text_file.read_bytes()) if text_file.is_file() else None
                except SkipError as e:
                    check.skip(name, e)
                    continue
                caption = check.caption(name, text)
                if caption is not None:
                    self.records.append(Record(name, caption, path=str(path)))
        check.raise_errors()
        self.skipped = check.skipped


class HFDatasetSource(_MapSource):
    """A `datasets.Dataset` with an image column (the Image feature, {"bytes", "path"} dicts, or paths) and a
    caption column (a string or a list of strings). Images are read as bytes (the Image feature is cast to
    decode=False) so that they go through the same safe decoding as files."""

    def __init__(self, dataset: Any, image_column: str = "image", caption_column: str = "text", *,
                 missing_caption: str = "error"):
        import datasets

        if isinstance(dataset, datasets.DatasetDict):
            raise ValueError(f"HFDatasetSource: got a DatasetDict with splits {list(dataset)}; pass one split")
        for field_name, column in (("image_column", image_column), ("caption_column", caption_column)):
            if column not in dataset.column_names:
                raise ValueError(f"HFDatasetSource: no column {column!r} (columns: {dataset.column_names}); "
                                 f"pass {field_name}=")
        if isinstance(dataset.features[image_column], datasets.Image):
            dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
        self.dataset, self.image_column = dataset, image_column
        check = _Checked(missing_caption, "error", "HFDatasetSource")
        self.rows: list[int] = []
        self.captions: list[str | tuple[str, ...]] = []
        for i, caption in enumerate(dataset[caption_column]):
            caption = check.caption(f"row {i}", caption)
            if caption is not None:
                self.rows.append(i)
                self.captions.append(caption)
        check.raise_errors()
        self.skipped = check.skipped

    @classmethod
    def from_path(cls, path: str, split: str = "train", **kwargs) -> "HFDatasetSource":
        """A `save_to_disk` folder (`load_from_disk`), else a hub name (`load_dataset(path, split=split)`)."""
        import datasets

        if Path(path).exists():
            dataset = datasets.load_from_disk(path)
            if isinstance(dataset, datasets.DatasetDict):
                if split not in dataset:
                    raise ValueError(f"HFDatasetSource: {path} has splits {list(dataset)}, not {split!r}; pass split=")
                dataset = dataset[split]
        else:
            dataset = datasets.load_dataset(path, split=split)
        return cls(dataset, **kwargs)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Record:
        row = self.rows[i]
        value = self.dataset[row][self.image_column]
        name = f"row {row}"
        if isinstance(value, dict):  # the Image feature with decode=False
            if value.get("bytes") is not None:
                return Record(name, self.captions[i], data=value["bytes"])
            return Record(f"{name} ({value.get('path')})", self.captions[i], path=value.get("path"))
        if isinstance(value, str):
            return Record(f"{name} ({value})", self.captions[i], path=value)
        if isinstance(value, bytes):
            return Record(name, self.captions[i], data=value)
        if hasattr(value, "save"):  # a PIL image from a column we could not cast: re-encode losslessly
            import io

            buffer = io.BytesIO()
            value.save(buffer, format="PNG")
            return Record(name, self.captions[i], data=buffer.getvalue())
        raise ValueError(f"HFDatasetSource: row {row} of column {self.image_column!r} holds a {type(value).__name__}; "
                         f"expected an Image feature, bytes or a path")


def split_for_slot(shards: Sequence[str], slot: int, slots: int) -> tuple[list[str], int, int]:
    """Share shards between `slots` readers (ranks x DataLoader workers): with at least as many shards as
    readers, reader `slot` gets shards slot, slot + slots, ... and every sample in them; with fewer, every
    reader reads every shard and keeps the samples whose running index is slot mod slots.
    Returns (shards, sample_stride, sample_offset)."""
    if not 0 <= slot < slots:
        raise ValueError(f"split_for_slot: need 0 <= slot < slots, got {slot}, {slots}")
    if len(shards) >= slots:
        return list(shards[slot::slots]), 1, 0
    return list(shards), slots, slot


class WebDatasetSource:
    """webdataset tar shards read as a stream (webdataset's tar iterators), each sample an image member
    (png, jpg, jpeg or webp) and a caption (`.txt`, or the caption column of `.json`).

    `shards`: one .tar, a folder of .tar files, a glob, a brace pattern ("data-{000..009}.tar"), a URL
    that webdataset's gopen reads, or a list of these. A shard that cannot be read is skipped as corrupt
    (with what it yielded before the error kept)."""

    def __init__(self, shards: str | Sequence[str], caption_column: str = "text", *, missing_caption: str = "error"):
        _check_policy(missing_caption, MISSING_CAPTION_POLICIES, "missing_caption")
        self.shards = self.expand(shards)
        if not self.shards:
            raise ValueError(f"WebDatasetSource: no .tar shards found in {shards!r}")
        self.caption_column, self.missing_caption = caption_column, missing_caption
        self.skipped: list[SkipRecord] = []

    @staticmethod
    def expand(shards: str | Sequence[str]) -> list[str]:
        from webdataset.shardlists import expand_urls

        if not isinstance(shards, str):
            return [s for item in shards for s in WebDatasetSource.expand(item)]
        if os.path.isdir(shards):
            return sorted(glob.glob(os.path.join(shards, "**", "*.tar"), recursive=True))
        if any(c in shards for c in "*?[") and "://" not in shards:
            return sorted(glob.glob(shards, recursive=True))
        return expand_urls(shards)

    def _caption(self, sample: dict[str, Any], name: str) -> str | tuple[str, ...] | None:
        """The sample's caption, "" (policy empty) or None (policy skip); SkipError("bad_caption") when not text."""
        caption = None
        if "txt" in sample:
            caption = decode_caption(sample["txt"])
        elif "json" in sample:
            try:
                caption = json.loads(sample["json"]).get(self.caption_column)
            except (ValueError, AttributeError):
                caption = None
        caption = _normalize_caption(caption)
        if caption is not None:
            return caption
        if self.missing_caption == "error":
            raise ValueError(f"WebDatasetSource: {name} has no caption (.txt, or {self.caption_column!r} in .json); "
                             f"pass missing_caption='empty' or 'skip'")
        return "" if self.missing_caption == "empty" else None

    def iter_records(self, shards: Sequence[str], stride: int = 1, offset: int = 0) -> Iterator[Record | SkipRecord]:
        """Records of `shards` in order (every stride-th sample from offset), with a SkipRecord in place of
        each sample that has no image or no caption (policy skip) and of each shard that fails to read."""
        from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

        errors: list[Exception] = []

        def handler(exn: Exception) -> bool:
            errors.append(exn)
            return True  # continue with the next member / shard

        opened = url_opener(({"url": url} for url in shards), handler=handler)
        samples = group_by_keys(tar_file_expander(opened, handler=handler), handler=handler)
        position = 0
        for sample in samples:
            while errors:
                exn = errors.pop(0)
                yield SkipRecord(f"shard {_shard_of(exn, shards)}", "corrupt", str(exn.args[0]) if exn.args else "")
            keep = position % stride == offset
            position += 1
            if not keep:
                continue
            name = f"{os.path.basename(str(sample.get('__url__')))}:{sample['__key__']}"
            image_key = next((k for k in WDS_IMAGE_KEYS if k in sample), None)
            try:
                caption = self._caption(sample, name)
            except SkipError as e:
                yield SkipRecord(name, e.reason, e.detail)
                continue
            if image_key is None:
                yield SkipRecord(name, "not_image", f"no {'/'.join(WDS_IMAGE_KEYS)} member")
            elif caption is None:
                yield SkipRecord(name, "missing_caption")
            else:
                yield Record(name, caption, data=sample[image_key])
        for exn in errors:
            yield SkipRecord(f"shard {_shard_of(exn, shards)}", "corrupt", str(exn.args[0]) if exn.args else "")


def _shard_of(exn: Exception, shards: Sequence[str]) -> str:
    """The shard an exception from webdataset's iterators came from (they append the url to exn.args)."""
    text = " ".join(str(a) for a in exn.args)
    return next((os.path.basename(s) for s in shards if s in text), "?")


def detect_kind(path: str) -> str:
    """'imagefolder' (a folder with metadata.jsonl/.csv), 'hf' (a save_to_disk folder, or a name that is not
    a local path), 'webdataset' (.tar files, patterns, URLs), else 'sidecar' (a folder of images)."""
    p = Path(path)
    if p.is_dir():
        if (p / "metadata.jsonl").is_file() or (p / "metadata.csv").is_file():
            return "imagefolder"
        if (p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
            return "hf"
        if any(p.glob("*.tar")) and not any(f.suffix.lower() in IMAGE_EXTENSIONS for f in p.iterdir()):
            return "webdataset"
        return "sidecar"
    if path.endswith(".tar") or "{" in path or "://" in path or any(c in path for c in "*?["):
        return "webdataset"
    if p.exists():
        raise ValueError(f"detect_kind: {path} is a file but not a .tar shard; pass a folder, shards or a dataset name")
    return "hf"  # a hub dataset name


def open_source(path: str, kind: str = "auto", *, caption_column: str = "text", image_column: str = "image",
                split: str = "train", missing_caption: str = "error", outside_root: str = "error"
                ) -> ImageFolderSource | SidecarSource | HFDatasetSource | WebDatasetSource:
    """The source for `path` (kind 'auto' uses detect_kind)."""
    _check_policy(kind, KINDS, "kind")
    kind = detect_kind(path) if kind == "auto" else kind
    makers: dict[str, Callable[[], Any]] = {
        "imagefolder": lambda: ImageFolderSource(path, caption_column, missing_caption=missing_caption,
                                                 outside_root=outside_root),
        "sidecar": lambda: SidecarSource(path, missing_caption=missing_caption, outside_root=outside_root),
        "hf": lambda: HFDatasetSource.from_path(path, split, image_column=image_column, caption_column=caption_column,
                                                missing_caption=missing_caption),
        "webdataset": lambda: WebDatasetSource(path, caption_column, missing_caption=missing_caption),
    }
    return makers[kind]()
