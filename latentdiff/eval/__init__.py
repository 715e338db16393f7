"""ShapesWorld evaluation: prompt specs, an object detector, GenEval-style pass/fail, and `latentdiff eval`."""

from latentdiff.eval.detect import Detection, detect_objects
from latentdiff.eval.prompts import ObjectSpec, PromptSpec, build_prompt_set, parse_prompt, read_prompt_set
from latentdiff.eval.score import Verdict, judge, score_image

__all__ = ["Detection", "ObjectSpec", "PromptSpec", "Verdict", "build_prompt_set", "detect_objects", "judge",
           "parse_prompt", "read_prompt_set", "score_image"]
