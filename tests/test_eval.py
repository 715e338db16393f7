"""The ShapesWorld scorer: prompt parsing, detection on true renders, failure on wrong renders, `latentdiff eval`."""

import collections
import dataclasses
import json
from pathlib import Path

import pytest

from latentdiff.data.shapes import CATEGORIES, DEFAULT_COLORS, DEFAULT_HELDOUT, SHAPE_NAMES, TEMPLATES, render, scene_at
from latentdiff.eval import PromptSpec, parse_prompt, read_prompt_set, score_image
from latentdiff.eval.prompts import ObjectSpec, spec_of_scene

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "prompts"
OPPOSITE = {"left_of": "right_of", "right_of": "left_of", "above": "below", "below": "above"}


def _scenes(per_category: int, seed: int = 11):
    """per_category scenes of each category, from both splits."""
    got = collections.defaultdict(list)
    i = 0
    while min((len(got[c]) for c in CATEGORIES), default=0) < per_category:
        scene = scene_at(i, seed, ("train", "heldout")[i % 2])
        if len(got[scene.category]) < per_category:
            got[scene.category].append(scene)
        i += 1
    return got


def test_every_caption_template_parses_back_to_its_scene():
    templates = set()
    for i in range(3000):
        scene = scene_at(i, 3, ("train", "heldout")[i % 2])
        assert parse_prompt(scene.caption) == spec_of_scene(scene), scene.caption
        templates.add(scene.template_id)
    assert len(templates) == sum(len(t) for t in TEMPLATES.values())  # all 27 templates were exercised
    assert parse_prompt("  Two RED stars ") == PromptSpec("counting", (ObjectSpec("star", "red"),) * 2)
    assert parse_prompt("four circles").objects == (ObjectSpec("circle"),) * 4


@pytest.mark.parametrize("bad", ["a photo of a cat", "a red circle left of a blue star", "", "two red"])
def test_a_prompt_no_template_makes_is_refused(bad):
    with pytest.raises(ValueError, match="not a ShapesWorld caption"):
        parse_prompt(bad)


def test_scorer_passes_ground_truth_renders(report):
    scores = {}
    for category, scenes in _scenes(100).items():
        passed = [score_image(render(s, 64), spec_of_scene(s)).passed for s in scenes]
        scores[category] = sum(passed) / len(passed)
    report("scorer on true renders: " + ", ".join(f"{c} {v:.2f}" for c, v in scores.items()))
    assert all(v >= 0.99 for v in scores.values()), scores


def _wrong_spec(spec: PromptSpec, k: int) -> PromptSpec:
    """A spec of the same category that the scene does not satisfy: the hardest single change per category."""
    o = spec.objects
    if spec.category == "single_object":
        return dataclasses.replace(spec, objects=(ObjectSpec(SHAPE_NAMES[(SHAPE_NAMES.index(o[0].shape) + 1 + k % 5) % 6]),))
    if spec.category == "two_object":
        other = [s for s in SHAPE_NAMES if s not in (o[0].shape, o[1].shape)][k % 4]
        return dataclasses.replace(spec, objects=(o[0], ObjectSpec(other)))
    if spec.category == "counting":
        n = len(o) + (1 if k % 2 or len(o) == 2 else -1)
        return dataclasses.replace(spec, objects=(o[0],) * n)
    if spec.category == "colors":
        colors = [c for c in DEFAULT_COLORS if c != o[0].color]
        return dataclasses.replace(spec, objects=(ObjectSpec(o[0].shape, colors[k % len(colors)]),))
    if spec.category == "position":  # the same two objects, the opposite relation
        return dataclasses.replace(spec, relation=OPPOSITE[spec.relation])
    # color_attr: the colours swapped between the two shapes (attribute binding)
    return dataclasses.replace(spec, objects=(ObjectSpec(o[0].shape, o[1].color), ObjectSpec(o[1].shape, o[0].color)))


