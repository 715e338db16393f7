"""`latentdiff bench fine-tune`: the distance and retrieval maths on images whose answer is known, the bench end to
end on tiny models and a glyph folder (a copy of the base, a perturbed UNet, a LoRA on the base), and its refusals."""

import json
import shutil

import pytest
import torch

from latentdiff.bench.fine_tune import nearest_neighbour_metrics, rmse_matrix
from latentdiff.cli import main


# ---------------------------------------------------------------------------------------------- the maths
def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed))


def test_identical_images_are_at_distance_zero_and_all_retrieved():
    images = _images(6)
    assert nearest_neighbour_metrics(images, images.clone()) == {
        "own_rmse": 0.0, "nearest_rmse": 0.0, "retrieval_top1": 1.0, "retrieval_top5": 1.0}


def test_shuffled_images_are_never_their_own_nearest():
    images = _images(6)
    metrics = nearest_neighbour_metrics(images.roll(1, 0), images)  # generation i is training image i - 1
    assert metrics["retrieval_top1"] == 0.0 and metrics["nearest_rmse"] == 0.0 and metrics["own_rmse"] > 0.1
    # with `own` saying which image each generation belongs to, they are all found again
    assert nearest_neighbour_metrics(images.roll(1, 0), images, own=[5, 0, 1, 2, 3, 4])["retrieval_top1"] == 1.0


def test_distances_are_rmse_in_unit_range_and_top_k_counts_closer_images():
    white, black, grey = torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 0.5)
    training = torch.cat([black, grey, white])
    assert rmse_matrix(white, training).tolist() == [[1.0, 0.5, 0.0]]
    # a white generation for the black image: two training images are closer, so top-1 and top-2 miss, top-5 hits
    metrics = nearest_neighbour_metrics(white, training, own=[0])
    assert metrics == {"own_rmse": 1.0, "nearest_rmse": 0.0, "retrieval_top1": 0.0, "retrieval_top5": 1.0}
    # ties count for the own image
    assert nearest_neighbour_metrics(white, torch.cat([white, white]), own=[1])["retrieval_top1"] == 1.0
    with pytest.raises(ValueError, match="one index into the 3 training images"):
        nearest_neighbour_metrics(white, training, own=[3])
    with pytest.raises(ValueError, match="images of one shape"):
        rmse_matrix(white, torch.ones(1, 3, 4, 4))


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A glyph folder (16 px, 8 images), and tiny pipeline folders: the base, a copy whose UNet weights were
    perturbed, and a LoRA of the base (with random adapters) that records it as its base."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    from latentdiff import build_pipeline
    from latentdiff.data.glyphs import write_glyphs
    from latentdiff.pipelines import LatentDiffusionPipeline
    from latentdiff.training.train_text_to_image import add_lora

    root = tmp_path_factory.mktemp("fine-tune-bench")
    data = write_glyphs(root / "glyphs", size=16, max_images=8, seed=1)
    base = build_pipeline("tiny", seed=0)
    base.save_pretrained(root / "base")
    generator = torch.Generator().manual_seed(1)
    tuned = build_pipeline("tiny", seed=0)
    with torch.no_grad():
        for p in tuned.unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    tuned.save_pretrained(root / "tuned")
    add_lora(base.unet, base.text_encoder, rank=2, train_text_encoder=False)
    with torch.no_grad():
        for name, p in base.unet.named_parameters():
            if "lora_B" in name:  # B starts at zero (the adapter a no-op): give it weights
                p.copy_(0.5 * torch.randn(p.shape, generator=generator))
    LatentDiffusionPipeline.save_lora_weights(
        root / "lora", unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(base.unet)),
        safe_serialization=True)
    (root / "lora" / "training_config.json").write_text(json.dumps({"pretrained": str(root / "base")}))
    return root


