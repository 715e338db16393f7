"""LatentDiffusionPipeline as a drop-in for StableDiffusionPipeline (issue 17), in our own tests, always run.

test_diffusers_sd_suite.py beside this file runs diffusers' own fast SD suite against our class where a diffusers
source tree is at hand; these tests check the same contract offline on the tiny preset: components pass both
ways (safety checker, feature extractor, image encoder), IP-Adapter, the truncation warning, the legacy
scheduler-config fix-ups, and model_index.json without null entries.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

import latentdiff.pipelines.pipeline_latent_diffusion as pipeline_module
from latentdiff import build_pipeline
from latentdiff.pipelines import LatentDiffusionPipeline, make_scheduler
from latentdiff.pipelines.flow_process import flow_config
from latentdiff.pipelines.scheduling_cld import CLDExponentialODEScheduler
from latentdiff.pipelines.scheduling_genie import GENIEScheduler
from latentdiff.tokenizer import clip_tokenizer

PROMPT = "a red circle above a blue square"
OPTIONAL = ("safety_checker", "feature_extractor", "image_encoder", "genie_head")
IMAGE_EMBED_DIM = 8  # the tiny image encoder's projection size


def tiny(**components):
    """The tiny preset (seed 0), progress bars off; `components` replace the preset's."""
    pipe = build_pipeline("tiny", seed=0)
    if components:
        pipe = LatentDiffusionPipeline(**{**pipe.components, **components})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def stock_from(pipe) -> StableDiffusionPipeline:
    stock = StableDiffusionPipeline(**pipe.components, requires_safety_checker=False)
    stock.set_progress_bar_config(disable=True)
    return stock


def images(pipe, seed=0, **kw) -> np.ndarray:
    kw = {"num_inference_steps": 4, "guidance_scale": 6.0, "output_type": "np", **kw}
    return pipe(PROMPT, generator=torch.Generator().manual_seed(seed), **kw).images  # (B, H, W, 3)


def tiny_safety_checker() -> StableDiffusionSafetyChecker:
    torch.manual_seed(0)
    small = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2)
    return StableDiffusionSafetyChecker(CLIPConfig(text_config=small, projection_dim=8,
                                                   vision_config={**small, "image_size": 32, "patch_size": 8}))


def tiny_image_encoder() -> CLIPVisionModelWithProjection:
    torch.manual_seed(0)
    return CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        patch_size=8, projection_dim=IMAGE_EMBED_DIM)).eval()


def feature_extractor() -> CLIPImageProcessor:
    return CLIPImageProcessor(size=32, crop_size=32)


def save_ip_adapter(unet: UNet2DConditionModel, folder, seed: int = 0) -> None:
    """A random IP-Adapter for `unet` in the layout `load_ip_adapter` reads: `folder/ip-adapter.safetensors` with
    `image_proj.*` (ImageProjection: image embedding -> 4 extra tokens) and `ip_adapter.{k}.to_k_ip/to_v_ip` for
    the k-th cross-attention layer (k = 1, 3, 5, ... in `unet.attn_processors` order), and the tiny image encoder
    in `folder/image_encoder/`."""
    g = torch.Generator().manual_seed(seed)
    dim, tokens = unet.config.cross_attention_dim, 4
    weights = {
        "image_proj.proj.weight": torch.randn(tokens * dim, IMAGE_EMBED_DIM, generator=g) * 0.5,  # (4 D, E)
        "image_proj.proj.bias": torch.zeros(tokens * dim),
        "image_proj.norm.weight": torch.ones(dim),
        "image_proj.norm.bias": torch.zeros(dim),
    }
    cross_attention = [n.removesuffix(".processor") for n in unet.attn_processors if not n.endswith("attn1.processor")]
    for i, name in enumerate(cross_attention):
        shape = unet.get_submodule(name).to_k.weight.shape  # (hidden size, cross_attention_dim)
        for kv in ("to_k_ip", "to_v_ip"):
            weights[f"ip_adapter.{2 * i + 1}.{kv}.weight"] = torch.randn(shape, generator=g) * 0.5
    folder.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(folder / "ip-adapter.safetensors"))
    tiny_image_encoder().save_pretrained(folder / "image_encoder")


def load_ip_adapter(pipe, folder) -> None:
    pipe.load_ip_adapter(str(folder), subfolder="", weight_name="ip-adapter.safetensors",
                         image_encoder_folder="image_encoder")


def ip_image() -> PIL.Image.Image:
    rng = np.random.default_rng(0)
    return PIL.Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))


