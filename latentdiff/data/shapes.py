"""ShapesWorld: a seeded procedural world of captioned scenes for training and judging text-to-image models.

A scene is a few flat-coloured shapes on a grey background, with a caption that is true of the image and
fully determines its content (there are no distractor objects). Captions fall into the six GenEval
categories (Ghosh et al., 2023, "GenEval: An Object-Focused Framework for Evaluating Text-to-Image
Alignment"), so a scorer can later judge generated images category by category:

    single_object  "a triangle"                              one object, colour not named
    two_object     "a circle and a square"                   two objects of different shapes
    counting       "three red stars"                         min_count..max_count identical objects
    colors         "a purple diamond"                        one object, colour named
    position       "a red circle to the left of a blue star" two objects, clearly separated along one axis
    color_attr     "a red circle and a blue square"          two objects, different colours and shapes

Some (colour, shape) combinations are held out: the "train" split never draws them, the "heldout" split
always draws at least one, so compositional generalisation can be measured.

Sample i of a dataset comes from its own generator, `np.random.default_rng([seed, split_id, i])`, so
any sample can be regenerated from (seed, split, index) alone and datasets can be written in parallel.

    spec = scene_at(123, seed=0, split="train")      # SceneSpec: category, objects, relation, caption
    image = render(spec, size=64)                     # PIL.Image, RGB
    write_dataset("out/shapes", n=50_000, size=64)    # a Hugging Face imagefolder
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import math
import multiprocessing
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from latentdiff.data.shapes_render import SHAPE_NAMES, render, shape_polygon

__all__ = [
    "CATEGORIES",
    "DEFAULT_COLORS",
    "DEFAULT_HELDOUT",
    "RELATIONS",
    "PLACES",
    "SHAPE_NAMES",
    "SPLITS",
    "TEMPLATES",
    "SceneSpec",
    "ShapeObject",
    "ShapesWorldConfig",
    "add_arguments",
    "iter_captions",
    "iter_scenes",
    "make_caption",
    "place_holds",
    "relation_holds",
    "render",
    "run",
    "sample_scene",
    "scene_at",
    "scene_rng",
    "shape_polygon",
    "write_dataset",
]

# ----------------------------------------------------------------------------------------------------------
# The vocabulary of the world

SPLITS: tuple[str, ...] = ("train", "heldout")
CATEGORIES: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
POSITION_PAIRS: tuple[str, ...] = ("any", "same_shape", "absolute")  # ShapesWorldConfig.position_pairs
RELATIONS: tuple[str, ...] = ("left_of", "right_of", "above", "below")  # objects[0] <relation> objects[1]
PLACES: tuple[str, ...] = ("top", "bottom", "left", "right")  # position_pairs "absolute": the half objects[0] is in
SIZES: tuple[str, ...] = ("small", "large")

# Far apart in RGB: the closest pair (red, orange) is ~105 apart, every colour is >= 110 from the background,
# so nearest-palette classification stays exact under the default +-10 jitter.
DEFAULT_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (35, 70, 225),
    "yellow": (245, 215, 35),
    "purple": (145, 45, 200),
    "orange": (250, 130, 15),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
# One per shape and no colour twice, so both colours and shapes are still seen in training.
DEFAULT_HELDOUT: tuple[tuple[str, str], ...] = (
    ("red", "triangle"),
    ("blue", "circle"),
    ("green", "star"),
    ("yellow", "square"),
    ("purple", "cross"),
    ("orange", "diamond"),
)
DEFAULT_CATEGORY_WEIGHTS: dict[str, float] = {
    "single_object": 0.10,
    "two_object": 0.15,
    "counting": 0.20,
    "colors": 0.15,
    "position": 0.20,
    "color_attr": 0.20,
}
MIN_COLOR_DISTANCE = 60.0  # smallest Euclidean RGB distance allowed between two colours or colour and background

PLURALS: dict[str, str] = {
    "circle": "circles", "square": "squares", "triangle": "triangles",
    "star": "stars", "cross": "crosses", "diamond": "diamonds",
}
NUMBER_WORDS: dict[int, str] = {
    1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine",
}
RELATION_PHRASES: dict[str, str] = {
    "left_of": "to the left of", "right_of": "to the right of", "above": "above", "below": "below",
}

# Paraphrase templates per category. Fields: color0/shape0/size0 (first object), color1/shape1 (second),
# shapes0 (plural), count / count_digit (number of objects), relation (a phrase of RELATION_PHRASES).
# "a" becomes "an" before a vowel after formatting ("an orange star").
TEMPLATES: dict[str, tuple[str, ...]] = {
    "single_object": (
        "a {shape0}",
        "one {shape0}",
        "a picture of a {shape0}",
        "an image with a single {shape0}",
        "a {size0} {shape0}",
    ),
    "two_object": (
        "a {shape0} and a {shape1}",
        "a picture of a {shape0} and a {shape1}",
        "one {shape0} and one {shape1}",
        "a {shape0} together with a {shape1}",
    ),
    "counting": (
        "{count} {color0} {shapes0}",
        "a picture of {count} {color0} {shapes0}",
        "exactly {count} {color0} {shapes0}",
        "{count_digit} {color0} {shapes0}",
        "{count} {shapes0}",
    ),
    "colors": (
        "a {color0} {shape0}",
        "one {color0} {shape0}",
        "a picture of a {color0} {shape0}",
        "a {shape0} that is {color0}",
        "a {size0} {color0} {shape0}",
    ),
    "position": (
        "a {color0} {shape0} {relation} a {color1} {shape1}",
        "a picture of a {color0} {shape0} {relation} a {color1} {shape1}",
        "a {color0} {shape0} is {relation} a {color1} {shape1}",
        "there is a {color0} {shape0} {relation} a {color1} {shape1}",
    ),
    "color_attr": (
        "a {color0} {shape0} and a {color1} {shape1}",
        "a picture of a {color0} {shape0} and a {color1} {shape1}",
        "one {color0} {shape0} and one {color1} {shape1}",
        "a {shape0} that is {color0} and a {shape1} that is {color1}",
    ),
}
# Position scenes with position_pairs "absolute" (a training diagnostic: one object and the half of the picture it
# is in): the position templates' indices, worded for one object; {relation} is a phrase of PLACE_PHRASES. The
# prompt sets and `parse_prompt` do not use them.
PLACE_PHRASES: dict[str, str] = {"top": "at the top", "bottom": "at the bottom", "left": "on the left",
                                 "right": "on the right"}
PLACE_TEMPLATES: tuple[str, ...] = (
    "a {color0} {shape0} {relation}",
    "a picture of a {color0} {shape0} {relation}",
    "a {color0} {shape0} is {relation}",
    "there is a {color0} {shape0} {relation}",
)
_ARTICLE = re.compile(r"(?<![\w])a (?=[aeiou])")


# ----------------------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class ShapesWorldConfig:
    """Everything that shapes the world. Frozen and validated on construction; change it with
    `dataclasses.replace(config, field=value)`. Sizes and distances are fractions of the image side."""

    # name -> RGB fill; names are single lowercase words, >= MIN_COLOR_DISTANCE apart and from the background
    colors: dict[str, tuple[int, int, int]] = field(default_factory=lambda: dict(DEFAULT_COLORS))
    shapes: tuple[str, ...] = SHAPE_NAMES  # shapes in use, a subset of SHAPE_NAMES (at least two)
    heldout_combos: tuple[tuple[str, str], ...] = DEFAULT_HELDOUT  # (colour, shape): never in train, always in heldout
    # category -> relative frequency; a missing category or weight 0 never occurs
    category_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_CATEGORY_WEIGHTS))
    min_count: int = 2  # fewest objects in a counting scene
    max_count: int = 4  # most objects in a counting scene (others draw 1 or 2), so also the most per scene
    large_prob: float = 0.5  # chance that an object is large rather than small (crowded layouts shrink some)
    small_r: tuple[float, float] = (0.10, 0.125)  # half-extent range of small objects: 12.8-16 px across at 64 px
    large_r: tuple[float, float] = (0.19, 0.22)  # half-extent range of large objects: 24.3-28.2 px across at 64 px
    margin: float = 0.02  # smallest distance from an object's box to the image border
    min_gap: float = 0.03  # smallest gap between the boxes of two objects (they never touch or overlap)
    relation_max_skew: float = 0.5  # position scenes: |off-axis centre offset| <= this * |on-axis offset|
    # position scenes' two objects: "any" two kinds, or "same_shape": two colours of one shape, so that only the
    # relation word tells which colour goes where ("a red circle above a blue circle"); or "absolute": one object
    # and the half of the picture it is in, no second object to compare with ("a red circle at the top", PLACES)
    position_pairs: str = "any"
    background: tuple[int, int, int] = (128, 128, 128)  # RGB of the background, a neutral grey
    color_jitter: int = 10  # each RGB channel of each fill is shifted by a uniform integer in [-j, j]
    rotation_jitter: float = 8.0  # polygons turn by a uniform angle in [-j, j] degrees; <= 20 keeps square != diamond
    supersample: int = 4  # anti-aliasing: draw at this multiple of the output size, then reduce with LANCZOS
    layout_tries: int = 20  # random layouts tried before one large object is made small and we try again

    def __post_init__(self):
        # Normalise JSON-ish input (lists) to tuples, so configs read back from a README compare equal.
        colors = {str(k): tuple(int(c) for c in v) for k, v in dict(self.colors).items()}
        object.__setattr__(self, "colors", colors)
        object.__setattr__(self, "shapes", tuple(self.shapes))
        object.__setattr__(self, "heldout_combos", tuple(tuple(c) for c in self.heldout_combos))
        object.__setattr__(self, "category_weights", {str(k): float(v) for k, v in dict(self.category_weights).items()})
        object.__setattr__(self, "small_r", tuple(float(v) for v in self.small_r))
        object.__setattr__(self, "large_r", tuple(float(v) for v in self.large_r))
        object.__setattr__(self, "background", tuple(int(v) for v in self.background))
        self._validate()

    def _validate(self):
        name = "ShapesWorldConfig"
        # colours
        if len(self.colors) < 2:
            raise ValueError(f"{name}.colors needs at least 2 colours, got {list(self.colors)}")
        for c, rgb in list(self.colors.items()) + [("background", self.background)]:
            if c != "background" and not re.fullmatch(r"[a-z]+", c):
                raise ValueError(f"{name}.colors: names go into captions; use one lowercase word, not {c!r}")
            if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
                raise ValueError(f"{name}: {c} must be three ints in [0, 255], got {rgb}")
        palette = list(self.colors.items()) + [("background", self.background)]
        for (a, ra), (b, rb) in itertools.combinations(palette, 2):
            d = math.dist(ra, rb)
            if d < MIN_COLOR_DISTANCE:
                raise ValueError(
                    f"{name}: {a} {ra} and {b} {rb} are only {d:.0f} apart in RGB; keep colours at least "
                    f"{MIN_COLOR_DISTANCE:.0f} apart so a scorer can tell them apart"
                )
        # shapes
        unknown = [s for s in self.shapes if s not in SHAPE_NAMES]
        if unknown or len(set(self.shapes)) != len(self.shapes) or len(self.shapes) < 2:
            raise ValueError(f"{name}.shapes must be at least 2 distinct names from {SHAPE_NAMES}, got {self.shapes}")
        # held-out combinations
        for combo in self.heldout_combos:
            if len(combo) != 2 or combo[0] not in self.colors or combo[1] not in self.shapes:
                raise ValueError(f"{name}.heldout_combos: {combo} is not a (colour, shape) pair of this config")
        if len(set(self.heldout_combos)) != len(self.heldout_combos):
            raise ValueError(f"{name}.heldout_combos has duplicates: {self.heldout_combos}")
        if len(self.heldout_combos) >= len(self.colors) * len(self.shapes):
            raise ValueError(f"{name}.heldout_combos holds out every (colour, shape); the train split would be empty")
        # categories
        bad = [k for k in self.category_weights if k not in CATEGORIES]
        if bad:
            raise ValueError(f"{name}.category_weights: unknown categories {bad}; choose from {CATEGORIES}")
        if any(not math.isfinite(w) or w < 0 for w in self.category_weights.values()):
            raise ValueError(f"{name}.category_weights must be finite and >= 0, got {self.category_weights}")
        if sum(self.category_weights.values()) <= 0:
            raise ValueError(f"{name}.category_weights must give at least one category a positive weight")
        # counts and geometry
        if not 2 <= self.min_count <= self.max_count <= max(NUMBER_WORDS):
            raise ValueError(f"{name}: need 2 <= min_count <= max_count <= 9, got {self.min_count}, {self.max_count}")
        if not 0.0 <= self.large_prob <= 1.0:
            raise ValueError(f"{name}.large_prob must be in [0, 1], got {self.large_prob}")
        for f in ("small_r", "large_r"):
            lo, hi = getattr(self, f)
            if not 0 < lo <= hi < 0.5:
                raise ValueError(f"{name}.{f} must be (lo, hi) with 0 < lo <= hi < 0.5, got {(lo, hi)}")
        if self.small_r[1] >= self.large_r[0]:
            raise ValueError(f"{name}: small_r {self.small_r} must end below large_r {self.large_r} so sizes differ")
        if self.position_pairs not in POSITION_PAIRS:
            raise ValueError(f"{name}.position_pairs must be one of {POSITION_PAIRS}, got {self.position_pairs!r}")
        if self.margin < 0 or self.min_gap < 0 or self.relation_max_skew <= 0:
            raise ValueError(f"{name}: margin and min_gap must be >= 0 and relation_max_skew > 0")
        if 4 * self.large_r[1] + self.min_gap + 2 * self.margin > 1:
            raise ValueError(f"{name}: two large objects (large_r={self.large_r}) do not fit side by side; "
                             "shrink large_r")
        k = math.ceil(math.sqrt(self.max_count))
        if k * (2 * self.small_r[1] + self.min_gap) - self.min_gap + 2 * self.margin > 1:
            raise ValueError(f"{name}: {self.max_count} small objects (small_r={self.small_r}) do not fit; "
                             "lower max_count")
        # appearance
        if not 0 <= self.color_jitter <= 20:
            raise ValueError(f"{name}.color_jitter must be in [0, 20], got {self.color_jitter}")
        if not 0.0 <= self.rotation_jitter <= 20.0:
            raise ValueError(f"{name}.rotation_jitter must be in [0, 20] degrees, got {self.rotation_jitter}")
        if not isinstance(self.supersample, int) or not 1 <= self.supersample <= 8:
            raise ValueError(f"{name}.supersample must be an int in [1, 8], got {self.supersample!r}")
        if self.layout_tries < 1:
            raise ValueError(f"{name}.layout_tries must be >= 1, got {self.layout_tries}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict; `ShapesWorldConfig(**d)` rebuilds an equal config."""
        d = dataclasses.asdict(self)
        d["heldout_combos"] = [list(c) for c in self.heldout_combos]
        return json.loads(json.dumps(d))  # tuples -> lists


