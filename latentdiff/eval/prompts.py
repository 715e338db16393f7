"""ShapesWorld prompts as specs: what a caption asks for, parsed back from its text.

A `PromptSpec` holds only what the prompt names: the category, one `ObjectSpec` per object that must be in
the picture (its shape, and its colour when the prompt names one), and the relation of position prompts.
`parse_prompt` inverts every caption template of `latentdiff.data.shapes.TEMPLATES`: each template becomes
one anchored regular expression, and a prompt must match exactly one template's meaning.

    parse_prompt("two red stars")
    # PromptSpec(category='counting', objects=[ObjectSpec('red', 'star'), ObjectSpec('red', 'star')], relation=None)

Prompt sets are JSON lines, one `{"prompt": ..., "spec": {...}}` per line (`read_prompt_set`, `write_prompt_set`);
`build_prompt_set` draws a set balanced over the six categories from a ShapesWorld split.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentdiff.data.shapes import (
    CATEGORIES, NUMBER_WORDS, PLURALS, RELATION_PHRASES, RELATIONS, SIZES, TEMPLATES, SceneSpec, ShapesWorldConfig,
    scene_at,
)


@dataclass(frozen=True)
class ObjectSpec:
    shape: str  # one of the world's shapes
    color: str | None = None  # colour name, or None when the prompt does not name one
    size: str | None = None  # "small" / "large" when named (parsed, not scored: GenEval has no size category)


@dataclass(frozen=True)
class PromptSpec:
    category: str  # one of CATEGORIES
    objects: tuple[ObjectSpec, ...]  # every object the picture must hold (and nothing else)
    relation: str | None = None  # position prompts: objects[0] <relation> objects[1]

    def to_dict(self) -> dict[str, Any]:
        return {"category": self.category, "relation": self.relation,
                "objects": [{"shape": o.shape, "color": o.color, "size": o.size} for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PromptSpec":
        if d.get("category") not in CATEGORIES:
            raise ValueError(f"PromptSpec: category must be one of {CATEGORIES}, got {d.get('category')!r}")
        if d.get("relation") is not None and d["relation"] not in RELATIONS:
            raise ValueError(f"PromptSpec: relation must be one of {RELATIONS} or null, got {d['relation']!r}")
        objects = tuple(ObjectSpec(o["shape"], o.get("color"), o.get("size")) for o in d["objects"])
        if not objects:
            raise ValueError("PromptSpec: a spec needs at least one object")
        return cls(d["category"], objects, d.get("relation"))


def spec_of_scene(scene: SceneSpec) -> PromptSpec:
    """What the scene's caption names (colours and sizes only where its template uses them)."""
    template = TEMPLATES[scene.category][int(scene.template_id.split("/")[1])]
    named_color = "{color0}" in template
    named_size = "{size0}" in template
    objects = tuple(ObjectSpec(o.shape, o.color if named_color or (i == 1 and "{color1}" in template) else None,
                               o.size if named_size and i == 0 else None)
                    for i, o in enumerate(scene.objects))
    return PromptSpec(scene.category, objects, scene.relation)


@functools.lru_cache(maxsize=8)
def _patterns(colors: tuple[str, ...], shapes: tuple[str, ...]) -> list[tuple[str, re.Pattern]]:
    """(category, anchored regex) per caption template; named groups are the template's fields."""
    alt = lambda words: "(?:" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + ")"
    fields = {
        "color0": alt(colors), "color1": alt(colors), "shape0": alt(shapes), "shape1": alt(shapes),
        "shapes0": alt(PLURALS[s] for s in shapes), "size0": alt(SIZES),
        "count": alt(NUMBER_WORDS.values()), "count_digit": r"[1-9]", "relation": alt(RELATION_PHRASES.values()),
    }
    out = []
    for category, templates in TEMPLATES.items():
        for template in templates:
            parts = re.split(r"(\{\w+\})", template)
            rx = ""
            for part in parts:
                if part.startswith("{"):
                    name = part[1:-1]
                    rx += f"(?P<{name}>{fields[name]})"
                else:
                    rx += re.sub(r"(?<![\w])a(?= )", "an?", re.escape(part).replace(r"\ ", " "))
            out.append((category, re.compile(rx + r"\Z")))
    return out


