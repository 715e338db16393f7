"""`latentdiff eval`: generate for every prompt of a prompt set, score each image, report per category.

Image j of prompt i starts from the seed `seed + i * images_per_prompt + j`, so a run is reproducible
and any single image can be regenerated. The overall score is the mean of the category scores (GenEval's
convention), each category score the fraction of its images that pass (`latentdiff.eval.score`).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from latentdiff.data.shapes import CATEGORIES
from latentdiff.eval.prompts import PromptSpec, read_prompt_set
from latentdiff.eval.score import score_image
from latentdiff.eval.seeded import generate_seeded, plan_batches
from latentdiff.images import make_grid

# What `latentdiff eval` uses when a flag is not given: the configuration the default model's reported
# scores were measured with (assets/shapes-tiny/README.md).
DEFAULTS = {"sampler": "dpm++2m", "steps": 20, "guidance": 5.0, "images_per_prompt": 4, "seed": 0, "batch_size": 64}


@dataclass
class EvalResult:
    categories: dict[str, float]  # category -> fraction of its images that pass
    counts: dict[str, tuple[int, int]]  # category -> (passed, total)
    per_prompt: list[dict[str, Any]]  # prompt, category, passed (per image), reasons
    settings: dict[str, Any]
    seconds: float
    images: list[list[Image.Image]] = field(default_factory=list, repr=False)  # per prompt

    @property
    def overall(self) -> float:
        return sum(self.categories.values()) / len(self.categories)

    def failures(self) -> list[tuple[str, str, int]]:
        """(category, reason, images) of the failing images, most frequent first. A reason is the scorer's, with
        the detected objects left out ("objects ... do not match the prompt"), so that like failures add up."""
        counts: dict[tuple[str, str], int] = {}
        for p in self.per_prompt:
            for passed, reason in zip(p["passed"], p["reasons"]):
                if not passed:
                    kind = "objects do not match the prompt" if reason.startswith("objects ") else reason
                    counts[p["category"], kind] = counts.get((p["category"], kind), 0) + 1
        return [(c, r, n) for (c, r), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]

    def failure_table(self, top: int = 10) -> str:
        """The `top` most frequent failures, one line each."""
        rows = self.failures()
        return "\n".join([f"most frequent failures ({sum(n for *_, n in rows)} images):"]
                         + [f"  {n:>4}  {c:<14} {r}" for c, r, n in rows[:top]])

    def table(self, ceiling: "EvalResult | None" = None) -> str:
        """One row per category: score and images passed; with `ceiling`, the VAE ceiling beside them."""
        extra = lambda v: f"  {v:>12.3f}" if ceiling is not None else ""  # noqa: E731
        rows = [f"{'category':<14} {'score':>6} {'passed':>8}" + ("  VAE ceiling" if ceiling is not None else "")]
        for c, v in self.categories.items():
            rows.append(f"{c:<14} {v:>6.3f} {self.counts[c][0]:>4}/{self.counts[c][1]:<4}"
                        + (extra(ceiling.categories.get(c, float("nan"))) if ceiling is not None else ""))
        rows.append(f"{'overall':<14} {self.overall:>6.3f}" + (f"     {extra(ceiling.overall)}" if ceiling is not None
                                                               else "   (mean of categories)"))
        if ceiling is not None and "psnr_db" in ceiling.settings:
            rows.append(f"(VAE ceiling: the prompts' own scenes through the model's VAE, {ceiling.settings['psnr_db']:.2f} dB"
                        " PSNR; no model on this VAE can score above it)")
        return "\n".join(rows)


def evaluate(pipe, prompts: list[tuple[str, PromptSpec]], *, sampler: str | None = None, steps: int = 20,
             guidance: float = 5.0, images_per_prompt: int = 4, seed: int = 0, batch_size: int = 64,
             progress: bool = True, keep_images: bool = True) -> EvalResult:
    """Generate `images_per_prompt` images per prompt with `pipe` and score them."""
    if images_per_prompt < 1 or steps < 1 or batch_size < 1:
        raise ValueError("evaluate: images_per_prompt, steps and batch_size must be >= 1")
    if not prompts:
        raise ValueError("evaluate: no prompts")
    if sampler is not None:
        pipe.set_sampler(sampler)
    k = images_per_prompt
    start = time.perf_counter()
    per_prompt, images = [], []
    bar = tqdm(total=len(prompts) * k, desc="eval", unit="img", disable=not progress)
    for batch in plan_batches(prompts, k, batch_size, seed):
        chunk = batch.prompts
        out = generate_seeded(pipe, [p for p, _ in chunk], batch.seeds, num_inference_steps=steps,
                              guidance_scale=guidance).images  # len(chunk) * k PIL images
        for i, (prompt, spec) in enumerate(chunk):
            mine = out[i * k:(i + 1) * k]
            per_prompt.append(score_prompt(prompt, spec, mine))
            if keep_images:
                images.append(mine)
        bar.update(len(chunk) * k)
    bar.close()
    settings = {"sampler": sampler or type(pipe.scheduler).__name__, "steps": steps, "guidance": guidance,
                "images_per_prompt": k, "seed": seed}
    return tally(per_prompt, settings, seconds=time.perf_counter() - start, images=images)


def score_prompt(prompt: str, spec: PromptSpec, images: list[Image.Image]) -> dict[str, Any]:
    """One `EvalResult.per_prompt` entry: every image of `prompt` judged against its spec."""
    verdicts = [score_image(im, spec) for im in images]
    return {"prompt": prompt, "category": spec.category, "passed": [v.passed for v in verdicts],
            "reasons": [v.reason for v in verdicts]}


def tally(per_prompt: list[dict[str, Any]], settings: dict[str, Any], seconds: float,
          images: list[list[Image.Image]] | None = None) -> EvalResult:
    """Category scores (fraction of a category's images that pass) of `score_prompt` entries."""
    counts = {}
    for c in CATEGORIES:
        rows = [p for p in per_prompt if p["category"] == c]
        if rows:
            counts[c] = (sum(sum(p["passed"]) for p in rows), sum(len(p["passed"]) for p in rows))
    return EvalResult(categories={c: a / b for c, (a, b) in counts.items()}, counts=counts, per_prompt=per_prompt,
                      settings=settings, seconds=seconds, images=images or [])


def score_images(prompts: list[tuple[str, PromptSpec]], images: list[Image.Image], k: int,
                 seconds: float = 0.0) -> EvalResult:
    """EvalResult of `images`, k per prompt in the order of `prompts` (prompt-major), judged as `latentdiff eval`."""
    return tally([score_prompt(p, spec, images[i * k:(i + 1) * k]) for i, (p, spec) in enumerate(prompts)],
                 settings={}, seconds=seconds)


def marked_grid(result: EvalResult, per_category: int = 12) -> Image.Image:
    """One row per category: the first image of its first prompts, framed green (pass) or red (fail)."""
    tiles = []
    for c in result.categories:
        rows = [(p, ims) for p, ims in zip(result.per_prompt, result.images) if p["category"] == c][:per_category]
        for p, ims in rows:
            tile = ims[0].convert("RGB").copy()
            draw = ImageDraw.Draw(tile)
            w, h = tile.size
            color = (40, 200, 60) if p["passed"][0] else (230, 40, 40)
            draw.rectangle([0, 0, w - 1, h - 1], outline=color, width=max(2, w // 32))
            tiles.append(tile)
        blank = Image.new("RGB", tiles[-1].size, (255, 255, 255))
        tiles += [blank] * (per_category - len(rows))
    return make_grid(tiles, cols=per_category)


def report(result: EvalResult, model: str, prompts_path: str, command: str,
           ceiling: EvalResult | None = None) -> dict[str, Any]:
    """The JSON written by `latentdiff eval --json`; `metrics`/`dataset`/`settings`/`command` are what a model
    card reads (latentdiff.hub.card). With `ceiling` (the VAE reference), its scores and PSNR as metrics too."""
    stem = Path(prompts_path).stem
    extra = {}
    if ceiling is not None:
        extra = {f"{stem}/vae_ceiling/overall": ceiling.overall,
                 **{f"{stem}/vae_ceiling/{c}": v for c, v in ceiling.categories.items()}}
        if "psnr_db" in ceiling.settings:
            extra[f"{stem}/vae_psnr_db"] = ceiling.settings["psnr_db"]
    return {
        "overall": result.overall,
        "categories": result.categories,
        "counts": {c: {"passed": a, "total": b} for c, (a, b) in result.counts.items()},
        "model": model,
        "prompts": prompts_path,
        "settings": result.settings,
        "seconds": result.seconds,
        "command": command,
        "metrics": {f"{stem}/overall": result.overall, **{f"{stem}/{c}": v for c, v in result.categories.items()},
                    **extra},
        "ceiling": None if ceiling is None else {"overall": ceiling.overall, "categories": ceiling.categories,
                                                 "settings": ceiling.settings},
        "dataset": {"name": f"ShapesWorld prompts ({stem})", "id": prompts_path},
        "failures": [{"category": c, "reason": r, "images": n} for c, r, n in result.failures()],
        "per_prompt": result.per_prompt,
    }


def merge_into_model_card(model_dir: Path, rep: dict[str, Any]) -> Path:
    """Add this run's metrics to MODEL/eval.json (read by the model card); other prompt sets' metrics stay."""
    path = model_dir / "eval.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    metrics = {**old.get("metrics", {}), **rep["metrics"]}
    commands = [c for c in str(old.get("command", "")).splitlines() if c and Path(rep["prompts"]).stem not in c]
    merged = {"metrics": dict(sorted(metrics.items())),
              "dataset": {"name": "ShapesWorld prompt sets (assets/prompts)", "id": "latentdiff/shapesworld-prompts"},
              "settings": rep["settings"], "command": "\n".join(commands + [rep["command"]])}
    path.write_text(json.dumps(merged, indent=2) + "\n")
    return path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="pipeline folder, hub repo id or preset:NAME (default: the default model); with "
                   "--reference vae also a VAE folder on its own (train_vae's OUTPUT/vae)")
    p.add_argument("--genie-head", help="a GENIE head folder for the taylor2 sampler (distill_genie's genie_head/)")
    p.add_argument("--prompts", required=True, help="prompt set, JSON lines (e.g. assets/prompts/indist.jsonl)")
    p.add_argument("--sampler", default=DEFAULTS["sampler"], help=f"named sampler (default {DEFAULTS['sampler']})")
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"], help=f"sampler steps (default {DEFAULTS['steps']})")
    p.add_argument("--guidance", type=float, default=DEFAULTS["guidance"],
                   help=f"classifier-free guidance scale (default {DEFAULTS['guidance']})")
    p.add_argument("--images-per-prompt", type=int, default=DEFAULTS["images_per_prompt"],
                   help=f"images per prompt (default {DEFAULTS['images_per_prompt']})")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="first seed (default 0)")
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="images per pipeline call")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--json", required=True, help="write the scores (and per-prompt verdicts) here")
    p.add_argument("--grid", help="PNG of samples with pass/fail frames (default: next to --json)")
    p.add_argument("--reference", choices=("render", "vae"),
                   help="score ground truth instead of generating: each prompt's own scene as drawn (render) or "
                        "through the model's VAE (vae), the best any model on that VAE can score")
    p.add_argument("--update-model-card", action="store_true",
                   help="also merge the metrics into MODEL/eval.json, which `latentdiff push` puts in the card")


