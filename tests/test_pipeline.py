"""LatentDiffusionPipeline on the tiny preset, in the manner of diffusers' own pipeline tests."""

import logging
import math

import numpy as np
import PIL.Image
import pytest
import torch

from latentdiff.pipelines import LatentDiffusionPipeline, sampler_names

PROMPT = "a red circle above a blue square"
STEPS = 4


def run(pipe, gen, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    kw.setdefault("output_type", "np")
    if "prompt_embeds" not in kw:
        kw.setdefault("prompt", PROMPT)
    if "generator" not in kw:
        kw["generator"] = gen(0)
    return pipe(**kw)


def test_output_types_and_shapes(tiny_pipe, gen):
    images = run(tiny_pipe, gen).images
    assert images.shape == (1, 16, 16, 3) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    pil = run(tiny_pipe, gen, output_type="pil").images
    assert isinstance(pil[0], PIL.Image.Image) and pil[0].size == (16, 16)
    pt = run(tiny_pipe, gen, output_type="pt").images
    assert pt.shape == (1, 3, 16, 16)
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), images, atol=1e-6)
    latents = run(tiny_pipe, gen, output_type="latent").images
    assert latents.shape == (1, 4, 8, 8)


def test_seeded_determinism(tiny_pipe, gen):
    a = run(tiny_pipe, gen).images
    b = run(tiny_pipe, gen).images
    c = run(tiny_pipe, gen, generator=gen(1)).images
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


# A stored slice of one seeded output: guards the whole generation path (tokenizer, text encoder, UNet,
# scheduler, VAE, post-processing) against silent changes. Regenerate only for an intended change.
EXPECTED_SLICE = np.array([0.09844193, 0.01943389, 0.2968297, 0.03783637, 0.0, 0.20315203, 0.3554378, 0.22209024,
                           0.28666478])


def test_regression_slice(tiny_pipe, gen):
    images = run(tiny_pipe, gen, guidance_scale=5.0).images
    image_slice = images[0, -3:, -3:, -1].flatten()
    np.testing.assert_allclose(image_slice, EXPECTED_SLICE, atol=1e-3)


def test_dict_and_tuple_outputs_equal(tiny_pipe, gen):
    as_dict = run(tiny_pipe, gen).images
    as_tuple = run(tiny_pipe, gen, return_dict=False)
    assert isinstance(as_tuple, tuple)
    np.testing.assert_array_equal(as_dict, as_tuple[0])


def test_batch_item_equals_single_run_with_per_sample_generators(tiny_pipe, gen):
    prompts = [PROMPT, "two green triangles", "a yellow star"]
    batch = run(tiny_pipe, gen, prompt=prompts, generator=[gen(s) for s in (10, 11, 12)]).images
    for i, (prompt, seed) in enumerate(zip(prompts, (10, 11, 12))):
        single = run(tiny_pipe, gen, prompt=prompt, generator=gen(seed)).images
        np.testing.assert_allclose(batch[i], single[0], atol=1e-4)


def test_num_images_per_prompt_shapes(tiny_pipe, gen):
    assert run(tiny_pipe, gen, num_images_per_prompt=3).images.shape == (3, 16, 16, 3)
    out = run(tiny_pipe, gen, prompt=["a", "b"], num_images_per_prompt=2, generator=None).images
    assert out.shape == (4, 16, 16, 3)
    with pytest.raises(ValueError, match="one generator per image"):
        run(tiny_pipe, gen, prompt=["a", "b"], num_images_per_prompt=2, generator=[gen(0), gen(1)])


