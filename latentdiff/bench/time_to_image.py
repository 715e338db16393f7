"""`latentdiff bench time-to-image`: the fastest configuration that still draws correct images, against stock
diffusers' default configuration for the same folder, in one run.

Candidates (each a sampler and a step count, on the model or on a distilled student of it) and the stock baseline
(diffusers' `StableDiffusionPipeline` on the same weights with the folder's own scheduler and diffusers' default
50 steps) all generate the same prompts from the same seeds. For each:
  overall            ShapesWorld score (`latentdiff.eval`: the mean of the category scores).
  seconds_per_image  end-to-end wall time of the pipeline calls (text encoding, sampler loop, VAE decode) over
                     images, after one untimed warm-up call per pipeline.
A configuration is *correct enough* when its overall is >= `tolerance` (0.95) x the best overall of any
configuration in the run; the *fastest correct* one is the one with the fewest seconds per image among those, and
the speedup is the stock baseline's seconds per image over its seconds per image, both measured in this run.
"""

from __future__ import annotations

import argparse
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from latentdiff.bench.samplers import int_list, plan_batches, select_prompts
from latentdiff.bench.report import figure, save_figure, write_report
from latentdiff.eval.seeded import generators
from latentdiff.eval.prompts import PromptSpec, read_prompt_set
from latentdiff.eval.run import score_images

DEFAULT_SAMPLERS = ("dpm++2m", "unipc")  # the model's candidates: the best few-step solvers of `bench samplers`
DEFAULT_STEPS = (6, 8, 10, 15, 20)
DEFAULT_DISTILLED_STEPS = (1, 2, 4, 8)
STOCK_STEPS = 50  # StableDiffusionPipeline.__call__'s default num_inference_steps


@dataclass
class Candidate:
    model: str  # "model" (the folder under test), "distilled" (its student) or "stock" (diffusers' default path)
    sampler: str  # named sampler; for "stock" the folder's own scheduler class
    steps: int  # num_inference_steps
    guidance: float  # guidance_scale passed to the pipeline
    overall: float | None = None  # ShapesWorld score
    categories: dict[str, float] = field(default_factory=dict)  # category -> fraction of its images that pass
    seconds_per_image: float | None = None  # end-to-end, VAE decode included
    images: int = 0  # images generated and scored

    @property
    def label(self) -> str:
        return f"{self.model}: {self.sampler}, {self.steps} steps"


@dataclass
class TimeToImageResult:
    rows: list[Candidate]  # every candidate, the stock baseline last
    tolerance: float  # a row is correct enough at overall >= tolerance x best
    source: str  # the model folder
    distilled: str | None  # the distilled student's folder, if any
    prompts: str  # the prompt set file
    prompt_count: int  # prompts used (a category-balanced subset)
    images_per_prompt: int
    seed: int
    device: str

    @property
    def stock(self) -> Candidate:
        return next(r for r in self.rows if r.model == "stock")

    @property
    def best(self) -> float:
        return max(r.overall for r in self.rows)

    @property
    def threshold(self) -> float:
        return self.tolerance * self.best

    @property
    def fastest(self) -> Candidate:
        """The fastest row whose score reaches the threshold (the best row always does)."""
        return min((r for r in self.rows if r.overall >= self.threshold), key=lambda r: r.seconds_per_image)

    @property
    def speedup(self) -> float:
        """Stock baseline's seconds per image over the fastest correct configuration's."""
        return self.stock.seconds_per_image / self.fastest.seconds_per_image

    def table(self) -> str:
        out = [f"{'configuration':<34}{'guidance':>9}{'overall':>9}{'s/image':>10}  "]
        fastest = self.fastest
        for r in self.rows:
            mark = "fastest correct" if r is fastest else ("ok" if r.overall >= self.threshold else "")
            out.append(f"{r.label:<34}{r.guidance:>9.1f}{r.overall:>9.3f}{r.seconds_per_image:>10.4f}  {mark}")
        out.append(f"best overall {self.best:.3f}; correct enough: >= {self.tolerance:g} x best = {self.threshold:.3f}")
        out.append(f"time to a correct image: {fastest.label} {fastest.seconds_per_image:.4f} s vs stock default "
                   f"({self.stock.sampler}, {self.stock.steps} steps) {self.stock.seconds_per_image:.4f} s: "
                   f"{self.speedup:.2f}x faster")
        return "\n".join(out)

    def to_json(self, command: str = "") -> dict[str, Any]:
        return {
            "model": self.source, "distilled": self.distilled, "prompts": self.prompts,
            "prompt_count": self.prompt_count, "images_per_prompt": self.images_per_prompt, "seed": self.seed,
            "device": self.device, "tolerance": self.tolerance, "best_overall": self.best,
            "threshold": self.threshold, "fastest": asdict(self.fastest) | {"label": self.fastest.label},
            "stock": asdict(self.stock) | {"label": self.stock.label}, "speedup": self.speedup,
            "rows": [asdict(r) | {"label": r.label} for r in self.rows],
            "definitions": {
                "seconds_per_image": "end-to-end wall time of the pipeline calls (text encoding, sampler loop, VAE "
                                     "decode) / images, after one warm-up call per pipeline",
                "speedup": "stock seconds_per_image / fastest correct seconds_per_image, same run",
            },
            "command": command,
        }


