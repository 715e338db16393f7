"""`latentdiff bench speedrun`: recipes trained in budget slices, scored at every point, resumable."""

import json
import shutil

import pytest
import yaml

from latentdiff import build_pipeline
from latentdiff.bench.speedrun import (loss_table, minutes_to, score_only, scored_table, speedrun, SpeedrunConfig, table,
                                       write_plot)
from latentdiff.data.shapes import write_dataset


def test_minutes_to_interpolates_between_points():
    points = [{"minutes": 10, "overall": 0.2}, {"minutes": 20, "overall": 0.6}, {"minutes": 30, "overall": 0.9}]
    assert minutes_to(points, 0.5) == pytest.approx(17.5)
    assert minutes_to(points, 0.1) == pytest.approx(5.0)  # from score 0 at minute 0
    assert minutes_to(points, 0.95) is None


def test_config_is_checked_before_any_training(tmp_path):
    recipe = tmp_path / "a.yaml"
    recipe.write_text("train_data: d\n")
    with pytest.raises(ValueError, match="does not exist"):
        SpeedrunConfig(recipes=[str(tmp_path / "missing.yaml")])
    with pytest.raises(ValueError, match="need 0 < --every <= --minutes"):
        SpeedrunConfig(recipes=[str(recipe)], minutes=5, every=10)
    with pytest.raises(ValueError, match="share a file name"):
        (tmp_path / "b").mkdir()
        (tmp_path / "b" / "a.yaml").write_text("train_data: d\n")
        SpeedrunConfig(recipes=[str(recipe), str(tmp_path / "b" / "a.yaml")])
    assert SpeedrunConfig(recipes=[str(recipe)], minutes=25, every=10).budgets() == [10, 20, 25]
    for recipes, score in (([], []), ([str(recipe)], [str(tmp_path)])):
        with pytest.raises(ValueError, match="give --recipes .* or --score"):
            SpeedrunConfig(recipes=recipes, score=score)
    with pytest.raises(ValueError, match="not a pipeline folder"):
        SpeedrunConfig(recipes=[], score=[str(tmp_path)])


def test_two_recipes_are_trained_in_slices_scored_and_not_trained_again(tmp_path, capsys, monkeypatch):
    data = tmp_path / "data"
    write_dataset(data, n=16, size=16, seed=0, progress=False)
    build_pipeline("tiny").vae.save_pretrained(tmp_path / "vae")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("a red circle", "two blue squares")))
    base = {"train_data": str(data), "vae": str(tmp_path / "vae"), "preset": "tiny", "resolution": 16,
            "batch_size": 4, "max_steps": 3, "lr_warmup_steps": 0, "validation_every": 1000,
            "validation_prompts": ["a red circle"], "checkpoint_every": 1000}
    recipes = []
    for name, extra in (("eps", {}), ("v", {"prediction_type": "v_prediction"})):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**base, **extra}))
        recipes.append(str(path))
    config = SpeedrunConfig(recipes=recipes, minutes=0.02, every=0.01, prompts=str(prompts), max_prompts=2,
                            images_per_prompt=1, steps=2, out=str(tmp_path / "run"))
    results = speedrun(config, progress=False)
    assert set(results["recipes"]) == {"eps", "v"}
    for entry in results["recipes"].values():
        assert [p["minutes"] for p in entry["points"]] == [0.01, 0.02]
        assert all(0 <= p["overall"] <= 1 and p["steps"] >= 1 and p["train_seconds"] > 0 for p in entry["points"])
        assert all((tmp_path / "run" / p["grid"]).is_file() for p in entry["points"])  # the samples scored
        assert set(entry["minutes_to"]) == {"0.5", "0.8"}
        # the lower-noise companion: the held-out denoising loss of every point, in its own target's units
        for p in entry["points"]:
            assert set(p["denoising_loss"]) == {"heldout", "train"}
            assert all(v["loss"] > 0 and v["images"] == 256 for v in p["denoising_loss"].values())
    assert {p["denoising_loss"]["heldout"]["space"] for p in results["recipes"]["v"]["points"]} == {"ddpm/v_prediction"}
    from latentdiff.eval.text_probe import PROBES

    for entry in results["recipes"].values():  # and whether its text encoder tells the checked words apart
        assert all(set(p["text_probe"]) == set(PROBES) for p in entry["points"])
        # and whether its UNet denoises position scenes better with their true relation word than the reversed
        assert all(0 <= p["relation_use"]["true_lower"] <= 1 and p["relation_use"]["scenes"] == 256
                   for p in entry["points"])
    before = (tmp_path / "run" / "eps" / "speedrun.log").read_text().count("$ ")
    again = speedrun(config, progress=False)  # every point is there: nothing is trained again
    assert (tmp_path / "run" / "eps" / "speedrun.log").read_text().count("$ ") == before == 2
    assert again["recipes"]["eps"]["points"] == results["recipes"]["eps"]["points"]
    assert "eps" in table(again) and write_plot(again, tmp_path / "s.png").stat().st_size > 1000
    assert "ddpm/v_prediction" in loss_table(again).splitlines()[2] and "-" not in loss_table(again).splitlines()[1][28:40]
    with pytest.raises(ValueError, match="scored another way"):
        speedrun(SpeedrunConfig(**{**config.__dict__, "steps": 3}), progress=False)
    # --score: a folder scored without training gives the point's own numbers (same prompts, seeds, sampler)
    scoring = {k: v for k, v in config.__dict__.items() if k not in ("recipes", "score")}
    scored = score_only(SpeedrunConfig(recipes=[], score=[str(tmp_path / "run" / "eps" / "pipeline")],
                                       **{**scoring, "out": str(tmp_path / "scored")}), progress=False)
    (row,) = scored["folders"].values()
    last = results["recipes"]["eps"]["points"][-1]
    assert (row["overall"], row["categories"], row["steps"]) == (last["overall"], last["categories"], last["steps"])
    assert row["denoising_loss"] == last["denoising_loss"] and row["text_probe"] == last["text_probe"]
    assert row["relation_use"] == last["relation_use"]
    assert (tmp_path / "scored" / row["grid"]).is_file() and "pipeline" in scored_table(scored)
    with pytest.raises(ValueError, match="scored another way"):
        score_only(SpeedrunConfig(recipes=[], score=[str(tmp_path / "run" / "eps" / "pipeline")],
                                  **{**scoring, "out": str(tmp_path / "scored"), "guidance": 2.0}), progress=False)
    # minutes compare on one machine only: the race records it, and another machine may not add to it
    from latentdiff.training.hardware import machine_description

    assert again["machine"] == machine_description() and again["machine"] in json.loads(
        (tmp_path / "run" / "speedrun.json").read_text())["machine"]
    monkeypatch.setattr("latentdiff.bench.speedrun.machine_description", lambda: "CPU: Other, 2 cores (x86_64)")
    with pytest.raises(ValueError, match="another machine"):
        speedrun(config, progress=False)


