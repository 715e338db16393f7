"""Single-file export: a diffusers pipeline folder as one original Stable Diffusion checkpoint (the layout A1111
and ComfyUI load: `model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.*`).

    latentdiff export MODEL_DIR --single-file OUT.safetensors

writes, next to OUT.safetensors:
- OUT.yaml: the original `v1-inference.yaml`-style config describing this architecture (block widths, depths,
  attention levels, heads, context width, the noise schedule and the VAE's scale factor). A1111 reads a YAML of
  the checkpoint's name beside it; diffusers reads it as `from_single_file(..., original_config=OUT.yaml)`.
- OUT-config/: a diffusers config folder without weights (model_index.json, the component configs, tokenizer,
  scheduler), for what the original config cannot describe (our own CLIP text encoder and tokenizer):
  `from_single_file(OUT.safetensors, config="OUT-config")` loads everything offline, exactly.

Loading it back (tests/test_single_file.py):

    StableDiffusionPipeline.from_single_file("OUT.safetensors", config="OUT-config", local_files_only=True)
    StableDiffusionPipeline.from_single_file("OUT.safetensors", original_config="OUT.yaml", config="OUT-config",
                                             local_files_only=True)
    LatentDiffusionPipeline.from_single_file(...)   # the same, into our pipeline (FromSingleFileMixin)

The original -> diffusers direction is diffusers' own (`diffusers.loaders.single_file_utils`). Diffusers ships no
diffusers -> original function in the library (only the script `scripts/convert_diffusers_to_original_stable_
diffusion.py`, written for SD 1.x's fixed four levels of two blocks), so the reverse key mapping is written here for
any number of levels and blocks; its fixed entries come from diffusers' own `DIFFUSERS_TO_LDM_MAPPING` table.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch

# Key prefixes of the original checkpoint (the ones diffusers' single_file_utils reads).
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."


# ---------------------------------------------------------------------------------------------- key mapping
def _unet_prefixes(config: dict) -> dict[str, str]:
    """diffusers UNet2DConditionModel prefix -> original `openaimodel.UNetModel` prefix, for any number of levels
    and `layers_per_block` (the diffusers script's loops, generalised from SD 1.x's 4 levels x 2 blocks)."""
    levels, blocks = len(config["block_out_channels"]), config["layers_per_block"]
    if not isinstance(blocks, int):
        raise ValueError(f"layers_per_block {blocks!r} differs per level; the original UNet has one num_res_blocks.")
    out: dict[str, str] = {}
    for i in range(levels):
        for j in range(blocks):
            k = 1 + i * (blocks + 1) + j  # input_blocks.0 is conv_in; each level adds its blocks and a downsampler
            out[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{k}.0."
            out[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{k}.1."
        if i < levels - 1:
            out[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{1 + i * (blocks + 1) + blocks}.0.op."
        for j in range(blocks + 1):
            k = i * (blocks + 1) + j
            out[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{k}.0."
            out[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{k}.1."
        if i < levels - 1:
            has_attention = "CrossAttn" in config["up_block_types"][i]
            out[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{i * (blocks + 1) + blocks}.{2 if has_attention else 1}."
    out["mid_block.resnets.0."] = "middle_block.0."
    out["mid_block.attentions.0."] = "middle_block.1."
    out["mid_block.resnets.1."] = "middle_block.2."
    return out


# Inside a UNet resnet block (the inverse of diffusers' update_unet_resnet_ldm_to_diffusers).
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
# Inside a VAE attention block (the inverse of diffusers' update_vae_attentions_ldm_to_diffusers).
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _replace_prefix(key: str, prefixes: dict[str, str]) -> tuple[str, str] | None:
    for new, old in prefixes.items():
        if key.startswith(new):
            return old, key[len(new):]
    return None


def unet_to_original(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """A diffusers UNet2DConditionModel state dict in the original layout (without the `model.diffusion_model.`
    prefix). A key it cannot place is a ValueError, so nothing is dropped silently."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    prefixes = _unet_prefixes(config)

    def rename(key: str, rest: str, value: torch.Tensor) -> tuple[str, torch.Tensor]:
        if "resnets." in key:
            head, _, tail = rest.partition(".")
            rest = f"{_UNET_RESNET.get(head, head)}.{tail}"
        return rest, value

    return _remap(state, fixed, prefixes, rename, "UNet",
                  "has no place in the original Stable Diffusion layout; only SD 1.x/2.x-style UNets (no class or "
                  "addition embeddings) can be exported as a single file.")