def _run(pipe, plan, k: int, steps: int, guidance: float) -> tuple[list, float]:
    """PIL images of every image of `plan` (prompt-major) and the seconds the pipeline calls took."""
    images, seconds = [], 0.0
    device = pipe._execution_device
    for batch in plan:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = pipe([p for p, _ in batch.prompts], num_inference_steps=steps, guidance_scale=guidance,
                   num_images_per_prompt=k, generator=generators(batch.seeds), output_type="pil").images
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - start
        images += out
    return images, seconds


def measure(pipe, row: Candidate, prompts: list[tuple[str, PromptSpec]], plan, k: int) -> Candidate:
    """Fill `row` with the score and seconds per image of `pipe` (its scheduler already set) on `prompts`."""
    _run(pipe, plan[:1], k, min(row.steps, 2), row.guidance)  # warm-up: allocator, kernels, lazy imports
    images, seconds = _run(pipe, plan, k, row.steps, row.guidance)
    scored = score_images(prompts, images, k, seconds)
    row.overall, row.categories = scored.overall, scored.categories
    row.seconds_per_image, row.images = seconds / len(images), len(images)
    return row


def bench_time_to_image(pipe, prompts: list[tuple[str, PromptSpec]], *, distilled=None,
                        samplers: tuple[str, ...] = DEFAULT_SAMPLERS, steps: tuple[int, ...] = DEFAULT_STEPS,
                        distilled_sampler: str = "lcm", distilled_steps: tuple[int, ...] = DEFAULT_DISTILLED_STEPS,
                        guidance: float = 5.0, stock_guidance: float | None = None, tolerance: float = 0.95,
                        max_prompts: int | None = 48, images_per_prompt: int = 2, seed: int = 0,
                        batch_size: int = 32, source: str = "", distilled_source: str | None = None,
                        prompts_path: str = "", progress: bool = True) -> TimeToImageResult:
    """Measure every candidate and the stock baseline (see the module doc). `pipe` and `distilled` are
    LatentDiffusionPipelines; their schedulers are restored afterwards."""
    from latentdiff.bench.generate import stock_pipeline

    if not 0 < tolerance <= 1:
        raise ValueError(f"tolerance must be in (0, 1], got {tolerance}")
    if not samplers and distilled is None:
        raise ValueError("name at least one sampler, or pass a distilled model, to compare with the stock default")
    for name, values in (("steps", steps), ("distilled steps", distilled_steps)):
        if any(int(v) < 1 for v in values):
            raise ValueError(f"{name} must be >= 1, got {list(values)}")
    for name in samplers:
        if name not in pipe.sampler_names():
            raise ValueError(f"Unknown sampler {name!r} for this model; choose from: {', '.join(pipe.sampler_names())}")
    if not prompts:
        raise ValueError("bench time-to-image: the prompt set is empty")
    chosen = select_prompts(prompts, max_prompts)
    k = images_per_prompt
    plan = plan_batches(chosen, k, batch_size, seed)

    rows = [Candidate("model", s, n, guidance) for s in samplers for n in steps]
    if distilled is not None:
        rows += [Candidate("distilled", distilled_sampler, n, guidance) for n in distilled_steps]
    original = pipe.scheduler
    stock = stock_pipeline(pipe)  # shares the weights; keeps the folder's own scheduler object
    rows.append(Candidate("stock", type(original).__name__, STOCK_STEPS,
                          guidance if stock_guidance is None else stock_guidance))

    pipes = [pipe] + ([distilled] if distilled is not None else [])
    saved = [(p, p.scheduler, dict(getattr(p, "_progress_bar_config", {}))) for p in pipes]
    bar = tqdm(rows, desc="time to image", unit="config", disable=not progress)
    try:
        for p in pipes:
            p.set_progress_bar_config(disable=True)
        for row in bar:
            bar.set_postfix_str(row.label)
            if row.model == "stock":
                runner = stock
            else:
                runner = pipe if row.model == "model" else distilled
                runner.scheduler = next(s for q, s, _ in saved if q is runner)
                runner.set_sampler(row.sampler)
            measure(runner, row, chosen, plan, k)
    finally:
        for p, scheduler, bar_config in saved:
            p.scheduler = scheduler
            p.set_progress_bar_config(**bar_config)
    return TimeToImageResult(rows=rows, tolerance=tolerance, source=source, distilled=distilled_source,
                             prompts=prompts_path, prompt_count=len(chosen), images_per_prompt=k, seed=seed,
                             device=str(pipe._execution_device))


