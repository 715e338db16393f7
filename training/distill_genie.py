"""Distil GENIE's d_γ ε head (Dockhorn, Vahdat, Kreis, NeurIPS 2022) on a frozen text-to-image pipeline.

    accelerate launch --num_cpu_threads_per_process 2 -m latentdiff.training.distill_genie \
        --teacher assets/shapes-tiny --train-data data/shapes-train --output-dir out/genie

The teacher (UNet, text encoder, VAE) stays frozen; only the small head (pipelines/genie_head.py) trains. The
result is `OUTPUT_DIR/genie_head/` (config.json + safetensors); the teacher's own folder is left as it was (so it
still loads in stock diffusers), and `OUTPUT_DIR/pipeline/` is a copy of the teacher with the head as its
`genie_head` component (`--save-pipeline false` to skip it). Sample with either:

    head = GENIEHead.from_pretrained("out/genie/genie_head")
    pipe = LatentDiffusionPipeline.from_pretrained(TEACHER, genie_head=head)
    pipe = LatentDiffusionPipeline.from_pretrained("out/genie/pipeline")
    pipe.set_sampler("taylor2")

One linear loop: data -> (cached) VAE latents and text embeddings -> noise, timesteps on the sampler's grids,
guidance weights -> teacher features, ε and d_γ ε by JVP (latentdiff/genie/distill.py) -> head -> γ²-weighted
loss -> backward -> EMA -> logs, sample grids (DDIM and GENIE rows), checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter

import torch
from tqdm.auto import tqdm

from latentdiff.data.dataset import DataConfig
from latentdiff.genie.derivative import T_DERIVATIVES, GammaSchedule
from latentdiff.genie.distill import (TIMESTEP_SAMPLING, genie_loss, grid_timesteps, relative_error,
                                      sample_timesteps, teacher_example)
from latentdiff.loading import load_pipeline
from latentdiff.pipelines import LatentDiffusionPipeline
from latentdiff.pipelines.genie_head import GENIEHead
from latentdiff.pipelines.processes import require_process
from latentdiff.pipelines.scheduling_genie import GENIEScheduler
from latentdiff.training.checkpoint import resume_progress
from latentdiff.training.config import parse_config, save_config, start_run
from latentdiff.training.data import TrainingData, drop_captions
from latentdiff.training.ema import ema_weights, make_ema
from latentdiff.training.optim import optimizer_and_schedule
from latentdiff.training.periodic import AfterStep
from latentdiff.training.run_clock import RunClock
from latentdiff.training.summary import run_summary, write_summary
from latentdiff.training.validation import log_image, steps_grid


@dataclass
class DistillGenieConfig:
    """Distil GENIE's d_γ ε prediction head on a frozen text-to-image pipeline."""

    teacher: str  # pipeline folder (or hub id) whose UNet the head serves; nothing of it is trained
    train_data: str  # captioned images: imagefolder / sidecar folder / datasets folder / .tar shards
    output_dir: str = "out/genie"  # checkpoints, samples, logs, and the result genie_head/
    resolution: int | None = None  # square training crops (pixels); default: the teacher's (UNet size x VAE factor)
    caption_column: str = "text"  # caption column of metadata.jsonl / the datasets dataset
    head_width: int | None = None  # the head's channels; default: the UNet's top width (block_out_channels[0])
    head_blocks: int = 1  # residual blocks of the head (the paper's CIFAR-10 head has one)
    t_derivative: str = "secant"  # the time part of d_γ ε: "secant" over trained timesteps, or "jvp" (exact AD)
    t_window: int = 100  # half-width k (timesteps) of the "secant" time derivative (latentdiff/genie/derivative.py)
    timesteps: str = "grid"  # where t is drawn: "grid" (the GENIE sampler's timesteps) or "uniform" (all)
    grid_steps: list[int] = field(default_factory=lambda: [4, 5, 6, 7, 8, 10])  # step counts of the grid's samplers
    grid_spacings: list[str] = field(default_factory=lambda: ["leading", "trailing", "linspace"])  # their spacings
    guidance_min: float = 1.0  # smallest guidance scale w of the direction ε_u + w (ε_c − ε_u) (1: unguided)
    guidance_max: float = 8.0  # largest guidance scale w
    caption_dropout: float = 0.1  # probability of using the empty caption as the cond branch too
    batch_size: int = 16  # images per step per process (the head sees 2x: uncond and cond)
    max_steps: int = 2000  # optimizer steps
    learning_rate: float = 1e-4  # AdamW peak learning rate
    lr_scheduler: str = "linear"  # diffusers.optimization schedule (the paper decays linearly)
    lr_warmup_steps: int = 50  # linear warm-up steps
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient clipping (the paper's 1)
    use_ema: bool = False  # keep an EMA of the head; the result uses it
    ema_decay: float = 0.999  # EMA decay (with warm-up)
    mixed_precision: str = "no"  # "no", "fp16" or "bf16" for the head (GPU); the teacher's JVP runs in fp32
    cache_latents: bool = True  # cache the frozen VAE's latent distributions on disk
    cache_dir: str | None = None  # where the latent and text caches live (default: output_dir/cache)
    checkpoint_every: int = 500  # steps between checkpoints
    keep_checkpoints: int = 2  # checkpoints kept (oldest removed)
    resume: str | None = None  # "latest" or a checkpoint folder
    time_budget_minutes: float | None = None  # wall-clock minutes for the run, grids and saves included, over resumes
    # (it stops early enough for the final grid, checkpoint and result; written as at --max-steps)
    train_time_budget_minutes: float | None = None  # training minutes only (no grids, checkpoints), over resumes
    save_pipeline: bool = True  # also write pipeline/: the teacher with the head as its genie_head component
    # (LatentDiffusionPipeline loads it whole, e.g. for `latentdiff bench samplers --model OUT/pipeline`)
    validation_every: int = 500  # steps between sample grids
    validation_prompts: list[str] = field(default_factory=lambda: [
        "a red circle", "two blue squares", "a green triangle to the left of a yellow star",
        "a purple cross above an orange diamond"])  # prompts of the sample grid (columns)
    validation_steps: list[int] = field(default_factory=lambda: [4, 8])  # steps of the grid (rows), DDIM and GENIE
    validation_guidance: float = 5.0  # guidance scale of the grid
    num_workers: int = 0  # DataLoader workers
    seed: int = 0  # seeds the head, data order, noise, timesteps, guidance and the validation grid

    def __post_init__(self):
        if self.t_derivative not in T_DERIVATIVES:
            raise ValueError(f"--t-derivative must be one of {T_DERIVATIVES}, got {self.t_derivative!r}.")
        if self.timesteps not in TIMESTEP_SAMPLING:
            raise ValueError(f"--timesteps must be one of {TIMESTEP_SAMPLING}, got {self.timesteps!r}.")
        for name in ("batch_size", "max_steps", "checkpoint_every", "validation_every", "t_window", "head_blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}.")
        if not self.grid_steps or min(self.grid_steps) < 1:
            raise ValueError(f"--grid-steps must be one or more step counts >= 1, got {self.grid_steps}.")
        spacings = ("leading", "trailing", "linspace")
        if not self.grid_spacings or set(self.grid_spacings) - set(spacings):
            raise ValueError(f"--grid-spacings must be one or more of {spacings}, got {self.grid_spacings}.")
        if not 1.0 <= self.guidance_min <= self.guidance_max:
            raise ValueError(f"Need 1 <= --guidance-min <= --guidance-max, got {self.guidance_min} and "
                             f"{self.guidance_max} (w = 1 is the unguided ODE).")
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ValueError(f"--caption-dropout must be in [0, 1], got {self.caption_dropout}.")


def main(argv: list[str] | None = None) -> None:
    started = perf_counter()  # the wall-clock time budget counts from here
    cfg = parse_config(DistillGenieConfig, argv, prog="distill_genie")
    accelerator, out = start_run(cfg, "distill_genie")

    # 1. Models: the frozen teacher and the trained head
    teacher = load_pipeline(cfg.teacher)
    require_process(dict(teacher.scheduler.config), "ddpm", f"GENIE distillation of {cfg.teacher}")
    unet = teacher.unet
    for frozen in (teacher.vae, teacher.text_encoder, unet):
        frozen.requires_grad_(False).eval().to(accelerator.device)
    genie_scheduler = GENIEScheduler.from_config(teacher.scheduler.config)  # the teacher's noise process
    schedule = GammaSchedule.from_scheduler(genie_scheduler)
    grid = grid_timesteps(dict(genie_scheduler.config), cfg.grid_steps, cfg.grid_spacings)
    head = GENIEHead.for_unet(unet, width=cfg.head_width, num_blocks=cfg.head_blocks)
    ema = make_ema(head, accelerator, cfg.ema_decay) if cfg.use_ema else None

    # 2. Optimizer and learning-rate schedule
    optimizer, lr_schedule = optimizer_and_schedule(cfg, list(head.parameters()))
    head, optimizer, lr_schedule = accelerator.prepare(head, optimizer, lr_schedule)

    # 3. Data: this rank's shard; VAE latents and text embeddings from the on-disk caches
    resolution = cfg.resolution or unet.config.sample_size * teacher.vae_scale_factor
    data = TrainingData(DataConfig(train_data=cfg.train_data, resolution=resolution, seed=cfg.seed,
                                   caption_column=cfg.caption_column), accelerator, cfg.batch_size,
                        vae=teacher.vae, text_encoder=teacher.text_encoder, tokenizer=teacher.tokenizer,
                        cache_dir=cfg.cache_dir or out / "cache", cache_latents=cfg.cache_latents,
                        num_workers=cfg.num_workers)
    uncond = data.text([""])  # (1, 77, D): the unconditional branch

    # 4. Resume: head, optimizer, EMA, LR schedule and RNG states; the data position from the progress record
    progress = resume_progress(accelerator, cfg.resume, out)
    step = first_step = progress["step"]
    clock = RunClock(accelerator, cfg.time_budget_minutes, progress, cfg.train_time_budget_minutes, started)
    bar = tqdm(total=cfg.max_steps, initial=step, desc="genie", disable=not accelerator.is_main_process)
    after = AfterStep(accelerator, clock, out, cfg, lambda at: validate(cfg, accelerator, teacher, head, ema, out, at),
                      bar, cfg.batch_size * accelerator.num_processes)

    # 5. Training loop
    for epoch, i, batch in data.batches(progress) if step < cfg.max_steps else ():
        latents = data.latents(batch)  # x_0 (B, C, h, w)
        b = len(latents)
        text = data.text(drop_captions(batch["captions"], cfg.caption_dropout))  # (B, 77, D)
        timesteps = sample_timesteps(b, cfg.timesteps, schedule.num_train_timesteps, grid)  # (B,)
        guidance = cfg.guidance_min + (cfg.guidance_max - cfg.guidance_min) * torch.rand(b)  # w (B,)
        example = teacher_example(unet, schedule, latents, timesteps.to(accelerator.device), text,
                                  uncond.expand(b, -1, -1), guidance.to(accelerator.device),
                                  prediction_type=genie_scheduler.config.prediction_type,
                                  t_derivative=cfg.t_derivative, t_window=cfg.t_window)
        with accelerator.autocast():
            prediction = head(example.features, example.sample, example.direction, example.temb,
                              example.gamma)  # k_ψ (2B, C, h, w)
        loss = genie_loss(prediction, example)  # (2B,)
        accelerator.backward(loss.mean())
        accelerator.clip_grad_norm_(head.parameters(), cfg.max_grad_norm)
        optimizer.step()
        lr_schedule.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if ema is not None:
            ema.step(head.parameters())
        if after(step, epoch, i + 1, loss=loss.mean().item(), lr=lr_schedule.get_last_lr()[0],
                 relative_error=relative_error(prediction.detach(), example)):
            break
    bar.close()
    clock.stop()

    # 6. The result: genie_head/ (the EMA weights where EMA is on) and the run's summary
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        finish(cfg, accelerator, teacher, head, ema, out, run_summary(
            accelerator, clock, step=step, first_step=first_step, images_seen=after.images_seen, data=data,
            teacher=cfg.teacher, final_loss=after.logs.get("loss"),
            final_relative_error=after.logs.get("relative_error")))
        accelerator.print(data.dataset.skips.summary())
    accelerator.end_training()


def finish(cfg: DistillGenieConfig, accelerator, teacher, head, ema, out: Path, summary: dict) -> None:
    """genie_head/ (the EMA weights where EMA is on) with its summary and config; pipeline/ with --save-pipeline."""
    final = accelerator.unwrap_model(head)
    if ema is not None:
        ema.copy_to(final.parameters())
    target = out / "genie_head"
    final.save_pretrained(target)
    summary.update(head_parameters=sum(p.numel() for p in final.parameters()),
                   unet_parameters=sum(p.numel() for p in teacher.unet.parameters()))
    write_summary(summary, out, target)
    save_config(cfg, target / "training_config.json")
    if cfg.save_pipeline:
        teacher.register_modules(genie_head=final)
        teacher.save_pretrained(out / "pipeline")
    accelerator.print(f"wrote {target}")


@torch.no_grad()
def validate(cfg: DistillGenieConfig, accelerator, teacher, head, ema, out: Path, step: int) -> None:
    """Rows: DDIM at each validation step count, then GENIE with the head (EMA weights where EMA is on)."""
    if not accelerator.is_main_process:
        return
    model = accelerator.unwrap_model(head)
    with ema_weights(ema, model):
        pipe = LatentDiffusionPipeline(vae=teacher.vae, text_encoder=teacher.text_encoder, tokenizer=teacher.tokenizer,
                                       unet=teacher.unet, scheduler=teacher.scheduler, genie_head=model)
        rows = {}
        for tag, sampler, options in (("ddim", "ddim", {"clip_sample": False}), ("genie", "taylor2", {})):
            pipe.set_sampler(sampler, **options)
            rows[tag] = steps_grid(pipe, cfg.validation_prompts, cfg.seed, cfg.validation_steps,
                                   cfg.validation_guidance, out / "samples" / f"step-{step:07d}-{tag}.png")
    for tag, grid in rows.items():
        log_image(accelerator, f"validation/{tag}", grid, step)


if __name__ == "__main__":
    from latentdiff.training.config import run_entry_point

    run_entry_point(main)