def run(args: argparse.Namespace) -> int:
    from latentdiff.loading import load_model, model_flags
    from latentdiff.pipelines.samplers import sampler_names

    if args.sampler not in sampler_names():
        raise ValueError(f"--sampler {args.sampler!r} is unknown; choose one of: {', '.join(sampler_names())}")
    for name in ("steps", "images_per_prompt", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    prompts = read_prompt_set(args.prompts)
    if args.reference is not None:
        return run_reference(args)
    loaded = load_model(args.model, device=args.device, genie_head=args.genie_head)
    loaded.pipe.set_progress_bar_config(disable=True)
    result = evaluate(loaded.pipe, prompts, sampler=args.sampler, steps=args.steps, guidance=args.guidance,
                      images_per_prompt=args.images_per_prompt, seed=args.seed, batch_size=args.batch_size)
    ceiling = vae_ceiling(loaded.pipe, args.prompts)
    print(f"{loaded.source}: {len(prompts)} prompts x {args.images_per_prompt} images, {args.sampler} "
          f"{args.steps} steps, guidance {args.guidance}, {result.seconds:.1f} s")
    print(result.table(ceiling))
    print(result.failure_table())
    command = "latentdiff eval " + shlex.join(
        model_flags(args) + [f"--prompts={args.prompts}", f"--sampler={args.sampler}",
         f"--steps={args.steps}", f"--guidance={args.guidance}", f"--images-per-prompt={args.images_per_prompt}",
         f"--seed={args.seed}", "--json=r.json"])
    rep = report(result, loaded.source, args.prompts, command, ceiling)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rep, indent=2) + "\n")
    grid = Path(args.grid) if args.grid else Path(args.json).with_suffix(".png")
    marked_grid(result).save(grid)
    print(f"wrote {args.json} and {grid}")
    if args.update_model_card:
        if loaded.random_weights or not Path(loaded.source).is_dir():
            raise ValueError("--update-model-card needs --model to be a local pipeline folder")
        print(f"updated {merge_into_model_card(Path(loaded.source), rep)}")
    return 0