# ---------------------------------------------------------------------------------------------- components
def test_stock_components_pass_both_ways_and_the_safety_checker_is_noted_once(monkeypatch, caplog):
    monkeypatch.setattr(pipeline_module, "_safety_checker_noted", False)
    base = tiny()
    stock = StableDiffusionPipeline(**base.components | {"safety_checker": tiny_safety_checker(),
                                                         "feature_extractor": feature_extractor()})
    with caplog.at_level(logging.WARNING):
        ours = LatentDiffusionPipeline(**stock.components)
        LatentDiffusionPipeline(**stock.components)
    notes = [r.getMessage() for r in caplog.records if "safety checker" in r.getMessage()]
    assert notes == ["LatentDiffusionPipeline does not run the safety checker: it is kept as a component only (so "
                     "that components pass to and from StableDiffusionPipeline), and images are returned unfiltered."]
    assert set(ours.components) == set(stock.components)
    assert ours.safety_checker is stock.safety_checker and ours.feature_extractor is stock.feature_extractor
    StableDiffusionPipeline(**ours.components)  # and back
    # the checker is not run: the same image as stock without one
    np.testing.assert_allclose(images(ours), images(stock_from(base)), atol=1e-6)


def test_no_null_entries_in_model_index_and_present_components_round_trip(tmp_path):
    tiny().save_pretrained(tmp_path / "bare")
    index = json.loads((tmp_path / "bare" / "model_index.json").read_text())
    assert not [name for name in OPTIONAL if name in index]
    loaded = LatentDiffusionPipeline.from_pretrained(tmp_path / "bare")
    assert all(getattr(loaded, name) is None for name in OPTIONAL)

    pipe = tiny(feature_extractor=feature_extractor(), image_encoder=tiny_image_encoder())
    pipe.save_pretrained(tmp_path / "full")
    index = json.loads((tmp_path / "full" / "model_index.json").read_text())
    assert index["image_encoder"] == ["transformers", "CLIPVisionModelWithProjection"]
    assert index["feature_extractor"][1].startswith("CLIPImageProcessor")
    assert "safety_checker" not in index and "genie_head" not in index
    assert not list((tmp_path / "full").rglob("*.bin"))
    loaded = LatentDiffusionPipeline.from_pretrained(tmp_path / "full")
    torch.testing.assert_close(loaded.image_encoder.state_dict(), pipe.image_encoder.state_dict())
    assert loaded.feature_extractor.crop_size == pipe.feature_extractor.crop_size


def test_from_pretrained_leaves_a_folders_safety_checker_unloaded(tmp_path):
    checker = tiny_safety_checker()
    StableDiffusionPipeline(**tiny().components | {"safety_checker": checker, "feature_extractor": feature_extractor()}
                            ).save_pretrained(tmp_path)
    ours = LatentDiffusionPipeline.from_pretrained(tmp_path)
    assert ours.safety_checker is None and isinstance(ours.feature_extractor, CLIPImageProcessor)
    kept = LatentDiffusionPipeline.from_pretrained(tmp_path, safety_checker=checker)
    assert kept.safety_checker is checker


def test_tuple_unet_sample_size_gives_the_default_size():
    pipe = tiny()
    pipe.unet = UNet2DConditionModel.from_config({**pipe.unet.config, "sample_size": [4, 8]})
    out = images(pipe, num_inference_steps=1)
    assert out.shape == (1, 4 * pipe.vae_scale_factor, 8 * pipe.vae_scale_factor, 3)
    np.testing.assert_allclose(out, images(stock_from(pipe), num_inference_steps=1), atol=1e-6)


# ---------------------------------------------------------------------------------------------- IP-Adapter
def test_ip_adapter_changes_the_image_and_matches_stock(tmp_path):
    ours = tiny(feature_extractor=feature_extractor())
    save_ip_adapter(ours.unet, tmp_path / "ip")
    plain = images(ours)

    load_ip_adapter(ours, tmp_path / "ip")
    assert isinstance(ours.image_encoder, CLIPVisionModelWithProjection)
    ours.set_ip_adapter_scale(1.0)
    adapted = images(ours, ip_adapter_image=ip_image())
    assert np.abs(adapted - plain).max() > 1e-2

    stock = stock_from(tiny(feature_extractor=feature_extractor()))  # fresh components, same weights
    load_ip_adapter(stock, tmp_path / "ip")
    stock.set_ip_adapter_scale(1.0)
    np.testing.assert_allclose(adapted, images(stock, ip_adapter_image=ip_image()), atol=1e-4)

    # precomputed embeddings: one (2B, 1, E) tensor per adapter with guidance, the negative half first
    embeds = ours.prepare_ip_adapter_image_embeds(ip_image(), None, torch.device("cpu"), 1, True)
    np.testing.assert_allclose(images(ours, ip_adapter_image_embeds=embeds), adapted, atol=1e-5)

    ours.unload_ip_adapter()
    np.testing.assert_allclose(images(ours), plain, atol=1e-6)


