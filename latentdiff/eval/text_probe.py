"""Text probe: does the text encoder tell apart the words a ShapesWorld prompt turns on?

A UNet can only place "a red circle above a blue star" differently from "... below ..." if the two prompts reach
it as different embeddings. A text encoder learnt jointly with the UNet (or pretrained on captions alone, where
"above", "below" and "and" predict the same next words) can collapse such words onto one vector: the UNet then
cannot follow them however long it trains. This probe measures that directly, without sampling:

- `output_change`: for a pair of prompts that differ in one word, ||E_a - E_b|| / ||E_a|| over the (77, D)
  embeddings the pipeline gives the UNet (`pipe.encode_prompt`, padding included: it is what cross-attention
  reads). 0 means the UNet sees the same prompt.
- `input_cosine`: the cosine between the two words' rows of the encoder's input embedding table (None when a
  word is not one token); near 1 means the words themselves have collapsed. Independent random rows start near 0.

PROBES holds one pair per distinction the scorer checks (position: vertical and horizontal relation; counting;
colour; shape). Numbers compare between models of one tokenizer.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

# name -> (prompt, the same prompt with one word swapped, the word, its replacement)
PROBES: dict[str, tuple[str, str, str, str]] = {
    "above/below": ("a red circle above a blue star", "a red circle below a blue star", "above", "below"),
    "left/right": ("a red circle to the left of a blue star", "a red circle to the right of a blue star", "left",
                   "right"),
    "three/four": ("three red circles", "four red circles", "three", "four"),
    "red/green": ("a red circle", "a green circle", "red", "green"),
    "circle/star": ("a red circle", "a red star", "circle", "star"),
}


def _token_id(tokenizer, word: str) -> int | None:
    ids = tokenizer(word, add_special_tokens=False).input_ids
    return ids[0] if len(ids) == 1 else None


@torch.no_grad()
def text_probe(pipe, probes: dict[str, tuple[str, str, str, str]] | None = None) -> dict[str, dict[str, Any]]:
    """{probe name: {"output_change": float, "input_cosine": float | None}} for a LatentDiffusionPipeline."""
    probes = PROBES if probes is None else probes
    if not probes:
        raise ValueError("text_probe: give at least one (prompt, prompt, word, word) probe")
    device = pipe.text_encoder.device
    table = pipe.text_encoder.get_input_embeddings().weight  # (vocab, D)
    out = {}
    for name, (a, b, word_a, word_b) in probes.items():
        embeds, _ = pipe.encode_prompt([a, b], device, do_classifier_free_guidance=False)  # (2, 77, D)
        e = embeds.float()
        change = ((e[0] - e[1]).norm() / e[0].norm().clamp_min(1e-12)).item()
        ids = _token_id(pipe.tokenizer, word_a), _token_id(pipe.tokenizer, word_b)
        cosine = (F.cosine_similarity(table[ids[0]].float(), table[ids[1]].float(), dim=0).item()
                  if None not in ids else None)
        out[name] = {"output_change": change, "input_cosine": cosine, "prompts": [a, b]}
    return out


def probe_line(probe: dict[str, dict[str, Any]]) -> str:
    """One line: each probe's output change in percent (the input cosine in brackets)."""
    return ", ".join(f"{name} {100 * p['output_change']:.1f}%" + (
        f" (cos {p['input_cosine']:.2f})" if p["input_cosine"] is not None else "") for name, p in probe.items())
