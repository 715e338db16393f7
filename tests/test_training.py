"""Training: typed configs, atomic checkpoints, the loss, and short real runs of train_text_to_image on CPU."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from diffusers import DDPMScheduler, StableDiffusionPipeline
from safetensors.torch import load_file

from latentdiff import build_pipeline
from latentdiff.data.shapes import write_dataset
from latentdiff.presets import SD_PROCESS
from latentdiff.training import train_text_to_image
from latentdiff.training.checkpoint import PARTIAL, checkpoint_dirs, latest_checkpoint, save_checkpoint
from latentdiff.training.config import build_parser, parse_config
from latentdiff.ddpm.objective import DDPMObjective
from latentdiff.training.train_text_to_image import TextToImageConfig

from messy import expected_counts, make_messy  # tests/messy.py


pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")  # tests/conftest.py


@pytest.fixture(scope="module")
def shapes16(tmp_path_factory):
    """24 ShapesWorld images of 16x16 and a random tiny-preset VAE folder."""
    root = tmp_path_factory.mktemp("t2i")
    write_dataset(root / "data", n=24, size=16, seed=0, progress=False)
    build_pipeline("tiny").vae.save_pretrained(root / "vae")
    return root


def train(root: Path, out: Path, *extra: str) -> Path:
    argv = ["--preset", "tiny", "--vae", str(root / "vae"), "--train-data", str(root / "data"), "--resolution", "16",
            "--batch-size", "8", "--output-dir", str(out), "--lr-warmup-steps", "1", "--validation-every", "1000",
            "--validation-steps", "2", "--validation-prompts", "a red circle", "two blue squares", *extra]
    train_text_to_image.main(argv)
    return out


# ------------------------------------------------------------------------------------------------ config
def test_config_precedence_yaml_then_flags(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train_data: data\nvae: v\nmax_steps: 50\nlearning_rate: 0.001\nsnr_gamma: null\n")
    cfg = parse_config(TextToImageConfig, ["--config", str(recipe), "--max-steps", "7", "--use-ema", "false"])
    assert cfg.max_steps == 7 and cfg.learning_rate == 0.001 and cfg.snr_gamma is None and cfg.use_ema is False
    assert cfg.batch_size == 32 and cfg.train_text_encoder is True  # default; from scratch trains the text encoder


def test_config_errors_say_what_to_change(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train_data: data\nvae: v\nmax_step: 50\n")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['max_step'\]"):
        parse_config(TextToImageConfig, ["--config", str(recipe)])
    with pytest.raises(ValueError, match="needs a trained VAE"):
        parse_config(TextToImageConfig, ["--train-data", "d"])
    with pytest.raises(ValueError, match="--prediction-type must be"):
        parse_config(TextToImageConfig, ["--train-data", "d", "--vae", "v", "--prediction-type", "x0"])


def test_every_field_is_a_flag_with_its_comment():
    text = build_parser(TextToImageConfig).format_help()
    for flag in ("--preset", "--pretrained", "--vae", "--train-data", "--output-dir", "--resolution", "--batch-size",
                 "--max-steps", "--learning-rate", "--checkpoint-every", "--resume", "--lora-rank",
                 "--validation-every", "--seed"):
        assert flag in text
    assert "min-SNR-gamma loss weighting" in text


# ------------------------------------------------------------------------------------------------ loss
def test_targets_and_min_snr_weights():
    torch.manual_seed(0)
    latents = torch.randn(4, 4, 8, 8)
    v_sched = DDPMScheduler.from_config(SD_PROCESS, prediction_type="v_prediction")
    g = torch.Generator().manual_seed(1)
    batch = DDPMObjective(v_sched).perturb(latents, generator=g)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(latents.shape, generator=g)
    t = torch.randint(0, 1000, (4,), generator=g)
    torch.testing.assert_close(batch.target, v_sched.get_velocity(latents, noise, t))

    eps_sched = DDPMScheduler.from_config(SD_PROCESS)
    eps = DDPMObjective(eps_sched).perturb(latents, generator=torch.Generator().manual_seed(2))
    pred = torch.zeros_like(latents)
    plain = DDPMObjective(eps_sched, snr_gamma=None).loss(pred, eps)
    weighted = DDPMObjective(eps_sched, snr_gamma=5.0).loss(pred, eps)
    abar = eps_sched.alphas_cumprod[eps.timesteps]
    snr = abar / (1 - abar)
    torch.testing.assert_close(weighted, plain * torch.clamp(snr, max=5.0) / snr)
    assert plain.shape == (4,)


# ------------------------------------------------------------------------------------------------ checkpoints
def test_checkpoints_are_atomic_and_pruned(tmp_path):
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(2, 2))
    for step in (10, 20, 30):
        save_checkpoint(accelerator, tmp_path, step, keep=2)
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["checkpoint-0000020", "checkpoint-0000030"]
    # a save killed half-way leaves a partial folder: never chosen, removed by the next save
    partial = tmp_path / "checkpoints" / f"{PARTIAL}0000040"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    assert latest_checkpoint(tmp_path).name == "checkpoint-0000030"
    with torch.no_grad():
        model.weight.add_(1.0)
    save_checkpoint(accelerator, tmp_path, 40, keep=2)
    assert not partial.exists() and latest_checkpoint(tmp_path).name == "checkpoint-0000040"


def test_run_clock_leaves_out_pauses_and_goes_on_from_the_checkpoint(monkeypatch):
    from latentdiff.training import run_clock

    now, cpu = [100.0], [5.0]
    monkeypatch.setattr(run_clock, "perf_counter", lambda: now[0])
    monkeypatch.setattr(run_clock, "process_time", lambda: cpu[0])
    resumed = {"step": 7, "train_seconds": 50.0, "wall_clock_seconds": 80.0, "cpu_seconds": 30.0}
    # a budget of 60 s of training; this invocation started 1 s before its loop (loading the models)
    clock = run_clock.RunClock(Accelerator(cpu=True), None, resumed, train_budget_minutes=1.0, started=now[0] - 1.0)
    now[0] += 6.0  # training
    assert clock.train_seconds == 6.0 and not clock.out_of_time()
    with clock.paused("checkpoint"):  # validation and a checkpoint: the training clock stands still
        now[0] += 4.0
        cpu[0] += 7.0  # CPU seconds of this process go on counting, paused or not
        assert clock.progress(2, 3) == {"epoch": 2, "batch": 3, "train_seconds": 56.0, "wall_clock_seconds": 91.0,
                                        "cpu_seconds": 37.0}
    now[0] += 4.0
    assert (clock.train_seconds, clock.total_train_seconds, clock.seconds) == (10.0, 60.0, 15.0)
    assert clock.out_of_time() and clock.spent_budget == "train_time_budget_minutes"  # 50 + 10 s of training spent
    clock.stop()
    now[0] += 5.0  # writing the result: wall-clock time only
    assert (clock.train_seconds, clock.wall_clock_seconds) == (10.0, 100.0)
    fresh = run_clock.RunClock(Accelerator(cpu=True), None, {"step": 0})
    now[0] += 1e6
    assert fresh.total_train_seconds == 1e6 and not fresh.out_of_time()


def test_wall_clock_budget_counts_everything_and_leaves_room_for_the_end(monkeypatch):
    from latentdiff.training import run_clock

    now = [100.0]
    monkeypatch.setattr(run_clock, "perf_counter", lambda: now[0])
    clock = run_clock.RunClock(Accelerator(cpu=True), 1.0, {"step": 0}, started=now[0] - 5.0)  # 60 s, all of it
    now[0] += 2.0  # a step
    assert clock.spent() == pytest.approx((5.0 + 2.0 + 2.0) / 60)  # the time so far and one more step
    with clock.paused("grid"):
        now[0] += 10.0
    with clock.paused("checkpoint"):
        now[0] += 3.0
    now[0] += 2.0  # a step: 22 s so far; the end needs a step, a grid, a checkpoint and the final folder
    assert clock.spent() == pytest.approx((22.0 + 18.0) / 60) and clock.end_reserve == 2.0 + 10.0 + 2 * 3.0
    now[0] += 2.0
    assert clock.spent() == pytest.approx((24.0 + 18.0) / 60) and not clock.out_of_time()
    now[0] += 18.0  # 44 s and a step of 18 s: the end would not fit
    assert clock.out_of_time() and clock.spent_budget == "time_budget_minutes"


# ------------------------------------------------------------------------------------------------ real runs
def unet_weights(out: Path) -> dict:
    return load_file(out / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")


def test_killed_and_resumed_run_ends_with_the_same_weights(shapes16, tmp_path):
    # 24 images / batch 8 = 3 steps an epoch: 5 steps cross an epoch boundary, with EMA and a text encoder
    straight = train(shapes16, tmp_path / "straight", "--max-steps", "5", "--checkpoint-every", "10")
    sliced = tmp_path / "sliced"
    train(shapes16, sliced, "--max-steps", "5", "--checkpoint-every", "10", "--stop-after", "2")
    assert not (sliced / "pipeline").exists() and latest_checkpoint(sliced).name == "checkpoint-0000002"
    AcceleratorState._reset_state(True)
    train(shapes16, sliced, "--max-steps", "5", "--checkpoint-every", "10", "--resume", "latest")
    a, b = unet_weights(straight), unet_weights(sliced)
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, worst
    text_a = load_file(straight / "pipeline" / "text_encoder" / "model.safetensors")
    text_b = load_file(sliced / "pipeline" / "text_encoder" / "model.safetensors")
    assert max(float((text_a[k] - text_b[k]).abs().max()) for k in text_a) <= 1e-6


def test_time_budget_finishes_the_run_and_summary_feeds_the_card(shapes16, tmp_path):
    # a budget of ~0 minutes: the first step spends it; the run ends as at --max-steps, with its final folder
    out = train(shapes16, tmp_path / "budget", "--max-steps", "50", "--time-budget-minutes", "0.0001")
    summary = json.loads((out / "pipeline" / "training_summary.json").read_text())
    assert summary["steps"] == 1 and summary["epochs"] == pytest.approx(8 / 24, abs=1e-3)
    assert summary["stop_reason"] == "time_budget_minutes"
    assert summary["wall_clock_seconds"] > 0 and summary["hardware"].startswith("CPU")
    assert json.loads((out / "pipeline" / "training_config.json").read_text())["time_budget_minutes"] == 0.0001
    assert latest_checkpoint(out).name == "checkpoint-0000001"
    from latentdiff.hub import read_card_info

    info = read_card_info(out / "pipeline")
    assert info.training["steps"] == 1 and info.hyperparameters["time_budget_minutes"] == 0.0001


def test_hub_options_are_checked_before_training(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    with pytest.raises(ValueError, match="--push-to-hub needs --hub-repo-id"):
        parse_config(TextToImageConfig, ["--train-data", "d", "--vae", "v", "--push-to-hub", "true"])
    with pytest.raises(ValueError, match="needs a Hugging Face token"):
        parse_config(TextToImageConfig, ["--train-data", "d", "--vae", "v", "--push-to-hub", "true",
                                         "--hub-repo-id", "someone/model"])
    with pytest.raises(ValueError, match="--time-budget-minutes must be > 0"):
        parse_config(TextToImageConfig, ["--train-data", "d", "--vae", "v", "--time-budget-minutes", "0"])


def test_output_loads_in_stock_diffusers_and_lora_fine_tune(shapes16, tmp_path):
    out = train(shapes16, tmp_path / "base", "--max-steps", "2", "--validation-every", "2")
    assert (out / "samples" / "step-0000002.png").is_file()
    stock = StableDiffusionPipeline.from_pretrained(out / "pipeline", safety_checker=None)
    stock.set_progress_bar_config(disable=True)
    base = stock("a red circle", num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images

    AcceleratorState._reset_state(True)
    lora = tmp_path / "lora"
    train_text_to_image.main(["--pretrained", str(out / "pipeline"), "--train-data", str(shapes16 / "data"),
                              "--resolution", "16", "--batch-size", "8", "--max-steps", "2", "--lora-rank", "4",
                              "--learning-rate", "0.05", "--output-dir", str(lora), "--validation-every", "100",
                              "--validation-steps", "2"])
    assert (lora / "lora" / "pytorch_lora_weights.safetensors").is_file()
    stock.load_lora_weights(lora / "lora")
    tuned = stock("a red circle", num_inference_steps=2, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert np.abs(tuned - base).max() > 1e-4


def test_broken_files_of_every_kind_train_to_the_end(tmp_path, capsys):
    root = make_messy(tmp_path)
    build_pipeline("tiny").vae.save_pretrained(tmp_path / "vae")
    out = tmp_path / "run"
    train_text_to_image.main(["--preset", "tiny", "--vae", str(tmp_path / "vae"), "--train-data", str(root),
                              "--resolution", "32", "--batch-size", "4", "--max-steps", "12",
                              "--output-dir", str(out), "--validation-every", "100", "--validation-steps", "1",
                              "--missing-caption", "skip", "--min-size", "skip", "--outside-root", "skip"])
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["steps"] == 12
    counts = {k: v for k, v in summary["skipped_files"].items() if v}
    assert counts == expected_counts()
    assert "skipped 10 files" in capsys.readouterr().out


def test_two_processes_on_cpu(shapes16, tmp_path, report):
    """ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 (gloo): same weights, disjoint data."""
    data = tmp_path / "data32"
    write_dataset(data, n=32, size=16, seed=3, progress=False)
    out = tmp_path / "ddp"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m",
           "latentdiff.training.train_text_to_image", "--preset", "tiny", "--vae", str(shapes16 / "vae"),
           "--train-data", str(data), "--resolution", "16", "--batch-size", "4", "--max-steps", "3",
           "--output-dir", str(out), "--validation-every", "100", "--validation-steps", "1", "--use-ema", "false"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((out / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    report(f"2-process CPU run: rank 0 saw {len(ranks[0]['samples'])} samples, rank 1 saw "
           f"{len(ranks[1]['samples'])}, overlap {len(set(ranks[0]['samples']) & set(ranks[1]['samples']))}; "
           f"UNet sha256 rank 0 {ranks[0]['unet_sha256'][:16]}, rank 1 {ranks[1]['unet_sha256'][:16]}")
    assert len(ranks[0]["samples"]) == len(ranks[1]["samples"]) == 3 * 4
    assert not set(ranks[0]["samples"]) & set(ranks[1]["samples"])
    assert ranks[0]["unet_sha256"] == ranks[1]["unet_sha256"]
    assert (out / "pipeline" / "model_index.json").is_file()


def test_bench_train_compares_cached_run_with_per_step_encoding(shapes16, tmp_path):
    from latentdiff.bench.train import bench_train

    result = bench_train(str(shapes16 / "data"), str(tmp_path / "bench"), preset="tiny", resolution=16, batch_size=4,
                         steps=5)
    assert result.ours["latent_cache"]["misses"] == 0 and result.ours["text_cache"]["misses"] == 0  # warmed caches
    assert result.baseline["latent_cache"] is None and result.baseline["text_cache"] is None  # encoders every step
    assert result.ours["steady_images_per_s"] > 0 and result.baseline["steady_images_per_s"] > 0
    assert result.speedup == pytest.approx(result.ours["steady_images_per_s"] / result.baseline["steady_images_per_s"])
    config = json.loads((tmp_path / "bench" / "baseline" / "training_config.json").read_text())
    assert config["channels_last"] is False and config["fused_adam"] is False and config["cache_latents"] is False
    assert "images/s ratio" in result.table()


def test_architecture_flags_train_the_model_they_describe(shapes16, tmp_path):
    out = train(shapes16, tmp_path / "arch", "--max-steps", "1", "--unet-attention", "false", "true",
                "--text-layers", "1", "--text-width", "48", "--text-heads", "4", "--use-ema", "false")
    unet = json.loads((out / "pipeline" / "unet" / "config.json").read_text())
    text = json.loads((out / "pipeline" / "text_encoder" / "config.json").read_text())
    assert unet["down_block_types"] == ["DownBlock2D", "CrossAttnDownBlock2D"] and unet["cross_attention_dim"] == 48
    assert (text["hidden_size"], text["num_hidden_layers"]) == (48, 1)
