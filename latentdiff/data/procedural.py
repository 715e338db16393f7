"""ShapesWorld drawn on the fly: a training set without files, fresh scenes every epoch or a fixed set.

    DataConfig(train_data="shapesworld:train?seed=0&n=20000&fresh=true", resolution=64)

`train_data` of the form `shapesworld:SPLIT[?seed=S&n=N&fresh=BOOL&templates=K]` builds a `ShapesWorldDataset` instead of
reading a folder. SPLIT is "train", "heldout" or "both" (scene i from the train split for even i, the held-out split
for odd i: every colour-shape combination, for a caption-free model such as the VAE, whose ceiling is measured on
held-out prompts too; a text-to-image model trains on "train", so its held-out score still measures composition).
An epoch has `n` samples (default 20000). With `fresh=true` (the default) position i of
epoch e is scene `e * n + i` of the dataset (seed, split), so no scene is ever seen twice; with `fresh=false`
it is scene i in every epoch: the same images as `latentdiff shapes --n N --seed S` writes to disk, without the
disk. `templates=K` words every caption with one of the first K paraphrase templates of its category
(`latentdiff.data.shapes.TEMPLATES`; the scene's own template index modulo K, so the images are unchanged):
`templates=1` trains on one fixed wording per category, for the caption-variety ablation. `categories=a,b` draws
only scenes of those categories (`latentdiff.data.shapes.CATEGORIES`), in their default proportions: e.g.
`categories=position` for a run that sees nothing but relations. `position_pairs=same_shape` gives every position
scene two colours of one shape ("a red circle above a blue circle"), so that only the relation word says which
colour goes where, and `position_pairs=absolute` one object and the half of the picture it is in ("a red circle
at the top"), a diagnostic with no second object to compare with (`ShapesWorldConfig.position_pairs`).
Samples are the same dicts `CaptionedImageDataset` gives
(see `latentdiff.data.dataset`), so the loaders, the bucket sampler, caches and resume positions work unchanged;
the cache key names the scene, so the latent cache works for a fixed set (a fresh stream has nothing to reuse).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import torch
from torch.utils.data import Dataset

from latentdiff.data.decode import SkipCounter
from latentdiff.data.shapes import (CATEGORIES, DEFAULT_CATEGORY_WEIGHTS, POSITION_PAIRS, SPLITS, TEMPLATES,
                                    SceneSpec, ShapesWorldConfig, make_caption, render, scene_at)

PREFIX = "shapesworld:"


@dataclass(frozen=True)
class ShapesWorldStream:
    """What a `shapesworld:` train_data string asks for."""

    split: str = "train"  # ShapesWorld split: "train", "heldout" or "both" (alternating)
    seed: int = 0  # dataset seed: scene i is a function of (seed, split, i)
    n: int = 20000  # samples per epoch
    fresh: bool = True  # True: new scenes every epoch; False: the same n scenes every epoch
    templates: int | None = None  # captions from the first this many templates of each category (None: all)
    categories: tuple[str, ...] | None = None  # only scenes of these categories (None: all, default mix)
    position_pairs: str = "any"  # position scenes' objects: ShapesWorldConfig.position_pairs (POSITION_PAIRS)

    @property
    def scene_config(self) -> ShapesWorldConfig | None:
        """The ShapesWorld config scenes are drawn with (None: the default one)."""
        if self.categories is None and self.position_pairs == "any":
            return None
        cats = CATEGORIES if self.categories is None else self.categories
        return ShapesWorldConfig(category_weights={c: DEFAULT_CATEGORY_WEIGHTS[c] for c in cats},
                                 position_pairs=self.position_pairs)

    @property
    def key_suffix(self) -> str:
        """What names this stream's scenes apart from the default stream's in cache keys and names."""
        only = "" if self.categories is None else "-" + "+".join(self.categories)
        return only + ("" if self.position_pairs == "any" else f"-{self.position_pairs}")

    @classmethod
    def parse(cls, text: str) -> "ShapesWorldStream":
        """`shapesworld:SPLIT?seed=S&n=N&fresh=BOOL`; ValueError saying what to write otherwise."""
        usage = ("write it as shapesworld:train?seed=0&n=20000&fresh=true (optionally &templates=K, "
                 "&categories=a,b and &position_pairs=any|same_shape|absolute)")
        parts = urlsplit(text[len(PREFIX):] if text.startswith(PREFIX) else text)
        split = parts.path or "train"
        if split not in (*SPLITS, "both"):
            raise ValueError(f"train_data {text!r}: unknown split {split!r}; choose one of {(*SPLITS, 'both')} "
                             f"({usage})")
        opts = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = set(opts) - {"seed", "n", "fresh", "templates", "categories", "position_pairs"}
        if unknown:
            raise ValueError(f"train_data {text!r}: unknown option(s) {sorted(unknown)} ({usage})")
        try:
            seed, n = int(opts.get("seed", 0)), int(opts.get("n", 20000))
            templates = int(opts["templates"]) if "templates" in opts else None
        except ValueError:
            raise ValueError(f"train_data {text!r}: seed, n and templates must be whole numbers ({usage})") from None
        fresh = opts.get("fresh", "true").lower()
        if fresh not in ("true", "false", "1", "0"):
            raise ValueError(f"train_data {text!r}: fresh must be true or false ({usage})")
        if seed < 0 or n < 1 or (templates is not None and templates < 1):
            raise ValueError(f"train_data {text!r}: need seed >= 0, n >= 1 and templates >= 1 ({usage})")
        categories = tuple(c for c in opts["categories"].split(",") if c) if "categories" in opts else None
        if categories is not None and (not categories or set(categories) - set(CATEGORIES)):
            raise ValueError(f"train_data {text!r}: categories must name some of {', '.join(CATEGORIES)} ({usage})")
        pairs = opts.get("position_pairs", "any")
        if pairs not in POSITION_PAIRS:
            raise ValueError(f"train_data {text!r}: position_pairs must be one of {', '.join(POSITION_PAIRS)} "
                             f"({usage})")
        return cls(split, seed, n, fresh in ("true", "1"), templates, categories, pairs)


def is_procedural(train_data: str) -> bool:
    return isinstance(train_data, str) and train_data.startswith(PREFIX)


def image_tensor(image) -> torch.Tensor:
    """PIL RGB image -> (3, H, W) float32 in [-1, 1]."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())  # (H, W, 3)
    return x.permute(2, 0, 1) / 127.5 - 1.0


