"""Quiet tools (issue 16, part 6): what latentdiff writes loads in stock diffusers without warnings."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from latentdiff import build_pipeline
from latentdiff.pipelines import LatentDiffusionPipeline


def test_no_null_genie_head_in_model_index_and_stock_load_is_quiet(tmp_path, caplog):
    build_pipeline("tiny").save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert "genie_head" not in index
    assert LatentDiffusionPipeline.from_pretrained(tmp_path).genie_head is None  # the optional head stays None
    logger = logging.getLogger("diffusers")
    logger.addHandler(caplog.handler)  # diffusers' logger does not propagate to the root logger
    try:
        with caplog.at_level(logging.WARNING, logger="diffusers"):
            StableDiffusionPipeline.from_pretrained(tmp_path, safety_checker=None, requires_safety_checker=False)
    finally:
        logger.removeHandler(caplog.handler)
    assert not [r.getMessage() for r in caplog.records if "genie_head" in r.getMessage()]


# Output that `latentdiff generate` and training runs printed before issue 16 part 6, none of which may come back
NOISE = ("were not passed to `accelerate launch`", "should be kept in float32", "Loading weights")


def bar_names(output: str) -> list[str]:
    """The names of the tqdm bars in captured output (each redraw once), e.g. ["Loading pipeline components...", ""]."""
    names = [line.split(":", 1)[0].strip() if ":" in line.split("%|")[0] else ""
             for line in output.replace("\r", "\n").splitlines() if "%|" in line]
    return list(dict.fromkeys(names))


def test_generate_prints_one_loading_bar_and_no_warnings(tmp_path):
    """`latentdiff generate` on the shipped model: the image path on stdout; on stderr one bar for the pipeline load
    (not one more per component) and the sampler's bar, and none of NOISE."""
    model = Path(__file__).resolve().parents[1] / "assets" / "shapes-tiny"
    result = subprocess.run([sys.executable, "-m", "latentdiff.cli", "generate", "a red circle", "--model", str(model),
                             "--steps", "2", "-o", "x.png"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "x.png"
    assert not [n for n in NOISE if n in result.stderr], result.stderr
    assert bar_names(result.stderr) == ["Loading pipeline components...", ""], result.stderr


def test_load_pipeline_draws_one_bar_and_restores_transformers_bars(tmp_path, capfd):
    from transformers.utils import logging as transformers_logging

    from latentdiff.loading import load_pipeline

    build_pipeline("tiny").save_pretrained(tmp_path)
    capfd.readouterr()
    load_pipeline(str(tmp_path))
    assert bar_names(capfd.readouterr().err) == ["Loading pipeline components..."]
    assert transformers_logging.set_tqdm_hook(None) is None  # the hook is undone after the load


def test_place_frozen_casts_only_what_changes_without_the_float32_warning(caplog):
    from latentdiff.training.frozen import place_frozen

    vae = build_pipeline("tiny").vae
    logger = logging.getLogger("diffusers")
    logger.addHandler(caplog.handler)  # diffusers' logger does not propagate to the root logger
    try:
        with caplog.at_level(logging.WARNING, logger="diffusers"):
            place_frozen(vae, torch.device("cpu"), torch.float32)  # an fp32 run: nothing to cast
    finally:
        logger.removeHandler(caplog.handler)
    assert not [r.getMessage() for r in caplog.records], caplog.records
    assert place_frozen(vae, torch.device("cpu"), torch.bfloat16).dtype == torch.bfloat16  # mixed precision: cast