# ----------------------------------------------------------------------------------------------------------
# Scene spec


@dataclass
class ShapeObject:
    """One drawn object. Geometry is in fractions of the image side, so a spec renders at any size."""

    color: str  # colour name, a key of ShapesWorldConfig.colors
    shape: str  # one of SHAPE_NAMES
    size: str  # "small" or "large"
    cx: float  # centre x; 0 = left edge, 1 = right edge
    cy: float  # centre y; 0 = top edge, 1 = bottom edge
    r: float  # half-extent: the shape fills the box [cx - r, cx + r] x [cy - r, cy + r] in its larger dimension
    rgb: tuple[int, int, int]  # fill actually drawn: the palette colour plus jitter
    rotation: float = 0.0  # degrees, clockwise on screen (0 for circles)

    def box(self, size: int = 1) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the object's box, scaled by `size` (pixels when size is the image side)."""
        x0, y0, x1, y1 = self.cx - self.r, self.cy - self.r, self.cx + self.r, self.cy + self.r
        return (x0 * size, y0 * size, x1 * size, y1 * size)


@dataclass
class SceneSpec:
    """Everything in one image and the caption that describes it; JSON round trip with to_dict / from_dict."""

    category: str  # GenEval-style category, one of CATEGORIES
    objects: list[ShapeObject]  # every object in the image, in caption order; nothing else is drawn
    relation: str | None  # position scenes: objects[0] <relation> objects[1], one of RELATIONS (or with
    # position_pairs "absolute", one of PLACES: the half of the picture objects[0] is in); else None
    template_id: str  # "<category>/<k>": TEMPLATES[category][k] produced the caption
    caption: str  # the text; true of the image and naming everything in it
    background: tuple[int, int, int]  # RGB of the background
    split: str  # "train" (no held-out combination) or "heldout" (at least one)

    @property
    def count(self) -> int:
        return len(self.objects)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # shallow: faster than asdict
        d["objects"] = [{**vars(o), "rgb": list(o.rgb)} for o in self.objects]
        d["background"] = list(self.background)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SceneSpec":
        want = {f.name for f in dataclasses.fields(cls)}
        if set(d) != want:
            raise ValueError(f"SceneSpec.from_dict: expected keys {sorted(want)}, got {sorted(d)}")
        objects = [ShapeObject(**{**o, "rgb": tuple(o["rgb"])}) for o in d["objects"]]
        return cls(**{**d, "objects": objects, "background": tuple(d["background"])})


