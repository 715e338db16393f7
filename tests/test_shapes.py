"""ShapesWorld: determinism, splits, caption truth, rendering, the imagefolder writer and its errors."""

import argparse
import dataclasses
import json
import re

import numpy as np
import pytest
from PIL import Image

from latentdiff.data.shapes import (
    CATEGORIES,
    DEFAULT_COLORS,
    NUMBER_WORDS,
    PLURALS,
    RELATIONS,
    SHAPE_NAMES,
    TEMPLATES,
    SceneSpec,
    ShapesWorldConfig,
    add_arguments,
    iter_captions,
    iter_scenes,
    make_caption,
    relation_holds,
    render,
    run,
    sample_scene,
    scene_at,
    write_dataset,
)

CONFIG = ShapesWorldConfig()
HELD = set(CONFIG.heldout_combos)


@pytest.fixture(scope="module")
def train_specs():
    return list(iter_scenes(3000, seed=0, split="train"))


@pytest.fixture(scope="module")
def heldout_specs():
    return list(iter_scenes(1000, seed=0, split="heldout"))


# ---------------------------------------------------------------------------------------------------------
# Determinism


def test_same_seed_and_index_give_same_spec_and_pixels():
    for i in (0, 7, 123):
        a, b = scene_at(i, seed=3), scene_at(i, seed=3)
        assert a == b
        assert np.array_equal(np.asarray(render(a, 64)), np.asarray(render(b, 64)))
    # a sample does not depend on what was generated before it (parallel chunks, regeneration by index)
    assert list(iter_scenes(3, seed=3, start=5)) == [scene_at(i, seed=3) for i in (5, 6, 7)]
    assert sample_scene(np.random.default_rng([3, 0, 6])) == scene_at(6, seed=3)
    # other seeds, indices and splits give other scenes
    assert scene_at(0, seed=3) != scene_at(0, seed=4)
    assert [scene_at(i).caption for i in range(20)] != [scene_at(i, split="heldout").caption for i in range(20)]


def test_iter_captions_matches_scenes():
    caps = list(iter_captions(50, seed=1))
    assert caps == [scene_at(i, seed=1).caption for i in range(50)]
    assert all(isinstance(c, str) and c for c in caps)


# ---------------------------------------------------------------------------------------------------------
# Splits and coverage


def test_train_never_contains_heldout_combos(train_specs):
    for s in train_specs:
        assert s.split == "train"
        assert not any((o.color, o.shape) in HELD for o in s.objects), s.caption


def test_heldout_always_contains_a_heldout_combo(heldout_specs):
    for s in heldout_specs:
        assert s.split == "heldout"
        assert any((o.color, o.shape) in HELD for o in s.objects), s.caption


def test_every_category_template_colour_shape_and_relation_appears(train_specs):
    assert {s.category for s in train_specs} == set(CATEGORIES)
    assert {s.template_id for s in train_specs} == {f"{c}/{k}" for c in CATEGORIES for k in range(len(TEMPLATES[c]))}
    assert {o.color for s in train_specs for o in s.objects} == set(DEFAULT_COLORS)
    assert {o.shape for s in train_specs for o in s.objects} == set(SHAPE_NAMES)
    assert {o.size for s in train_specs for o in s.objects} == {"small", "large"}
    assert {s.relation for s in train_specs if s.category == "position"} == set(RELATIONS)
    assert {s.count for s in train_specs if s.category == "counting"} == {2, 3, 4}


# ---------------------------------------------------------------------------------------------------------
# Captions are true of the scene


def _boxes_apart(a, b, gap):
    return abs(a.cx - b.cx) >= a.r + b.r + gap - 1e-9 or abs(a.cy - b.cy) >= a.r + b.r + gap - 1e-9