def _remap(state: dict[str, torch.Tensor], fixed: dict[str, str], prefixes: dict[str, str], rename, what: str,
           no_place: str) -> dict[str, torch.Tensor]:
    """Each key of `state` under its original name: a fixed name from diffusers' table, or its block prefix
    replaced and the rest passed through `rename(key, rest, value) -> (rest, value)`; ValueError for a key that has
    no place (`no_place` ends the message), so nothing is dropped silently."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in fixed:
            out[fixed[key]] = value
            continue
        placed = _replace_prefix(key, prefixes)
        if placed is None:
            raise ValueError(f"{what} weight {key} {no_place}")
        old, rest = placed
        rest, value = rename(key, rest, value)
        out[old + rest] = value
    return out


def vae_to_original(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL state dict in the original `ldm.models.autoencoder.AutoencoderKL` layout (without
    the `first_stage_model.` prefix); attention projections become 1x1 convolutions, as the original has them."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]
    levels = len(config["block_out_channels"])
    prefixes: dict[str, str] = {}
    for i in range(levels):
        prefixes[f"encoder.down_blocks.{i}.resnets."] = f"encoder.down.{i}.block."
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
        # the decoder's up_blocks run bottom-up in diffusers, top-down (by resolution) in the original
        prefixes[f"decoder.up_blocks.{i}.resnets."] = f"decoder.up.{levels - 1 - i}.block."
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{levels - 1 - i}.upsample."
    for part in ("encoder", "decoder"):
        prefixes[f"{part}.mid_block.resnets.0."] = f"{part}.mid.block_1."
        prefixes[f"{part}.mid_block.resnets.1."] = f"{part}.mid.block_2."
        prefixes[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."

    def rename(key: str, rest: str, value: torch.Tensor) -> tuple[str, torch.Tensor]:
        if ".attentions." in key:
            for new_name, old_name in _VAE_ATTENTION.items():
                if rest.startswith(new_name + "."):
                    rest = old_name + rest[len(new_name):]
                    break
            if value.ndim == 2:  # linear -> the original's 1x1 convolution
                value = value[:, :, None, None]
        elif "resnets." in key:
            rest = rest.replace("conv_shortcut.", "nin_shortcut.")
        return rest, value

    return _remap(state, fixed, prefixes, rename, "VAE", "has no place in the original Stable Diffusion layout.")


def clip_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers CLIPTextModel state dict under the `text_model.` names of SD 1.x checkpoints (transformers
    >= 5.6 saves them without that prefix; diffusers' convert_ldm_clip_checkpoint reads both)."""
    return {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()}


def pipeline_to_original(pipe) -> dict[str, torch.Tensor]:
    """The whole pipeline (UNet, VAE, text encoder) as one original Stable Diffusion state dict, contiguous fp32."""
    state: dict[str, torch.Tensor] = {}
    for prefix, part in ((UNET_PREFIX, unet_to_original(pipe.unet.state_dict(), pipe.unet.config)),
                         (VAE_PREFIX, vae_to_original(pipe.vae.state_dict(), pipe.vae.config)),
                         (CLIP_PREFIX, clip_to_original(pipe.text_encoder.state_dict()))):
        state.update({prefix + k: v.detach().to("cpu").contiguous() for k, v in part.items()})
    return state


