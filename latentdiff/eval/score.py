"""Pass or fail a picture against the spec of its prompt, GenEval-style (Ghosh et al., 2023).

The picture passes when its detected objects are exactly the spec's objects: the same number, and a
one-to-one matching in which every detection has the object's shape and, where the prompt names one, its
colour. Position prompts also need the relation to hold between the two matched objects' centres: the
offset along the relation's axis points the right way and is larger than the offset across it. So
"two red stars" fails with three stars or with a red and an orange star, and "a red circle and a blue
square" fails when the colours are swapped (attribute binding). Sizes are parsed but not judged.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from PIL import Image

from latentdiff.data.shapes import ShapesWorldConfig
from latentdiff.eval.detect import Detection, detect_objects
from latentdiff.eval.prompts import ObjectSpec, PromptSpec


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str  # why it failed ("" when it passed)
    detections: tuple[Detection, ...]


def _fits(d: Detection, o: ObjectSpec) -> bool:
    return d.shape == o.shape and (o.color is None or d.color == o.color)


def relation_holds(a: Detection, b: Detection, relation: str) -> bool:
    """`a <relation> b` judged from the centres; image y grows downwards."""
    dx, dy = b.cx - a.cx, b.cy - a.cy
    on, off = {"left_of": (dx, dy), "right_of": (-dx, dy), "above": (dy, dx), "below": (-dy, dx)}[relation]
    return on > 0 and abs(off) < on


def judge(detections: list[Detection], spec: PromptSpec) -> Verdict:
    dets = tuple(detections)
    if len(dets) != len(spec.objects):
        return Verdict(False, f"{len(dets)} objects, want {len(spec.objects)}", dets)
    matchings = [p for p in itertools.permutations(dets) if all(_fits(d, o) for d, o in zip(p, spec.objects))]
    if not matchings:
        got = ", ".join(f"{d.color} {d.shape}" for d in dets)
        return Verdict(False, f"objects {got} do not match the prompt", dets)
    if spec.relation is not None and not any(relation_holds(p[0], p[1], spec.relation) for p in matchings):
        return Verdict(False, f"relation {spec.relation} does not hold", dets)
    return Verdict(True, "", dets)


def score_image(image: Image.Image, spec: PromptSpec, config: ShapesWorldConfig | None = None) -> Verdict:
    """Detect the image's objects and judge them against `spec`."""
    return judge(detect_objects(image, config), spec)
