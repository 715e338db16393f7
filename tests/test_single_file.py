"""Single-file export (latentdiff/export.py): the original Stable Diffusion layout, loaded back offline by stock
diffusers' from_single_file and by LatentDiffusionPipeline, gives the folder's image for the same seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import StableDiffusionPipeline
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
from safetensors.torch import load_file

from latentdiff import build_pipeline
from latentdiff.cli import main
from latentdiff.export import export_single_file, unet_to_original, vae_to_original
from latentdiff.pipelines import LatentDiffusionPipeline

SHAPES_TINY = Path(__file__).resolve().parents[1] / "assets" / "shapes-tiny"


def _image(pipe, side: int) -> np.ndarray:
    return pipe("a red circle", num_inference_steps=3, guidance_scale=4.0, height=side, width=side,
                generator=torch.Generator().manual_seed(0), output_type="np").images


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny") / "pipeline"
    build_pipeline("tiny", seed=0).save_pretrained(folder)
    return folder


def test_reverse_mapping_is_the_inverse_of_diffusers_conversion(tiny_folder):
    """Our diffusers -> original mapping, read back by diffusers' own original -> diffusers functions, gives every
    weight back unchanged (other depths and widths than SD 1.5's 4 levels x 2 blocks)."""
    pipe = LatentDiffusionPipeline.from_pretrained(tiny_folder)
    for model, to_original, prefix, convert in (
            (pipe.unet, unet_to_original, "model.diffusion_model.", convert_ldm_unet_checkpoint),
            (pipe.vae, vae_to_original, "first_stage_model.", convert_ldm_vae_checkpoint)):
        state = model.state_dict()
        original = {prefix + k: v for k, v in to_original(state, model.config).items()}
        back = convert(original, dict(model.config))
        assert set(back) == set(state)
        assert all(torch.equal(back[k].reshape(state[k].shape), state[k]) for k in state)


def test_tiny_export_loads_in_stock_diffusers_and_ours_with_the_same_image(tiny_folder, tmp_path, capsys):
    out = tmp_path / "tiny.safetensors"
    assert main(["export", str(tiny_folder), "--single-file", str(out)]) == 0
    printed = capsys.readouterr().out
    keys = load_file(out).keys()
    for prefix in ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model."):
        assert any(k.startswith(prefix) for k in keys), prefix
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys  # conv_in, in the original's name
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in keys
    # tiny uses GroupNorm(8), which the original config cannot state: no YAML, and the message says why
    assert not out.with_suffix(".yaml").exists() and "GroupNorm with 8 groups" in printed
    folder = LatentDiffusionPipeline.from_pretrained(tiny_folder)
    expected = _image(folder, 16)
    stock = StableDiffusionPipeline.from_single_file(out, config=str(tmp_path / "tiny-config"), local_files_only=True,
                                                     safety_checker=None)
    np.testing.assert_array_equal(_image(stock, 16), expected)
    ours = LatentDiffusionPipeline.from_single_file(out, config=str(tmp_path / "tiny-config"), local_files_only=True)
    np.testing.assert_array_equal(_image(ours, 16), expected)
    assert main(["export", str(tiny_folder), "--single-file", str(out)]) == 1  # exists: refused without --overwrite


@pytest.mark.skipif(not (SHAPES_TINY / "model_index.json").is_file(), reason="no shipped default model")
def test_default_model_export_loads_with_its_original_config(tmp_path):
    """The shipped model (32-group norms) gets an original config; from_single_file(original_config=...) builds
    the UNet and VAE from it alone and draws the folder's image."""
    out = tmp_path / "shapes-tiny.safetensors"
    paths = export_single_file(SHAPES_TINY, out)
    original = yaml.safe_load(paths["original_config"].read_text())["model"]["params"]
    assert original["unet_config"]["params"]["channel_mult"] == [2, 3, 3]  # widths 64, 96, 96
    assert original["unet_config"]["params"]["attention_resolutions"] == [1, 2]
    assert original["scale_factor"] == pytest.approx(1.4951482942187957)
    expected = _image(LatentDiffusionPipeline.from_pretrained(SHAPES_TINY), 64)
    stock = StableDiffusionPipeline.from_single_file(out, original_config=str(paths["original_config"]),
                                                     config=str(paths["config"]), local_files_only=True,
                                                     safety_checker=None)
    assert list(stock.unet.config.block_out_channels) == [64, 96, 96]
    np.testing.assert_array_equal(_image(stock, 64), expected)
    ours = LatentDiffusionPipeline.from_single_file(out, original_config=str(paths["original_config"]),
                                                    config=str(paths["config"]), local_files_only=True)
    np.testing.assert_array_equal(_image(ours, 64), expected)


def test_export_refuses_what_is_not_a_pipeline_folder(tmp_path):
    with pytest.raises(ValueError, match="model_index.json"):
        export_single_file(tmp_path, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match=".safetensors"):
        export_single_file(tmp_path, tmp_path / "x.ckpt")