def make_caption(category: str, template: int, objects: list[ShapeObject], relation: str | None = None) -> str:
    """Fill TEMPLATES[category][template] from the objects (and relation) of a scene."""
    fields: dict[str, str] = {"count": NUMBER_WORDS[len(objects)], "count_digit": str(len(objects))}
    for i, o in enumerate(objects[:2]):
        fields.update({f"color{i}": o.color, f"shape{i}": o.shape, f"shapes{i}": PLURALS[o.shape], f"size{i}": o.size})
    if relation in PLACES:  # position_pairs "absolute": one object and its place, the same template indices
        fields["relation"] = PLACE_PHRASES[relation]
        return _ARTICLE.sub("an ", PLACE_TEMPLATES[template].format(**fields))
    fields["relation"] = RELATION_PHRASES[relation] if relation is not None else ""
    return _ARTICLE.sub("an ", TEMPLATES[category][template].format(**fields))


# ----------------------------------------------------------------------------------------------------------
# Sampling


def _check_split(split: str, where: str):
    if split not in SPLITS:
        raise ValueError(f"{where}: unknown split {split!r}; choose one of {SPLITS}")


@functools.lru_cache(maxsize=64)
def _candidates(colors: tuple[str, ...], shapes: tuple[str, ...], heldout: tuple[tuple[str, str], ...],
                split: str, category: str, position_pairs: str = "any") -> tuple[tuple[tuple[str, str], ...], ...]:
    """All (colour, shape) tuples a scene of this category may draw in this split, one combo per distinct
    object kind: 1-tuples for single_object / colors / counting, ordered 2-tuples for the rest (for position with
    position_pairs "same_shape", only pairs of one shape; with "absolute", 1-tuples)."""
    combos = [(c, s) for c in colors for s in shapes]
    held = set(heldout)
    if category in ("single_object", "colors", "counting") or (category, position_pairs) == ("position", "absolute"):
        return tuple((k,) for k in combos if (k in held) == (split == "heldout"))
    pairs = []
    for a, b in itertools.permutations(combos, 2):  # a != b: the two objects are always distinguishable
        if category == "two_object" and a[1] == b[1]:
            continue  # "a circle and a circle" is not a two-object prompt
        if category == "color_attr" and (a[0] == b[0] or a[1] == b[1]):
            continue
        if category == "position" and position_pairs == "same_shape" and a[1] != b[1]:
            continue
        n_held = (a in held) + (b in held)
        if (split == "train" and n_held == 0) or (split == "heldout" and n_held > 0):
            pairs.append((a, b))
    return tuple(pairs)


