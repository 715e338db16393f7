"""Slow end-to-end: ShapesWorld -> a tiny VAE -> a tiny text-to-image model, killed mid-run and resumed ->
a pipeline folder that stock diffusers loads and generates with. Run with `pytest -m slow`."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from latentdiff.training.checkpoint import latest_checkpoint

pytestmark = pytest.mark.slow


def launch(module: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def test_shapes_to_vae_to_text_to_image_killed_and_resumed(tmp_path, report):
    data, val = tmp_path / "shapes", tmp_path / "val"
    for out, n, seed in ((data, 2000, 0), (val, 64, 1)):
        subprocess.run(["latentdiff", "shapes", "--out", str(out), "--n", str(n), "--size", "16", "--seed", str(seed),
                        "--no-progress"], check=True)

    vae_out = tmp_path / "vae"
    vae = launch("latentdiff.training.train_vae", "--preset", "tiny", "--train-data", str(data), "--val-data", str(val),
                 "--output-dir", str(vae_out), "--resolution", "16", "--batch-size", "32", "--max-steps", "300",
                 "--validation-every", "300", "--checkpoint-every", "300", "--val-images", "64")
    assert vae.wait(timeout=1800) == 0, vae.stdout.read()[-3000:]
    vae_summary = json.loads((vae_out / "training_summary.json").read_text())
    report(f"tiny VAE after 300 steps: held-out PSNR {vae_summary['val_psnr_db']:.1f} dB, "
           f"scaling_factor {vae_summary['scaling_factor']:.3f}, {vae_summary['seconds']:.0f} s")
    assert vae_summary["val_psnr_db"] > 15

    run = tmp_path / "t2i"
    args = ["--preset", "tiny", "--vae", str(vae_out / "vae"), "--train-data", str(data), "--resolution", "16",
            "--batch-size", "16", "--max-steps", "300", "--checkpoint-every", "50", "--validation-every", "100",
            "--validation-steps", "4", "--output-dir", str(run), "--learning-rate", "1e-3", "--lr-warmup-steps", "20"]
    first = launch("latentdiff.training.train_text_to_image", *args)
    deadline = time.time() + 1800
    while latest_checkpoint(run) is None or latest_checkpoint(run).name < "checkpoint-0000100":
        assert first.poll() is None, first.stdout.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.5)
    first.send_signal(signal.SIGKILL)  # no chance to clean up: a save may be half-written
    first.wait()
    killed_at = latest_checkpoint(run).name
    second = launch("latentdiff.training.train_text_to_image", *args, "--resume", "latest")
    output = second.communicate(timeout=1800)[0]
    assert second.returncode == 0, output[-3000:]
    assert "resumed from" in output
    summary = json.loads((run / "training_summary.json").read_text())
    assert summary["steps"] == 300
    report(f"text-to-image: killed after {killed_at}, resumed, finished 300 steps; "
           f"{summary['images_per_s']:.1f} images/s")

    stock = StableDiffusionPipeline.from_pretrained(run / "pipeline", safety_checker=None)
    stock.set_progress_bar_config(disable=True)
    images = stock("a red circle", num_inference_steps=10, height=16, width=16, output_type="np",
                   generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 16, 16, 3) and np.isfinite(images).all() and images.std() > 0.01
    assert sorted(p.name for p in (run / "samples").iterdir())[-1] == "step-0000300.png"
