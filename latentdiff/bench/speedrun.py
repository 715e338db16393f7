"""`latentdiff bench speedrun`: training recipes raced for a fixed budget of training minutes on this machine.

Each recipe (a YAML file of `train_text_to_image` options, e.g. training/recipes/speedrun/*.yaml) trains from
scratch in its own folder, in budget slices: `--train-time-budget-minutes every`, `2 * every`, ... up to `minutes`,
each slice resuming the previous one's checkpoint (`--resume latest`). After every slice its pipeline folder is
scored on a fixed, category-balanced subset of a prompt set (the same prompts, seeds, sampler and steps for
every recipe and point), so the result is score against training minutes, one line per recipe, in one JSON and
one plot. Training minutes are the run's own clock (validation and checkpoints excluded); CPU seconds are
recorded beside them, so a point trained while something else shared the machine shows up.

The JSON is written after every point and read back at the start, so a speedrun stopped part-way (or spread over
several sessions) goes on where it stopped: a (recipe, minutes) point already measured is not trained again.

`--score FOLDER ...` scores model folders exactly as a point is scored, without training (a run's checkpoint
branched off the race, e.g. two continuations compared from one checkpoint), into OUT/scored.json.

    latentdiff bench speedrun --recipes training/recipes/speedrun/*.yaml --minutes 30 --every 10 \
        --prompts assets/prompts/indist.jsonl --out out/speedrun
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from latentdiff.bench.report import figure, save_figure
from latentdiff.eval.prompts import read_prompt_set
from latentdiff.eval.text_probe import probe_line, text_probe
from latentdiff.eval.run import marked_grid
from latentdiff.training.hardware import machine_description

THRESHOLDS = (0.5, 0.8)  # the scores whose training minutes the report compares
# The lower-noise companion of the score (latentdiff/eval/denoising_loss.py): each point's unweighted training loss
# on 256 scenes no run trains on, of the held-out split's combinations and of the training split's
LOSS_SCENES = {"heldout": "shapesworld:heldout?seed=1&n=256&fresh=false",
               "train": "shapesworld:train?seed=1&n=256&fresh=false"}


@dataclass
class SpeedrunConfig:
    recipes: list[str]  # YAML recipes for train_text_to_image; a recipe is named by its file's stem
    score: list[str] = field(default_factory=list)  # instead of recipes: model folders scored, none trained
    minutes: float = 30.0  # training minutes per recipe
    every: float = 10.0  # a scored point after every this many training minutes
    prompts: str = "assets/prompts/indist.jsonl"  # the prompt set the subset is drawn from
    max_prompts: int = 48  # prompts of the category-balanced subset (8 per category)
    images_per_prompt: int = 2  # images per prompt, seeds as `latentdiff eval` gives them
    steps: int = 20  # sampler steps
    guidance: float = 5.0  # classifier-free guidance scale
    sampler: str | None = None  # named sampler; None: each model's own saved sampler
    seed: int = 0  # first seed of the scored images
    out: str = "out/speedrun"  # working folder: one run folder per recipe, speedrun.json, speedrun.png
    extra: list[str] = field(default_factory=list)  # flags added to every training run (e.g. --train-data)

    def __post_init__(self):
        if bool(self.recipes) == bool(self.score):
            raise ValueError("give --recipes (recipe YAML files to race) or --score (model folders to score), one of them")
        for folder in self.score:
            if not (Path(folder) / "model_index.json").is_file():
                raise ValueError(f"--score: {folder} is not a pipeline folder (no model_index.json)")
        for r in self.recipes:
            if not Path(r).is_file():
                raise ValueError(f"--recipes: {r} does not exist")
        names = [Path(r).stem for r in self.recipes]
        if len(set(names)) != len(names):
            raise ValueError(f"--recipes: two recipes share a file name {names}; each line is named by its stem")
        if not 0 < self.every <= self.minutes:
            raise ValueError(f"need 0 < --every <= --minutes, got every={self.every}, minutes={self.minutes}")
        for name in ("max_prompts", "images_per_prompt", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        read_prompt_set(self.prompts)  # a missing or broken prompt set fails now, not after the first run

    def budgets(self) -> list[float]:
        n = int(round(self.minutes / self.every))
        points = [round(self.every * (i + 1), 6) for i in range(n)]
        return points if points and abs(points[-1] - self.minutes) < 1e-6 else points + [self.minutes]


def train_slice(recipe: str, run_dir: Path, minutes: float, extra: list[str]) -> dict[str, Any]:
    """Train `recipe` in `run_dir` until `minutes` of training time (resuming the run's latest checkpoint) and
    return its training_summary.json. One process per slice: a crash is reported, not inherited."""
    cmd = [sys.executable, "-m", "latentdiff.training.train_text_to_image", "--config", recipe,
           "--output-dir", str(run_dir), "--train-time-budget-minutes", str(minutes), "--resume", "latest",
           *extra]
    log = run_dir / "speedrun.log"
    run_dir.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write(f"\n$ {shlex.join(cmd)}\n")
        f.flush()
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if done.returncode != 0:
        tail = log.read_text().strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"training {Path(recipe).stem} to {minutes} min failed (exit {done.returncode}): "
                           f"{tail[0]} (log: {log})")
    return json.loads((run_dir / "training_summary.json").read_text())


def score_folder(folder: Path, config: SpeedrunConfig):
    """(EvalResult on the speedrun's prompt subset, measures) of a pipeline folder. `measures`: "denoising_loss"
    ({scenes: held-out denoising loss}), "text_probe" (latentdiff/eval/text_probe.py: does the text encoder still
    tell apart the words the scorer checks) and "relation_use" (latentdiff/eval/relation_use.py: does the UNet
    denoise position scenes better with their true relation word than with the reversed one), and, for a run
    trained on another kind of position scene (`position_pairs=same_shape|absolute`), "relation_use_own": the
    same on scenes of its own kind."""
    from latentdiff.bench.samplers import select_prompts
    from latentdiff.eval.denoising_loss import denoising_loss
    from latentdiff.eval.relation_use import relation_use, scenes_like
    from latentdiff.eval.run import evaluate
    from latentdiff.pipelines import LatentDiffusionPipeline

    pipe = LatentDiffusionPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    prompts = select_prompts(read_prompt_set(config.prompts), config.max_prompts)
    measures = {"denoising_loss": {name: denoising_loss(pipe, source) for name, source in LOSS_SCENES.items()},
                "text_probe": text_probe(pipe), "relation_use": relation_use(pipe)}
    trained = Path(folder) / "training_config.json"
    own = scenes_like(json.loads(trained.read_text()).get("train_data")) if trained.is_file() else None
    if own is not None:
        measures["relation_use_own"] = relation_use(pipe, own)
    return evaluate(pipe, prompts, sampler=config.sampler, steps=config.steps, guidance=config.guidance,
                    images_per_prompt=config.images_per_prompt, seed=config.seed, progress=False,
                    keep_images=True), measures


def measures_line(measures: dict[str, Any]) -> str:
    """One line of a point's companions to the score: held-out loss, text probe, relation use."""
    loss = measures["denoising_loss"]["heldout"]

    def use_line(use: dict[str, Any]) -> str:
        return (f"gap {use['gap']:+.2%} (noisier half {use['gap_noisier_half']:+.2%}), true caption lower "
                f"{use['true_lower']:.2f}; colour-word control gap {use['control_gap']:+.2%} (noisier half "
                f"{use['control_gap_noisier_half']:+.2%})")

    own = measures.get("relation_use_own")
    return (f"held-out loss {loss['loss']:.4f} ({loss['space']}); text probe: {probe_line(measures['text_probe'])}; "
            f"relation use: {use_line(measures['relation_use'])}"
            + (f"; on its own kind of position scene: {use_line(own)}" if own else ""))


def save_grid(scored, path: Path) -> Path:
    """What the score saw: one row per category, every scored prompt's first image framed pass/fail."""
    marked_grid(scored, per_category=max(Counter(p["category"] for p in scored.per_prompt).values())).save(path)
    return path


def minutes_to(points: list[dict[str, Any]], threshold: float) -> float | None:
    """Training minutes at which the score first reaches `threshold`, linearly interpolated between points (from
    score 0 at minute 0); None when it never does."""
    prev_m, prev_s = 0.0, 0.0
    for p in points:
        m, s = p["minutes"], p["overall"]
        if s >= threshold:
            return prev_m + (m - prev_m) * (threshold - prev_s) / (s - prev_s) if s > prev_s else m
        prev_m, prev_s = m, s
    return None


def load_results(path: Path, config: SpeedrunConfig, machine: str) -> dict[str, Any]:
    """The points already in `path` (an empty race when there is none). Training minutes are only comparable on
    one machine, so points measured on another (`machine`, as `machine_description()` words it; files from before
    it was recorded: their points' hardware) are refused, as are points scored another way."""
    if path.is_file():
        results = _scored_the_same_way(path, config)
        theirs = results.get("machine") or re.sub(r", \d+ process(es)?$", "", _hardware(results))
        if theirs and theirs != machine:
            raise ValueError(f"{path} holds points measured on another machine ({theirs}; this is {machine}): "
                             "training minutes compare only on one machine, so use another --out and race the "
                             "baseline again here")
        return results
    return {"recipes": {}}


def _scored_the_same_way(path: Path, config: SpeedrunConfig) -> dict[str, Any]:
    results = json.loads(path.read_text())
    scoring = {k: results.get("config", {}).get(k) for k in ("prompts", "max_prompts", "images_per_prompt",
                                                              "steps", "guidance", "sampler", "seed")}
    if scoring != {k: getattr(config, k) for k in scoring}:
        raise ValueError(f"{path} holds points scored another way ({scoring}); use another --out or the same "
                         "scoring options")
    return results


def speedrun(config: SpeedrunConfig, progress: bool = True) -> dict[str, Any]:
    """Train and score every recipe at every budget point (skipping points already in OUT/speedrun.json)."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "speedrun.json"
    machine = machine_description()
    results = load_results(path, config, machine)
    results["config"] = asdict(config)
    results["machine"] = machine
    for recipe in config.recipes:
        name = Path(recipe).stem
        entry = results["recipes"].setdefault(name, {"recipe": recipe, "points": []})
        done = {p["minutes"] for p in entry["points"]}
        for minutes in config.budgets():
            if minutes in done:
                continue
            start = time.perf_counter()
            summary = train_slice(recipe, out / name, minutes, config.extra)
            scored, measures = score_folder(out / name / "pipeline", config)
            grid = save_grid(scored, out / name / f"samples-{minutes:g}min.png")
            point = {"minutes": minutes, "overall": scored.overall, "categories": scored.categories,
                     "steps": summary["steps"], "train_seconds": summary["train_seconds_all_invocations"],
                     "cpu_seconds": summary.get("cpu_seconds_all_invocations"),
                     "images_per_s": summary.get("images_per_s"), "epochs": summary.get("epochs"),
                     "wall_seconds_with_scoring": time.perf_counter() - start, "hardware": summary.get("hardware"),
                     "grid": str(grid.relative_to(out)), **measures}
            entry["points"].append(point)
            entry["points"].sort(key=lambda p: p["minutes"])
            if progress:
                print(f"{name}: {minutes:g} min, step {point['steps']}, overall {point['overall']:.3f}; "
                      f"{measures_line(measures)}", flush=True)
            entry["minutes_to"] = {str(t): minutes_to(entry["points"], t) for t in THRESHOLDS}
            path.write_text(json.dumps(results, indent=2) + "\n")
    return results


def score_only(config: SpeedrunConfig, progress: bool = True) -> dict[str, Any]:
    """Score each of `config.score`'s folders as a speedrun point is scored; the results (keyed by folder, merged
    with earlier ones scored the same way) go to OUT/scored.json and each folder's framed samples beside it."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "scored.json"
    results = _scored_the_same_way(path, config) if path.is_file() else {"folders": {}}
    results["config"] = asdict(config)  # a score does not depend on the machine, so no machine check here
    for folder in config.score:
        scored, measures = score_folder(Path(folder), config)
        name = "-".join(Path(folder).resolve().parts[-2:])  # e.g. RUN-pipeline: two runs' folders stay apart
        grid = save_grid(scored, out / f"{name}-samples.png")
        summary = Path(folder) / "training_summary.json"
        steps = json.loads(summary.read_text()).get("steps") if summary.is_file() else None
        results["folders"][str(folder)] = {"overall": scored.overall, "categories": scored.categories,
                                           "steps": steps, **measures, "grid": grid.name}
        if progress:
            print(f"{folder}: overall {scored.overall:.3f}, step {steps}; {measures_line(measures)}", flush=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
    return results


def scored_table(results: dict[str, Any]) -> str:
    cats = sorted({c for r in results["folders"].values() for c in r["categories"]})
    rows = [f"{'folder':<44}{'overall':>9}" + "".join(f"{c[:10]:>11}" for c in cats) + f"{'loss':>9}{'steps':>8}"]
    for folder, r in results["folders"].items():
        rows.append(f"{folder[-44:]:<44}{r['overall']:>9.3f}" + "".join(
            f"{r['categories'].get(c, float('nan')):>11.2f}" for c in cats)
            + f"{r['denoising_loss']['heldout']['loss']:>9.4f}{r['steps'] if r['steps'] is not None else '-':>8}")
    return "\n".join(rows)


def table(results: dict[str, Any]) -> str:
    budgets = sorted({p["minutes"] for e in results["recipes"].values() for p in e["points"]})
    head = f"{'recipe':<28}" + "".join(f"{f'{m:g} min':>9}" for m in budgets) + "".join(
        f"{f'to {t}':>9}" for t in THRESHOLDS)
    rows = [head]
    for name, e in results["recipes"].items():
        at = {p["minutes"]: p["overall"] for p in e["points"]}
        to = e.get("minutes_to", {})
        rows.append(f"{name:<28}" + "".join(f"{at[m]:>9.3f}" if m in at else f"{'-':>9}" for m in budgets) + "".join(
            f"{to.get(str(t)):>9.1f}" if to.get(str(t)) is not None else f"{'-':>9}" for t in THRESHOLDS))
    return "\n".join(rows)


def loss_table(results: dict[str, Any], scenes: str = "heldout") -> str:
    """The held-out denoising loss (LOSS_SCENES[scenes]) of every point: recipe rows, budget columns, the loss's
    space beside each (numbers compare within one space only)."""
    budgets = sorted({p["minutes"] for e in results["recipes"].values() for p in e["points"]})
    rows = [f"{'recipe':<28}" + "".join(f"{f'{m:g} min':>9}" for m in budgets) + "  space"]
    for name, e in results["recipes"].items():
        at = {p["minutes"]: p["denoising_loss"][scenes] for p in e["points"] if "denoising_loss" in p}
        space = next((v["space"] for v in at.values()), "-")
        rows.append(f"{name:<28}" + "".join(f"{at[m]['loss']:>9.4f}" if m in at else f"{'-':>9}" for m in budgets)
                    + f"  {space}")
    return "\n".join(rows)


def write_plot(results: dict[str, Any], path: str | Path) -> Path:
    """PNG: ShapesWorld overall score vs training minutes, one line per recipe; beside it the held-out denoising
    loss of the points that have one (dashed where its space differs from the first line's: not comparable)."""
    fig, (ax, lax) = figure(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    first_space = None
    for name, e in results["recipes"].items():
        points = e["points"]
        if points:
            line, = ax.plot([0] + [p["minutes"] for p in points], [0] + [p["overall"] for p in points], marker="o",
                            markersize=3, label=name)
            lossy = [p for p in points if "denoising_loss" in p]
            if lossy:
                space = lossy[0]["denoising_loss"]["heldout"]["space"]
                first_space = first_space or space
                lax.plot([p["minutes"] for p in lossy], [p["denoising_loss"]["heldout"]["loss"] for p in lossy],
                         marker="o", markersize=3, color=line.get_color(), ls="-" if space == first_space else "--",
                         label=f"{name} ({space})")
    lax.set_xlabel("training minutes")
    lax.set_ylabel("held-out denoising loss (lower is better)")
    lax.set_title("unweighted objective, 256 held-out-split scenes", fontsize=10)
    lax.grid(alpha=0.3)
    if lax.lines:
        lax.legend(fontsize=7, loc="best")
    for t in THRESHOLDS:
        ax.axhline(t, color="grey", lw=0.6, ls=":")
    c = results["config"]
    machine = results.get("machine") or _hardware(results)
    ax.set_xlabel(f"training minutes ({machine})" if machine else "training minutes")
    ax.set_ylabel("ShapesWorld overall score")
    ax.set_ylim(0, 1)
    ax.set_title(f"{Path(c['prompts']).stem}: {c['max_prompts']} prompts x {c['images_per_prompt']} images, "
                 f"{c['steps']} steps, guidance {c['guidance']}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path)


def _hardware(results: dict[str, Any]) -> str:
    return next((p.get("hardware", "") for e in results["recipes"].values() for p in e["points"]), "")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipes", nargs="+", default=[], help="train_text_to_image recipe YAML files, one line each")
    p.add_argument("--score", nargs="+", default=[], metavar="FOLDER",
                   help="instead of --recipes: score these model folders as a point is scored, train nothing "
                        "(results in OUT/scored.json)")
    p.add_argument("--minutes", type=float, default=30.0, help="training minutes per recipe (default 30)")
    p.add_argument("--every", type=float, default=10.0, help="score after every this many minutes (default 10)")
    p.add_argument("--prompts", default="assets/prompts/indist.jsonl", help="prompt set (default %(default)s)")
    p.add_argument("--max-prompts", type=int, default=48, help="category-balanced subset size (default 48)")
    p.add_argument("--images-per-prompt", type=int, default=2, help="images per prompt (default 2)")
    p.add_argument("--steps", type=int, default=20, help="sampler steps (default 20)")
    p.add_argument("--guidance", type=float, default=5.0, help="guidance scale (default 5.0)")
    p.add_argument("--sampler", help="named sampler (default: each model's own)")
    p.add_argument("--seed", type=int, default=0, help="first seed of the scored images (default 0)")
    p.add_argument("--out", default="out/speedrun", help="working folder (default %(default)s)")
    p.add_argument("--train-flag", dest="extra", action="append", default=[], metavar="FLAG",
                   help="a flag for every training run, e.g. --train-flag=--seed=1 (repeatable)")


def run(args: argparse.Namespace) -> int:
    config = SpeedrunConfig(recipes=args.recipes, score=args.score, minutes=args.minutes, every=args.every,
                            prompts=args.prompts, max_prompts=args.max_prompts, images_per_prompt=args.images_per_prompt, steps=args.steps,
                            guidance=args.guidance, sampler=args.sampler, seed=args.seed, out=args.out,
                            extra=args.extra)
    if config.score:
        print(scored_table(score_only(config)))
        print(f"wrote {Path(config.out) / 'scored.json'}")
        return 0
    results = speedrun(config)
    results["command"] = "latentdiff bench speedrun " + shlex.join(
        ["--recipes", *config.recipes, f"--minutes={config.minutes:g}", f"--every={config.every:g}",
         f"--prompts={config.prompts}", f"--max-prompts={config.max_prompts}",
         f"--images-per-prompt={config.images_per_prompt}", f"--steps={config.steps}",
         f"--guidance={config.guidance}", f"--seed={config.seed}", f"--out={config.out}"]
        + ([f"--sampler={config.sampler}"] if config.sampler else []) + [f"--train-flag={e}" for e in config.extra])
    out = Path(config.out)
    (out / "speedrun.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print("held-out denoising loss (latentdiff/eval/denoising_loss.py):")
    print(loss_table(results))
    print(f"wrote {out / 'speedrun.json'} and {write_plot(results, out / 'speedrun.png')}")
    return 0