def _radius(rng: np.random.Generator, config: ShapesWorldConfig, size: str) -> float:
    lo, hi = config.small_r if size == "small" else config.large_r
    return round(float(rng.uniform(lo, hi)), 4)


def _apart(a: tuple[float, float, float], b: tuple[float, float, float], gap: float) -> bool:
    """Boxes of (cx, cy, r) a and b are separated by at least `gap` along x or along y."""
    return abs(a[0] - b[0]) >= a[2] + b[2] + gap or abs(a[1] - b[1]) >= a[2] + b[2] + gap


def _inside(cx: float, cy: float, r: float, margin: float) -> bool:
    return margin + r <= cx <= 1 - margin - r and margin + r <= cy <= 1 - margin - r


def _place_free(rng: np.random.Generator, config: ShapesWorldConfig, radii: list[float]):
    """Sequential rejection sampling of non-overlapping centres (64 candidates per object, the first that
    fits wins); None when an object finds no room."""
    m, gap, eps = config.margin, config.min_gap, 1e-4  # eps: the checks still hold after rounding to 4 places
    placed = np.zeros((0, 3))  # (P, 3): cx, cy, r of the objects placed so far
    for r in radii:
        cand = rng.uniform(m + r + eps, 1 - m - r - eps, size=(64, 2))  # (64, 2) candidate centres
        d = np.abs(cand[:, None, :] - placed[None, :, :2])  # (64, P, 2)
        need = (r + placed[:, 2] + gap + eps)[None, :, None]  # (1, P, 1)
        ok = (d >= need).any(axis=2).all(axis=1)  # (64,) apart along x or y from every placed object
        if not ok.any():
            return None
        cx, cy = cand[int(np.argmax(ok))]
        placed = np.vstack([placed, [round(float(cx), 4), round(float(cy), 4), r]])
    return [(float(cx), float(cy)) for cx, cy, _ in placed]


