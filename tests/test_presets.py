import time

import pytest
import torch
from accelerate import init_empty_weights

from latentdiff import build_pipeline
from latentdiff.presets import PRESETS, build_components, get_preset


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_tiny_builds_fast_and_small(report):
    start = time.perf_counter()
    pipe = build_pipeline("tiny")
    report(f"tiny preset built in {time.perf_counter() - start:.2f} s")  # reported, not asserted: no timings in tests
    assert n_params(pipe.unet) < 1_000_000
    assert pipe.vae_scale_factor == 2 and pipe.size_multiple == 4


def test_small_is_the_default_model_architecture():
    pipe = build_pipeline("small")
    assert 3_500_000 <= n_params(pipe.unet) <= 4_500_000
    assert pipe.vae_scale_factor == 4  # 64x64 images -> 16x16x4 latents
    assert pipe.unet.config.sample_size == 16 and pipe.unet.config.in_channels == 4
    latents = pipe(
        "a red circle", num_inference_steps=1, output_type="latent", generator=torch.Generator().manual_seed(0)
    ).images
    assert latents.shape == (1, 4, 16, 16)
    with torch.no_grad():
        z = pipe.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
    assert z.shape == (1, 4, 16, 16)


def test_sd15_is_stable_diffusion_1_5_exactly():
    # Parameter counts of the released runwayml/stable-diffusion-v1-5 components.
    with init_empty_weights():
        parts = build_components("sd15")
    assert n_params(parts["unet"]) == 859_520_964
    assert n_params(parts["vae"]) == 83_653_863
    assert n_params(parts["text_encoder"]) == 123_060_480
    assert len(parts["tokenizer"]) == 49408 and parts["tokenizer"].model_max_length == 77
    assert parts["vae"].config.scaling_factor == 0.18215
    assert type(parts["scheduler"]).__name__ == "PNDMScheduler"
    assert parts["scheduler"].config.steps_offset == 1


def test_seed_decides_weights():
    a, b, c = (build_components("tiny", seed=s)["unet"] for s in (0, 0, 1))
    pa, pb, pc = (next(m.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


def test_unknown_preset():
    with pytest.raises(ValueError, match="Choose one of: tiny, small, sd15"):
        get_preset("huge")
    assert set(PRESETS) == {"tiny", "small", "sd15"}


def test_variant_changes_unet_levels_and_text_encoder_and_still_runs():
    import torch

    from latentdiff.presets import build_components, variant

    p = variant("tiny", unet_blocks=(16, 32), unet_attention=(False, True), unet_layers_per_block=2,
                text_layers=1, text_width=48, text_heads=4)
    assert p.unet["down_block_types"] == ("DownBlock2D", "CrossAttnDownBlock2D")
    assert p.unet["up_block_types"] == ("CrossAttnUpBlock2D", "UpBlock2D")
    assert p.unet["cross_attention_dim"] == 48 and p.text_encoder["num_hidden_layers"] == 1
    parts = build_components(p, seed=0)
    ids = parts["tokenizer"](["a red circle"], padding="max_length", return_tensors="pt").input_ids
    text = parts["text_encoder"](ids)[0]  # (1, 77, 48)
    out = parts["unet"](torch.randn(1, 4, 8, 8), 10, text).sample
    assert text.shape[-1] == 48 and out.shape == (1, 4, 8, 8)
    assert variant("tiny") == get_preset("tiny")
    with pytest.raises(ValueError, match="one entry per UNet level"):
        variant("tiny", unet_blocks=(16, 32, 32))
    with pytest.raises(ValueError, match="multiples of norm_num_groups"):
        variant("tiny", unet_blocks=(12, 32))
    with pytest.raises(ValueError, match="multiple of its heads"):
        variant("tiny", text_width=30)