def test_captions_and_geometry_agree_with_specs(train_specs, heldout_specs):
    c = CONFIG
    for s in train_specs + heldout_specs:
        cat, k = s.template_id.split("/")
        assert cat == s.category
        assert s.caption == make_caption(s.category, int(k), s.objects, s.relation)
        assert not re.search(r"\ba [aeiou]", s.caption), s.caption  # "an orange", never "a orange"
        words = s.caption.split()
        objs = s.objects
        # every object is inside the image, has a size-consistent radius, and no two touch
        for o in objs:
            assert c.margin + o.r - 1e-9 <= o.cx <= 1 - c.margin - o.r + 1e-9
            assert c.margin + o.r - 1e-9 <= o.cy <= 1 - c.margin - o.r + 1e-9
            lo, hi = c.small_r if o.size == "small" else c.large_r
            assert lo <= o.r <= hi
            assert max(abs(x - y) for x, y in zip(o.rgb, DEFAULT_COLORS[o.color])) <= c.color_jitter
        for i in range(len(objs)):
            for j in range(i + 1, len(objs)):
                assert _boxes_apart(objs[i], objs[j], c.min_gap), s.caption
        # what the caption names is exactly what is drawn
        if s.category in ("single_object", "colors"):
            assert len(objs) == 1 and objs[0].shape in words
            assert (objs[0].color in words) == (s.category == "colors")
        elif s.category == "counting":
            assert c.min_count <= len(objs) <= c.max_count
            assert len({(o.color, o.shape) for o in objs}) == 1  # all of the counted kind, no distractors
            assert NUMBER_WORDS[len(objs)] in words or str(len(objs)) in words
            assert PLURALS[objs[0].shape] in words
        else:
            assert len(objs) == 2
            a, b = objs
            assert (a.color, a.shape) != (b.color, b.shape)
            if s.category == "two_object":
                assert a.shape != b.shape and a.shape in words and b.shape in words
                assert not any(col in words for col in DEFAULT_COLORS)
            if s.category in ("color_attr", "position"):
                # each colour is bound to its own shape: "<colour> <shape>" or "<shape> that is <colour>"
                for o in objs:
                    assert f"{o.color} {o.shape}" in s.caption or f"{o.shape} that is {o.color}" in s.caption
            if s.category == "color_attr":
                assert a.color != b.color and a.shape != b.shape
        # position: the relation holds between the centres, with boxes separated along its axis
        if s.category == "position":
            a, b = objs
            dx, dy = b.cx - a.cx, b.cy - a.cy  # from the subject to the reference; y grows downwards
            on, off = {"left_of": (dx, dy), "right_of": (-dx, dy), "above": (dy, dx), "below": (-dy, dx)}[s.relation]
            assert on >= a.r + b.r + c.min_gap - 1e-9, s.caption  # clear separation the right way
            assert abs(off) <= c.relation_max_skew * on + 1e-9, s.caption  # mostly along the axis
            assert relation_holds(a, b, s.relation, c.min_gap - 1e-9, c.relation_max_skew)
            opposite = {"left_of": "right_of", "right_of": "left_of", "above": "below", "below": "above"}[s.relation]
            assert not relation_holds(a, b, opposite)
            assert {"left_of": "left", "right_of": "right", "above": "above", "below": "below"}[s.relation] in words
        else:
            assert s.relation is None


def test_spec_dict_round_trip(train_specs):
    for s in train_specs[:200]:
        d = json.loads(json.dumps(s.to_dict()))
        assert SceneSpec.from_dict(d) == s
    with pytest.raises(ValueError, match="expected keys"):
        SceneSpec.from_dict({"category": "colors"})


def test_config_dict_round_trip():
    assert ShapesWorldConfig(**json.loads(json.dumps(CONFIG.to_dict()))) == CONFIG


# ---------------------------------------------------------------------------------------------------------
# Rendering


@pytest.mark.parametrize("size, tol", [(64, 12), (32, 24)])
def test_rendered_colour_at_object_centres_matches_spec(size, tol):
    palette = {k: np.array(v) for k, v in DEFAULT_COLORS.items()}
    for i in range(150):
        s = scene_at(i)
        im = render(s, size)
        assert im.mode == "RGB" and im.size == (size, size)
        a = np.asarray(im).astype(int)  # (H, W, 3)
        assert (np.abs(a[0, 0] - np.array(s.background)) <= 2).all() or any(
            o.cx - o.r < 1 / size and o.cy - o.r < 1 / size for o in s.objects
        )
        for o in s.objects:
            px = a[min(int(o.cy * size), size - 1), min(int(o.cx * size), size - 1)]  # (3,)
            assert np.abs(px - np.array(o.rgb)).max() <= tol, (s.caption, o, px)
            assert min(palette, key=lambda c: np.linalg.norm(px - palette[c])) == o.color


def test_shapes_are_big_enough_at_64px():
    # measured on the image: small objects >= 12 px across, large >= 24 px (squares fill their box)
    bg = np.array(CONFIG.background)
    for size, r in (("small", CONFIG.small_r[0]), ("large", CONFIG.large_r[0])):
        s = scene_at(0)
        s = dataclasses.replace(s, objects=[dataclasses.replace(s.objects[0], shape="square", size=size, r=r,
                                                                cx=0.5, cy=0.5, rotation=0.0)])
        a = np.asarray(render(s, 64)).astype(int)
        cols = np.flatnonzero((np.abs(a[32] - bg).max(axis=1) > 64))
        assert cols.max() - cols.min() + 1 >= (12 if size == "small" else 24)