def relation_holds(a: ShapeObject, b: ShapeObject, relation: str, min_gap: float = 0.0,
                   max_skew: float = math.inf) -> bool:
    """`a <relation> b` with their boxes fully separated along the relation's axis (by >= min_gap) and the
    off-axis centre offset at most max_skew times the on-axis one. Image y grows downwards."""
    if relation not in RELATIONS:
        raise ValueError(f"relation_holds: unknown relation {relation!r}; choose one of {RELATIONS}")
    on, off = (b.cx - a.cx, b.cy - a.cy) if relation in ("left_of", "right_of") else (b.cy - a.cy, b.cx - a.cx)
    if relation in ("right_of", "below"):
        on = -on  # now `on` > 0 means the relation points the right way
    return on >= a.r + b.r + min_gap and abs(off) <= max_skew * on


def _place_relation(rng: np.random.Generator, config: ShapesWorldConfig, radii: list[float], relation: str):
    """Centres for two objects with objects[0] <relation> objects[1]; None when the draw does not fit."""
    m, gap, skew = config.margin, config.min_gap, config.relation_max_skew
    lo_idx, hi_idx = (0, 1) if relation in ("left_of", "above") else (1, 0)  # lo = smaller coordinate on the axis
    r_lo, r_hi = radii[lo_idx], radii[hi_idx]
    sep = r_lo + r_hi + gap  # smallest on-axis centre distance
    if rng.random() < 0.5:  # draw the low one first, then the high one within reach (or the other way round)
        p_lo = rng.uniform(m + r_lo, 1 - m - r_hi - sep)
        p_hi = rng.uniform(p_lo + sep, 1 - m - r_hi)
    else:
        p_hi = rng.uniform(m + r_lo + sep, 1 - m - r_hi)
        p_lo = rng.uniform(m + r_lo, p_hi - sep)
    d = p_hi - p_lo
    q_lo = rng.uniform(m + r_lo, 1 - m - r_lo)  # off-axis: the second one within skew * d of the first
    lo, hi = max(m + r_hi, q_lo - skew * d), min(1 - m - r_hi, q_lo + skew * d)
    if hi < lo:
        return None
    q_hi = rng.uniform(lo, hi)
    on, off = [0.0, 0.0], [0.0, 0.0]
    on[lo_idx], on[hi_idx], off[lo_idx], off[hi_idx] = p_lo, p_hi, q_lo, q_hi
    if relation in ("left_of", "right_of"):
        centres = [(round(float(on[i]), 4), round(float(off[i]), 4)) for i in range(2)]
    else:
        centres = [(round(float(off[i]), 4), round(float(on[i]), 4)) for i in range(2)]
    # re-check after rounding: the caption must hold exactly for the stored numbers
    objs = [ShapeObject("", "", "", cx, cy, r, (0, 0, 0)) for (cx, cy), r in zip(centres, radii)]
    if not all(_inside(o.cx, o.cy, o.r, m) for o in objs) or not relation_holds(objs[0], objs[1], relation, gap, skew):
        return None
    return centres