def test_the_machine_is_named_by_its_cpu_model():
    from latentdiff.training.hardware import cpu_description, cpu_model

    assert cpu_model() and cpu_description().startswith(f"CPU: {cpu_model()}, ")


def _cpuinfo(family: int, model: int, flags: str) -> str:
    block = (f"processor\t: {{i}}\nvendor_id\t: AuthenticAMD\ncpu family\t: {family}\nmodel\t\t: {model}\n"
             f"model name\t: AMD EPYC\nflags\t\t: fpu sse2 {flags}\n")
    return "\n".join(block.format(i=i) for i in range(2))


def test_two_cpus_of_one_name_are_told_apart_so_the_race_refuses_to_mix_their_minutes():
    from latentdiff.training.hardware import cpu_model

    zen1 = cpu_model(_cpuinfo(23, 1, "avx fma avx2"))  # the machine that trained 2.4x slower under the same name
    zen4 = cpu_model(_cpuinfo(25, 17, "avx fma avx2 avx512f avx512bw"))
    assert zen1 == "AMD EPYC (family 23 model 1, AVX2)"
    assert zen4 == "AMD EPYC (family 25 model 17, AVX-512)"
    assert cpu_model("processor\t: 0\nmodel name\t: Some ARM core\n") == "Some ARM core"  # no x86 fields


FIRST_RACE = {"attention-low", "text-pretrained", "lr-1e-3"}  # raced against base.yaml (README's first table)


def test_the_shipped_ablation_recipes_parse_and_each_changes_base_in_what_it_names(tmp_path):
    """training/recipes/speedrun/: every line of issue 18's plot is a valid recipe that differs from its parent in
    its own variable (and its output folder) only: the first race's lines from base.yaml, every later line from
    attention-low.yaml (that race's winner, the default model's recipe)."""
    from pathlib import Path

    from latentdiff.training.config import parse_config
    from latentdiff.training.train_text_to_image import TextToImageConfig

    folder = Path("training/recipes/speedrun")
    raw = {p.stem: yaml.safe_load(p.read_text()) for p in folder.glob("*.yaml")}
    assert {"base", "diffusers-example", "flow", "cld", "speed"} <= set(raw)
    for name, recipe in raw.items():
        argv = ["--config", str(folder / f"{name}.yaml")]
        if "text_encoder" in recipe:  # pretrain_text_encoder's output, made by the recipe's first command
            made = tmp_path / name
            (made / "text_encoder").mkdir(parents=True)
            shutil.copy("assets/shapes-tiny/text_encoder/config.json", made / "text_encoder")
            shutil.copytree("assets/shapes-tiny/tokenizer", made / "tokenizer")
            argv += ["--text-encoder", str(made)]
        parse_config(TextToImageConfig, argv)  # valid: types and ranges
        assert recipe["output_dir"] == f"out/speedrun/{name}"
        parent = "base" if name in FIRST_RACE | {"base"} else "attention-low"
        changed = {k for k in set(recipe) | set(raw[parent]) if recipe.get(k) != raw[parent].get(k)} - {"output_dir"}
        assert bool(changed) == (name != "base"), (name, changed)
        assert f"Everything else is speedrun/{parent}.yaml" in (folder / f"{name}.yaml").read_text() or name == "base"
    assert {k for k, v in raw["attention-low"].items() if v != raw["base"].get(k)} == {"output_dir", "unet_attention"}
    example = raw["diffusers-example"]
    assert {k for k in set(example) | set(raw["attention-low"]) if example.get(k) != raw["attention-low"].get(k)} == {
        "output_dir", "snr_gamma", "use_ema", "cache_latents"}
