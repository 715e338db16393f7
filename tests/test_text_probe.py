"""latentdiff.eval.text_probe: whether the text encoder tells apart the words the scorer checks."""

import pytest
import torch

from latentdiff import build_pipeline
from latentdiff.eval.text_probe import PROBES, probe_line, text_probe


def test_every_probe_of_a_fresh_encoder_separates_its_words():
    pipe = build_pipeline("tiny")
    probe = text_probe(pipe)
    assert set(probe) == set(PROBES)
    for name, p in probe.items():
        assert p["output_change"] > 0.01, name  # random rows: the UNet sees two different prompts
        assert p["input_cosine"] is not None and abs(p["input_cosine"]) < 0.9, name  # one token each, not collapsed
    assert "above/below" in probe_line(probe) and "%" in probe_line(probe)


def test_a_collapsed_word_pair_reads_as_no_change_and_cosine_one():
    pipe = build_pipeline("tiny")
    table = pipe.text_encoder.get_input_embeddings().weight
    above, below = (pipe.tokenizer(w, add_special_tokens=False).input_ids[0] for w in ("above", "below"))
    before = text_probe(pipe)
    with torch.no_grad():
        table[below] = table[above]  # what joint training does to the two words, taken to the limit
    after = text_probe(pipe)
    assert after["above/below"]["output_change"] == 0.0 and after["above/below"]["input_cosine"] == pytest.approx(1.0)
    assert before["above/below"]["output_change"] > 0.01
    assert after["left/right"] == before["left/right"]  # only the collapsed pair moved


def test_a_probe_of_a_word_split_into_pieces_has_no_input_cosine_and_no_probes_is_an_error():
    pipe = build_pipeline("tiny")
    probe = text_probe(pipe, {"x": ("a red circle", "a red zzqxv", "circle", "zzqxv")})
    assert probe["x"]["input_cosine"] is None and probe["x"]["output_change"] > 0
    with pytest.raises(ValueError, match="at least one"):
        text_probe(pipe, {})
