"""The flags diffusers users know (issue 16, part 2): diffusers' examples/text_to_image names as aliases of ours,
booleans as switches, --report_to through accelerate's trackers, mixed precision from accelerate's environment."""

from __future__ import annotations

import pytest
from accelerate.state import AcceleratorState, GradientState

from latentdiff.training.config import DIFFUSERS_FLAGS, parse_config, start_run
from latentdiff.training.train_text_to_image import TextToImageConfig

BASE = ["--train-data", "data", "--pretrained", "model"]


def parse(*flags: str) -> TextToImageConfig:
    return parse_config(TextToImageConfig, [*BASE, *flags])


@pytest.fixture
def fresh_accelerator_state():
    """start_run builds an Accelerator; its state is a process-wide singleton, so each test starts and ends clean."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.mark.parametrize("alias, value, field, expected", [
    ("--pretrained_model_name_or_path", "other/model", "pretrained", "other/model"),
    ("--train_data_dir", "my-images", "train_data", "my-images"),
    ("--max_train_steps", "123", "max_steps", 123),
    ("--checkpointing_steps", "50", "checkpoint_every", 50),
    ("--resume_from_checkpoint", "latest", "resume", "latest"),
    ("--validation_prompt", "a cat", "validation_prompts", ["a cat"]),
    ("--train_batch_size", "4", "batch_size", 4),
    ("--checkpoints_total_limit", "3", "keep_checkpoints", 3),
    ("--hub_model_id", "me/my-model", "hub_repo_id", "me/my-model"),
    ("--rank", "8", "lora_rank", 8),
    ("--output_dir", "runs/x", "output_dir", "runs/x"),
    ("--seed", "7", "seed", 7),
    ("--report_to", "none", "report_to", None),
    ("--report_to", "wandb", "report_to", "wandb"),
    ("--learning_rate", "1e-5", "learning_rate", 1e-5),  # any field's snake_case spelling
])
def test_diffusers_flag_names_are_aliases_of_ours(alias, value, field, expected):
    assert getattr(parse(alias, value), field) == expected


def test_every_alias_names_a_field():
    fields = set(TextToImageConfig.__dataclass_fields__)
    assert set(DIFFUSERS_FLAGS.values()) <= fields


def test_our_flags_stay_and_the_last_one_given_wins():
    cfg = parse("--max-steps", "5", "--lora-rank", "4")
    assert (cfg.max_steps, cfg.lora_rank) == (5, 4)
    assert parse("--max-steps", "5", "--max_train_steps", "9").max_steps == 9


@pytest.mark.parametrize("flags, expected", [
    ([], False),  # the default of a full fine-tune (BASE has --pretrained)
    (["--use-ema"], True), (["--no-use-ema"], False), (["--use_ema"], True),
    (["--use-ema", "false"], False), (["--use-ema", "true"], True), (["--use-ema", "0"], False),
    (["--no-use-ema", "--use-ema"], True),
])
def test_booleans_are_switches_and_still_take_a_value(flags, expected):
    assert parse(*flags).use_ema is expected


def test_a_switch_followed_by_another_flag_is_true():
    cfg = parse("--bucketing", "--max-steps", "3")
    assert cfg.bucketing is True and cfg.max_steps == 3


def test_report_to_is_checked():
    with pytest.raises(ValueError, match="--report-to must be one of tensorboard, wandb, none"):
        parse("--report_to", "mlflow")


def test_mixed_precision_defaults_to_accelerates_setting(tmp_path, monkeypatch, fresh_accelerator_state):
    """No --mixed-precision: the value `accelerate launch --mixed_precision` puts in the environment is used."""
    assert parse().mixed_precision is None
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    accelerator, _ = start_run(parse("--output_dir", str(tmp_path), "--report_to", "none"), "t")
    assert accelerator.mixed_precision == "bf16"


def test_mixed_precision_given_wins_over_accelerates(tmp_path, monkeypatch, fresh_accelerator_state):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    accelerator, _ = start_run(parse("--output_dir", str(tmp_path), "--report_to", "none",
                                     "--mixed-precision", "no"), "t")
    assert accelerator.mixed_precision == "no"


@pytest.mark.parametrize("report_to, trackers", [("none", []), ("tensorboard", ["tensorboard"])])
def test_report_to_picks_accelerates_tracker(tmp_path, report_to, trackers, fresh_accelerator_state):
    accelerator, out = start_run(parse("--output_dir", str(tmp_path), "--report_to", report_to), "t")
    assert [t.name for t in accelerator.trackers] == trackers
    assert (out / "training_config.json").is_file()
    accelerator.end_training()