class ShapesWorldDataset(Dataset):
    """Map-style dataset of rendered ShapesWorld scenes; `dataset[(i, epoch)]` is a sample dict."""

    def __init__(self, stream: ShapesWorldStream, resolution: int):
        self.stream, self.resolution = stream, resolution
        self.scene_config = stream.scene_config  # built (and validated) once, not per scene
        self.bucket_ids = [0] * stream.n  # one square bucket (BucketBatchSampler reads this)
        self.skips = SkipCounter()  # nothing is ever skipped: there are no files

    def __len__(self) -> int:
        return self.stream.n

    @property
    def cacheable(self) -> bool:
        """A latent cache pays only when scenes come back: never for a fresh stream, whose cache would only grow."""
        return not self.stream.fresh

    def scene_index(self, pos: int, epoch: int) -> int:
        return epoch * self.stream.n + pos if self.stream.fresh else pos

    def scene(self, pos: int, epoch: int) -> tuple[int, SceneSpec]:
        """(scene index, scene) of item `pos` in `epoch`."""
        s = self.stream
        index = self.scene_index(pos, epoch)
        return index, scene_at(index, s.seed, s.split if s.split != "both" else SPLITS[index % 2], self.scene_config)

    def caption(self, scene) -> str:
        """The scene's caption, reworded with one of the first `templates` templates of its category if asked."""
        if self.stream.templates is None:
            return scene.caption
        category, k = scene.template_id.split("/")
        k = int(k) % min(self.stream.templates, len(TEMPLATES[category]))
        return make_caption(category, k, scene.objects, scene.relation)

    def caption_at(self, pos: int) -> str:
        """The caption of item `pos` in epoch 0, without rendering its scene."""
        return self.caption(self.scene(pos, 0)[1])

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        pos, epoch = (int(item[0]), int(item[1])) if isinstance(item, (tuple, list)) else (int(item), 0)
        s = self.stream
        index, scene = self.scene(pos, epoch)
        size = self.resolution
        only = s.key_suffix  # another stream: other cache keys
        return {"pixel_values": image_tensor(render(scene, size=size)),  # (3, size, size)
                "caption": self.caption(scene), "key": f"shapesworld-{s.split}-{s.seed}{only}-{index}-{size}",
                "name": f"shapesworld:{s.split}/{s.seed}{only}/{index}", "original_size": (size, size),
                "crop_top_left": (0, 0), "bucket": 0, "target_size": (size, size), "skipped": []}
