"""Named model configurations, written as functions (as DiT's `DiT_XL_2()`), and a builder for whole pipelines.

    >>> from latentdiff import build_pipeline
    >>> pipe = build_pipeline("tiny", seed=0)       # random weights, offline, tokenizer included

- `tiny`: a few hundred thousand parameters, for tests (builds in well under 2 s).
- `small`: the architecture of our default model: a ~4M-parameter UNet on 16x16x4 latents, a VAE with
  downsampling factor 4 for 64x64 images, a 4-layer CLIP text model over a small ShapesWorld BPE vocabulary.
- `sd15`: exactly Stable Diffusion 1.5's UNet, VAE and CLIP ViT-L/14 text encoder (random weights), for GPU
  benchmarks and fine-tuning code paths.

The text encoder is one of two families (`TEXT_MODELS`), of the same width, depth and heads:
- "clip": transformers' `CLIPTextModel`, as Stable Diffusion 1.x: causal self-attention, so a token sees only
  the words before it ("red" in "a red circle above a blue star" cannot know it is the upper object).
- "t5": transformers' `T5EncoderModel`, as Imagen (Saharia et al. 2022, sec. 4.4: T5 beats CLIP on
  compositional prompts), SD3 and PixArt: bidirectional self-attention with relative position biases, so every
  token sees the whole caption. Run, as SD3 runs its T5, without an attention mask over the padding.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

from latentdiff.tokenizer import clip_tokenizer, shapes_tokenizer

# The noise process of Stable Diffusion 1.x (Rombach et al. 2022): 1000 steps, "scaled linear" betas.
SD_PROCESS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
}


@dataclass(frozen=True)
class Preset:
    name: str  # what `build_pipeline` and the CLI call it
    resolution: int  # the image size (pixels, square) the model is made for
    unet: dict[str, Any]  # UNet2DConditionModel kwargs
    vae: dict[str, Any]  # AutoencoderKL kwargs
    text_encoder: dict[str, Any]  # CLIPTextConfig kwargs (also for "t5": text_encoder_of maps them); vocab: tokenizer
    tokenizer: Callable[[], CLIPTokenizer]  # builds the tokenizer, offline
    sampler: str = "dpm++2m"  # the named sampler (pipelines/samplers.py) the pipeline starts with
    process: dict[str, Any] = field(default_factory=lambda: dict(SD_PROCESS))  # the trained noise process
    text_model: str = "clip"  # the text encoder's family, one of TEXT_MODELS


TEXT_MODELS: tuple[str, ...] = ("clip", "t5")


def _unet(blocks: tuple[int, ...], attention: tuple[bool, ...], **kw: Any) -> dict[str, Any]:
    """UNet2DConditionModel kwargs with cross-attention in the levels marked True (top to bottom)."""
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    return dict(block_out_channels=blocks, down_block_types=down, up_block_types=up, in_channels=4, out_channels=4, **kw)


def _vae(blocks: tuple[int, ...], **kw: Any) -> dict[str, Any]:
    n = len(blocks)
    return dict(block_out_channels=blocks, down_block_types=("DownEncoderBlock2D",) * n,
                up_block_types=("UpDecoderBlock2D",) * n, in_channels=3, out_channels=3, latent_channels=4, **kw)


def vae_kwargs(preset: "str | Preset", blocks: tuple[int, ...] | None = None,
               latent_channels: int | None = None) -> dict[str, Any]:
    """The preset's AutoencoderKL kwargs, with other block widths (their count sets the downsampling factor
    2 ** (len(blocks) - 1)) and/or another number of latent channels."""
    kw = dict(get_preset(preset).vae)
    if blocks:
        blocks = tuple(int(b) for b in blocks)
        if any(b < 1 or b % kw.get("norm_num_groups", 32) for b in blocks):
            raise ValueError(f"VAE block widths {blocks} must be positive multiples of norm_num_groups "
                             f"({kw.get('norm_num_groups', 32)})")
        kw.update(block_out_channels=blocks, down_block_types=("DownEncoderBlock2D",) * len(blocks),
                  up_block_types=("UpDecoderBlock2D",) * len(blocks))
    if latent_channels is not None:
        if latent_channels < 1:
            raise ValueError(f"latent channels must be >= 1, got {latent_channels}")
        kw["latent_channels"] = int(latent_channels)
    return kw


def tiny() -> Preset:
    """For tests: 16x16 images, 8x8x4 latents, a 2-layer 32-wide text encoder."""
    return Preset(
        name="tiny",
        resolution=16,
        unet=_unet((16, 32), (True, True), layers_per_block=1, sample_size=8, cross_attention_dim=32,
                   attention_head_dim=4, norm_num_groups=8),
        vae=_vae((8, 16), layers_per_block=1, norm_num_groups=8, sample_size=16),
        text_encoder=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
        tokenizer=shapes_tokenizer,
    )


def small() -> Preset:
    """The default model's architecture: 64x64 images, 16x16x4 latents (VAE factor 4), ~3.8M-parameter UNet."""
    return Preset(
        name="small",
        resolution=64,
        unet=_unet((64, 96, 96), (True, True, False), layers_per_block=1, sample_size=16, cross_attention_dim=128,
                   attention_head_dim=8, norm_num_groups=32),
        vae=_vae((32, 64, 64), layers_per_block=1, norm_num_groups=32, sample_size=64),
        text_encoder=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4),
        tokenizer=shapes_tokenizer,
    )


