"""One generator policy: generate, eval, the benches and training grids draw the same image for the same seed."""

import numpy as np
import pytest
import torch

from latentdiff import build_pipeline
from latentdiff.eval.prompts import parse_prompt
from latentdiff.eval.run import evaluate
from latentdiff.eval.seeded import generate_seeded, generators, plan_batches
from latentdiff.generate import GenerationRequest, generate_files
from latentdiff.loading import LoadedModel
from latentdiff.training.validation import sample_images


def test_plan_gives_image_j_of_prompt_i_seed_plus_i_k_plus_j():
    plan = plan_batches(["a", "b", "c"], 2, 4, 10)
    assert [b.prompts for b in plan] == [["a", "b"], ["c"]]
    assert [b.seeds for b in plan] == [[10, 11, 12, 13], [14, 15]]
    assert all(g.device.type == "cpu" for g in generators([1, 2]))
    with pytest.raises(ValueError, match="3 seeds for 2 prompts"):
        generate_seeded(None, ["a", "b"], [1, 2, 3])


def test_generate_eval_and_validation_grids_draw_the_same_image(tmp_path):
    pipe = build_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    prompt, seed = "a red circle", 7
    path = generate_files(LoadedModel(pipe, "preset:tiny", True),
                          GenerationRequest(prompt, steps=3, guidance=4.0, seed=seed), tmp_path / "g.png")[0]
    from PIL import Image

    generated = np.asarray(Image.open(path).convert("RGB"))
    result = evaluate(pipe, [("x", parse_prompt("two blue squares")), (prompt, parse_prompt(prompt))], steps=3,
                      guidance=4.0, images_per_prompt=1, seed=seed - 1, progress=False)
    evaluated = np.asarray(result.images[1][0])  # prompt 1, image 0: seed (seed - 1) + 1
    grid = np.asarray(sample_images(pipe, ["x", prompt], seed - 1, 3, 4.0)[1])
    assert np.array_equal(generated, evaluated) and np.array_equal(generated, grid)
    other = generate_seeded(pipe, prompt, [seed + 1], num_inference_steps=3, guidance_scale=4.0).images[0]
    assert not np.array_equal(generated, np.asarray(other))