def test_ip_adapter_inputs_are_checked(tmp_path):
    pipe = tiny()
    with pytest.raises(ValueError, match=r"need an IP-Adapter: load one first with pipe.load_ip_adapter"):
        images(pipe, ip_adapter_image=ip_image())
    save_ip_adapter(pipe.unet, tmp_path / "ip")
    load_ip_adapter(pipe, tmp_path / "ip")
    embeds = [torch.zeros(2, 1, IMAGE_EMBED_DIM)]
    for kwargs, match in [
        (dict(ip_adapter_image=ip_image(), ip_adapter_image_embeds=embeds), "at most one of `ip_adapter_image`"),
        (dict(ip_adapter_image_embeds=torch.zeros(2, 1, IMAGE_EMBED_DIM)), "must be a list of 3D or 4D tensors"),
        (dict(ip_adapter_image_embeds=embeds * 2), "inputs for 2 adapters but 1 are loaded"),
        (dict(ip_adapter_image=[ip_image(), ip_image()]), "inputs for 2 adapters but 1 are loaded"),
    ]:
        with pytest.raises(ValueError, match=match):
            images(pipe, **kwargs)
    pipe.image_encoder = None
    with pytest.raises(ValueError, match="needs an image encoder"):
        images(pipe, ip_adapter_image=ip_image())


# ---------------------------------------------------------------------------------------------- text
def test_long_prompt_warning_is_stocks_through_diffusers_logger():
    ours = tiny()
    stock = stock_from(ours)
    long_prompt = " ".join(["red circle"] * 60)
    messages = {}
    for pipe in (ours, stock):
        logger = logging.getLogger(type(pipe).__module__)  # the module's logger (diffusers' get_logger(__name__))
        records = []
        handler = logging.Handler(logging.WARNING)
        handler.emit = records.append
        logger.addHandler(handler)
        try:
            pipe.encode_prompt(long_prompt, torch.device("cpu"), 1, True)
        finally:
            logger.removeHandler(handler)
        messages[pipe] = [r.getMessage() for r in records]
    assert messages[ours] == messages[stock] and len(messages[ours]) == 1
    assert messages[ours][0].startswith("The following part of your input was truncated because CLIP can only "
                                        "handle sequences up to 77 tokens: ['circle red circle")


def test_clip_tokenizer_cut_to_a_tiny_vocabulary():
    # what test_diffusers_sd_suite.py gives diffusers' dummy text encoder (vocab_size 1000) for the hub's tiny CLIP
    small, full = clip_tokenizer(vocab_size=1000), clip_tokenizer()
    ids = small(PROMPT + " @@@ ünï").input_ids
    assert len(small) == 1000 and max(ids) == 999 and ids[0] == 998  # eos is the last id, bos the one before
    assert small("red").input_ids[1:-1] == full("red").input_ids[1:-1]  # early merges keep CLIP's ids
    for bad in (513, 49409, 1000.0):
        with pytest.raises(ValueError, match=r"vocab_size must be an int in 514\.\.49408"):
            clip_tokenizer(vocab_size=bad)


# ---------------------------------------------------------------------------------------------- schedulers
def test_legacy_scheduler_config_is_fixed_like_stock():
    base = tiny()
    with pytest.warns(FutureWarning) as record:
        ours = LatentDiffusionPipeline(**base.components | {"scheduler": DDIMScheduler()})
    messages = [str(w.message) for w in record]
    assert any("`steps_offset` should be set to 1 instead of 0" in m for m in messages)
    assert any("has not set the configuration `clip_sample`" in m for m in messages)
    assert ours.scheduler.config.steps_offset == 1 and ours.scheduler.config.clip_sample is False
    ours.set_progress_bar_config(disable=True)
    stock = StableDiffusionPipeline(**base.components | {"scheduler": DDIMScheduler()}, requires_safety_checker=False)
    stock.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(images(ours), images(stock), atol=1e-6)


@pytest.mark.parametrize("scheduler", [
    lambda: GENIEScheduler(steps_offset=0, clip_sample=True),  # ours, DDIM-based: left alone
    lambda: make_scheduler("flow-dpm++2m", flow_config()),  # a diffusers scheduler of the flow process: left alone
    lambda: CLDExponentialODEScheduler(),
], ids=["genie", "flow", "cld"])
def test_our_processes_schedulers_keep_their_config(scheduler):
    scheduler = scheduler()
    before = dict(scheduler.config)
    pipe = LatentDiffusionPipeline(**tiny().components | {"scheduler": scheduler})
    assert dict(pipe.scheduler.config) == before
