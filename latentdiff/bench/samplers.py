"""`latentdiff bench samplers`: how exact, how good and how fast each named sampler is per number of UNet
evaluations (NFE).

Every (sampler, NFE) cell starts each image from the same initial noise and prompt as every other cell, and gives:
  rmse               RMS difference of the final latents (before the VAE decoder) from a reference solution of
                     the same noise and prompt, over all latent elements of an image, averaged over images. The
                     reference is DDIM (eta 0, no x0 clipping) with 1000 "trailing" steps, i.e. every timestep
                     999 ... 0 of the trained chain, checked against DPM-Solver++(3M) at 500 steps: their RMSE is
                     reported too, next to the RMS of the reference latents.
                     (For a CLD model: the exponential-integrator ODE sampler at 1000 steps, checked at 500 steps
                     on another time grid.)
  overall            ShapesWorld score, the mean of the category scores (`latentdiff.eval`, as `latentdiff eval`).
  seconds_per_image  wall time of the pipeline calls (text encoding and sampler loop; the VAE decode, the same
                     for every sampler, is left out) over images, after one untimed warm-up call.

NFE is the number of UNet forward calls per image; one batched cond + uncond call counts as one, as is usual for
classifier-free guidance. A cell's `num_inference_steps` is the smallest whose `scheduler.timesteps` (one loop
iteration, one UNet call each) has exactly NFE entries: steps for first-order and multistep samplers, and
(NFE + 1) / 2 for Heun and DPM2, which evaluate twice per step but once on the first. A forward hook on the UNet
counts the calls of every pipeline call and a cell whose count differs is not reported. A cell that no step count
reaches (Heun at an even NFE) or whose scheduler fails (some fail at 1 step) is kept as "skipped" with the reason.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers.utils import logging as diffusers_logging
from PIL import Image
from tqdm.auto import tqdm

from latentdiff.data.shapes import CATEGORIES
from latentdiff.bench.report import figure, save_figure
from latentdiff.eval.prompts import PromptSpec, read_prompt_set
from latentdiff.eval.run import score_images
from latentdiff.eval.seeded import SeededBatch, generators, plan_batches  # noqa: F401  (plan_batches: re-exported)
from latentdiff.pipelines.processes import get_process

DEFAULT_NFE = (1, 2, 4, 6, 8, 10, 15, 20, 30, 50)
CSV_COLUMNS = ("sampler", "nfe", "steps", "status", "rmse", "overall", *CATEGORIES, "seconds_per_image", "images",
               "reason")


@dataclass
class ReferenceSpec:
    sampler: str  # named sampler of the reference solution
    steps: int  # its num_inference_steps
    options: dict[str, Any] = field(default_factory=dict)  # set_sampler options for it
    check_sampler: str | None = None  # an independent solver the reference is compared with (None: no check)
    check_steps: int = 0  # its num_inference_steps
    check_options: dict[str, Any] = field(default_factory=dict)  # set_sampler options for the check

    def describe(self, check: bool = False) -> str:
        name, steps, options = ((self.check_sampler, self.check_steps, self.check_options) if check
                                else (self.sampler, self.steps, self.options))
        extra = "".join(f", {k}={v}" for k, v in options.items())
        return f"{name} ({steps} steps{extra})"


def default_reference(process: str) -> ReferenceSpec:
    """The reference solution of a process (its row in pipelines/processes.py) and the solver it is checked with."""
    row = get_process(process)
    if row.reference is None:
        raise ValueError(f"bench samplers has no reference solver for {row.description}; pass one with --samplers "
                         "and a ReferenceSpec in Python")
    check = row.reference_check
    return ReferenceSpec(row.reference.sampler, row.reference.steps, dict(row.reference.options),
                         check and check.sampler, check.steps if check else 0, dict(check.options) if check else {})


@dataclass
class SamplerBenchConfig:
    samplers: tuple[str, ...] | None = None  # named samplers to compare; None: the bench_samplers of the model's process
    nfe: tuple[int, ...] = DEFAULT_NFE  # UNet evaluations per image to test each sampler at
    guidance: float = 5.0  # classifier-free guidance scale
    max_prompts: int | None = None  # a category-balanced subset of this many prompts; None: the whole set
    images_per_prompt: int = 1  # images per prompt; image j of prompt i starts from seed + i * K + j
    seed: int = 0  # first seed
    batch_size: int = 64  # images per pipeline call
    reference: ReferenceSpec | None = None  # None: default_reference of the model's process
    reference_images: int | None = 32  # RMSE over the first this many images (categories interleaved); None: all
    timestep_spacing: str | None = None  # for every sampler under test (e.g. "trailing"); None: the model's own

    def __post_init__(self) -> None:
        if self.samplers is not None:
            self.samplers = tuple(self.samplers)
            if not self.samplers:
                raise ValueError("samplers: name at least one sampler, or pass None for the default set")
        self.nfe = tuple(self.nfe)
        if not self.nfe or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.nfe):
            raise ValueError(f"nfe must be integers >= 1 (UNet evaluations per image), got {list(self.nfe)}")
        if len(set(self.nfe)) != len(self.nfe):
            raise ValueError(f"nfe lists a value twice: {list(self.nfe)}")
        if not isinstance(self.guidance, (int, float)) or not math.isfinite(self.guidance):
            raise ValueError(f"guidance must be a finite number, got {self.guidance!r}")
        for name in ("images_per_prompt", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_prompts", "reference_images"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or None (all), got {getattr(self, name)}")
        if self.reference is not None and (self.reference.steps < 1 or (self.reference.check_sampler is not None
                                                                        and self.reference.check_steps < 1)):
            raise ValueError("reference steps and check steps must be >= 1")


@dataclass
class SamplerCell:
    sampler: str  # named sampler
    nfe: int  # UNet evaluations per image (checked by counting)
    steps: int | None = None  # the num_inference_steps that gives exactly `nfe`; None when none does
    status: str = "ok"  # "ok" or "skipped"
    reason: str = ""  # why the cell was skipped
    rmse: float | None = None  # latent RMSE from the reference, mean over the reference images
    overall: float | None = None  # ShapesWorld score, mean of the category scores
    categories: dict[str, float] = field(default_factory=dict)  # category -> fraction of its images that pass
    seconds_per_image: float | None = None  # pipeline wall time / images, VAE decode excluded
    images: int = 0  # images generated and scored


@dataclass
class SamplerBenchResult:
    cells: list[SamplerCell]  # one per sampler x NFE, in that order
    config: SamplerBenchConfig  # as run, defaults resolved
    reference: ReferenceSpec  # the reference solution and its check
    check_rmse: float | None  # RMSE of the check solver from the reference: how exact the reference is
    reference_rms: float  # RMS of the reference latents themselves, the scale the RMSE values compare to
    reference_images: int  # images the RMSE is computed over
    reference_cached: bool  # the reference latents were read from the cache of an earlier run
    source: str  # the model
    prompts: str  # the prompt set file
    process: str  # the model's noise process (a key of pipelines/processes.PROCESSES)
    timestep_spacing: str | None  # of the samplers under test: config.timestep_spacing or the model's own
    device: str  # where it ran

    def table(self) -> str:
        rows = [f"{'sampler':<16}{'NFE':>5}{'steps':>6}{'RMSE':>10}{'overall':>9}{'s/image':>10}  note"]
        for c in self.cells:
            if c.status == "ok":
                rows.append(f"{c.sampler:<16}{c.nfe:>5}{c.steps:>6}{c.rmse:>10.4f}{c.overall:>9.3f}"
                            f"{c.seconds_per_image:>10.4f}")
            else:
                rows.append(f"{c.sampler:<16}{c.nfe:>5}{'-':>6}{'-':>10}{'-':>9}{'-':>10}  skipped: {c.reason}")
        rows.append(self.reference_line())
        return "\n".join(rows)

    def images_label(self) -> str:
        n = max((c.images for c in self.cells), default=0)
        return f"{n} images, {Path(self.prompts).name}" if self.prompts else f"{n} images"

    def reference_line(self) -> str:
        line = (f"reference: {self.reference.describe()} on {self.reference_images} images, latent RMS "
                f"{self.reference_rms:.4f}")
        if self.check_rmse is not None:
            line += f"; RMSE of {self.reference.describe(check=True)} from it: {self.check_rmse:.2e}"
        return line + (" (cached)" if self.reference_cached else "")

    def to_json(self, command: str = "") -> dict[str, Any]:
        config = asdict(self.config)
        config.pop("reference")
        return {
            "model": self.source, "prompts": self.prompts, "process": self.process, "device": self.device,
            "timestep_spacing": self.timestep_spacing, "config": config,
            "reference": {"sampler": self.reference.sampler, "steps": self.reference.steps,
                          "options": self.reference.options, "description": self.reference.describe(),
                          "check": None if self.reference.check_sampler is None else self.reference.describe(True),
                          "check_rmse": self.check_rmse, "reference_rms": self.reference_rms,
                          "images": self.reference_images, "cached": self.reference_cached},
            "definitions": {
                "nfe": "UNet forward calls per image, counted by a forward hook; one batched cond+uncond call = 1",
                "rmse": "sqrt(mean over latent elements of (latents - reference)^2) per image, mean over the "
                        "reference images; final latents before the VAE decoder",
                "overall": "ShapesWorld score: mean over categories of the fraction of images that pass",
                "seconds_per_image": "wall time of the pipeline calls (text encoding + sampler loop, no VAE "
                                     "decode) / images, after one warm-up call",
            },
            "rows": [asdict(c) for c in self.cells],
            "command": command,
        }


# ---------------------------------------------------------------------------------------------- pieces
class UNetCallCounter:
    """Counts forward calls of `unet` (a forward hook) while the `with` block runs."""

    def __init__(self, unet: torch.nn.Module):
        self.unet = unet
        self.calls = 0
        self._handle = None

    def _hook(self, module, args, output) -> None:
        self.calls += 1

    def __enter__(self) -> UNetCallCounter:  # noqa: PYI034 (typing.Self needs Python 3.11)
        self._handle = self.unet.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def steps_for_nfe(scheduler, nfe: int, max_steps: int | None = None) -> tuple[int | None, str]:
    """The smallest num_inference_steps at which `scheduler` has exactly `nfe` timesteps (the pipeline evaluates the
    UNet once per timestep), and ""; or None and why no step count gives `nfe`. Calls `set_timesteps`; step counts
    the scheduler refuses (ValueError, e.g. below its minimum) are passed over."""
    seen: list[tuple[int, int]] = []
    refused = ""
    for steps in range(1, (max_steps or nfe) + 1):
        try:
            scheduler.set_timesteps(steps)
        except ValueError as err:
            refused = f"; {steps} steps refused: {err}"
            continue
        n = len(scheduler.timesteps)
        if n == nfe:
            return steps, ""
        seen.append((steps, n))
        if n > nfe:
            break
    tried = ", ".join(f"{s} steps -> {n}" for s, n in seen[-2:])
    tried = f" ({tried} UNet evaluations)" if tried else ""
    return None, f"{type(scheduler).__name__} reaches no NFE of exactly {nfe}{tried}{refused if not seen else ''}"


def select_prompts(prompts: list[tuple[str, PromptSpec]], max_prompts: int | None) -> list[tuple[str, PromptSpec]]:
    """Up to `max_prompts` prompts taken in turn from each category (in the file's order within a category), so the
    set and each of its first n prompts are category-balanced. Deterministic; None: all prompts, interleaved."""
    by_category: dict[str, list[tuple[str, PromptSpec]]] = {}
    for p in prompts:
        by_category.setdefault(p[1].category, []).append(p)
    queues = list(by_category.values())
    out: list[tuple[str, PromptSpec]] = []
    for i in range(max(len(q) for q in queues)):
        out += [q[i] for q in queues if i < len(q)]
    return out[:max_prompts] if max_prompts is not None else out


def latent_rmse(latents: torch.Tensor, reference: torch.Tensor) -> float:
    """RMS of (latents - reference) over each image's elements, averaged over images; both (N, C, h, w)."""
    diff = (latents.double() - reference.double()).flatten(1)  # (N, C*h*w)
    return float(diff.pow(2).mean(1).sqrt().mean())


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor) -> list[Image.Image]:
    """PIL images of data latents (B, C, h, w), decoded as the pipeline's own last step does."""
    vae = pipe.vae
    decoded = vae.decode(latents.to(pipe._execution_device, vae.dtype) / vae.config.scaling_factor,
                         return_dict=False)[0]  # (B, 3, H, W) in [-1, 1]
    return pipe.image_processor.postprocess(decoded, output_type="pil")