def write_plot(result: TimeToImageResult, path: str | Path) -> Path:
    """PNG: overall score vs seconds per image, one marker per configuration; the threshold as a line."""
    fig, ax = figure(figsize=(7.5, 4.5))
    groups: dict[str, list[Candidate]] = {}
    for r in result.rows:
        groups.setdefault(r.label.split(",")[0], []).append(r)
    for name, rows in groups.items():
        rows = sorted(rows, key=lambda r: r.seconds_per_image)
        ax.plot([r.seconds_per_image for r in rows], [r.overall for r in rows], marker="o", markersize=4, label=name)
        for r in rows:
            ax.annotate(str(r.steps), (r.seconds_per_image, r.overall), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.axhline(result.threshold, color="gray", linestyle="--", linewidth=1,
               label=f"{result.tolerance:g} x best ({result.threshold:.3f})")
    f = result.fastest
    ax.scatter([f.seconds_per_image], [f.overall], s=160, facecolors="none", edgecolors="black",
               label=f"fastest correct: {result.speedup:.2f}x vs stock")
    ax.set_xscale("log")
    ax.set_xlabel("seconds per image (end to end; labels: steps)")
    ax.set_ylabel("ShapesWorld overall score")
    ax.set_title(f"{Path(result.source).name}: time to a correct image ({result.prompt_count} prompts x "
                 f"{result.images_per_prompt}, {result.device})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------- command line
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="pipeline folder, hub repo id or preset:NAME (default: the default model)")
    p.add_argument("--genie-head", help="a GENIE head folder for the taylor2 sampler (distill_genie's genie_head/)")
    p.add_argument("--prompts", required=True, help="prompt set, JSON lines (e.g. assets/prompts/indist.jsonl)")
    p.add_argument("--samplers", default=",".join(DEFAULT_SAMPLERS),
                   help="comma-separated named samplers for the model (default %(default)s; '' for none)")
    p.add_argument("--steps", default=",".join(map(str, DEFAULT_STEPS)),
                   help="comma-separated step counts for each sampler (default %(default)s)")
    p.add_argument("--distilled", help="a distilled student's pipeline folder (e.g. training/distill_lcm.py's)")
    p.add_argument("--distilled-sampler", default="lcm", help="its named sampler (default %(default)s)")
    p.add_argument("--distilled-steps", default=",".join(map(str, DEFAULT_DISTILLED_STEPS)),
                   help="comma-separated step counts for the student (default %(default)s)")
    p.add_argument("--guidance", type=float, default=5.0, help="guidance scale of the candidates (default 5.0)")
    p.add_argument("--stock-guidance", type=float,
                   help="guidance scale of the stock baseline (default: --guidance, the model's recommended one)")
    p.add_argument("--tolerance", type=float, default=0.95,
                   help="correct enough: overall >= this x the best overall (default 0.95)")
    p.add_argument("--max-prompts", type=int, default=48,
                   help="a category-balanced subset of this many prompts (default 48; 0: all)")
    p.add_argument("--images-per-prompt", type=int, default=2, help="images per prompt (default 2)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--batch-size", type=int, default=32, help="images per pipeline call (default 32)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--out", default="out/bench-time-to-image", help="folder for time_to_image.json and .png")


def run(args: argparse.Namespace) -> int:
    from latentdiff.loading import load_model, model_flags

    if args.images_per_prompt < 1 or args.batch_size < 1:
        raise ValueError("--images-per-prompt and --batch-size must be >= 1")
    prompts = read_prompt_set(args.prompts)
    samplers = tuple(s.strip() for s in args.samplers.split(",") if s.strip())
    loaded = load_model(args.model, device=args.device, genie_head=args.genie_head)
    distilled = load_model(args.distilled, device=args.device) if args.distilled else None
    result = bench_time_to_image(
        loaded.pipe, prompts, distilled=None if distilled is None else distilled.pipe, samplers=samplers,
        steps=int_list(args.steps, "--steps"), distilled_sampler=args.distilled_sampler,
        distilled_steps=int_list(args.distilled_steps, "--distilled-steps"), guidance=args.guidance,
        stock_guidance=args.stock_guidance, tolerance=args.tolerance, max_prompts=args.max_prompts or None,
        images_per_prompt=args.images_per_prompt, seed=args.seed, batch_size=args.batch_size,
        source=loaded.source, distilled_source=None if distilled is None else distilled.source,
        prompts_path=args.prompts)
    flags = model_flags(args) + [
        f"--prompts={args.prompts}", f"--samplers={args.samplers}", f"--steps={args.steps}",
        *([f"--distilled={args.distilled}", f"--distilled-sampler={args.distilled_sampler}",
           f"--distilled-steps={args.distilled_steps}"] if args.distilled else []),
        f"--guidance={args.guidance}", *([f"--stock-guidance={args.stock_guidance}"]
                                         if args.stock_guidance is not None else []),
        f"--tolerance={args.tolerance}", f"--max-prompts={args.max_prompts}",
        f"--images-per-prompt={args.images_per_prompt}", f"--seed={args.seed}", f"--out={args.out}"]
    command = "latentdiff bench time-to-image " + shlex.join(flags)
    print(result.table())
    write_report(args.out, "time_to_image", result.to_json(command), lambda path: write_plot(result, path))
    return 0
