"""Fine-tuning as a new user meets it (issue 16, parts 1, 3 and the time budget of 6): defaults per kind of run,
sample grids at evenly spaced points, grid prompts from the user's captions, LoRA with the text encoder loaded by
stock diffusers, the LoRA's card and test-load on its recorded base, and a wall-clock time budget."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from huggingface_hub import ModelCard
from PIL import Image
from safetensors import safe_open

from latentdiff import build_pipeline, hub
from latentdiff.data.dataset import DataConfig, build_dataset
from latentdiff.data.shapes import write_dataset
from latentdiff.eval.seeded import generate_seeded
from latentdiff.pipelines import make_scheduler
from latentdiff.pipelines.processes import get_process
from latentdiff.training import train_text_to_image
from latentdiff.training.config import build_parser
from latentdiff.training.run_clock import GRIDS, grid_point
from latentdiff.training.train_text_to_image import TextToImageConfig
from latentdiff.training.validation import prompts_from_data

pytestmark = pytest.mark.usefixtures("fresh_accelerator_state")  # tests/conftest.py

CAPTIONS = ["a photo of a tabby cat on a sofa", "a red bicycle leaning on a wall", "two cups of coffee",
            "a lighthouse at dusk", "a bowl of green apples", "a dog running on a beach"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A tiny base model folder, its VAE, and a user's own captioned images (an imagefolder of 16 x 16 pictures)."""
    root = tmp_path_factory.mktemp("fine-tune")
    build_pipeline("tiny", seed=0).save_pretrained(root / "base-tiny")
    rng = np.random.default_rng(0)
    data = root / "photos"
    data.mkdir()
    rows = []
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(data / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": CAPTIONS[i % len(CAPTIONS)]}))
    (data / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return root


def train(root: Path, out: Path, *flags: str) -> Path:
    train_text_to_image.main(["--train-data", str(root / "photos"), "--resolution", "16", "--batch-size", "4",
                              "--output-dir", str(out), "--validation-steps", "2", "--report-to", "none", *flags])
    return out


def fine_tune(root: Path, out: Path, *flags: str) -> Path:
    return train(root, out, "--pretrained", str(root / "base-tiny"), *flags)


def samples(out: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in (out / "samples").glob("step-*.png"))


# ---------------------------------------------------------------------------------------------- defaults per kind
def test_help_lists_the_defaults_of_each_kind_of_run():
    text = " ".join(build_parser(TextToImageConfig).format_help().split())
    for expected in ("(default: from scratch 0.0005; full fine-tune 2e-05; LoRA 0.0001)",
                     "(default: from scratch 500; full fine-tune 5% of --max-steps, at most 100; LoRA 5% of "
                     "--max-steps, at most 100)",
                     "(default: from scratch True; full fine-tune False; LoRA False)",
                     "(default: from scratch 0.1; full fine-tune 0.05; LoRA 0.05)",
                     "Kinds of run: from scratch (no --pretrained), full fine-tune (--pretrained DIR), LoRA"):
        assert expected in text, expected


@pytest.mark.parametrize("kind, flags, lr, warmup, ema, dropout", [
    ("from scratch", ["--preset", "tiny", "--vae", "BASE/vae"], 5e-4, 500, True, 0.1),
    ("full fine-tune", ["--pretrained", "BASE"], 2e-5, 1, False, 0.05),  # 5% of 20 steps
    ("LoRA", ["--pretrained", "BASE", "--lora-rank", "4"], 1e-4, 1, False, 0.05),
    ("full fine-tune", ["--pretrained", "BASE", "--learning-rate", "3e-4", "--lr-warmup-steps", "0", "--use-ema",
                        "--caption-dropout", "0.2"], 3e-4, 0, True, 0.2),  # given values win
])
def test_each_kind_of_run_takes_its_defaults_and_says_so(root, tmp_path, monkeypatch, capsys, kind, flags, lr,
                                                         warmup, ema, dropout):
    used = {"ema": False, "dropout": set()}
    real_optimizer, real_drop = train_text_to_image.optimizer_and_schedule, train_text_to_image.drop_captions

    def optimizer_and_schedule(cfg, params):
        optimizer, schedule = real_optimizer(cfg, params)
        used.update(lr=optimizer.defaults["lr"], warmup=cfg.lr_warmup_steps, max_steps=cfg.max_steps)
        return optimizer, schedule

    def make_ema(*args, **kwargs):
        used["ema"] = True
        return None  # (the spy only records that EMA was asked for)

    def drop_captions(captions, p):
        used["dropout"].add(p)
        return real_drop(captions, p)

    monkeypatch.setattr(train_text_to_image, "optimizer_and_schedule", optimizer_and_schedule)
    monkeypatch.setattr(train_text_to_image, "make_ema", make_ema)
    monkeypatch.setattr(train_text_to_image, "drop_captions", drop_captions)
    flags = [f.replace("BASE", str(root / "base-tiny")) for f in flags]
    out = train(root, tmp_path / "run", *flags, "--max-steps", "20", "--stop-after", "1")
    first = capsys.readouterr().out.splitlines()
    assert used == {"lr": lr, "warmup": warmup, "max_steps": 20, "ema": ema, "dropout": {dropout}}
    recorded = json.loads((out / "training_config.json").read_text())
    assert (recorded["learning_rate"], recorded["lr_warmup_steps"], recorded["use_ema"],
            recorded["caption_dropout"]) == (lr, warmup, ema, dropout)
    assert first[0].startswith(f"train_text_to_image: {kind}")
    if "--learning-rate" in flags:
        assert first[1:3] == ["full fine-tune defaults: none taken", "given: --learning-rate 0.0003, "
                              "--lr-warmup-steps 0, --use-ema true, --caption-dropout 0.2"]
    else:
        warm = f"--lr-warmup-steps {warmup}" + ("" if kind == "from scratch" else " (5% of --max-steps, at most 100)")
        assert first[1] == (f"{kind} defaults: --learning-rate {lr:g}, {warm}, --use-ema {str(ema).lower()}, "
                            f"--caption-dropout {dropout:g}")


def test_a_lora_run_refuses_ema_before_any_work():
    from latentdiff.training.config import parse_config

    with pytest.raises(ValueError, match="--use-ema averages all of the UNet's weights.*drop --use-ema"):
        parse_config(TextToImageConfig, ["--train-data", "d", "--pretrained", "m", "--lora-rank", "4", "--use-ema"])


# ---------------------------------------------------------------------------------------------- grids and prompts
def test_grid_points_are_evenly_spaced_by_steps_or_time():
    def grid_steps(max_steps):
        return [s for s in range(1, max_steps + 1) if grid_point(s, max_steps, 0.0) > grid_point(s - 1, max_steps, 0.0)]

    assert GRIDS == 4
    assert grid_steps(10) == [2, 4, 6, 8, 10] and grid_steps(1000) == [200, 400, 600, 800, 1000]
    assert grid_steps(7) == [2, 3, 5, 6, 7]  # ceil(k * 7 / 5)
    # a time budget that ends the run first: at 20, 40, 60 and 80 % of it, whichever of steps and time is further
    assert [grid_point(1, 10_000, spent) for spent in (0.19, 0.2, 0.41, 0.79, 0.8, 1.0)] == [0, 1, 2, 3, 4, 5]
    assert grid_point(5000, 10_000, 0.1) == 2


def test_sample_grids_at_four_evenly_spaced_steps_and_the_end_unless_an_interval_is_given(root, tmp_path):
    assert samples(fine_tune(root, tmp_path / "even", "--max-steps", "10")) == [2, 4, 6, 8, 10]
    assert samples(fine_tune(root, tmp_path / "every", "--max-steps", "10", "--validation-every", "3")) == [3, 6, 9,
                                                                                                            10]


def test_default_prompts_are_captions_of_the_users_data_and_the_empty_prompt(root, tmp_path):
    dataset = build_dataset(DataConfig(train_data=str(root / "photos"), resolution=16))
    prompts = prompts_from_data(dataset, seed=0)
    assert len(prompts) == 5 and prompts[-1] == "" and len(set(prompts)) == 5
    assert set(prompts[:-1]) <= set(CAPTIONS)
    assert prompts_from_data(dataset, seed=0) == prompts and prompts_from_data(dataset, seed=1) != prompts
    # ShapesWorld prompts only when training on ShapesWorld: its captions are the data's
    write_dataset(tmp_path / "shapes", n=12, size=16, seed=0, progress=False)
    shapes = [json.loads(line)["text"] for line in (tmp_path / "shapes" / "metadata.jsonl").read_text().splitlines()]
    drawn = prompts_from_data(build_dataset(DataConfig(train_data=str(tmp_path / "shapes"), resolution=16)), seed=0)
    assert set(drawn[:-1]) <= set(shapes) and drawn[-1] == ""
    procedural = build_dataset(DataConfig(train_data="shapesworld:train?seed=0&n=50&fresh=false", resolution=16))
    assert set(prompts_from_data(procedural, seed=0)[:-1]) <= {procedural[i]["caption"] for i in range(50)}
    # a run records the prompts it drew, so the grids and the model card use them
    out = fine_tune(root, tmp_path / "run", "--max-steps", "1")
    assert json.loads((out / "training_config.json").read_text())["validation_prompts"] == prompts
    assert json.loads((out / "pipeline" / "training_config.json").read_text())["validation_prompts"] == prompts


# ---------------------------------------------------------------------------------------------- LoRA
@pytest.fixture(scope="module")
def lora_runs(root, tmp_path_factory):
    """Two LoRA runs of 4 steps on the base: UNet only, and UNet + text encoder (--train-text-encoder)."""
    from accelerate.state import AcceleratorState

    runs = {}
    for name, extra in (("unet", []), ("unet+text", ["--train-text-encoder"])):
        AcceleratorState._reset_state(True)
        runs[name] = fine_tune(root, tmp_path_factory.mktemp("lora") / name, "--lora-rank", "4", "--max-steps", "4",
                               "--learning-rate", "0.05", *extra)
    AcceleratorState._reset_state(True)
    return runs


class Captured:
    """diffusers', peft's and transformers' log records (all levels, each line "LEVEL message") and Python warnings
    ("warning message"), as text."""

    def __enter__(self):
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        self.loggers = [logging.getLogger(name) for name in ("diffusers", "peft", "transformers")]
        self.levels = [logger.level for logger in self.loggers]
        for logger in self.loggers:
            logger.addHandler(self.handler)
            logger.setLevel(logging.DEBUG)
        self.warnings = warnings.catch_warnings(record=True)
        self.caught = self.warnings.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self.warnings.__exit__(*exc)
        for logger, level in zip(self.loggers, self.levels):
            logger.removeHandler(self.handler)
            logger.setLevel(level)
        self.text = self.stream.getvalue() + "".join(f"warning {w.message}\n" for w in self.caught)


def grid_tiles(path: Path, n: int, size: int = 16, pad: int = 2) -> list[np.ndarray]:
    """The n images of a sample grid (latentdiff.images.make_grid, one row)."""
    grid = np.asarray(Image.open(path).convert("RGB"))
    return [grid[pad:pad + size, pad + i * (size + pad):pad + i * (size + pad) + size] for i in range(n)]


@pytest.mark.parametrize("variant", ["unet", "unet+text"])
def test_stock_diffusers_loads_every_lora_variant_quietly_and_draws_our_images(root, lora_runs, variant):
    out = lora_runs[variant]
    with safe_open(str(out / "lora" / "pytorch_lora_weights.safetensors"), "pt") as f:
        parts = {key.split(".", 1)[0] for key in f.keys()}
    assert parts == ({"unet", "text_encoder"} if variant == "unet+text" else {"unet"})
    stock = StableDiffusionPipeline.from_pretrained(root / "base-tiny", safety_checker=None)
    with Captured() as captured:
        stock.load_lora_weights(out / "lora")
    # nothing about missing or unexpected keys (peft's and diffusers' incompatible-keys warnings, transformers' unused
    # or newly initialised weights), at any level
    assert not re.search(r"(missing|unexpected)[ _]keys|keys? (is|are|was|were) (missing|unexpected)|not used when "
                         r"initializing|newly initialized", captured.text, re.I), captured.text
    # and no other warning, but for diffusers' notice that a UNet-only LoRA has no text-encoder keys, which every
    # UNet-only LoRA gets from StableDiffusionLoraLoaderMixin.load_lora_weights (it always tries the text encoder)
    notice = "No LoRA keys associated to CLIPTextModel found with the prefix='text_encoder'"
    shown = [line for line in captured.text.splitlines() if line.split(" ", 1)[0] in ("WARNING", "ERROR", "warning")]
    assert all(notice in line for line in shown) and len(shown) == (variant == "unet"), shown
    # the loaded pipeline draws what ours drew with the LoRA at the end of training (the last sample grid)
    config = json.loads((out / "training_config.json").read_text())
    prompts = config["validation_prompts"]
    stock.scheduler = make_scheduler(get_process("ddpm").default_sampler, stock.scheduler.config)
    stock.set_progress_bar_config(disable=True)
    drawn = generate_seeded(stock, prompts, [config["seed"] + i for i in range(len(prompts))],
                            num_inference_steps=config["validation_steps"],
                            guidance_scale=config["validation_guidance"], output_type="np").images
    ours = grid_tiles(out / "samples" / "step-0000004.png", len(prompts))
    for image, tile in zip(drawn, ours):
        assert np.abs((image * 255).round().astype(int) - tile.astype(int)).max() <= 1
    base = StableDiffusionPipeline.from_pretrained(root / "base-tiny", safety_checker=None)
    base.scheduler = stock.scheduler
    base.set_progress_bar_config(disable=True)
    plain = generate_seeded(base, prompts[:1], [config["seed"]], num_inference_steps=config["validation_steps"],
                            guidance_scale=config["validation_guidance"], output_type="np").images
    assert np.abs(plain[0] - drawn[0]).max() > 1e-3  # the LoRA changed the picture


def test_lora_card_names_the_recorded_base_and_push_test_loads_it(root, lora_runs, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    lora = lora_runs["unet+text"] / "lora"
    prompts = json.loads((lora / "training_config.json").read_text())["validation_prompts"]
    lines = []
    result = hub.push_folder(lora, "someone/photos-lora", dry_run=True, stage_dir=tmp_path / "stage",
                             log=lines.append, card_info={"sample_steps": 2})  # no --base-model, no --base-model-id
    assert result.staged.validated, lines
    card = ModelCard.load(tmp_path / "stage" / "README.md")
    assert "LoRA weights for `base-tiny` (a local folder), made with latentdiff." in card.text
    assert "Base model: `base-tiny` (a local folder)." in card.text and str(root) not in card.content
    assert [w["text"] for w in card.data.widget] == prompts[:-1]  # the run's prompts ("" has no widget)
    assert "“” (no prompt: the unconditional picture)" in card.text
    assert "on the base model" in result.staged.validation

    # the recorded base is gone: one line saying what to pass
    moved = tmp_path / "lora"
    shutil.copytree(lora, moved)
    config = json.loads((moved / "training_config.json").read_text())
    (moved / "training_config.json").write_text(json.dumps({**config, "pretrained": str(tmp_path / "gone")}))
    with pytest.raises(hub.HubError) as err:
        hub.push_folder(moved, "someone/photos-lora", dry_run=True, stage_dir=tmp_path / "stage2", log=lines.append)
    assert "\n" not in str(err.value) and "is not a folder here; pass --base-model" in str(err.value)


# ---------------------------------------------------------------------------------------------- time budget
def test_time_budget_is_wall_clock_with_grids_and_saves_included(root, tmp_path, report):
    budget = 0.2  # minutes
    out = fine_tune(root, tmp_path / "budget", "--max-steps", "100000", "--time-budget-minutes", str(budget),
                    "--validation-steps", "25")  # grids that cost time: 5 prompts x 25 steps
    summary = json.loads((out / "pipeline" / "training_summary.json").read_text())
    report(f"--time-budget-minutes {budget}: {summary['steps']} steps, wall clock {summary['wall_clock_seconds']:.2f} s "
           f"of {60 * budget:.0f} s, training {summary['train_seconds']:.2f} s, {len(samples(out))} grids")
    assert summary["stop_reason"] == "time_budget_minutes" and 1 < summary["steps"] < 100000
    assert summary["wall_clock_seconds"] <= 60 * budget * 1.05 + 1.5
    assert summary["train_seconds"] < summary["wall_clock_seconds"]  # grids and checkpoints took some of it


def test_training_time_budget_leaves_out_the_pauses(root, tmp_path):
    out = fine_tune(root, tmp_path / "train-budget", "--max-steps", "100000", "--train-time-budget-minutes", "0.0001")
    summary = json.loads((out / "pipeline" / "training_summary.json").read_text())
    assert summary["stop_reason"] == "train_time_budget_minutes" and summary["steps"] == 1
