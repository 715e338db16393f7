"""`latentdiff bench samplers`: NFE counting, same initial noise, reference and its cache, writers, bad input."""

import csv
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from latentdiff.bench.samplers import (
    CSV_COLUMNS, ReferenceSpec, SamplerBenchConfig, UNetCallCounter, _generate, bench_samplers, plan_batches, select_prompts,
    steps_for_nfe, write_csv, write_json, write_plot,
)
from latentdiff.cli import main
from latentdiff.eval import read_prompt_set

INDIST = Path(__file__).resolve().parents[1] / "assets" / "prompts" / "indist.jsonl"


@pytest.fixture
def prompt_file(tmp_path):
    """Three prompts of three categories from assets/prompts/indist.jsonl."""
    lines, seen = [], set()
    for line in INDIST.read_text().splitlines():
        category = json.loads(line)["spec"]["category"]
        if category not in seen:
            seen.add(category)
            lines.append(line)
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(lines[:3]) + "\n")
    return path


def test_steps_for_nfe_and_counted_unet_calls_first_and_second_order(tiny_pipe):
    tiny_pipe.set_sampler("dpm++2m")
    assert steps_for_nfe(tiny_pipe.scheduler, 6) == (6, "")
    with UNetCallCounter(tiny_pipe.unet) as counter:  # guidance on: one batched cond+uncond call per evaluation
        tiny_pipe(["a red circle", "two stars"], num_inference_steps=6, guidance_scale=5.0, output_type="latent")
    assert counter.calls == 6

    tiny_pipe.set_sampler("heun")  # second order: 2 evaluations per step, 1 on the first
    assert steps_for_nfe(tiny_pipe.scheduler, 5) == (3, "")
    with UNetCallCounter(tiny_pipe.unet) as counter:
        tiny_pipe("a red circle", num_inference_steps=3, guidance_scale=5.0, output_type="latent")
    assert counter.calls == 5
    steps, reason = steps_for_nfe(tiny_pipe.scheduler, 4)
    assert steps is None and "no NFE of exactly 4" in reason and "2 steps -> 3" in reason and "3 steps -> 5" in reason
    tiny_pipe("a red circle", num_inference_steps=1, output_type="latent")  # the hook is gone after the block
    assert counter.calls == 5


def test_generated_latents_are_those_of_a_plain_seeded_call(tiny_pipe):
    # Euler ancestral: init_noise_sigma != 1 and fresh noise every step, so the bench's images must come from the
    # same seeded generators, used the same way, as a plain call's.
    tiny_pipe.set_sampler("euler_a")
    assert tiny_pipe.scheduler.init_noise_sigma > 1
    seeds = [3, 4]
    plan = plan_batches([("a red circle", None)], 2, 64, 3)
    assert plan[0].seeds == seeds
    ours, _ = _generate(tiny_pipe, plan, 2, 4, 7.5, None)
    plain = tiny_pipe(["a red circle"] * 2, num_inference_steps=4, output_type="latent",
                      generator=[torch.Generator().manual_seed(s) for s in seeds]).images
    assert torch.equal(ours, plain)


