"""Both ways with stock diffusers: our folders load in StableDiffusionPipeline and vice versa, same pixels."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, EulerDiscreteScheduler, StableDiffusionPipeline

import latentdiff
from latentdiff.bench.generate import stock_pipeline
from latentdiff.pipelines import LatentDiffusionPipeline

PIPELINE_FILE = Path(latentdiff.pipelines.__file__).parent / "pipeline_latent_diffusion.py"
PROMPT = "a red circle above a blue square"


def images(pipe, seed=0, **kw):
    pipe.set_progress_bar_config(disable=True)
    return pipe(PROMPT, num_inference_steps=5, guidance_scale=6.0, output_type="np",
                generator=torch.Generator().manual_seed(seed), **kw).images


def test_saved_folder_is_safetensors_only_and_stock_loads_it(tiny_pipe, tmp_path, report):
    tiny_pipe.save_pretrained(tmp_path)
    files = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert any(f.endswith(".safetensors") for f in files)
    assert not [f for f in files if f.endswith((".bin", ".ckpt", ".pt", ".pth", ".pkl"))]

    stock = StableDiffusionPipeline.from_pretrained(tmp_path, safety_checker=None)
    diff = np.abs(images(stock) - images(tiny_pipe)).max()
    report(f"5a ours -> stock StableDiffusionPipeline: max pixel difference {diff:.3e}")
    assert diff <= 1e-4


def test_stock_sd_folder_loads_in_our_pipeline(tiny_pipe, tmp_path, report):
    stock = stock_pipeline(tiny_pipe)
    stock.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    ours = LatentDiffusionPipeline.from_pretrained(tmp_path)
    reloaded_stock = StableDiffusionPipeline.from_pretrained(tmp_path, safety_checker=None)
    diff = np.abs(images(ours) - images(reloaded_stock)).max()
    report(f"5b stock SD folder -> LatentDiffusionPipeline: max pixel difference {diff:.3e}")
    assert diff <= 1e-4


def test_round_trip_is_exact(tiny_pipe, tmp_path):
    tiny_pipe.set_sampler("unipc")
    tiny_pipe.save_pretrained(tmp_path)
    loaded = LatentDiffusionPipeline.from_pretrained(tmp_path)
    assert type(loaded.scheduler).__name__ == "UniPCMultistepScheduler"
    np.testing.assert_array_equal(images(loaded), images(tiny_pipe))


def test_custom_pipeline_file_loads_offline_with_trust_remote_code(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path)
    pipe = DiffusionPipeline.from_pretrained(tmp_path, custom_pipeline=str(PIPELINE_FILE), trust_remote_code=True)
    assert type(pipe).__name__ == "LatentDiffusionPipeline"
    np.testing.assert_allclose(images(pipe), images(tiny_pipe), atol=1e-6)
    pipe.set_sampler("euler")  # the sibling samplers module travelled with the pipeline file
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)


def test_custom_code_is_not_trusted_by_default(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(tmp_path, custom_pipeline=str(PIPELINE_FILE))


def test_any_diffusers_scheduler_swaps_in(tiny_pipe):
    tiny_pipe.scheduler = EulerDiscreteScheduler.from_config(tiny_pipe.scheduler.config)
    assert np.isfinite(images(tiny_pipe)).all()


def test_pickle_only_weights_are_refused_unless_opted_in(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(tmp_path, safe_serialization=False)
    # (transformers 5 writes the text encoder in safetensors whatever it is asked; UNet and VAE are pickled)
    assert {p.parent.name for p in tmp_path.rglob("*.bin")} == {"unet", "vae"}
    with pytest.raises(ValueError, match="weights of unet, vae exist only as pickle files.*use_safetensors=False"):
        LatentDiffusionPipeline.from_pretrained(tmp_path)
    loaded = LatentDiffusionPipeline.from_pretrained(tmp_path, use_safetensors=False)
    np.testing.assert_array_equal(images(loaded), images(tiny_pipe))