def place_holds(a: ShapeObject, place: str) -> bool:
    """`a` lies wholly in the `place` half of the picture (one of PLACES). Image y grows downwards."""
    if place not in PLACES:
        raise ValueError(f"place_holds: unknown place {place!r}; choose one of {PLACES}")
    return {"top": a.cy + a.r <= 0.5, "bottom": a.cy - a.r >= 0.5, "left": a.cx + a.r <= 0.5,
            "right": a.cx - a.r >= 0.5}[place]


def _place_absolute(rng: np.random.Generator, config: ShapesWorldConfig, radius: float, place: str):
    """The centre of one object wholly in the `place` half (and inside the margins); anywhere along the other axis."""
    m, r = config.margin, radius
    lo, hi = (m + r, 0.5 - r) if place in ("top", "left") else (0.5 + r, 1 - m - r)  # (on-axis range)
    on, off = round(float(rng.uniform(lo, hi)), 4), round(float(rng.uniform(m + r, 1 - m - r)), 4)
    centre = (off, on) if place in ("top", "bottom") else (on, off)
    obj = ShapeObject("", "", "", *centre, r, (0, 0, 0))
    return [centre] if _inside(obj.cx, obj.cy, r, m) and place_holds(obj, place) else None


def _layout(rng: np.random.Generator, config: ShapesWorldConfig, n: int, relation: str | None):
    """Sizes, radii and centres for n objects. After `layout_tries` failed layouts one large object becomes
    small (a fresh radius) and we try again, so crowded scenes always end up fitting."""
    sizes = ["large" if rng.random() < config.large_prob else "small" for _ in range(n)]
    radii = [_radius(rng, config, s) for s in sizes]
    while True:
        for _ in range(config.layout_tries):
            if relation in PLACES:
                centres = _place_absolute(rng, config, radii[0], relation)
            elif relation:
                centres = _place_relation(rng, config, radii, relation)
            else:
                centres = _place_free(rng, config, radii)
            if centres is not None:
                return sizes, radii, centres
        large = [i for i, s in enumerate(sizes) if s == "large"]
        if not large:
            raise RuntimeError(f"ShapesWorld: could not lay out {n} small objects; lower max_count or small_r")
        i = large[int(rng.integers(len(large)))]
        sizes[i], radii[i] = "small", _radius(rng, config, "small")


def sample_scene(rng: np.random.Generator, config: ShapesWorldConfig | None = None, split: str = "train") -> SceneSpec:
    """Draw one scene. Its objects obey the split (train: no held-out combination; heldout: at least one)."""
    config = ShapesWorldConfig() if config is None else config
    _check_split(split, "sample_scene")
    # 1. Category
    cats = [c for c in CATEGORIES if config.category_weights.get(c, 0.0) > 0]
    cum = np.cumsum([config.category_weights[c] for c in cats])
    category = cats[min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(cats) - 1)]
    # 2. Which (colour, shape) each kind of object is
    cands = _candidates(tuple(config.colors), config.shapes, config.heldout_combos, split, category,
                        config.position_pairs)
    if not cands:
        raise ValueError(
            f"sample_scene: no {category!r} scene fits split {split!r} with heldout_combos={config.heldout_combos}; "
            f"add held-out combinations or set category_weights[{category!r}] = 0"
        )
    kinds = cands[int(rng.integers(len(cands)))]
    if category == "counting":
        kinds = kinds * int(rng.integers(config.min_count, config.max_count + 1))  # identical objects
    # 3. Caption template and relation
    template = int(rng.integers(len(TEMPLATES[category])))
    relation = None
    if category == "position":
        words = PLACES if config.position_pairs == "absolute" else RELATIONS
        relation = words[int(rng.integers(len(words)))]
    # 4. Layout: sizes, radii, centres
    sizes, radii, centres = _layout(rng, config, len(kinds), relation)
    # 5. Appearance jitter
    objects = []
    for (color, shape), size, r, (cx, cy) in zip(kinds, sizes, radii, centres):
        j = config.color_jitter
        rgb = tuple(min(255, max(0, c + int(d))) for c, d in zip(config.colors[color], rng.integers(-j, j + 1, 3)))
        jr = config.rotation_jitter
        rot = 0.0 if shape == "circle" else round(float(rng.uniform(-jr, jr)), 2)
        objects.append(ShapeObject(color, shape, size, cx, cy, r, rgb, rot))
    caption = make_caption(category, template, objects, relation)
    return SceneSpec(category, objects, relation, f"{category}/{template}", caption, config.background, split)


