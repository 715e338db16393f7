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

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from latentdiff.data.cache import LatentCache, TextEmbeddingCache
from latentdiff.data.dataset import DataConfig, build_dataloader
from latentdiff.genie.derivative import T_DERIVATIVES, GammaSchedule
from latentdiff.genie.distill import (TIMESTEP_SAMPLING, genie_loss, grid_timesteps, relative_error,
                                      sample_timesteps, teacher_example)
from latentdiff.pipelines import LatentDiffusionPipeline
from latentdiff.pipelines.genie_head import GENIEHead
from latentdiff.pipelines.scheduling_genie import GENIEScheduler
from latentdiff.training.checkpoint import batches_from, resume_progress, save_checkpoint
from latentdiff.training.config import parse_config, save_config, start_run
from latentdiff.training.hardware import hardware_description
from latentdiff.training.run_clock import RunClock, due
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
    time_budget_minutes: float | None = None  # finish (result written as at --max-steps) after this much training
    # time, summed over resumed invocations; validation and checkpoint pauses do not count
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
        if self.time_budget_minutes is not None and self.time_budget_minutes <= 0:
            raise ValueError(f"--time-budget-minutes must be > 0, got {self.time_budget_minutes}.")


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(DistillGenieConfig, argv, prog="distill_genie")
    accelerator, out = start_run(cfg, "distill_genie")

    # 1. Models: the frozen teacher and the trained head
    teacher = LatentDiffusionPipeline.from_pretrained(cfg.teacher)
    vae, text_encoder, tokenizer, unet = teacher.vae, teacher.text_encoder, teacher.tokenizer, teacher.unet
    for frozen in (vae, text_encoder, unet):
        frozen.requires_grad_(False).eval().to(accelerator.device)
    genie_scheduler = GENIEScheduler.from_config(teacher.scheduler.config)  # the teacher's noise process
    schedule = GammaSchedule.from_scheduler(genie_scheduler)
    grid = grid_timesteps(dict(genie_scheduler.config), cfg.grid_steps, cfg.grid_spacings)
    head = GENIEHead.for_unet(unet, width=cfg.head_width, num_blocks=cfg.head_blocks)
    ema = None
    if cfg.use_ema:
        ema = EMAModel(head.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, model_cls=GENIEHead,
                       model_config=head.config)
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)

    # 2. Optimizer and learning-rate schedule
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    lr_schedule = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                num_training_steps=cfg.max_steps)
    head, optimizer, lr_schedule = accelerator.prepare(head, optimizer, lr_schedule)

    # 3. Data: this rank's shard; VAE latents and text embeddings from the on-disk caches
    resolution = cfg.resolution or unet.config.sample_size * teacher.vae_scale_factor
    data = DataConfig(train_data=cfg.train_data, resolution=resolution, seed=cfg.seed,
                      caption_column=cfg.caption_column)
    loader = build_dataloader(data, cfg.batch_size, num_workers=cfg.num_workers, drop_last=True,
                              rank=accelerator.process_index, world_size=accelerator.num_processes)
    cache_root = Path(cfg.cache_dir or out / "cache")
    cache = LatentCache(cache_root, vae, data.transform_config(), data.bucket_config()) if cfg.cache_latents else None
    text_cache = TextEmbeddingCache(cache_root, text_encoder, tokenizer)
    uncond = text_cache.encode([""], accelerator.device)  # (1, 77, D): the unconditional branch

    # 4. Resume: head, optimizer, EMA, LR schedule and RNG states; the data position follows from the step
    progress = resume_progress(accelerator, cfg.resume, out)
    step = first_step = progress["step"]

    # 5. Training loop
    bar = tqdm(total=cfg.max_steps, initial=step, desc="genie", disable=not accelerator.is_main_process)
    clock = RunClock(accelerator, cfg.time_budget_minutes, progress)  # training time, all invocations
    images_seen, logs = 0, {}
    batches = batches_from(loader, progress["epoch"], progress["batch"])
    for epoch, i, batch in batches if step < cfg.max_steps else ():
        loader.dataset.skips.update(batch["skipped"])  # broken files ride along in batches (data/dataset.py)
        if accelerator.reduce(torch.tensor(float(len(batch["keys"]) == 0), device=accelerator.device)) > 0:
            continue  # a batch of broken files only, on some rank: all ranks move on together
        x = batch["pixel_values"].to(accelerator.device)  # (B, 3, H, W)
        b = len(x)
        with torch.no_grad():
            dist = cache.latent_dist(x, batch["keys"]) if cache else vae.encode(x).latent_dist
            latents = dist.sample().float() * vae.config.scaling_factor  # x_0 (B, C, h, w)
        captions = [("" if float(r) < cfg.caption_dropout else c) for c, r in zip(batch["captions"], torch.rand(b))]
        text = text_cache.encode(captions, accelerator.device)  # (B, 77, D)
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
        images_seen += b * accelerator.num_processes
        logs = {"loss": loss.mean().item(), "relative_error": relative_error(prediction.detach(), example),
                "lr": lr_schedule.get_last_lr()[0]}
        accelerator.log(logs, step=step)
        bar.update()
        bar.set_postfix(loss=f"{logs['loss']:.4f}", rel_err=f"{logs['relative_error']:.3f}")

        out_of_time = clock.out_of_time()  # the same on every rank
        with clock.paused():  # validation and checkpoints are not training time
            if due(step, cfg.validation_every, cfg.max_steps, now=out_of_time):
                validate(cfg, accelerator, teacher, head, ema, out, step)
            if due(step, cfg.checkpoint_every, cfg.max_steps, now=out_of_time):
                save_checkpoint(accelerator, out, step, cfg.keep_checkpoints, extra=clock.progress(epoch, i + 1))
        if out_of_time:
            accelerator.print(f"time budget of {cfg.time_budget_minutes} min spent at step {step}")
            break
        if step >= cfg.max_steps:
            break
    bar.close()
    clock.stop()
    train_seconds = clock.train_seconds

    # 6. The result: genie_head/ (the EMA weights where EMA is on) and the run's summary
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(head)
        if ema is not None:
            ema.copy_to(final.parameters())
        target = out / "genie_head"
        final.save_pretrained(target)
        summary = {"teacher": cfg.teacher, "steps": step, "images_seen_this_invocation": images_seen,
                   "final_loss": logs.get("loss"), "final_relative_error": logs.get("relative_error"),
                   "head_parameters": sum(p.numel() for p in final.parameters()),
                   "unet_parameters": sum(p.numel() for p in unet.parameters()),
                   "wall_clock_seconds": clock.wall_clock_seconds,
                   "train_seconds_all_invocations": clock.total_train_seconds, "train_seconds": train_seconds,
                   "steps_per_s": (step - first_step) / train_seconds if train_seconds > 0 else None,
                   "hardware": hardware_description(accelerator), "device": str(accelerator.device),
                   "processes": accelerator.num_processes, "skipped_files": loader.dataset.skips.counts,
                   "latent_cache": None if cache is None else {"hits": cache.hits, "misses": cache.misses},
                   "text_cache": {"hits": text_cache.hits, "misses": text_cache.misses}}
        for folder in (out, target):
            (folder / "training_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        save_config(cfg, target / "training_config.json")
        if cfg.save_pipeline:
            teacher.register_modules(genie_head=final)
            teacher.save_pretrained(out / "pipeline")
        accelerator.print(loader.dataset.skips.summary())
        accelerator.print(f"wrote {target}")
    accelerator.end_training()


@torch.no_grad()
def validate(cfg: DistillGenieConfig, accelerator, teacher, head, ema, out: Path, step: int) -> None:
    """Rows: DDIM at each validation step count, then GENIE with the head (EMA weights where EMA is on)."""
    if not accelerator.is_main_process:
        return
    model = accelerator.unwrap_model(head)
    if ema is not None:
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
    was_training = model.training
    model.eval()
    pipe = LatentDiffusionPipeline(vae=teacher.vae, text_encoder=teacher.text_encoder, tokenizer=teacher.tokenizer,
                                   unet=teacher.unet, scheduler=teacher.scheduler, genie_head=model)
    pipe.set_sampler("ddim", clip_sample=False)
    rows = [steps_grid(pipe, cfg.validation_prompts, cfg.seed, cfg.validation_steps, cfg.validation_guidance,
                       out / "samples" / f"step-{step:07d}-ddim.png")]
    pipe.set_sampler("taylor2")
    rows.append(steps_grid(pipe, cfg.validation_prompts, cfg.seed, cfg.validation_steps, cfg.validation_guidance,
                           out / "samples" / f"step-{step:07d}-genie.png"))
    model.train(was_training)
    if ema is not None:
        ema.restore(model.parameters())
    for tag, grid in zip(("ddim", "genie"), rows):
        log_image(accelerator, f"validation/{tag}", grid, step)


if __name__ == "__main__":
    from latentdiff.training.config import run_entry_point

    run_entry_point(main)