def test_callback_can_replace_latents(tiny_pipe, gen):
    seen = []

    def zero_at_last_step(pipe, i, t, tensors):
        seen.append((i, tuple(tensors["latents"].shape), sorted(tensors)))
        if i == pipe.num_timesteps - 1:
            return {"latents": torch.zeros_like(tensors["latents"])}
        return {}

    images = run(tiny_pipe, gen, callback_on_step_end=zero_at_last_step,
                 callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"]).images
    assert [s[0] for s in seen] == list(range(STEPS))
    assert seen[0][1] == (1, 4, 8, 8) and seen[0][2] == ["latents", "prompt_embeds"]
    with torch.no_grad():
        decoded = tiny_pipe.vae.decode(torch.zeros(1, 4, 8, 8)).sample
    expected = tiny_pipe.image_processor.postprocess(decoded, output_type="np")
    np.testing.assert_allclose(images, expected, atol=1e-6)


@pytest.mark.parametrize("name", sampler_names("ddpm"))  # (the CLD samplers: tests/test_cld_pipeline.py)
def test_every_named_sampler_runs(tiny_pipe, gen, name):
    if name == "taylor2":  # GENIE's Taylor term comes from a head (tests/test_genie.py); an untrained one here
        from latentdiff.genie import GENIEHead

        tiny_pipe.register_modules(genie_head=GENIEHead.for_unet(tiny_pipe.unet))
    tiny_pipe.set_sampler(name)
    images = run(tiny_pipe, gen).images
    assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all()
    assert tiny_pipe.scheduler.config.beta_schedule == "scaled_linear"  # the trained process carried over


def test_set_sampler_does_not_drag_options_along(tiny_pipe):
    tiny_pipe.set_sampler("dpm++2m_karras")
    assert tiny_pipe.scheduler.config.use_karras_sigmas is True
    tiny_pipe.set_sampler("dpm++2m")
    assert tiny_pipe.scheduler.config.use_karras_sigmas is False
    tiny_pipe.set_sampler("ddim", timestep_spacing="trailing")
    assert tiny_pipe.scheduler.config.timestep_spacing == "trailing"
    with pytest.raises(ValueError, match="Unknown sampler 'nope'"):
        tiny_pipe.set_sampler("nope")


def test_attention_slicing_leaves_output_unchanged(tiny_pipe, gen):
    before = run(tiny_pipe, gen).images
    tiny_pipe.enable_attention_slicing(slice_size=1)
    after = run(tiny_pipe, gen).images
    np.testing.assert_allclose(before, after, atol=1e-5)


def test_vae_slicing_and_tiling(tiny_pipe, gen):
    before = run(tiny_pipe, gen, num_images_per_prompt=2).images
    tiny_pipe.vae.enable_slicing()
    np.testing.assert_allclose(run(tiny_pipe, gen, num_images_per_prompt=2).images, before, atol=1e-5)
    tiny_pipe.vae.enable_tiling()
    tiled = run(tiny_pipe, gen, num_images_per_prompt=2, height=64, width=64).images
    assert tiled.shape == (2, 64, 64, 3) and np.isfinite(tiled).all()


def test_prompt_embeds_equal_prompt_path(tiny_pipe, gen):
    from_text = run(tiny_pipe, gen).images
    embeds, negative = tiny_pipe.encode_prompt(PROMPT, torch.device("cpu"), 1, True)
    assert embeds.shape == (1, 77, 32) and negative.shape == (1, 77, 32)
    from_embeds = run(tiny_pipe, gen, prompt_embeds=embeds, negative_prompt_embeds=negative).images
    np.testing.assert_allclose(from_text, from_embeds, atol=1e-6)


def test_negative_prompt_changes_output(tiny_pipe, gen):
    plain = run(tiny_pipe, gen).images
    negative = run(tiny_pipe, gen, negative_prompt="a green triangle").images
    assert np.abs(plain - negative).max() > 1e-4


def test_guidance_off_at_one_runs_unet_on_single_batch(tiny_pipe, gen):
    batches = []
    hook = tiny_pipe.unet.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    run(tiny_pipe, gen, guidance_scale=1.0)
    run(tiny_pipe, gen, guidance_scale=3.0)
    hook.remove()
    assert batches == [1] * STEPS + [2] * STEPS


def test_guidance_rescale(tiny_pipe, gen):
    plain = run(tiny_pipe, gen, guidance_scale=9.0).images
    rescaled = run(tiny_pipe, gen, guidance_scale=9.0, guidance_rescale=0.7).images
    assert np.isfinite(rescaled).all() and np.abs(plain - rescaled).max() > 1e-5


def test_custom_timesteps_and_sigmas(tiny_pipe, gen):
    tiny_pipe.set_sampler("ddpm")
    out = run(tiny_pipe, gen, timesteps=[999, 600, 300, 1])
    assert out.images.shape == (1, 16, 16, 3)
    assert tiny_pipe.scheduler.timesteps.tolist() == [999, 600, 300, 1]
    tiny_pipe.set_sampler("euler")
    out = run(tiny_pipe, gen, sigmas=[14.6, 5.0, 1.0, 0.1])  # the last sigma is where sampling ends
    assert np.isfinite(out.images).all() and tiny_pipe.num_timesteps == 3
    assert tiny_pipe.scheduler.sigmas[:4].tolist() == pytest.approx([14.6, 5.0, 1.0, 0.1])


def test_empty_and_non_ascii_prompts(tiny_pipe, gen):
    for prompt in ["", "   ", "un cercle rouge à gauche", "赤い円", "🔴 ⬛", "Ünïcödé\u200b"]:
        images = run(tiny_pipe, gen, prompt=prompt).images
        assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all()


def test_long_prompt_truncated_with_one_warning(tiny_pipe, gen, caplog):
    # one warning a call, through diffusers' logger (as StableDiffusionPipeline's), covering the negative prompts too
    long_prompt = " ".join(["red circle"] * 60)
    with caplog.at_level(logging.WARNING, logger=type(tiny_pipe).__module__):
        run(tiny_pipe, gen, prompt=[long_prompt, long_prompt], negative_prompt=[long_prompt, "x"])
    truncation = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(truncation) == 1
    assert truncation[0].startswith("The following part of your input was truncated because CLIP can only handle "
                                    "sequences up to 77 tokens: ")
    assert truncation[0].count("red circle") > 3 * 20  # the cut-off part of both prompts and the long negative


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(height=18), "multiples of 4"),
        (dict(width=30), "multiples of 4"),
        (dict(height=0), "positive integers"),
        (dict(prompt=["a", "b"], negative_prompt=["x", "y", "z"]), "one negative prompt per prompt"),
        (dict(num_inference_steps=0), "num_inference_steps"),
        (dict(guidance_scale=float("nan")), "finite"),
        (dict(guidance_scale=math.inf), "finite"),
        (dict(latents=torch.zeros(1, 4, 4, 4)), r"needs \(1, 4, 8, 8\)"),
        (dict(output_type="jpeg"), "Unknown `output_type`"),
        (dict(num_images_per_prompt=0), "num_images_per_prompt"),
        (dict(prompt=None), "exactly one of `prompt` and `prompt_embeds`"),
        (dict(prompt=[]), "non-empty list"),
        (dict(callback_on_step_end_tensor_inputs=["noise"]), "may name only"),
    ],
)
def test_bad_input_raises_value_error(tiny_pipe, gen, kwargs, match):
    with pytest.raises(ValueError, match=match):
        run(tiny_pipe, gen, **kwargs)