# ---------------------------------------------------------------------------------------------- original config
def original_config(pipe) -> tuple[dict[str, Any] | None, str | None]:
    """(the original LDM config of this architecture, None) or (None, why it cannot describe it). The original
    code hard-codes what diffusers configures (GroupNorm with 32 groups, SD's UNet shape), so a model that differs
    there has no original config; it still loads with `config=OUT-config`."""
    unet, vae, sched = pipe.unet.config, pipe.vae.config, pipe.scheduler.config
    widths = list(unet.block_out_channels)
    for name, cfg in (("UNet", unet), ("VAE", vae)):
        if cfg.norm_num_groups != 32:
            return None, (f"the {name} uses GroupNorm with {cfg.norm_num_groups} groups; the original Stable Diffusion "
                          "code (and diffusers' original_config reader) always uses 32")
    if sched.get("beta_schedule") != "scaled_linear":
        return None, (f"the noise schedule is {sched.get('beta_schedule')!r}; the original config describes Stable "
                      "Diffusion's scaled-linear betas only")
    if unet.mid_block_type != "UNetMidBlock2DCrossAttn" or unet.class_embed_type or unet.addition_embed_type:
        return None, "the UNet is not Stable Diffusion's shape (mid block, class or addition embeddings)"
    attention = ["CrossAttn" in t for t in unet.down_block_types]
    if list(reversed(attention)) != ["CrossAttn" in t for t in unet.up_block_types]:
        return None, "the UNet's up blocks do not mirror its down blocks"
    # model_channels * channel_mult = block widths. The original builds conv_in and the time embedding from
    # model_channels, diffusers from the first width: they agree when channel_mult starts at 1 (A1111/ComfyUI need
    # that); diffusers' reader takes any integer multiples, so model_channels is the widths' greatest common divisor.
    model_channels = math.gcd(*widths)
    vae_ch = math.gcd(*vae.block_out_channels)
    parameterization = {"epsilon": "eps", "v_prediction": "v"}.get(sched.get("prediction_type", "epsilon"))
    if parameterization is None:
        return None, f"prediction type {sched.get('prediction_type')!r} has no original counterpart"
    params: dict[str, Any] = {
        "linear_start": sched["beta_start"], "linear_end": sched["beta_end"],
        "timesteps": sched["num_train_timesteps"], "num_timesteps_cond": 1, "log_every_t": 200,
        "first_stage_key": "jpg", "cond_stage_key": "txt", "image_size": unet.sample_size,
        "channels": vae.latent_channels, "cond_stage_trainable": False, "conditioning_key": "crossattn",
        "monitor": "val/loss_simple_ema", "scale_factor": float(vae.scaling_factor), "use_ema": False,
        # Written for the original code, which instantiates these dotted class paths (the format's own `target:`
        # keys; nothing in latentdiff reads them).
        "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": {
            "image_size": unet.sample_size, "in_channels": unet.in_channels, "out_channels": unet.out_channels,
            "model_channels": model_channels, "channel_mult": [w // model_channels for w in widths],
            "attention_resolutions": [2 ** i for i, a in enumerate(attention) if a],
            "num_res_blocks": unet.layers_per_block,
            "num_heads": unet.attention_head_dim,  # diffusers' SD 1.x attention_head_dim is the number of heads
            "use_spatial_transformer": True, "transformer_depth": unet.transformer_layers_per_block,
            "context_dim": unet.cross_attention_dim, "use_linear_in_transformer": bool(unet.use_linear_projection),
            "use_checkpoint": False, "legacy": False}},
        "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
            "embed_dim": vae.latent_channels, "monitor": "val/rec_loss",
            "ddconfig": {"double_z": True, "z_channels": vae.latent_channels, "resolution": vae.sample_size,
                         "in_channels": vae.in_channels, "out_ch": vae.out_channels, "ch": vae_ch,
                         "ch_mult": [w // vae_ch for w in vae.block_out_channels],
                         "num_res_blocks": vae.layers_per_block, "attn_resolutions": [], "dropout": 0.0},
            "lossconfig": {"target": "torch.nn.Identity"}}},
        "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder"},
    }
    if parameterization == "v":
        params["parameterization"] = "v"
    return {"model": {"base_learning_rate": 1.0e-04, "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
                      "params": params}}, None


# ---------------------------------------------------------------------------------------------- export
def config_folder_of(single_file: Path) -> Path:
    """Where export_single_file writes the diffusers config folder of OUT.safetensors: OUT-config/."""
    return single_file.with_name(single_file.stem + "-config")