def _generate(pipe, plan: list[SeededBatch], k: int, steps: int, guidance: float, nfe: int | None,
              bar: tqdm | None = None) -> tuple[torch.Tensor, float]:
    """Final data latents (N, C, h, w) on CPU of every image of `plan`, and the seconds the pipeline calls took.
    Raises RuntimeError when a call's UNet evaluations differ from `nfe`."""
    device = pipe._execution_device
    callback = None
    if bar is not None:
        def callback(pipe_, i, t, tensors):
            bar.update(len(tensors["latents"]))
            return {}
    out, seconds = [], 0.0
    for batch in plan:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        with UNetCallCounter(pipe.unet) as counter:
            start = time.perf_counter()
            result = pipe([p for p, _ in batch.prompts], num_inference_steps=steps, guidance_scale=guidance,
                          num_images_per_prompt=k, generator=generators(batch.seeds), output_type="latent",
                          callback_on_step_end=callback).images  # (B, C, h, w)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds += time.perf_counter() - start
        if nfe is not None and counter.calls != nfe:
            raise RuntimeError(f"counted {counter.calls} UNet evaluations per image at {steps} steps, expected {nfe}")
        out.append(result.float().cpu())
    return torch.cat(out), seconds


def _score(pipe, prompts: list[tuple[str, PromptSpec]], k: int, latents: torch.Tensor, batch_size: int):
    """EvalResult of the images decoded from `latents` (N = len(prompts) * k, C, h, w), scored as `latentdiff eval`."""
    images: list[Image.Image] = []
    for first in range(0, len(latents), batch_size):
        images += decode_latents(pipe, latents[first:first + batch_size])
    return score_images(prompts, images, k)