# ---------------------------------------------------------------------------------------------------------
# write_dataset


def test_write_dataset_is_a_valid_imagefolder(tmp_path):
    out = write_dataset(tmp_path / "ds", n=20, size=48, seed=5, progress=False)
    lines = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(lines) == 20
    for i, row in enumerate(lines):
        assert set(row) == {"file_name", "text", "spec"}
        spec = SceneSpec.from_dict(row["spec"])
        assert spec == scene_at(i, seed=5) and row["text"] == spec.caption
        with Image.open(out / row["file_name"]) as im:
            assert im.mode == "RGB" and im.size == (48, 48)
            assert np.array_equal(np.asarray(im), np.asarray(render(spec, 48)))
    readme = (out / "README.md").read_text()
    assert f"latentdiff shapes --out {tmp_path / 'ds'} --n 20 --size 48 --seed 5 --split train" in readme
    assert all(f"- {c} {s}" in readme for c, s in CONFIG.heldout_combos)
    assert "| counting |" in readme and "heldout" in readme

    # the real loader, offline
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("imagefolder", data_dir=str(out), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(ds) == 20
    captions = {row["text"] for row in lines}
    assert ds[0]["text"] in captions and ds[0]["image"].size == (48, 48)
    assert ds[0]["spec"]["category"] in CATEGORIES


def test_write_dataset_workers_and_cli(tmp_path):
    a = write_dataset(tmp_path / "a", n=12, size=32, seed=2, split="heldout", progress=False)
    b = write_dataset(tmp_path / "b", n=12, size=32, seed=2, split="heldout", progress=False, workers=2)
    assert (a / "metadata.jsonl").read_bytes() == (b / "metadata.jsonl").read_bytes()
    assert (a / "images/0000/00000011.png").read_bytes() == (b / "images/0000/00000011.png").read_bytes()

    parser = add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--out", str(tmp_path / "c"), "--n", "3", "--size", "32", "--seed", "2",
                              "--split", "heldout", "--no-progress"])
    assert run(args) == 0
    assert (tmp_path / "c" / "metadata.jsonl").read_bytes() == b"".join(
        (a / "metadata.jsonl").read_bytes().splitlines(keepends=True)[:3]
    )


def test_bad_arguments_raise_value_errors(tmp_path):
    with pytest.raises(ValueError, match="n must be"):
        write_dataset(tmp_path / "x", n=0, progress=False)
    with pytest.raises(ValueError, match="size must be"):
        write_dataset(tmp_path / "x", n=1, size=8, progress=False)
    with pytest.raises(ValueError, match="size must be"):
        write_dataset(tmp_path / "x", n=1, size=2048, progress=False)
    with pytest.raises(ValueError, match="unknown split"):
        write_dataset(tmp_path / "x", n=1, split="test", progress=False)
    with pytest.raises(ValueError, match="seed must be"):
        write_dataset(tmp_path / "x", n=1, seed=-1, progress=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "metadata.jsonl").write_text("old\n")
    with pytest.raises(ValueError, match="not empty"):
        write_dataset(tmp_path / "full", n=1, progress=False)
    out = write_dataset(tmp_path / "full", n=2, size=16, progress=False, overwrite=True)
    assert len((out / "metadata.jsonl").read_text().splitlines()) == 2
    with pytest.raises(ValueError, match="unknown split"):
        sample_scene(np.random.default_rng(0), split="val")
    with pytest.raises(ValueError, match="unknown split"):
        list(iter_captions(1, split="val"))
    with pytest.raises(ValueError, match="apart"):
        ShapesWorldConfig(colors={**DEFAULT_COLORS, "crimson": (230, 20, 30)})
    with pytest.raises(ValueError, match="shapes"):
        ShapesWorldConfig(shapes=("circle", "hexagon"))
    with pytest.raises(ValueError, match="heldout_combos"):
        ShapesWorldConfig(heldout_combos=(("pink", "circle"),))
    with pytest.raises(ValueError, match="category_weights"):
        ShapesWorldConfig(category_weights={"counting": 1.0, "spelling": 1.0})
    with pytest.raises(ValueError, match="max_count"):
        ShapesWorldConfig(max_count=12)
    no_heldout = ShapesWorldConfig(heldout_combos=())
    assert scene_at(0, config=no_heldout).split == "train"  # train still works without held-out combos
    with pytest.raises(ValueError, match="no .* scene fits split 'heldout'"):
        scene_at(0, split="heldout", config=no_heldout)