def test_given_latents_are_used(tiny_pipe, gen):
    latents = torch.randn(1, 4, 8, 8, generator=gen(5))
    a = run(tiny_pipe, gen, latents=latents, generator=gen(1)).images
    b = run(tiny_pipe, gen, latents=latents.clone(), generator=gen(2)).images
    np.testing.assert_array_equal(a, b)


def test_lora_round_trip_through_diffusers_format(tiny_pipe, gen, tmp_path):
    peft = pytest.importorskip("peft")
    from peft.utils import get_peft_model_state_dict

    base = run(tiny_pipe, gen).images
    tiny_pipe.unet.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                               target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, p in tiny_pipe.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=gen(3))
    with_lora = run(tiny_pipe, gen).images
    assert np.abs(with_lora - base).max() > 1e-4
    LatentDiffusionPipeline.save_lora_weights(tmp_path, unet_lora_layers=get_peft_model_state_dict(tiny_pipe.unet))
    assert (tmp_path / "pytorch_lora_weights.safetensors").is_file()

    from latentdiff import build_pipeline

    fresh = build_pipeline("tiny", seed=0)
    fresh.set_progress_bar_config(disable=True)
    fresh.load_lora_weights(tmp_path)
    np.testing.assert_allclose(run(fresh, gen).images, with_lora, atol=1e-5)


def test_textual_inversion_token(tiny_pipe, gen):
    embedding = torch.randn(32, generator=gen(4)) * 5
    tiny_pipe.load_textual_inversion({"<my-shape>": embedding}, token="<my-shape>")
    with_token = run(tiny_pipe, gen, prompt="a <my-shape>").images
    without = run(tiny_pipe, gen, prompt="a").images
    assert np.abs(with_token - without).max() > 1e-4