def scene_rng(seed: int, index: int, split: str = "train") -> np.random.Generator:
    """The generator of sample `index` of the dataset (seed, split): independent of every other sample."""
    _check_split(split, "scene_rng")
    if not isinstance(seed, (int, np.integer)) or seed < 0 or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"scene_rng: seed and index must be ints >= 0, got seed={seed!r}, index={index!r}")
    return np.random.default_rng([int(seed), SPLITS.index(split), int(index)])


def scene_at(index: int, seed: int = 0, split: str = "train", config: ShapesWorldConfig | None = None) -> SceneSpec:
    """Sample `index` of the dataset (seed, split), regenerated from scratch."""
    return sample_scene(scene_rng(seed, index, split), config, split)


def iter_scenes(n: int, seed: int = 0, split: str = "train", config: ShapesWorldConfig | None = None,
                start: int = 0) -> Iterator[SceneSpec]:
    """Specs of samples start .. start + n - 1 of the dataset (seed, split); no rendering."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"iter_scenes: n must be an int >= 0, got {n!r}")
    _check_split(split, "iter_scenes")
    config = ShapesWorldConfig() if config is None else config  # validate once, not per sample
    for i in range(start, start + n):
        yield scene_at(i, seed, split, config)


def iter_captions(n: int, seed: int = 0, split: str = "train",
                  config: ShapesWorldConfig | None = None) -> Iterator[str]:
    """Captions of the first n samples of (seed, split), without rendering: a corpus for a BPE tokenizer."""
    for spec in iter_scenes(n, seed, split, config):
        yield spec.caption


# ----------------------------------------------------------------------------------------------------------
# Writing a Hugging Face imagefolder

_OUTPUTS = ("images", "metadata.jsonl", "README.md")  # what write_dataset writes (and overwrite removes)


def _file_name(i: int) -> str:
    return f"images/{i // 1000:04d}/{i:08d}.png"  # 1000 images per sub-folder


def _write_chunk(job: tuple) -> list[tuple[str, str]]:
    """Render and save samples [start, stop); returns (category, metadata line) per sample, in order."""
    out_dir, start, stop, size, seed, split, config = job
    rows = []
    for i in range(start, stop):
        spec = scene_at(i, seed, split, config)
        name = _file_name(i)
        path = Path(out_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        render(spec, size, config.supersample).save(path)
        rows.append((spec.category, json.dumps({"file_name": name, "text": spec.caption, "spec": spec.to_dict()})))
    return rows


def write_dataset(out_dir: str | Path, n: int, size: int = 64, seed: int = 0, split: str = "train",
                  config: ShapesWorldConfig | None = None, progress: bool = True, overwrite: bool = False,
                  workers: int = 1) -> Path:
    """Write samples 0 .. n-1 of (seed, split) as a Hugging Face imagefolder:

        out_dir/images/0000/00000000.png ...   the images, 1000 per sub-folder
        out_dir/metadata.jsonl                 {"file_name", "text": caption, "spec": SceneSpec.to_dict()}
        out_dir/README.md                      splits, held-out combinations, seed, counts, the command

    Load it with `datasets.load_dataset("imagefolder", data_dir=out_dir)`. Output is identical for any
    `workers` (each sample depends only on (seed, split, index)). With overwrite=True, the files that
    write_dataset writes are removed first; anything else in out_dir is left alone.
    """
    # 1. Check inputs
    config = ShapesWorldConfig() if config is None else config
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"write_dataset: n must be an int >= 1, got {n!r}")
    if not isinstance(size, int) or not 16 <= size <= 1024:
        raise ValueError(f"write_dataset: size must be an int in [16, 1024], got {size!r}")
    _check_split(split, "write_dataset")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"write_dataset: seed must be an int >= 0, got {seed!r}")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"write_dataset: workers must be an int >= 1, got {workers!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"write_dataset: {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"write_dataset: {out} is not empty; choose a new folder or pass overwrite=True")
        for name in _OUTPUTS:
            p = out / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    # 2. Render in chunks (in order, so metadata.jsonl follows the index), write metadata as chunks arrive
    from tqdm import tqdm

    chunk = 250
    jobs = [(str(out), s, min(s + chunk, n), size, seed, split, config) for s in range(0, n, chunk)]
    counts = {c: 0 for c in CATEGORIES}
    t0 = time.perf_counter()
    with open(out / "metadata.jsonl", "w", encoding="utf-8") as meta, \
            tqdm(total=n, desc=f"ShapesWorld {split}", unit="img", disable=not progress) as bar:
        # fork where the platform has it: spawn would re-run the caller's __main__ in every worker
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        pool = multiprocessing.get_context(method).Pool(workers) if workers > 1 else None
        try:
            results = pool.imap(_write_chunk, jobs) if pool else map(_write_chunk, jobs)
            for rows in results:
                for category, line in rows:
                    counts[category] += 1
                    meta.write(line + "\n")
                bar.update(len(rows))
        finally:
            if pool:
                pool.close()
                pool.join()
    seconds = time.perf_counter() - t0

    # 3. README
    readme = _readme(out_dir, n, size, seed, split, config, counts, seconds, workers)
    (out / "README.md").write_text(readme, encoding="utf-8")
    return out


def _readme(out_dir, n, size, seed, split, config, counts, seconds, workers) -> str:
    from latentdiff.version import __version__

    default = config == ShapesWorldConfig()
    cmd = f"latentdiff shapes --out {out_dir} --n {n} --size {size} --seed {seed} --split {split}"
    how = (
        f"```\n{cmd}\n```\n\n(the default `ShapesWorldConfig`), or in Python:\n\n"
        f"```python\nfrom latentdiff.data.shapes import write_dataset\n"
        f"write_dataset({str(out_dir)!r}, n={n}, size={size}, seed={seed}, split={split!r})\n```"
        if default else
        f"```python\nfrom latentdiff.data.shapes import ShapesWorldConfig, write_dataset\n"
        f"config = ShapesWorldConfig(**CONFIG)  # CONFIG: the JSON under 'Config' below\n"
        f"write_dataset({str(out_dir)!r}, n={n}, size={size}, seed={seed}, split={split!r}, config=config)\n```\n\n"
        f"This config is not the default, so the CLI (`{cmd}`) would not reproduce it."
    )
    held = "\n".join(f"- {c} {s}" for c, s in config.heldout_combos) or "- (none)"
    table = "\n".join(f"| {c} | {counts[c]} | {100 * counts[c] / n:.1f}% |" for c in CATEGORIES)
    templates = "\n".join(
        f"| {cat} | `{cat}/{k}` | {t} |" for cat in CATEGORIES for k, t in enumerate(TEMPLATES[cat])
    )
    return f"""---
