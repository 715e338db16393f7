"""The text encoder's two families (latentdiff/presets.py TEXT_MODELS): CLIP (causal, SD 1.x) and T5 (bidirectional,
as Imagen, SD3, PixArt). A T5 model trains from scratch, saves as a diffusers folder that stock
StableDiffusionPipeline loads and draws the same image from, takes LoRA adapters on its text encoder that stock
`load_lora_weights` loads, and says clearly what it cannot do (clip_skip, the SD 1.x single-file layout)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import CLIPTextModel, T5EncoderModel

from latentdiff import build_pipeline
from latentdiff.data.shapes import write_dataset
from latentdiff.eval.seeded import generate_seeded
from latentdiff.export import export_single_file
from latentdiff.loading import load_pipeline
from latentdiff.presets import build_components, variant
from latentdiff.training import train_text_to_image
from latentdiff.training.config import parse_config
from latentdiff.training.train_text_to_image import TextToImageConfig
from tests.test_fine_tune import Captured

pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")  # tests/conftest.py


def _embed(components, captions: list[str]) -> torch.Tensor:
    ids = components["tokenizer"](captions, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        return components["text_encoder"](ids)[0]  # (B, 77, D)


def test_t5_is_the_same_size_and_sees_the_whole_caption():
    clip, t5 = (build_components(variant("small", text_model=family)) for family in ("clip", "t5"))
    assert isinstance(clip["text_encoder"], CLIPTextModel) and isinstance(t5["text_encoder"], T5EncoderModel)
    n_clip, n_t5 = (sum(p.numel() for p in c["text_encoder"].parameters()) for c in (clip, t5))
    assert abs(n_t5 - n_clip) / n_clip < 0.02  # only the position embeddings differ (CLIP absolute, T5 relative)
    assert t5["text_encoder"].config.d_model == 128 and t5["text_encoder"].config.num_layers == 4
    assert t5["unet"].config.cross_attention_dim == 128
    # The word before the relation: CLIP's causal attention cannot see what follows it; T5's sees it.
    above, below = "a red circle above a blue star", "a red circle below a blue star"
    red = 2  # token 0 is bos; "a" 1, "red" 2
    for components, sees in ((clip, False), (t5, True)):
        e = _embed(components, [above, below])  # (2, 77, D)
        assert bool((e[0, red] - e[1, red]).abs().max() > 1e-4) is sees
    with pytest.raises(ValueError, match="--text-model 'bert' is not one of clip, t5"):
        variant("small", text_model="bert")


def _train_t5(root, out, *extra: str) -> None:
    train_text_to_image.main(["--preset", "tiny", "--vae", str(root / "vae"), "--train-data", str(root / "data"),
                              "--resolution", "16", "--batch-size", "8", "--output-dir", str(out),
                              "--lr-warmup-steps", "1", "--max-steps", "4", "--checkpoint-every", "2",
                              "--validation-steps", "2", "--validation-prompts", "a red circle above a blue star",
                              "--text-model", "t5", *extra])


@pytest.fixture(scope="module")
def t5_run(tmp_path_factory):
    """A tiny T5 model trained from scratch for 4 steps with --text-model t5."""
    root = tmp_path_factory.mktemp("t5")
    write_dataset(root / "data", n=16, size=16, seed=0, progress=False)
    build_pipeline("tiny").vae.save_pretrained(root / "vae")
    _train_t5(root, root / "out")
    return root / "out"


def test_a_killed_t5_run_resumes_exactly_and_quietly(t5_run, tmp_path, caplog):
    from accelerate.state import AcceleratorState

    root = t5_run.parent
    with caplog.at_level(logging.INFO):
        AcceleratorState._reset_state(True)
        _train_t5(root, tmp_path / "b", "--stop-after", "2")
        AcceleratorState._reset_state(True)
        _train_t5(root, tmp_path / "b", "--resume", "latest")
    # accelerate's notice about T5's tied embeddings at every save is dropped (training/checkpoint.py)
    assert "Removed shared tensor" not in caplog.text
    for sub, name in (("text_encoder", "model"), ("unet", "diffusion_pytorch_model")):
        a = load_file(t5_run / "pipeline" / sub / f"{name}.safetensors")
        b = load_file(tmp_path / "b" / "pipeline" / sub / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_t5_model_trains_and_stock_diffusers_draws_our_image(t5_run):
    config = json.loads((t5_run / "training_config.json").read_text())
    assert config["text_model"] == "t5"
    index = json.loads((t5_run / "pipeline" / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "T5EncoderModel"]
    ours = load_pipeline(t5_run / "pipeline")
    assert isinstance(ours.text_encoder, T5EncoderModel)
    stock = StableDiffusionPipeline.from_pretrained(t5_run / "pipeline", safety_checker=None)
    stock.scheduler = ours.scheduler
    for pipe in (ours, stock):
        pipe.set_progress_bar_config(disable=True)
    prompts = ["a red circle above a blue star", "two green squares"]
    kw = dict(num_inference_steps=3, guidance_scale=3.0, output_type="np")
    a = generate_seeded(ours, prompts, [0, 1], **kw).images
    b = generate_seeded(stock, prompts, [0, 1], **kw).images
    assert np.abs(a - b).max() < 1 / 255


def test_what_a_t5_model_cannot_do_is_one_clear_error(t5_run, tmp_path):
    pipe = load_pipeline(t5_run / "pipeline")
    with pytest.raises(ValueError, match="clip_skip needs a CLIPTextModel text encoder; .* T5EncoderModel"):
        pipe("a red circle", num_inference_steps=2, clip_skip=1)
    with pytest.raises(ValueError, match="T5EncoderModel; the single-file layout .* CLIPTextModel only"):
        export_single_file(t5_run / "pipeline", tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()
    # at parse time, before any work (the entry point prints such a ValueError as one line: test_hostile_config.py)
    with pytest.raises(ValueError, match="--text-model 'bert' is not one of clip, t5"):
        parse_config(TextToImageConfig, ["--preset", "tiny", "--vae", str(t5_run.parent / "vae"), "--train-data",
                                         str(t5_run.parent / "data"), "--text-model", "bert"])
    with pytest.raises(ValueError, match="--text-model shape a from-scratch model; the --pretrained pipeline has its"):
        parse_config(TextToImageConfig, ["--pretrained", str(t5_run / "pipeline"), "--train-data",
                                         str(t5_run.parent / "data"), "--text-model", "clip"])


def test_a_unet_lora_on_a_t5_model_loads_in_stock_diffusers_and_a_text_encoder_lora_is_refused(t5_run, tmp_path):
    from accelerate.state import AcceleratorState

    def lora(out, *extra):
        AcceleratorState._reset_state(True)
        train_text_to_image.main(["--pretrained", str(t5_run / "pipeline"), "--train-data",
                                  str(t5_run.parent / "data"), "--resolution", "16", "--batch-size", "4",
                                  "--output-dir", str(out), "--validation-steps", "2", "--report-to", "none",
                                  "--lora-rank", "4", "--max-steps", "2", "--learning-rate", "0.05", *extra])
        return out

    # stock load_lora_weights reads text-encoder adapters of CLIP only: refused before any training step
    with pytest.raises(ValueError, match="adapts a CLIPTextModel only .* a T5EncoderModel: drop --train-text-encoder"):
        lora(tmp_path / "refused", "--train-text-encoder")
    assert not (tmp_path / "refused" / "checkpoints").exists()
    out = lora(tmp_path / "lora")
    with safe_open(str(out / "lora" / "pytorch_lora_weights.safetensors"), "pt") as f:
        assert {key.split(".", 1)[0] for key in f.keys()} == {"unet"}
    stock = StableDiffusionPipeline.from_pretrained(t5_run / "pipeline", safety_checker=None)
    stock.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=2, guidance_scale=3.0, output_type="np")
    plain = generate_seeded(stock, ["a red circle"], [0], **kw).images
    with Captured() as captured:
        stock.load_lora_weights(out / "lora")
    shown = [line for line in captured.text.splitlines() if line.split(" ", 1)[0] in ("WARNING", "ERROR", "warning")]
    # only diffusers' notice that a UNet-only LoRA has no text-encoder keys (see test_fine_tune.py)
    assert all("No LoRA keys associated to T5EncoderModel" in line for line in shown), shown
    assert np.abs(generate_seeded(stock, ["a red circle"], [0], **kw).images - plain).max() > 1e-3