def test_bench_end_to_end(models, tmp_path, capsys):
    base, out = models / "base", tmp_path / "out"
    argv = ["bench", "fine-tune", "--base", str(base), "--tuned", str(base), "--tuned", str(models / "tuned"),
            "--tuned", str(models / "lora"), "--data", str(models / "glyphs"), "--max-captions", "6", "--steps", "2",
            "--batch-size", "4", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "own RMSE" in printed and "x base" in printed and "tuned: " in printed and "(LoRA)" in printed
    report = json.loads((out / "fine_tune.json").read_text())
    assert (out / "fine_tune.png").stat().st_size > 0
    assert report["captions"] == 6 and report["eligible_captions"] == 8 and report["steps"] == 2
    assert report["chance"] == {"retrieval_top1": pytest.approx(1 / 6), "retrieval_top5": pytest.approx(5 / 6)}
    assert report["command"].startswith("latentdiff bench fine-tune --base=")
    same, perturbed, lora = report["models"][1:]
    assert [m["role"] for m in report["models"]] == ["base", "tuned", "tuned", "tuned"]
    assert [m["kind"] for m in report["models"]] == ["pipeline", "pipeline", "pipeline", "LoRA on the base"]
    assert set(same["metrics"]) == {"own_rmse", "nearest_rmse", "retrieval_top1", "retrieval_top5"}
    assert same["metrics"] == report["models"][0]["metrics"]  # the base again: the same numbers
    assert same["vs_base"] == {"own_rmse_ratio": 1.0, "nearest_rmse_ratio": 1.0, "retrieval_top1_change": 0.0,
                               "retrieval_top5_change": 0.0}
    assert perturbed["metrics"]["own_rmse"] != same["metrics"]["own_rmse"]
    assert lora["metrics"]["own_rmse"] != same["metrics"]["own_rmse"]  # the LoRA was loaded and changed the images
    # the floor: the training images through the base's VAE, computed here independently of the bench
    floor = report["vae_floor"]
    assert set(floor) == {"metrics", "vs_base"} and "through the VAE" in printed
    from latentdiff.bench.fine_tune import read_subset
    from latentdiff.pipelines import LatentDiffusionPipeline

    vae = LatentDiffusionPipeline.from_pretrained(str(base)).vae
    subset = read_subset(str(models / "glyphs"), report["resolution"], 6, 0)
    with torch.no_grad():
        z = vae.encode(subset.images * 2 - 1).latent_dist.mode()
        rebuilt = (vae.decode(z).sample.clamp(-1, 1) + 1) / 2
    assert floor["metrics"] == pytest.approx(nearest_neighbour_metrics(rebuilt, subset.images), abs=1e-6)
    for row in report["models"]:  # every model again, against the reconstructions
        assert set(row["vae_space"]) == set(row["metrics"]) and row["vae_space"] != row["metrics"]
    assert report["models"][1]["vae_space"] == report["models"][0]["vae_space"]  # the base again: the same
    assert "through the VAE (what a fine-tune" in printed
    assert floor["vs_base"]["own_rmse_ratio"] == pytest.approx(
        floor["metrics"]["own_rmse"] / report["models"][0]["metrics"]["own_rmse"])
    rows = report["per_caption"]
    assert len(rows) == 6 and [r["seed"] for r in rows] == list(range(6))
    captions = {json.loads(line)["text"] for line in (models / "glyphs" / "metadata.jsonl").read_text().splitlines()}
    assert {r["caption"] for r in rows} <= captions and all(0 <= v <= 1 for r in rows for v in r["own_rmse"].values())


def _one_line_error(argv, capsys, message):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err, err
    assert err.startswith("latentdiff bench fine-tune: error: "), err


def test_refusals_are_one_line(models, tmp_path, capsys):
    base, data = str(models / "base"), str(models / "glyphs")
    run = ["bench", "fine-tune", "--base", base, "--data", data, "--out", str(tmp_path / "out"), "--tuned"]
    # a LoRA that records no base, or another base
    shutil.copytree(models / "lora", tmp_path / "lora-unrecorded")
    (tmp_path / "lora-unrecorded" / "training_config.json").unlink()
    _one_line_error(run + [str(tmp_path / "lora-unrecorded")], capsys, "records no base model")
    shutil.copytree(models / "lora", tmp_path / "lora-other")
    (tmp_path / "lora-other" / "training_config.json").write_text(json.dumps({"pretrained": "someone/else"}))
    _one_line_error(run + [str(tmp_path / "lora-other")], capsys, "is a LoRA of someone/else")
    (tmp_path / "empty").mkdir()
    _one_line_error(run + [str(tmp_path / "empty")], capsys, "neither a pipeline folder")
    _one_line_error(run + [str(tmp_path / "typo")], capsys, f"--tuned {tmp_path / 'typo'} not found")
    _one_line_error(["bench", "fine-tune", "--base", str(tmp_path / "typo"), "--tuned", base, "--data", data, "--out",
                     str(tmp_path / "out")], capsys, f"--base {tmp_path / 'typo'} not found")
    # the data
    shutil.copytree(models / "glyphs", tmp_path / "no-metadata")
    (tmp_path / "no-metadata" / "metadata.jsonl").unlink()
    _one_line_error(["bench", "fine-tune", "--base", base, "--tuned", base, "--data", str(tmp_path / "no-metadata"),
                     "--out", str(tmp_path / "out")], capsys, "has no metadata.jsonl")
    _one_line_error(run + [base, "--max-captions", "1"], capsys, "--max-captions must be >= 2")
    assert not (tmp_path / "out").exists()