def sd15() -> Preset:
    """Stable Diffusion 1.5 exactly: UNet 859.5M, VAE 83.7M, CLIP ViT-L/14 text encoder 123.1M parameters."""
    return Preset(
        name="sd15",
        resolution=512,
        unet=_unet((320, 640, 1280, 1280), (True, True, True, False), layers_per_block=2, sample_size=64,
                   cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32),
        vae=_vae((128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, sample_size=512,
                 scaling_factor=0.18215),
        text_encoder=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                          projection_dim=768, hidden_act="quick_gelu"),
        tokenizer=clip_tokenizer,
        sampler="pndm",
    )


# An explicit table, not a lookup in globals(): adding a preset means writing a function and a line here.
PRESETS: dict[str, Callable[[], Preset]] = {"tiny": tiny, "small": small, "sd15": sd15}


def get_preset(preset: str | Preset) -> Preset:
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}. Choose one of: {', '.join(PRESETS)}.")
    return PRESETS[preset]()


def variant(preset: "str | Preset", *, unet_blocks: tuple[int, ...] | None = None,
            unet_attention: tuple[bool, ...] | None = None, unet_layers_per_block: int | None = None,
            unet_head_dim: int | None = None, text_layers: int | None = None, text_width: int | None = None,
            text_heads: int | None = None, text_model: str | None = None) -> Preset:
    """The preset with another UNet (block widths, cross-attention levels top to bottom, ResNet layers per block,
    diffusers' attention_head_dim, which UNet2DConditionModel reads as the number of heads) and/or text encoder (layers, width, heads; the UNet's cross-attention width follows
    the text width) and the text encoder's family (TEXT_MODELS). None keeps the preset's value. For architecture
    ablations; a named preset is still a function."""
    p = get_preset(preset)
    if text_model is not None and text_model not in TEXT_MODELS:
        raise ValueError(f"--text-model {text_model!r} is not one of {', '.join(TEXT_MODELS)}")
    unet, text = dict(p.unet), dict(p.text_encoder)
    if unet_blocks is not None or unet_attention is not None:
        attention = tuple("CrossAttn" in t for t in unet["down_block_types"])
        blocks = tuple(unet_blocks) if unet_blocks is not None else tuple(unet["block_out_channels"])
        attention = tuple(bool(a) for a in unet_attention) if unet_attention is not None else attention
        if len(blocks) != len(attention):
            raise ValueError(f"--unet-blocks {list(blocks)} and --unet-attention {list(attention)} must have one entry "
                             "per UNet level each")
        groups = unet.get("norm_num_groups", 32)
        if any(b < 1 or b % groups for b in blocks):
            raise ValueError(f"--unet-blocks {list(blocks)} must be positive multiples of norm_num_groups ({groups})")
        unet.update(_unet(blocks, attention, **{k: v for k, v in unet.items() if k not in (
            "block_out_channels", "down_block_types", "up_block_types", "in_channels", "out_channels")}),
            in_channels=unet["in_channels"], out_channels=unet["out_channels"])
    if unet_layers_per_block is not None:
        unet["layers_per_block"] = int(unet_layers_per_block)
    if unet_head_dim is not None:
        unet["attention_head_dim"] = int(unet_head_dim)
    for key, value in (("num_hidden_layers", text_layers), ("hidden_size", text_width),
                       ("num_attention_heads", text_heads)):
        if value is not None:
            text[key] = int(value)
    if text_width is not None:
        text["intermediate_size"] = 4 * int(text_width)
        unet["cross_attention_dim"] = int(text_width)
    if text["hidden_size"] % text["num_attention_heads"]:
        raise ValueError(f"text width {text['hidden_size']} must be a multiple of its heads {text['num_attention_heads']}")
    if any(v is not None and v < 1 for v in (unet_layers_per_block, unet_head_dim, text_layers, text_width, text_heads)):
        raise ValueError("UNet and text-encoder sizes must be >= 1")
    return dataclasses.replace(p, unet=unet, text_encoder=text, text_model=text_model or p.text_model)