pretty_name: ShapesWorld ({split} split)
task_categories:
- text-to-image
---

# ShapesWorld: {split} split, {n} images of {size}x{size}

Procedurally generated captioned scenes of flat-coloured shapes on a grey background, made by
latentdiff {__version__} (`latentdiff.data.shapes`). Every caption is true of its image and names
everything in it; captions fall into the six GenEval categories.

## How it was made

{how}

Sample `i` is generated from `numpy.random.default_rng([{seed}, {SPLITS.index(split)}, i])` alone
(seed, split id, index), so any sample can be regenerated with
`render(scene_at(i, seed={seed}, split={split!r}), size={size})`.
Writing took {seconds:.1f} s with {workers} worker(s) ({n / max(seconds, 1e-9):.0f} images/s).

## Splits and held-out combinations

- **train**: no object in any scene is a held-out (colour, shape) combination.
- **heldout**: every scene has at least one object that is a held-out combination.

This folder is the **{split}** split, seed {seed}. Held-out combinations:

{held}

## Counts per category

| category | images | share |
|---|---|---|
{table}

## Files

- `images/XXXX/XXXXXXXX.png`: RGB PNG, 1000 per sub-folder, named by sample index.
- `metadata.jsonl`: one JSON object per image: `file_name`, `text` (the caption) and `spec`, the scene:
  `category`, `objects` (each: `color`, `shape`, `size`, centre `cx`, `cy` and half-extent `r` as
  fractions of the image side with y downwards, drawn `rgb`, `rotation` in degrees), `relation`
  (position scenes: objects[0] <relation> objects[1]), `template_id`, `caption`, `background`, `split`.

Load with `datasets.load_dataset("imagefolder", data_dir=...)`.

## Caption templates

| category | template id | template |
|---|---|---|
{templates}

## Config

```json
{json.dumps(config.to_dict(), indent=2)}
```
"""


# ----------------------------------------------------------------------------------------------------------
# Command line: `latentdiff shapes ...` (wired into latentdiff/cli.py)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `latentdiff shapes` options to `parser`."""
    parser.add_argument("--out", required=True, help="output folder (a Hugging Face imagefolder); must be new or empty")
    parser.add_argument("--n", type=int, required=True, help="number of images, e.g. 50000")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels, 16..1024 (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed; sample i depends only on (seed, split, i)")
    parser.add_argument("--split", choices=SPLITS, default="train",
                        help="train: no held-out (colour, shape) combination; heldout: at least one per image")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes that render (the output is identical for any value)")
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset already written to --out")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run `latentdiff shapes` with parsed arguments; returns the exit status."""
    out = write_dataset(args.out, n=args.n, size=args.size, seed=args.seed, split=args.split,
                        progress=not args.no_progress, overwrite=args.overwrite, workers=args.workers)
    print(f"wrote {args.n} ShapesWorld {args.split} images to {out}")
    return 0


if __name__ == "__main__":  # python -m latentdiff.data.shapes --out DIR --n N
    raise SystemExit(run(add_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args()))
