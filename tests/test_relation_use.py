"""Relation use (latentdiff/eval/relation_use.py): does the UNet denoise position scenes better with their true
relation word than with the reversed one?"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from latentdiff.data.shapes import ShapesWorldConfig
from latentdiff.eval.relation_use import position_scenes, relation_use

SCENES = "shapesworld:train?seed=1&n=256&fresh=false"
EPS = {"process": "ddpm", "prediction_type": "epsilon", "snr_gamma": 5.0, "timestep_sampling": "uniform",
       "timestep_shift": 1.0, "noise_offset": 0.0, "resolution": 16}
FLIP = {"above": "below", "below": "above", "left": "right", "right": "left"}


def parts(pipe, unet=None):
    return SimpleNamespace(vae=pipe.vae, unet=unet or pipe.unet, encode_prompt=pipe.encode_prompt,
                           scheduler=pipe.scheduler, config=pipe.config)


class KnowsTheTruth(torch.nn.Module):
    """Predicts 0 (eps error 1 in expectation) for the true captions' embeddings and 3 (error 10) for any other."""

    dtype, device = torch.float32, torch.device("cpu")

    def __init__(self, true_embeddings: torch.Tensor):
        super().__init__()
        self.true = true_embeddings  # (N, 77, D)

    def forward(self, sample, timesteps, encoder_hidden_states):
        known = torch.stack([(self.true == e).all(dim=(1, 2)).any() for e in encoder_hidden_states])  # (B,)
        return SimpleNamespace(sample=torch.where(known[:, None, None, None], 0.0, 3.0).expand_as(sample))


def test_position_scenes_differ_only_in_the_relation_or_the_first_colour():
    found = position_scenes(SCENES, 16, 12)
    assert len(found) == 12
    colours = set(ShapesWorldConfig().colors)
    for image, true, reversed_, recoloured in found:
        assert image.shape == (3, 16, 16)
        a, b, c = true.split(), reversed_.split(), recoloured.split()
        changed = [(x, y) for x, y in zip(a, b) if x != y]
        assert len(a) == len(b) and len(changed) == 1 and FLIP[changed[0][0]] == changed[0][1]
        recolour = [(i, x, y) for i, (x, y) in enumerate(zip(a, c)) if x != y]
        first = min(j for j, w in enumerate(a) if w in colours)  # the first object's colour word
        i, old, new = recolour[-1]
        assert len(a) == len(c) and i == first and old in colours and new in colours and new not in a
        # and at most its article ("a red" -> "an orange")
        assert recolour[:-1] in ([], [(first - 1, a[first - 1], c[first - 1])]) and {a[first - 1], c[first - 1]} <= {
            "a", "an"}


def test_a_model_that_reads_the_relation_has_a_gap_and_the_truth_lower(tiny_pipe):
    captions = [true for _, true, _, _ in position_scenes(SCENES, 16, 8)]
    embedded, _ = tiny_pipe.encode_prompt(captions, "cpu", do_classifier_free_guidance=False)
    got = relation_use(parts(tiny_pipe, KnowsTheTruth(embedded)), SCENES, training_config=EPS, scenes=8, draws=2)
    assert got["true_lower"] == 1.0 and got["gap"] == pytest.approx(9.0, rel=0.3)
    assert got["control_gap"] == pytest.approx(9.0, rel=0.3)  # a recoloured caption is not the truth either
    assert got["scenes"] == 8 and got["space"] == "ddpm/epsilon"


def test_a_model_blind_to_the_relation_words_has_no_gap(tiny_pipe):
    # the random tiny model reads its text: reversing the relation changes its losses
    seen = relation_use(parts(tiny_pipe), SCENES, training_config=EPS, scenes=8, draws=2)
    assert seen["gap"] != 0.0 and seen == relation_use(parts(tiny_pipe), SCENES, training_config=EPS, scenes=8,
                                                           draws=2)
    # the same model with "below" embedded as "above" and "right" as "left": the reversed captions reach the UNet
    # as the true ones, so every loss ties
    table = tiny_pipe.text_encoder.get_input_embeddings().weight
    ids = {w: tiny_pipe.tokenizer(w, add_special_tokens=False).input_ids for w in FLIP}
    assert all(len(v) == 1 for v in ids.values())
    with torch.no_grad():
        table[ids["below"][0]] = table[ids["above"][0]]
        table[ids["right"][0]] = table[ids["left"][0]]
    blind = relation_use(parts(tiny_pipe), SCENES, training_config=EPS, scenes=8, draws=2)
    assert blind["gap"] == 0.0 and blind["gap_noisier_half"] == 0.0 and blind["true_lower"] == 0.5
    assert blind["control_gap"] != 0.0  # it still reads the colour words


def test_bad_arguments_are_one_clear_error(tiny_pipe):
    with pytest.raises(ValueError, match="scenes"):
        relation_use(parts(tiny_pipe), SCENES, training_config=EPS, scenes=0)
    with pytest.raises(ValueError, match="no position scenes"):
        relation_use(parts(tiny_pipe), "shapesworld:train?seed=1&n=1&fresh=false", training_config=EPS)