def export_single_file(model: str | Path, out: str | Path, original_config_path: str | Path | None = None,
                       overwrite: bool = False) -> dict[str, Path | str | None]:
    """Write `model` (a pipeline folder) as the single-file checkpoint `out` (.safetensors), its original config
    (default: `out` with .yaml) and its diffusers config folder (OUT-config/). Returns their paths, and `why_no_yaml`
    when the architecture has no original config."""
    import yaml
    from safetensors.torch import save_file

    from latentdiff.loading import load_pipeline

    model, out = Path(model), Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--single-file must name a .safetensors file, got {out}.")
    if not (model / "model_index.json").is_file():
        raise ValueError(f"{model} is not a diffusers pipeline folder (no model_index.json); export a folder written "
                         "by train_text_to_image (OUT/pipeline) or `save_pretrained`.")
    yaml_path = Path(original_config_path) if original_config_path else out.with_suffix(".yaml")
    folder = config_folder_of(out)
    existing = [p for p in (out, yaml_path, folder) if p.exists()]
    if existing and not overwrite:
        raise ValueError(f"{existing[0]} exists; pass --overwrite to replace it, or choose another --single-file.")

    pipe = load_pipeline(model)
    if pipe.unet.config.in_channels != pipe.vae.config.latent_channels:
        raise ValueError(f"{model}: the UNet sees {pipe.unet.config.in_channels} channels for a "
                         f"{pipe.vae.config.latent_channels}-channel latent (a process other than Stable Diffusion's); "
                         "the single-file layout holds Stable Diffusion's process only.")
    if type(pipe.text_encoder).__name__ != "CLIPTextModel":
        raise ValueError(f"{model}: its text encoder is a {type(pipe.text_encoder).__name__}; the single-file layout "
                         "of Stable Diffusion 1.x holds a CLIPTextModel only. Share the pipeline folder instead.")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(pipeline_to_original(pipe), str(out), metadata={"format": "pt", "latentdiff_source": str(model)})

    config, why = original_config(pipe)
    if config is not None:
        yaml_path.write_text(yaml.safe_dump(config, sort_keys=False))
    if folder.exists():
        shutil.rmtree(folder)
    write_config_folder(pipe, folder)
    return {"single_file": out, "original_config": yaml_path if config is not None else None, "config": folder,
            "why_no_yaml": why}


def write_config_folder(pipe, folder: Path) -> None:
    """A diffusers folder of the pipeline's configs, tokenizer and scheduler, without weights: what
    `from_single_file(config=...)` reads for the parts the checkpoint does not describe."""
    folder.mkdir(parents=True)
    components = {name: list(spec) for name, spec in pipe.config.items()
                  if not name.startswith("_") and isinstance(spec, (list, tuple)) and spec[0] is not None}
    components.pop("genie_head", None)
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": pipe.config.get("_diffusers_version"),
             **components, "requires_safety_checker": False}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    pipe.unet.save_config(folder / "unet")
    pipe.vae.save_config(folder / "vae")
    pipe.scheduler.save_pretrained(folder / "scheduler")
    pipe.tokenizer.save_pretrained(folder / "tokenizer")
    (folder / "text_encoder").mkdir()
    pipe.text_encoder.config.to_json_file(folder / "text_encoder" / "config.json")


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(p) -> None:
    p.add_argument("model", help="a diffusers pipeline folder (e.g. train_text_to_image's OUT/pipeline)")
    p.add_argument("--single-file", required=True, metavar="OUT.safetensors",
                   help="write the original Stable Diffusion single-file checkpoint (A1111 / ComfyUI layout) here")
    p.add_argument("--original-config", metavar="OUT.yaml",
                   help="where to write its original (v1-inference.yaml-style) config (default: OUT.yaml)")
    p.add_argument("--overwrite", action="store_true", help="replace files that exist (default: refuse)")


def run(args) -> None:
    paths = export_single_file(args.model, args.single_file, args.original_config, overwrite=args.overwrite)
    print(f"wrote {paths['single_file']} (original Stable Diffusion layout)")
    if paths["original_config"] is not None:
        print(f"wrote {paths['original_config']} (its original config: original_config=...)")
    else:
        print(f"no original config: {paths['why_no_yaml']}; load with config={paths['config']}")
    print(f"wrote {paths['config']}/ (diffusers configs, tokenizer and scheduler, no weights: config=...)")
    print(f"load: StableDiffusionPipeline.from_single_file({str(paths['single_file'])!r}, "
          f"config={str(paths['config'])!r}, local_files_only=True)")