def _fingerprint(pipe) -> str:
    """sha256 of what decides the final latents: UNet and text encoder weights, and the model's scheduler config."""
    h = hashlib.sha256()
    for module in (pipe.unet, pipe.text_encoder):
        for name, tensor in module.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(json.dumps(dict(pipe.scheduler.config), sort_keys=True, default=str).encode())
    return h.hexdigest()


def _reference(pipe, plan: list[SeededBatch], config: SamplerBenchConfig, reference: ReferenceSpec, n_images: int,
               cache_dir: Path | None, progress: bool) -> tuple[torch.Tensor, float | None, bool]:
    """Reference latents (n_images, C, h, w), the check solver's RMSE from them, and whether they came from the
    cache (cache_dir/reference-KEY.safetensors, KEY a hash of model, prompts, seeds, guidance and reference)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file, save_file

    key = hashlib.sha256(json.dumps({
        "model": _fingerprint(pipe), "prompts": [[p for p, _ in b.prompts] for b in plan],
        "seeds": [b.seeds for b in plan], "k": config.images_per_prompt, "guidance": config.guidance,
        "reference": asdict(reference), "dtype": str(pipe.unet.dtype),
    }, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = None if cache_dir is None else cache_dir / f"reference-{key}.safetensors"
    if path is not None and path.is_file():
        try:
            with safe_open(str(path), "pt") as f:
                check = f.metadata().get("check_rmse", "none")
            return load_file(str(path))["reference"], None if check == "none" else float(check), True
        except (OSError, KeyError, ValueError, SafetensorError):  # an unreadable cache file is computed again
            pass

    runs = [(reference.sampler, reference.steps, reference.options)]
    if reference.check_sampler is not None:
        runs.append((reference.check_sampler, reference.check_steps, reference.check_options))
    k = config.images_per_prompt
    bar = tqdm(total=sum(s for _, s, _ in runs) * sum(len(b.seeds) for b in plan), desc="reference",
               unit="img-step", disable=not progress)
    solutions, base = [], pipe.scheduler
    for name, steps, options in runs:
        pipe.scheduler = base  # set_sampler keeps the process keys (timestep_spacing too) of the current scheduler
        pipe.set_sampler(name, **options)
        solutions.append(_generate(pipe, plan, k, steps, config.guidance, None, bar)[0][:n_images])
    bar.close()
    check = latent_rmse(solutions[1], solutions[0]) if len(solutions) > 1 else None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"reference": solutions[0].contiguous()}, str(tmp),
                  metadata={"check_rmse": "none" if check is None else repr(check), "reference": reference.describe()})
        tmp.replace(path)
    return solutions[0], check, False


# ---------------------------------------------------------------------------------------------- the benchmark
def bench_samplers(pipe, prompts: list[tuple[str, PromptSpec]], config: SamplerBenchConfig | None = None, *,
                   source: str = "", prompts_path: str = "", cache_dir: str | Path | None = None,
                   progress: bool = True) -> SamplerBenchResult:
    """Run every sampler x NFE cell of `config` on `pipe` (any LatentDiffusionPipeline) and return the rows.

    The pipeline's scheduler and progress-bar setting are restored afterwards. Reference latents are cached in
    `cache_dir` when given, so a rerun with the same model, prompts, seeds and reference skips them.
    """
    config = SamplerBenchConfig() if config is None else config
    process = pipe.process
    names = pipe.sampler_names()
    samplers = config.samplers or tuple(s for s in get_process(process).bench_samplers if s in names)
    if config.samplers is None and getattr(pipe, "genie_head", None) is not None:
        samplers += ("taylor2",)  # a pipeline with a distilled GENIE head: its Taylor sampler too
    reference = config.reference or default_reference(process)
    for name in (*samplers, reference.sampler, *([reference.check_sampler] if reference.check_sampler else [])):
        if name not in names:
            raise ValueError(f"Unknown sampler {name!r} for this {process} model; choose from: {', '.join(names)}")
    if not prompts:
        raise ValueError("bench samplers: the prompt set is empty")
    chosen = select_prompts(prompts, config.max_prompts)
    k = config.images_per_prompt
    plan = plan_batches(chosen, k, config.batch_size, config.seed)
    n_ref = len(chosen) * k if config.reference_images is None else min(config.reference_images, len(chosen) * k)
    ref_plan = plan_batches(chosen[:math.ceil(n_ref / k)], k, config.batch_size, config.seed)

    original, bar_config = pipe.scheduler, dict(getattr(pipe, "_progress_bar_config", {}))
    options = {} if config.timestep_spacing is None else {"timestep_spacing": config.timestep_spacing}
    try:
        for name in samplers:  # options a sampler does not take, or values it refuses, fail here before any work
            pipe.set_sampler(name, **options)
            if options:  # diffusers checks timestep_spacing only when it makes timesteps
                try:
                    pipe.scheduler.set_timesteps(10)
                except ValueError as err:
                    raise ValueError(f"timestep_spacing must be one of the values {name} accepts: {err}") from None
    finally:
        pipe.scheduler = original
    verbosity = diffusers_logging.get_verbosity()
    pipe.set_progress_bar_config(disable=True)
    diffusers_logging.set_verbosity_error()  # schedulers repeat config notes on every call at some step counts
    cells: list[SamplerCell] = []
    try:
        ref, check_rmse, cached = _reference(pipe, ref_plan, config, reference, n_ref,
                                             None if cache_dir is None else Path(cache_dir), progress)
        pipe.scheduler = original
        _generate(pipe, plan[:1], k, 2, config.guidance, None)  # warm-up: allocator, kernels, lazy imports

        bar = tqdm(total=len(samplers) * len(config.nfe), desc="bench samplers", unit="cell", disable=not progress)
        for name in samplers:
            for nfe in config.nfe:
                bar.set_postfix_str(f"{name} NFE {nfe}")
                cell, latents = SamplerCell(name, nfe), None
                try:
                    pipe.scheduler = original  # set_sampler keeps the current scheduler's process keys
                    pipe.set_sampler(name, **options)
                    cell.steps, cell.reason = steps_for_nfe(pipe.scheduler, nfe)
                    if cell.steps is not None:
                        latents, seconds = _generate(pipe, plan, k, cell.steps, config.guidance, nfe)
                except Exception as err:  # noqa: BLE001 (a scheduler that cannot run this cell: report it, go on)
                    message = str(err).strip().splitlines()[0] if str(err).strip() else ""
                    cell.reason, latents = f"{type(err).__name__}: {message}", None
                if latents is None:
                    cell.status = "skipped"
                else:
                    scored = _score(pipe, chosen, k, latents, config.batch_size)
                    cell.rmse = latent_rmse(latents[:n_ref], ref)
                    cell.overall, cell.categories = scored.overall, scored.categories
                    cell.seconds_per_image, cell.images = seconds / len(latents), len(latents)
                cells.append(cell)
                bar.update()
        bar.close()
    finally:
        pipe.scheduler = original
        pipe.set_progress_bar_config(**bar_config)
        diffusers_logging.set_verbosity(verbosity)

    resolved = SamplerBenchConfig(**{**asdict(config), "samplers": samplers, "reference": reference})
    return SamplerBenchResult(
        cells=cells, config=resolved, reference=reference, check_rmse=check_rmse,
        reference_rms=float(ref.double().flatten(1).pow(2).mean(1).sqrt().mean()), reference_images=n_ref,
        reference_cached=cached, source=source, prompts=prompts_path, process=process,
        timestep_spacing=config.timestep_spacing or original.config.get("timestep_spacing"),
        device=str(pipe._execution_device),
    )


# ---------------------------------------------------------------------------------------------- writers
def write_csv(result: SamplerBenchResult, path: str | Path) -> Path:
    """One row per cell: CSV_COLUMNS (a category's column is empty where the prompt set has none of it)."""
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for c in result.cells:
            row = {k: v for k, v in asdict(c).items() if k != "categories"} | c.categories
            writer.writerow({k: "" if row.get(k) is None else row.get(k, "") for k in CSV_COLUMNS})
    return path


def write_json(result: SamplerBenchResult, path: str | Path, command: str = "") -> Path:
    path = Path(path)
    path.write_text(json.dumps(result.to_json(command), indent=2) + "\n")
    return path


def write_plot(result: SamplerBenchResult, path: str | Path) -> Path:
    """PNG: ShapesWorld score vs NFE and latent RMSE vs NFE (log-log), one line per sampler."""
    fig, (ax_score, ax_rmse) = figure(1, 2, figsize=(11, 4.2))
    for name in result.config.samplers:
        ok = [c for c in result.cells if c.sampler == name and c.status == "ok"]
        if not ok:
            continue
        x = [c.nfe for c in ok]
        line, = ax_score.plot(x, [c.overall for c in ok], marker="o", markersize=3, label=name)
        ax_rmse.plot(x, [max(c.rmse, 1e-12) for c in ok], marker="o", markersize=3, color=line.get_color(), label=name)
    ticks = sorted(result.config.nfe)
    for ax in (ax_score, ax_rmse):
        ax.set_xscale("log")
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("NFE (UNet evaluations per image)")
        ax.grid(alpha=0.3)
    ax_score.set_ylabel("ShapesWorld overall score")
    ax_score.set_title(f"score ({result.images_label()})", fontsize=10)
    ax_rmse.set_yscale("log")
    ax_rmse.set_ylabel("latent RMSE vs reference")
    check = "" if result.check_rmse is None else f" (reference vs check solver: {result.check_rmse:.1e})"
    ax_rmse.set_title(f"vs {result.reference.sampler} at {result.reference.steps} steps{check}", fontsize=10)
    if ax_rmse.get_legend_handles_labels()[0]:
        ax_rmse.legend(fontsize=8, loc="best")
    fig.suptitle(f"{Path(result.source).name or result.source}: guidance {result.config.guidance}", fontsize=11)
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------- command line
def int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated integers such as 1,2,4,8, got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="pipeline folder, hub repo id or preset:NAME (default: the default model)")
    p.add_argument("--genie-head", help="a GENIE head folder for the taylor2 sampler (distill_genie's genie_head/)")
    p.add_argument("--prompts", required=True, help="prompt set, JSON lines (e.g. assets/prompts/indist.jsonl)")
    p.add_argument("--samplers", help="comma-separated named samplers (default: those of the model's process, "
                                      f"for a DDPM model {','.join(get_process('ddpm').bench_samplers)}, and taylor2 "
                                      "when the pipeline has a genie_head)")
    p.add_argument("--nfe", default=",".join(map(str, DEFAULT_NFE)),
                   help="comma-separated UNet evaluations per image (default %(default)s)")
    p.add_argument("--max-prompts", type=int, help="a category-balanced subset of this many prompts (default: all)")
    p.add_argument("--images-per-prompt", type=int, default=1, help="images per prompt (default 1)")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (default 5.0)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--batch-size", type=int, default=64, help="images per pipeline call (default 64)")
    p.add_argument("--reference-steps", type=int, help="steps of the reference solver (default 1000)")
    p.add_argument("--check-steps", type=int,
                   help="steps of the solver the reference is checked against (default 500; 0: no check)")
    p.add_argument("--reference-images", default="32",
                   help="compute the RMSE over the first N images (categories interleaved), or 'all' (default 32)")
    p.add_argument("--timestep-spacing", help="timestep_spacing for every sampler under test, e.g. trailing "
                                              "(default: the model's scheduler config)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--out", default="out/bench-samplers",
                   help="folder for samplers.csv, samplers.json, samplers.png and the cached reference")


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from latentdiff.loading import load_model, model_flags

    prompts = read_prompt_set(args.prompts)
    if args.reference_images.strip().lower() == "all":
        reference_images = None
    else:
        reference_images = int_list(args.reference_images, "--reference-images")
        if len(reference_images) != 1:
            raise ValueError(f"--reference-images takes one number or 'all', got {args.reference_images!r}")
        reference_images = reference_images[0]
    samplers = tuple(s.strip() for s in args.samplers.split(",") if s.strip()) if args.samplers else None
    config = SamplerBenchConfig(samplers=samplers, nfe=int_list(args.nfe, "--nfe"), guidance=args.guidance,
                                max_prompts=args.max_prompts, images_per_prompt=args.images_per_prompt,
                                seed=args.seed, batch_size=args.batch_size, reference_images=reference_images,
                                timestep_spacing=args.timestep_spacing)
    loaded = load_model(args.model, device=args.device, genie_head=args.genie_head)
    if args.reference_steps is not None or args.check_steps is not None:
        reference = default_reference(loaded.pipe.process)
        if args.reference_steps is not None:
            reference = replace(reference, steps=args.reference_steps)
        if args.check_steps == 0:
            reference = replace(reference, check_sampler=None, check_steps=0, check_options={})
        elif args.check_steps is not None:
            reference = replace(reference, check_steps=args.check_steps)
        config = replace(config, reference=reference)  # validated again by __post_init__
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = bench_samplers(loaded.pipe, prompts, config, source=loaded.source, prompts_path=args.prompts,
                            cache_dir=out)
    flags = model_flags(args) + [
        f"--prompts={args.prompts}", f"--samplers={','.join(result.config.samplers)}",
        f"--nfe={','.join(map(str, config.nfe))}", f"--images-per-prompt={config.images_per_prompt}",
        f"--guidance={config.guidance}", f"--seed={config.seed}", f"--reference-steps={result.reference.steps}",
        f"--check-steps={result.reference.check_steps}",
        f"--reference-images={'all' if reference_images is None else reference_images}", f"--out={args.out}"]
    if config.max_prompts is not None:
        flags.insert(-1, f"--max-prompts={config.max_prompts}")
    if config.timestep_spacing is not None:
        flags.insert(-1, f"--timestep-spacing={config.timestep_spacing}")
    command = "latentdiff bench samplers " + shlex.join(flags)
    print(f"{loaded.source} on {result.device}: {len(select_prompts(prompts, config.max_prompts))} prompts x "
          f"{config.images_per_prompt} images, guidance {config.guidance}")
    print(result.table())
    paths = [write_csv(result, out / "samplers.csv"), write_json(result, out / "samplers.json", command),
             write_plot(result, out / "samplers.png")]
    print("wrote " + ", ".join(map(str, paths)))
    return 0