def parse_prompt(prompt: str, config: ShapesWorldConfig | None = None) -> PromptSpec:
    """The spec a ShapesWorld caption asks for. Case and surrounding whitespace are ignored; a prompt that
    no template produces raises ValueError."""
    if not isinstance(prompt, str):
        raise ValueError(f"parse_prompt: expected a string, got {type(prompt).__name__}")
    config = ShapesWorldConfig() if config is None else config
    text = " ".join(prompt.lower().split())
    found: set[PromptSpec] = set()
    plural_to_shape = {PLURALS[s]: s for s in config.shapes}
    numbers = {w: n for n, w in NUMBER_WORDS.items()}
    relations = {p: r for r, p in RELATION_PHRASES.items()}
    for category, rx in _patterns(tuple(config.colors), config.shapes):
        m = rx.match(text)
        if m is None:
            continue
        g = m.groupdict()
        if category == "counting":
            n = int(g["count_digit"]) if g.get("count_digit") else numbers[g["count"]]
            objects = (ObjectSpec(plural_to_shape[g["shapes0"]], g.get("color0")),) * n
        else:
            objects = (ObjectSpec(g["shape0"], g.get("color0"), g.get("size0")),)
            if "shape1" in g:
                objects += (ObjectSpec(g["shape1"], g.get("color1")),)
        found.add(PromptSpec(category, objects, relations[g["relation"]] if g.get("relation") else None))
    if not found:
        raise ValueError(f"parse_prompt: {prompt!r} is not a ShapesWorld caption; write it like the captions of "
                         f"`latentdiff shapes` (e.g. 'two red stars', 'a blue circle above a green square')")
    if len(found) > 1:
        raise ValueError(f"parse_prompt: {prompt!r} is ambiguous: {sorted(map(str, found))}")
    return found.pop()


def build_prompt_set(split: str, per_category: int = 20, seed: int = 1000,
                     config: ShapesWorldConfig | None = None) -> list[dict[str, Any]]:
    """`per_category` distinct prompts for each of the six categories, drawn from ShapesWorld split `split`
    (scenes of dataset seed `seed`, in index order). Lines of a prompt-set file.

    For the heldout split, a prompt of a category whose captions can name colours must name a held-out
    (colour, shape) combination, so "three stars" (whose stars happened to be green) does not count as a
    held-out prompt. single_object and two_object captions never name colours: those two categories test
    the same skills in both sets."""
    config = ShapesWorldConfig() if config is None else config
    chosen: dict[str, list[dict[str, Any]]] = {c: [] for c in CATEGORIES if config.category_weights.get(c, 0) > 0}
    seen: set[str] = set()
    held = set(config.heldout_combos)
    i = 0
    while any(len(v) < per_category for v in chosen.values()):
        if i > 200 * per_category * len(chosen):
            raise ValueError(f"build_prompt_set: could not find {per_category} distinct prompts per category")
        scene = scene_at(i, seed, split, config)
        i += 1
        if scene.caption in seen or len(chosen[scene.category]) >= per_category:
            continue
        spec = spec_of_scene(scene)
        if split == "heldout" and scene.category not in ("single_object", "two_object") and not any(
                (o.color, o.shape) in held for o in spec.objects):
            continue
        seen.add(scene.caption)
        chosen[scene.category].append({"prompt": scene.caption, "spec": spec.to_dict(),
                                       "split": split, "source": {"seed": seed, "index": i - 1}})
    return [line for c in chosen for line in chosen[c]]


def write_prompt_set(lines: list[dict[str, Any]], path: str | Path) -> None:
    Path(path).write_text("".join(json.dumps(line) + "\n" for line in lines))


def read_prompt_set(path: str | Path) -> list[tuple[str, PromptSpec]]:
    """(prompt, spec) pairs of a JSON-lines prompt set. A line without a spec is parsed from its prompt."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompt set {path} does not exist; pass a .jsonl file such as assets/prompts/indist.jsonl")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            spec = PromptSpec.from_dict(d["spec"]) if "spec" in d else parse_prompt(d["prompt"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{n}: expected {{\"prompt\": ..., \"spec\": {{...}}}} ({e})") from None
        out.append((d["prompt"], spec))
    if not out:
        raise ValueError(f"prompt set {path} holds no prompts")
    return out