def test_reference_against_itself_is_zero_and_rows_are_filled(tiny_pipe, prompt_file):
    prompts = read_prompt_set(prompt_file)
    config = SamplerBenchConfig(samplers=("ddim", "euler"), nfe=(6,), images_per_prompt=2, reference_images=None,
                                reference=ReferenceSpec("ddim", 6))
    result = bench_samplers(tiny_pipe, prompts, config, progress=False)
    ddim, euler = result.cells
    assert (ddim.status, ddim.steps, ddim.images) == ("ok", 6, 6)
    assert ddim.rmse == 0.0  # same sampler and steps as the reference, from the same noise
    assert euler.rmse > 0 and result.reference_rms > 0
    assert 0 <= ddim.overall <= 1 and set(ddim.categories) == {spec.category for _, spec in prompts}
    assert ddim.seconds_per_image > 0
    assert result.check_rmse is None and result.reference_images == 6
    assert type(tiny_pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"  # the caller's scheduler is back


def test_writes_csv_json_png_and_reuses_the_cached_reference(tiny_pipe, prompt_file, tmp_path):
    prompts = read_prompt_set(prompt_file)
    reference = ReferenceSpec("ddim", 10, {"clip_sample": False}, "dpm++2m", 8, {"solver_order": 3})
    config = SamplerBenchConfig(samplers=("ddim", "heun"), nfe=(1, 2, 3), reference=reference, reference_images=2)
    result = bench_samplers(tiny_pipe, prompts, config, source="preset:tiny", prompts_path=str(prompt_file),
                            cache_dir=tmp_path, progress=False)
    assert not result.reference_cached and len(list(tmp_path.glob("reference-*.safetensors"))) == 1
    assert result.check_rmse is not None and result.check_rmse > 0

    rows = list(csv.DictReader(write_csv(result, tmp_path / "s.csv").open()))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [(r["sampler"], r["nfe"], r["status"]) for r in rows] == [
        ("ddim", "1", "ok"), ("ddim", "2", "ok"), ("ddim", "3", "ok"),
        ("heun", "1", "ok"), ("heun", "2", "skipped"), ("heun", "3", "ok")]
    assert rows[4]["rmse"] == "" and "no NFE of exactly 2" in rows[4]["reason"]
    assert rows[5]["steps"] == "2" and float(rows[5]["rmse"]) > 0 and rows[5]["images"] == "3"

    data = json.loads(write_json(result, tmp_path / "s.json", command="latentdiff bench samplers ...").read_text())
    assert data["reference"]["sampler"] == "ddim" and data["reference"]["check_rmse"] == result.check_rmse
    assert data["reference"]["images"] == 2 and data["config"]["samplers"] == ["ddim", "heun"]
    assert len(data["rows"]) == 6 and data["command"].startswith("latentdiff bench samplers")
    assert {"nfe", "rmse", "overall", "seconds_per_image"} <= set(data["definitions"])

    with Image.open(write_plot(result, tmp_path / "s.png")) as png:
        assert png.format == "PNG" and png.width > 600

    again = bench_samplers(tiny_pipe, prompts, config, cache_dir=tmp_path, progress=False)
    assert again.reference_cached and again.check_rmse == result.check_rmse
    assert [c.rmse for c in again.cells] == [c.rmse for c in result.cells]


def test_select_prompts_is_category_balanced_and_deterministic():
    prompts = read_prompt_set(INDIST)
    six = select_prompts(prompts, 6)
    assert len({spec.category for _, spec in six}) == 6 and six == select_prompts(prompts, 6)
    assert sorted(select_prompts(prompts, None), key=prompts.index) == prompts


@pytest.mark.parametrize("kwargs, message", [
    ({"nfe": (0, 2)}, "nfe must be integers >= 1"),
    ({"nfe": (2, 2)}, "twice"),
    ({"guidance": float("nan")}, "guidance"),
    ({"images_per_prompt": 0}, "images_per_prompt"),
    ({"max_prompts": 0}, "max_prompts"),
])
def test_bad_config_raises_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplerBenchConfig(**kwargs)


def test_unknown_sampler_or_spacing_raises_value_error(tiny_pipe, prompt_file):
    prompts = read_prompt_set(prompt_file)
    with pytest.raises(ValueError, match="Unknown sampler 'nope'.*ddim"):
        bench_samplers(tiny_pipe, prompts, SamplerBenchConfig(samplers=("ddim", "nope"), nfe=(2,)), progress=False)
    with pytest.raises(ValueError, match="timestep_spacing must be one of"):
        bench_samplers(tiny_pipe, prompts, SamplerBenchConfig(samplers=("ddim",), nfe=(2,), timestep_spacing="late"),
                       progress=False)


def test_cli_writes_the_three_files(prompt_file, tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["bench", "samplers", "--model", "preset:tiny", "--prompts", str(prompt_file), "--samplers",
                 "ddim,dpm++2m", "--nfe", "2,4", "--reference-steps", "8", "--check-steps", "6", "--out", str(out)])
    assert code == 0
    assert {p.name for p in out.iterdir()} >= {"samplers.csv", "samplers.json", "samplers.png"}
    printed = capsys.readouterr().out
    assert "dpm++2m" in printed and "reference: ddim (8 steps" in printed
    assert json.loads((out / "samplers.json").read_text())["command"].startswith(
        "latentdiff bench samplers --model=preset:tiny")

    assert main(["bench", "samplers", "--model", "preset:tiny", "--prompts", str(prompt_file), "--nfe", "2,x"]) == 1
    assert "--nfe takes comma-separated integers" in capsys.readouterr().err


def test_cld_model_runs_with_the_cld_samplers_by_default(tiny_pipe, prompt_file):
    from diffusers import UNet2DConditionModel

    from latentdiff.cld import CLDExponentialODEScheduler
    from latentdiff.pipelines import LatentDiffusionPipeline

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config({**tiny_pipe.unet.config, "in_channels": 8})  # u = (x, v): 2 x 4
    pipe = LatentDiffusionPipeline(tiny_pipe.vae, tiny_pipe.text_encoder, tiny_pipe.tokenizer, unet,
                                   CLDExponentialODEScheduler())
    pipe.set_progress_bar_config(disable=True)
    reference = ReferenceSpec("cld-ode", 6)
    result = bench_samplers(pipe, read_prompt_set(prompt_file), SamplerBenchConfig(nfe=(1, 6), reference=reference),
                            progress=False)
    cells = {(c.sampler, c.nfe): c for c in result.cells}
    assert result.process == "cld" and result.config.samplers == ("cld-ode", "cld-sscs")
    assert cells["cld-ode", 6].rmse == 0.0  # the deterministic ODE sampler against itself, same prior
    assert cells["cld-sscs", 6].status == "ok" and cells["cld-sscs", 6].rmse > 0
    assert cells["cld-sscs", 1].status == "skipped" and "1 steps refused" in cells["cld-sscs", 1].reason