def fit_unet(preset: "str | Preset", process: str = "ddpm", latent_channels: int | None = None,
             sample_size: int | None = None) -> Preset:
    """The preset with a UNet for a noise process (e.g. CLD's sees (x, v): twice the latent channels), for latents
    of `latent_channels` channels (default: the preset VAE's) and side `sample_size` (default: the preset's)."""
    from latentdiff.pipelines.processes import get_process

    p = get_preset(preset)
    in_ch, out_ch = get_process(process).unet_channels(latent_channels or p.vae["latent_channels"])
    unet = {**p.unet, "in_channels": in_ch, "out_channels": out_ch}
    if sample_size is not None:
        unet["sample_size"] = sample_size
    return dataclasses.replace(p, unet=unet)


def build_components(preset: str | Preset, seed: int = 0) -> dict[str, Any]:
    """The pipeline's components with random weights drawn from `seed`: vae, text_encoder, tokenizer, unet, scheduler."""
    from latentdiff.pipelines.samplers import make_scheduler

    p = get_preset(preset)
    tokenizer = p.tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**p.unet)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**p.vae)
    torch.manual_seed(seed + 2)
    text_encoder = text_encoder_of(p, tokenizer)
    scheduler = make_scheduler(p.sampler, p.process)
    return dict(vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(),
                scheduler=scheduler)


def text_encoder_of(preset: str | Preset, tokenizer: CLIPTokenizer) -> CLIPTextModel | T5EncoderModel:
    """The preset's text encoder with random weights (from torch's current seed), its vocabulary the tokenizer's."""
    p = get_preset(preset)
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    if p.text_model == "clip":
        return CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), **special, **p.text_encoder,
                                            max_position_embeddings=tokenizer.model_max_length))
    t = p.text_encoder
    # The CLIP sizes in T5's names, with CLIP's plain (not gated) GELU MLP so that the two families have the same
    # parameter count but for the position embeddings (T5: relative biases); no dropout, as CLIPTextModel.
    config = T5Config(vocab_size=len(tokenizer), d_model=t["hidden_size"], d_ff=t["intermediate_size"],
                      num_layers=t["num_hidden_layers"], num_heads=t["num_attention_heads"],
                      d_kv=t["hidden_size"] // t["num_attention_heads"], feed_forward_proj="gelu",
                      dropout_rate=0.0, decoder_start_token_id=tokenizer.pad_token_id, **special)
    return T5EncoderModel(config)


def build_pipeline(preset: str | Preset = "tiny", seed: int = 0):
    """A complete `LatentDiffusionPipeline` with random weights, built offline."""
    from latentdiff.pipelines import LatentDiffusionPipeline

    return LatentDiffusionPipeline(**build_components(preset, seed))
