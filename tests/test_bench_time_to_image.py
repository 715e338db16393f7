"""`latentdiff bench time-to-image`: choosing the fastest correct configuration, the stock baseline, bad input; and
`latentdiff bench generate`, its pipeline-speed counterpart."""

import json
from pathlib import Path

import pytest

from latentdiff.bench.time_to_image import STOCK_STEPS, Candidate, TimeToImageResult, bench_time_to_image
from latentdiff.cli import main
from latentdiff.eval import read_prompt_set

INDIST = Path(__file__).resolve().parents[1] / "assets" / "prompts" / "indist.jsonl"


@pytest.fixture
def prompt_file(tmp_path):
    """Two prompts (single object, colours) from assets/prompts/indist.jsonl."""
    wanted, lines = {"single_object", "colors"}, []
    for line in INDIST.read_text().splitlines():
        category = json.loads(line)["spec"]["category"]
        if category in wanted:
            wanted.discard(category)
            lines.append(line)
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _row(model, sampler, steps, overall, seconds):
    return Candidate(model, sampler, steps, 5.0, overall=overall, seconds_per_image=seconds, images=8)


def test_fastest_correct_configuration_and_speedup():
    rows = [_row("model", "dpm++2m", 4, 0.50, 0.10),  # fastest, but below 0.95 x best
            _row("model", "dpm++2m", 8, 0.77, 0.20),  # >= 0.95 x 0.80 = 0.76: the fastest correct one
            _row("model", "dpm++2m", 20, 0.80, 0.45),  # the best
            _row("distilled", "lcm", 2, 0.70, 0.05),
            _row("stock", "PNDMScheduler", 50, 0.79, 1.00)]
    result = TimeToImageResult(rows, 0.95, "m", None, "p.jsonl", 2, 4, 0, "cpu")
    assert result.best == 0.80 and result.threshold == pytest.approx(0.76)
    assert result.fastest is rows[1] and result.stock is rows[-1]
    assert result.speedup == pytest.approx(5.0)
    table = result.table()
    assert "fastest correct" in table and "5.00x faster" in table
    payload = result.to_json("cmd")
    assert payload["fastest"]["label"] == "model: dpm++2m, 8 steps" and payload["speedup"] == pytest.approx(5.0)
    assert len(payload["rows"]) == 5 and payload["command"] == "cmd"


def test_stock_baseline_is_the_folders_scheduler_at_50_steps(tiny_pipe, prompt_file):
    prompts = read_prompt_set(prompt_file)
    original = tiny_pipe.scheduler
    # dpm++2m at 50 steps is the tiny folder's own scheduler (DPM-Solver++ 2M) at stock's default step count: the
    # same images from the same seeds, so the same score
    result = bench_time_to_image(tiny_pipe, prompts, samplers=("ddim", "dpm++2m"), steps=(2, STOCK_STEPS),
                                 images_per_prompt=2, max_prompts=None, batch_size=3, progress=False)
    labels = [r.label for r in result.rows]
    assert labels == ["model: ddim, 2 steps", "model: ddim, 50 steps", "model: dpm++2m, 2 steps",
                      "model: dpm++2m, 50 steps", "stock: DPMSolverMultistepScheduler, 50 steps"]
    assert all(r.images == 4 and r.seconds_per_image > 0 and 0 <= r.overall <= 1 for r in result.rows)
    assert result.rows[3].categories == result.stock.categories
    assert result.stock.guidance == 5.0
    assert tiny_pipe.scheduler is original  # the caller's scheduler is back
    assert result.fastest.overall >= result.threshold


def test_bad_input_raises_value_error(tiny_pipe, prompt_file):
    prompts = read_prompt_set(prompt_file)
    with pytest.raises(ValueError, match="tolerance must be in"):
        bench_time_to_image(tiny_pipe, prompts, tolerance=1.5, progress=False)
    with pytest.raises(ValueError, match="Unknown sampler 'nope'"):
        bench_time_to_image(tiny_pipe, prompts, samplers=("nope",), progress=False)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        bench_time_to_image(tiny_pipe, prompts, steps=(0,), progress=False)
    with pytest.raises(ValueError, match="name at least one sampler"):
        bench_time_to_image(tiny_pipe, prompts, samplers=(), progress=False)


def test_cli_with_a_distilled_student_writes_json_and_png(prompt_file, tmp_path, capsys):
    out = tmp_path / "tti"
    code = main(["bench", "time-to-image", "--model", "preset:tiny", "--prompts", str(prompt_file), "--samplers",
                 "ddim", "--steps", "2", "--distilled", "preset:tiny", "--distilled-sampler", "euler",
                 "--distilled-steps", "1", "--images-per-prompt", "1", "--out", str(out)])
    assert code == 0
    payload = json.loads((out / "time_to_image.json").read_text())
    assert [r["model"] for r in payload["rows"]] == ["model", "distilled", "stock"]
    assert payload["command"].startswith("latentdiff bench time-to-image --model=preset:tiny")
    assert (out / "time_to_image.png").stat().st_size > 0
    assert "time to a correct image" in capsys.readouterr().out


def test_bench_generate_draws_the_same_images_as_stock_and_reports_memory(tiny_pipe):
    from latentdiff.bench.generate import PeakRSS, bench_generate

    result = bench_generate(tiny_pipe, "preset:tiny", steps=2, repeats=3, guidance=5.0)
    assert result.max_abs_diff == 0.0  # same components, scheduler and seed: the same pixels
    assert result.ours_s > 0 and result.stock_s > 0 and result.speedup > 0
    assert result.ours_peak_mb is not None and result.ours_peak_mb >= 0  # CPU: resident-set growth of one call
    with PeakRSS() as rss:
        block = bytearray(64 * 2**20)  # 64 MB, touched below so its pages are resident
        block[::4096] = b"x" * len(block[::4096])
    assert rss.peak_mb >= 60
    with pytest.raises(ValueError, match="--repeats must be >= 1"):
        bench_generate(tiny_pipe, "preset:tiny", repeats=0)