def test_scorer_fails_renders_of_a_different_spec(report):
    rates = {}
    for category, scenes in _scenes(100, seed=12).items():
        passed = [score_image(render(s, 64), _wrong_spec(spec_of_scene(s), k)).passed for k, s in enumerate(scenes)]
        rates[category] = sum(passed) / len(passed)
    report("scorer pass rate on wrong specs: " + ", ".join(f"{c} {v:.2f}" for c, v in rates.items()))
    assert all(v <= 0.05 for v in rates.values()), rates


def test_scorer_fails_an_empty_image_and_a_noise_image():
    import numpy as np
    from PIL import Image

    spec = parse_prompt("a red circle")
    assert not score_image(Image.new("RGB", (64, 64), (128, 128, 128)), spec).passed
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    assert not score_image(noise, spec).passed


@pytest.mark.parametrize("name", ["indist", "heldout"])
def test_shipped_prompt_sets_are_balanced_and_parse_to_their_specs(name):
    lines = [json.loads(line) for line in (ASSETS / f"{name}.jsonl").read_text().splitlines()]
    assert len(lines) >= 120
    counts = collections.Counter(line["spec"]["category"] for line in lines)
    assert set(counts) == set(CATEGORIES) and len(set(counts.values())) == 1, counts
    assert len({line["prompt"] for line in lines}) == len(lines)
    held = set(DEFAULT_HELDOUT)
    for prompt, spec in read_prompt_set(ASSETS / f"{name}.jsonl"):
        assert parse_prompt(prompt) == spec
        names_held = any((o.color, o.shape) in held for o in spec.objects)
        if name == "indist":
            assert not names_held, prompt
        elif spec.category not in ("single_object", "two_object"):
            assert names_held, prompt


def test_latentdiff_eval_writes_scores_json_and_a_marked_grid(tmp_path, capsys):
    from PIL import Image

    from latentdiff.cli import main

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(l + "\n" for l in (ASSETS / "indist.jsonl").read_text().splitlines()[::20]))  # 6 prompts
    out = tmp_path / "r.json"
    assert main(["eval", "--model", "preset:tiny", "--prompts", str(prompts), "--steps", "2",
                 "--images-per-prompt", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "overall" in printed and "color_attr" in printed
    r = json.loads(out.read_text())
    assert set(r["categories"]) == set(CATEGORIES)
    assert r["overall"] == pytest.approx(sum(r["categories"].values()) / 6)
    assert all(len(p["passed"]) == 2 for p in r["per_prompt"]) and len(r["per_prompt"]) == 6
    assert r["settings"]["steps"] == 2 and r["metrics"]["p/overall"] == r["overall"]
    assert Image.open(out.with_suffix(".png")).size[1] > 6 * 16  # one row per category
    # the failures, tallied: every failing image once, by category and the scorer's reason
    failing = sum(len(p["passed"]) - sum(p["passed"]) for p in r["per_prompt"])
    assert sum(f["images"] for f in r["failures"]) == failing and f"most frequent failures ({failing} images)" in printed


def test_failures_add_up_like_reasons_and_leave_out_the_detected_objects():
    from latentdiff.eval.run import tally

    rows = [{"prompt": "a", "category": "position", "passed": [False, False, True],
             "reasons": ["relation below does not hold", "relation below does not hold", ""]},
            {"prompt": "b", "category": "colors", "passed": [False, False],
             "reasons": ["objects red circle do not match the prompt", "objects blue star do not match the prompt"]},
            {"prompt": "c", "category": "position", "passed": [False], "reasons": ["3 objects, want 2"]}]
    result = tally(rows, settings={}, seconds=0.0)
    assert result.failures() == [("colors", "objects do not match the prompt", 2),
                                 ("position", "relation below does not hold", 2), ("position", "3 objects, want 2", 1)]
    assert result.failure_table(top=1).splitlines() == ["most frequent failures (5 images):",
                                                        "     2  colors         objects do not match the prompt"]


def test_latentdiff_eval_bad_arguments(tmp_path, capsys):
    from latentdiff.cli import main

    assert main(["eval", "--model", "preset:tiny", "--prompts", str(tmp_path / "none.jsonl"), "--json", "x"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", "--model", "preset:tiny", "--prompts", str(ASSETS / "indist.jsonl"), "--steps", "0",
                 "--json", "x"]) == 1
    assert "--steps must be >= 1" in capsys.readouterr().err
