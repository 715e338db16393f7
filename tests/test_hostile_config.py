"""Hostile training configs (issue 17): wrong types and ranges are refused at parse time with one ValueError line,
and the training scripts print it as one line on stderr with exit status 2, not a traceback."""

import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from latentdiff.training.config import parse_config


@dataclass
class Config:
    """A training config with the shared fields."""

    train_data: str  # data
    batch_size: int = 32  # images per step
    learning_rate: float = 5e-4  # peak learning rate
    use_ema: bool = True  # keep an EMA
    ema_decay: float = 0.999  # EMA decay
    keep_checkpoints: int = 2  # checkpoints kept
    mixed_precision: str = "no"  # no, fp16 or bf16
    resume: str | None = None  # a checkpoint
    stop_after: int | None = None  # steps this invocation
    validation_prompts: list[str] = field(default_factory=lambda: ["a red circle"])  # grid prompts
    seed: int = 0  # seed


def recipe(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text("train_data: d\n" + text)
    return path


@pytest.mark.parametrize("text, expected", [
    ('use_ema: "no"\n', False), ("use_ema: 'off'\n", False), ('use_ema: "yes"\n', True), ("use_ema: false\n", False),
    ("use_ema: 0\n", False),
])
def test_yaml_bool_strings_are_read_as_flags_are(tmp_path, text, expected):
    assert parse_config(Config, ["--config", str(recipe(tmp_path, text))]).use_ema is expected


def test_yaml_numbers_written_as_yaml_1_1_strings_are_numbers(tmp_path):
    cfg = parse_config(Config, ["--config", str(recipe(tmp_path, "learning_rate: 5e-4\nbatch_size: 1e2\n"))])
    assert cfg.learning_rate == 5e-4 and cfg.batch_size == 100 and isinstance(cfg.batch_size, int)


@pytest.mark.parametrize("text, message", [
    ('use_ema: "maybe"\n', "--use-ema must be true or false, got 'maybe'."),
    ("use_ema: 2\n", "--use-ema must be true or false, got 2."),
    ("batch_size: null\n", "--batch-size must be a whole number, got none; it cannot be left empty."),
    ("batch_size: 1.5\n", "--batch-size must be a whole number, got 1.5."),
    ("learning_rate: fast\n", "--learning-rate must be a finite number, got 'fast'."),
    ("learning_rate: .nan\n", "--learning-rate must be a finite number, got nan."),
    ("mixed_precision: [fp16]\n", "--mixed-precision must be a string, got ['fp16']."),
    ("validation_prompts: {a: 1}\n", "--validation-prompts must be a list of strings, got {'a': 1}."),
])
def test_wrong_types_in_a_recipe_name_the_recipe_and_flag(tmp_path, text, message):
    path = recipe(tmp_path, text)
    with pytest.raises(ValueError) as err:
        parse_config(Config, ["--config", str(path)])
    assert str(err.value) == f"{path}: {message}"


@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "none"], "command line: --batch-size must be a whole number, got none; it cannot be left empty."),
    (["--use-ema", "none"], "command line: --use-ema must be true or false, got none; it cannot be left empty."),
    (["--ema-decay", "2"], "--ema-decay must be in [0, 1), got 2.0."),
    (["--keep-checkpoints", "-1"], "--keep-checkpoints must be >= 1, got -1."),
    (["--mixed-precision", "fp8"], "--mixed-precision must be one of no, fp16, bf16, got 'fp8'."),
    (["--learning-rate", "0"], "--learning-rate must be > 0, got 0.0."),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0."),
    (["--stop-after", "0"], "--stop-after must be >= 1, got 0."),
    (["--seed", "-1"], "--seed must be in [0, 2**32), got -1."),
    (["--validation-prompts"], "--validation-prompts must be at least one prompt (the sample grids are drawn from "
                               "them), got []."),
])
def test_wrong_values_on_the_command_line_are_one_line(flags, message):
    with pytest.raises(ValueError) as err:
        parse_config(Config, ["--train-data", "d", *flags])
    assert str(err.value) == message


def test_optional_fields_still_take_none(tmp_path):
    cfg = parse_config(Config, ["--config", str(recipe(tmp_path, "resume: null\n")), "--stop-after", "none"])
    assert cfg.resume is None and cfg.stop_after is None


def test_an_unreadable_recipe_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train_data: [d\n")
    with pytest.raises(ValueError, match=rf"^{bad}: cannot read the recipe \(while parsing a flow sequence"):
        parse_config(Config, ["--config", str(bad)])
    with pytest.raises(ValueError, match=r"cannot read the recipe \(\[Errno 2\] No such file"):
        parse_config(Config, ["--config", str(tmp_path / "missing.yaml")])


# ---------------------------------------------------------------------------------------------- the scripts
@pytest.mark.parametrize("script, required", [
    ("train_text_to_image", ["--train-data", "d", "--vae", "v"]),
    ("train_vae", ["--train-data", "d", "--val-data", "v"]),
    ("distill_lcm", ["--teacher", "t", "--train-data", "d"]),
    ("distill_genie", ["--teacher", "t", "--train-data", "d"]),
])
def test_training_scripts_print_one_line_and_exit_2(script, required):
    def run(*flags):
        done = subprocess.run([sys.executable, "-m", f"latentdiff.training.{script}", *required, *flags],
                              capture_output=True, text=True, timeout=300)
        return done.returncode, done.stderr.strip().splitlines()

    code, err = run("--batch-size", "none")  # a ValueError from parse_config
    assert (code, err) == (2, [f"{script}: error: command line: --batch-size must be a whole number, got none; it "
                               "cannot be left empty."])
    code, err = run("--batch-size", "abc")  # argparse's own error
    assert (code, err) == (2, [f"{script}: error: argument --batch-size: invalid int value: 'abc' (see {script} "
                               "--help)"])
