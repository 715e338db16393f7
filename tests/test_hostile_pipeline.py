"""Hostile or unusual input to LatentDiffusionPipeline itself (issue 17): clip_skip on transformers 5, corrupt
weight files in a folder."""

import numpy as np
import pytest
import torch
import transformers

from latentdiff import build_pipeline
from latentdiff.pipelines import LatentDiffusionPipeline


def test_clip_skip_uses_an_earlier_layer_and_works_on_this_transformers(tiny_pipe, gen):
    # transformers 5's CLIPTextModel has no .text_model; the pipeline must not depend on it
    assert int(transformers.__version__.split(".")[0]) < 5 or not hasattr(tiny_pipe.text_encoder, "text_model")
    kw = dict(num_inference_steps=2, output_type="np")
    plain = tiny_pipe("a red circle", generator=gen(0), **kw).images
    skipped = tiny_pipe("a red circle", clip_skip=1, generator=gen(0), **kw).images
    assert np.abs(plain - skipped).max() > 1e-3  # a different image ...
    again = tiny_pipe("a red circle", clip_skip=1, generator=gen(0), **kw).images
    np.testing.assert_array_equal(skipped, again)  # ... and a deterministic one

    # what clip_skip=1 means (as in diffusers' StableDiffusionPipeline): the hidden state one layer before the last,
    # through the final layer norm
    ids = tiny_pipe.tokenizer(["a red circle"], padding="max_length", truncation=True,
                              max_length=tiny_pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = tiny_pipe.text_encoder(ids, output_hidden_states=True).hidden_states
        text_model = getattr(tiny_pipe.text_encoder, "text_model", tiny_pipe.text_encoder)
        expected = text_model.final_layer_norm(hidden[-2])
        embeds, _ = tiny_pipe.encode_prompt("a red circle", torch.device("cpu"), do_classifier_free_guidance=False,
                                            clip_skip=1)
    torch.testing.assert_close(embeds, expected)


@pytest.mark.parametrize("component, keep", [("unet", 0.5), ("vae", 0.0), ("text_encoder", 0.9)])
def test_corrupt_weights_are_named_not_blamed_on_pickle(tmp_path, component, keep):
    build_pipeline("tiny", seed=0).save_pretrained(tmp_path / "model")
    weights = next((tmp_path / "model" / component).glob("*.safetensors"))
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match=r"the weights file is corrupt or truncated") as err:
        LatentDiffusionPipeline.from_pretrained(tmp_path / "model")
    message = str(err.value)
    assert message.startswith(f"{weights}: the weights file is corrupt or truncated ({int(len(data) * keep)} bytes; ")
    assert "use_safetensors" not in message and len(message.splitlines()) == 1


def test_empty_timesteps_or_sigmas_are_refused():
    from latentdiff import build_pipeline

    pipe = build_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    for name in ("timesteps", "sigmas"):
        with pytest.raises(ValueError, match=f"`{name}` is empty"):
            pipe("a red circle", **{name: []})


def test_non_finite_latents_raise_instead_of_a_black_image():
    from latentdiff import build_pipeline

    pipe = build_pipeline("tiny")
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match="non-finite latents .* guidance_scale 1e\\+30.*lower guidance_scale"):
        pipe("a red circle", num_inference_steps=2, guidance_scale=1e30)
    image = pipe("a red circle", num_inference_steps=2, guidance_scale=5.0, output_type="np").images
    assert np.isfinite(image).all()  # an ordinary call is untouched