def vae_ceiling(pipe, prompts_path: str) -> EvalResult | None:
    """The VAE ceiling of `pipe` on a prompt set whose lines name their scenes; None for one that does not."""
    from latentdiff.eval.reference import evaluate_reference, prompt_scenes

    try:
        prompt_scenes(prompts_path)
    except ValueError:
        return None
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    return evaluate_reference(prompts_path, "vae", pipe.vae, size=size)


def _is_vae_folder(model: str) -> bool:
    """True for a folder holding an AutoencoderKL alone (config.json of that class, no model_index.json)."""
    config = Path(model) / "config.json"
    if not config.is_file() or (Path(model) / "model_index.json").exists():
        return False
    try:
        return json.loads(config.read_text()).get("_class_name") == "AutoencoderKL"
    except (ValueError, AttributeError):
        return False


def run_reference(args: argparse.Namespace) -> int:
    """`latentdiff eval --reference render|vae`: the same table and JSON for ground-truth pictures."""
    from latentdiff.eval.reference import evaluate_reference
    from latentdiff.loading import load_model, model_flags

    vae, size, source = None, 64, "ShapesWorld renders"
    if args.reference == "vae" and args.model is not None and _is_vae_folder(args.model):
        # a VAE on its own (train_vae's OUTPUT/vae, assets/vae-shapes): its images are its config's sample_size
        from diffusers import AutoencoderKL

        from latentdiff.loading import resolve_device

        vae = AutoencoderKL.from_pretrained(args.model).to(resolve_device(args.device))
        size, source = int(vae.config.sample_size), f"{args.model} (VAE)"
    elif args.reference == "vae":
        loaded = load_model(args.model, device=args.device)
        vae, size = loaded.pipe.vae, loaded.pipe.unet.config.sample_size * loaded.pipe.vae_scale_factor
        source = f"{loaded.source} (VAE)"
    result = evaluate_reference(args.prompts, args.reference, vae, size=size)
    psnr = f", {result.settings['psnr_db']:.2f} dB PSNR" if "psnr_db" in result.settings else ""
    print(f"{source}: {len(result.per_prompt)} prompts' own scenes, reference {args.reference}{psnr}")
    print(result.table())
    command = "latentdiff eval " + shlex.join(
        (model_flags(args) if args.reference == "vae" else []) + [f"--prompts={args.prompts}",
                                                                 f"--reference={args.reference}", "--json=r.json"])
    rep = report(result, source, args.prompts, command)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rep, indent=2) + "\n")
    grid = Path(args.grid) if args.grid else Path(args.json).with_suffix(".png")
    marked_grid(result).save(grid)
    print(f"wrote {args.json} and {grid}")
    return 0
