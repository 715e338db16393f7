"""The shipped default model, assets/shapes-tiny: size, format, loading, its card, and its reported scores."""

import json
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "assets" / "shapes-tiny"


def test_default_model_is_a_small_safetensors_diffusers_folder():
    files = [p for p in MODEL.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 25 * 2**20
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".ckpt", ".pt", ".pth")]
    assert {p.parent.name for p in weights} == {"unet", "vae", "text_encoder"}
    assert all(p.suffix == ".safetensors" for p in weights)
    index = json.loads((MODEL / "model_index.json").read_text())
    assert {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= set(index)


def test_default_model_is_what_generate_uses_and_stock_diffusers_loads_it():
    from diffusers import StableDiffusionPipeline

    from latentdiff.loading import default_model_path, load_model

    assert default_model_path() == MODEL
    loaded = load_model(None, device="cpu")
    assert not loaded.random_weights and loaded.source == str(MODEL)
    pipe = loaded.pipe
    pipe.set_progress_bar_config(disable=True)
    ours = pipe("a red circle", num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="np").images
    stock = StableDiffusionPipeline.from_pretrained(MODEL, safety_checker=None)
    stock.set_progress_bar_config(disable=True)
    stock.scheduler = pipe.scheduler
    theirs = stock("a red circle", num_inference_steps=4, generator=torch.Generator().manual_seed(0),
                   output_type="np").images
    assert ours.shape == (1, 64, 64, 3)
    assert abs(ours - theirs).max() < 1e-5


def test_default_model_card_carries_its_scores_recipe_and_limits():
    from huggingface_hub import ModelCard

    card = ModelCard.load(MODEL / "README.md")
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "text-to-image"
    evaluation = json.loads((MODEL / "eval.json").read_text())
    for name in ("indist/overall", "heldout/overall"):
        assert f"{evaluation['metrics'][name]:.4g}" in card.text
    assert "It knows only ShapesWorld" in card.text and "learning_rate" in card.text


@pytest.mark.slow
@pytest.mark.parametrize("prompts", ["indist", "heldout"])
def test_reported_scores_reproduce(prompts, tmp_path):
    """`latentdiff eval --model assets/shapes-tiny --prompts assets/prompts/X.jsonl --json r.json` (the issue's
    must-show) lands within 0.03 of the overall score in the model's eval.json."""
    reported = json.loads((MODEL / "eval.json").read_text())["metrics"][f"{prompts}/overall"]
    out = tmp_path / "r.json"
    subprocess.run(["latentdiff", "eval", "--model", str(MODEL), "--prompts",
                    str(ROOT / "assets" / "prompts" / f"{prompts}.jsonl"), "--json", str(out)], check=True, timeout=1800)
    assert abs(json.loads(out.read_text())["overall"] - reported) <= 0.03
