"""Slow: README's "Fine-tune on your own images" walkthrough, run word for word (issue 16, part 5).

The commands are read from README's own block, so the test and the walkthrough cannot drift apart. They run in a
temporary folder that sees the repository's `assets/` (the default model) through a link; `pip install` lines are
skipped (the test runs in the installed environment) and `accelerate config default` writes into a temporary
HF_HOME, never the user's. `LATENTDIFF_WALKTHROUGH_MINUTES=M` replaces the README's 15-minute budgets (a quicker,
weaker check). Run with `pytest -m slow tests/test_walkthrough.py`.
"""

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Fine-tune on your own images"


def readme_commands() -> list[str]:
    """The shell commands of the walkthrough's bash block: continuation lines joined, comments dropped."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index(HEADING):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split("  #")[0].strip()
        if line and not line.startswith("#"):
            commands.append(" ".join(line.split()))
    return commands


def test_the_readme_block_is_what_this_test_expects():
    """Fast guard (default suite): the block exists and has the steps the assertions below read (glyphs, two runs, the bench)."""
    commands = readme_commands()
    assert commands[0].startswith("pip install")
    assert sum("train_text_to_image" in c for c in commands) == 2
    assert any(c.startswith("latentdiff glyphs") for c in commands)
    assert commands[-1].startswith("latentdiff bench fine-tune") and "--out out/glyphs-bench" in commands[-1]
    assert all(c.count("--time-budget-minutes 15") == 1 for c in commands if "train_text_to_image" in c)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="issue 16, part 5, open: on the current default model neither 15-minute "
                   "fine-tune draws measurably closer to its glyphs (README, 'Fine-tune on your own images'); strict, "
                   "so the day it passes this marker must go")
def test_the_walkthrough_moves_generations_toward_their_training_images(tmp_path, report):
    (tmp_path / "assets").symlink_to(ROOT / "assets")
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf-home"))
    minutes = os.environ.get("LATENTDIFF_WALKTHROUGH_MINUTES")
    for command in readme_commands():
        if command.startswith("pip install"):
            continue
        if minutes:
            command = command.replace("--time-budget-minutes 15", f"--time-budget-minutes {float(minutes):g}")
        done = subprocess.run(shlex.split(command), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}"

    for run in ("glyphs-lora", "glyphs-full"):
        summary = json.loads((tmp_path / "out" / run / "training_summary.json").read_text())
        budget = 60 * float(minutes or 15)
        report(f"{run}: {summary['steps']} steps, {summary['wall_clock_seconds']:.0f} s wall clock "
               f"(budget {budget:.0f} s), stop: {summary['stop_reason']}")
        assert summary["wall_clock_seconds"] <= 1.05 * budget

    result = json.loads((tmp_path / "out" / "glyphs-bench" / "fine_tune.json").read_text())
    base, *tuned = result["models"]
    assert base["role"] == "base" and [t["kind"] for t in tuned] == ["LoRA on the base", "pipeline"]
    for row in [base, *tuned]:
        m = row["metrics"]
        report(f"{row['model']}: own RMSE {m['own_rmse']:.4f}, nearest {m['nearest_rmse']:.4f}, "
               f"top-1 {m['retrieval_top1']:.3f}, top-5 {m['retrieval_top5']:.3f}")
    for row in tuned:
        # measured against the training images as the base's VAE draws them (a fine-tune keeps the VAE, and the
        # default model's VAE turns white grey): distances down by a tenth or more, retrieval up by 5 of 64 or more
        vs = row["vae_space_vs_base"]
        assert vs["own_rmse_ratio"] < 0.9, row
        assert vs["nearest_rmse_ratio"] < 0.9, row
        assert vs["retrieval_top1_change"] >= 5 / 64 and vs["retrieval_top5_change"] >= 5 / 64, row
    assert (tmp_path / "out" / "glyphs-bench" / "fine_tune.png").stat().st_size > 10_000
