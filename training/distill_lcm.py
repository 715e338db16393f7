"""Few-step generation by latent consistency distillation (LCM) of a teacher pipeline, with accelerate.

    accelerate launch -m latentdiff.training.distill_lcm --teacher assets/shapes-tiny --train-data DIR \
        --mode lora --output-dir out/lcm-lora

`--mode lora` (LCM-LoRA; Luo et al. 2023b, arXiv:2311.05556): LoRA adapters on the teacher's UNet learn the
consistency function with classifier-free guidance distilled in; the result, `lora/pytorch_lora_weights.safetensors`,
loads into the teacher with stock diffusers' `load_lora_weights` and samples with `LCMScheduler` at
guidance_scale 1. `--mode full` (LCM; Luo et al. 2023, arXiv:2310.04378): the whole UNet, given the guidance
scale as an input (`time_cond_proj_dim`), with an EMA target network; the result, `pipeline/`, is a complete
diffusers folder (the teacher's VAE, text encoder and tokenizer, the distilled UNet, an LCMScheduler).

The mathematics is in latentdiff/lcm/consistency.py; this file is one linear loop: data -> (cached) VAE latents and text
embeddings -> LCD step (student, teacher DDIM step, target) -> per-sample loss -> backward -> EMA target ->
logs, sample grids of 1/2/4/8 LCM steps, checkpoints. Modelled on diffusers' examples/consistency_distillation
(train_lcm_distill_sd_wds.py, train_lcm_distill_lora_sd_wds.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter

import torch
from diffusers import DDPMScheduler, LCMScheduler, UNet2DConditionModel
from tqdm.auto import tqdm

from latentdiff.data.dataset import DataConfig
from latentdiff.loading import load_pipeline
from latentdiff.pipelines import LatentDiffusionPipeline, make_scheduler
from latentdiff.pipelines.processes import require_process
from latentdiff.training.checkpoint import resume_progress
from latentdiff.training.config import parse_config, save_config, start_run
from latentdiff.training.data import TrainingData
from latentdiff.training.ema import make_ema
from latentdiff.training.frozen import place_frozen
from latentdiff.training.optim import optimizer_and_schedule
from latentdiff.training.periodic import AfterStep
from latentdiff.training.summary import run_summary, write_summary
from latentdiff.lcm.consistency import (LOSSES, DDIMSolver, consistency_function, consistency_loss, guidance_embedding,
                                     sample_guidance, teacher_ddim_step)
from latentdiff.training.run_clock import RunClock
from latentdiff.training.validation import log_image, steps_grid

MODES = ("lora", "full")
# LCM-LoRA's adapted layers (diffusers' train_lcm_distill_lora_sd_wds.py): attention, feed-forward, the
# transformer projections and the ResNet convolutions, so that a low rank can still move the whole UNet.
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]


@dataclass
class DistillLCMConfig:
    """Distil a text-to-image pipeline into a few-step latent consistency model (LCM-LoRA or full LCM)."""

    teacher: str  # pipeline folder (or hub id) to distil; its VAE, text encoder, tokenizer and noise process are kept
    train_data: str  # captioned images: imagefolder / sidecar folder / datasets folder / .tar shards
    output_dir: str = "out/lcm"  # checkpoints, samples, logs, and the result (lora/ or pipeline/)
    mode: str = "lora"  # "lora": LCM-LoRA adapters, guidance distilled in; "full": the whole UNet, guidance as input
    lora_rank: int = 16  # rank of the LoRA adapters (lora mode)
    time_cond_proj_dim: int = 256  # width of the guidance embedding the full student takes as `timestep_cond`
    resolution: int = 64  # square training crops (pixels): the teacher's resolution
    caption_column: str = "text"  # caption column of metadata.jsonl / the datasets dataset
    batch_size: int = 32  # images per step per process
    max_steps: int = 2000  # optimizer steps
    learning_rate: float = 1e-4  # AdamW peak learning rate
    lr_scheduler: str = "constant_with_warmup"  # diffusers.optimization schedule: constant, cosine, ...
    lr_warmup_steps: int = 100  # linear warm-up steps
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient clipping
    num_ddim_timesteps: int = 50  # N, points of the skipping-step grid (k = 1000 / N); LCMScheduler's original_inference_steps
    timestep_scaling: float = 10.0  # t scale in the boundary scalings c_skip, c_out (LCMScheduler's timestep_scaling)
    w_min: float = 2.0  # smallest guidance w of the teacher target, x_c + w (x_c - x_u) (guidance_scale = 1 + w)
    w_max: float = 6.0  # largest guidance w; [2, 6] centres on the default model's guidance_scale 5
    loss: str = "huber"  # distance d: "huber" (pseudo-Huber) or "l2"
    huber_c: float = 1e-3  # c of the pseudo-Huber loss sqrt(d^2 + c^2) - c
    ema_decay: float = 0.95  # decay of the EMA target network theta^- (full mode; LoRA's target is the student)
    mixed_precision: str = "no"  # "no", "fp16" or "bf16" (GPU; CPU runs fp32)
    cache_latents: bool = True  # cache the frozen VAE's latent distributions on disk
    cache_dir: str | None = None  # where the latent and text caches live (default: output_dir/cache)
    checkpoint_every: int = 500  # steps between checkpoints
    keep_checkpoints: int = 2  # checkpoints kept (oldest removed)
    resume: str | None = None  # "latest" or a checkpoint folder
    time_budget_minutes: float | None = None  # wall-clock minutes for the run, grids and saves included, over resumes
    # (it stops early enough for the final grid, checkpoint and result; written as at --max-steps)
    train_time_budget_minutes: float | None = None  # training minutes only (no grids, checkpoints), over resumes
    validation_every: int = 500  # steps between sample grids
    validation_prompts: list[str] = field(default_factory=lambda: [
        "a red circle", "two blue squares", "a green triangle to the left of a yellow star",
        "a purple cross above an orange diamond"])  # prompts of the sample grid (columns)
    validation_steps: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # LCM steps of the grid (rows)
    validation_guidance: float | None = None  # guidance_scale of the grid; default 1 (lora), 1 + (w_min + w_max) / 2 (full)
    num_workers: int = 0  # DataLoader workers
    seed: int = 0  # seeds data order, noise, timesteps, w and the validation grid

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {MODES}, got {self.mode!r}.")
        if self.loss not in LOSSES:
            raise ValueError(f"--loss must be one of {LOSSES}, got {self.loss!r}.")
        for name in ("batch_size", "max_steps", "checkpoint_every", "validation_every", "num_ddim_timesteps",
                     "lora_rank", "time_cond_proj_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}.")
        if not 0 <= self.w_min <= self.w_max:
            raise ValueError(f"Need 0 <= --w-min <= --w-max, got w_min={self.w_min}, w_max={self.w_max}: the teacher "
                             "target is guided with scale 1 + w for w drawn from [w_min, w_max].")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"--ema-decay must be in (0, 1), got {self.ema_decay}.")
        if self.huber_c <= 0 or self.timestep_scaling <= 0:
            raise ValueError(f"--huber-c and --timestep-scaling must be > 0, got {self.huber_c} and "
                             f"{self.timestep_scaling}.")
        bad = [n for n in self.validation_steps if not 1 <= n <= self.num_ddim_timesteps]
        if bad or not self.validation_steps:
            raise ValueError(f"--validation-steps must be one or more step counts in [1, --num-ddim-timesteps="
                             f"{self.num_ddim_timesteps}] (LCMScheduler samples on that grid), got {self.validation_steps}.")
        if self.validation_guidance is None:
            self.validation_guidance = 1.0 if self.mode == "lora" else 1.0 + (self.w_min + self.w_max) / 2


def add_lcm_lora(unet: UNet2DConditionModel, rank: int) -> None:
    """Freeze the UNet and give it LoRA adapters (Hu et al. 2022) through peft; B = 0, so it starts as the teacher."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS))


def build_student(teacher: UNet2DConditionModel, cfg: DistillLCMConfig) -> UNet2DConditionModel:
    """The student, initialised from the teacher (Luo et al. 2023, sec. 4.2).

    full: the teacher's architecture plus a guidance input, w -> embedding -> `time_embedding.cond_proj`, added to the
    time embedding. The projection starts at zero (diffusers' script leaves it random), so the student starts as
    exactly the teacher and learns how to use w.
    """
    if cfg.mode == "lora":
        student = copy.deepcopy(teacher)
        add_lcm_lora(student, cfg.lora_rank)
        return student
    student = UNet2DConditionModel.from_config(teacher.config, time_cond_proj_dim=cfg.time_cond_proj_dim)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    if unexpected or set(missing) != {"time_embedding.cond_proj.weight"}:
        raise ValueError(f"The teacher UNet does not fit the student: missing {missing}, unexpected {unexpected}.")
    torch.nn.init.zeros_(student.time_embedding.cond_proj.weight)
    return student


def load_teacher(cfg: DistillLCMConfig, device: torch.device, dtype: torch.dtype) -> dict:
    """vae, text_encoder, tokenizer, unet (the teacher; frozen, on `device` in `dtype`), the noise process (a
    DDPMScheduler) and the LCMScheduler the student samples with (the teacher's process; grid and boundary scalings
    of this run)."""
    parts = load_pipeline(cfg.teacher).components
    require_process(dict(parts["scheduler"].config), "ddpm", f"LCM distillation of {cfg.teacher}")
    for module in (parts["vae"], parts["text_encoder"], parts["unet"]):
        place_frozen(module.requires_grad_(False).eval(), device, dtype)
    if parts["unet"].config.time_cond_proj_dim is not None:
        raise ValueError(f"{cfg.teacher}: the teacher UNet already takes a guidance embedding (time_cond_proj_dim); "
                         "distil a standard classifier-free-guided model.")
    process = dict(parts["scheduler"].config)
    parts["noise_scheduler"] = DDPMScheduler.from_config(process)
    parts["lcm_scheduler"] = make_scheduler("lcm", process, original_inference_steps=cfg.num_ddim_timesteps,
                                            timestep_scaling=cfg.timestep_scaling)
    return parts


def save_outputs(cfg: DistillLCMConfig, parts: dict, student, out: Path) -> Path:
    """lora/pytorch_lora_weights.safetensors (diffusers' LoRA format) or pipeline/ (a complete diffusers folder)."""
    if cfg.mode == "lora":
        from peft.utils import get_peft_model_state_dict

        target = out / "lora"
        # peft's own key format (lora_A / lora_B), which load_lora_weights reads as is. Not through
        # convert_state_dict_to_diffusers: it renames only the attention keys (to_q.lora.down ...), and the loader,
        # which picks the format from the first key, would then drop them from this mixed conv + attention dict.
        layers = get_peft_model_state_dict(student)
        LatentDiffusionPipeline.save_lora_weights(target, unet_lora_layers=layers, safe_serialization=True)
        return target
    pipe = LatentDiffusionPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
                                   unet=student, scheduler=parts["lcm_scheduler"])
    target = out / "pipeline"
    pipe.save_pretrained(target)
    return target


def usage(cfg: DistillLCMConfig, target: Path) -> str:
    """How to sample from the result with stock diffusers."""
    options = []
    if cfg.num_ddim_timesteps != 50:
        options.append(f"original_inference_steps={cfg.num_ddim_timesteps}")
    if cfg.timestep_scaling != 10.0:
        options.append(f"timestep_scaling={cfg.timestep_scaling}")
    if cfg.mode == "lora":
        extra = "".join(", " + o for o in options)
        return (f"pipe = StableDiffusionPipeline.from_pretrained({cfg.teacher!r}); pipe.load_lora_weights({str(target)!r}); "
                f"pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config{extra}); "
                "pipe(prompt, num_inference_steps=4, guidance_scale=1.0)")
    return (f"pipe = StableDiffusionPipeline.from_pretrained({str(target)!r}); "
            f"pipe(prompt, num_inference_steps=4, guidance_scale={cfg.validation_guidance:g})  # guidance = 1 + w, "
            f"w in [{cfg.w_min:g}, {cfg.w_max:g}]")


def main(argv: list[str] | None = None) -> None:
    started = perf_counter()  # the wall-clock time budget counts from here
    cfg = parse_config(DistillLCMConfig, argv, prog="distill_lcm")
    accelerator, out = start_run(cfg, "distill_lcm")

    # 1. Models: the frozen teacher (VAE, text encoder, UNet); the student; the target network theta^- (full mode)
    frozen_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    parts = load_teacher(cfg, accelerator.device, frozen_dtype)
    noise_scheduler, lcm_scheduler, teacher = parts["noise_scheduler"], parts["lcm_scheduler"], parts["unet"]
    student = build_student(teacher, cfg).train()
    target_unet = copy.deepcopy(student).requires_grad_(False).to(accelerator.device) if cfg.mode == "full" else None
    ema = make_ema(student, accelerator, cfg.ema_decay, warmup=False) if cfg.mode == "full" else None
    solver = DDIMSolver.from_scheduler(noise_scheduler, cfg.num_ddim_timesteps)
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(accelerator.device)  # (T,) abar_t

    # 2. Optimizer and learning-rate schedule over the student's trained parameters
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer, lr_schedule = optimizer_and_schedule(cfg, params)
    student, optimizer, lr_schedule = accelerator.prepare(student, optimizer, lr_schedule)

    # 3. Data: this rank's shard; VAE latents and text embeddings from the on-disk caches
    data = TrainingData(DataConfig(train_data=cfg.train_data, resolution=cfg.resolution, seed=cfg.seed,
                                   caption_column=cfg.caption_column), accelerator, cfg.batch_size,
                        vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
                        cache_dir=cfg.cache_dir or out / "cache", cache_latents=cfg.cache_latents,
                        num_workers=cfg.num_workers, dtype=frozen_dtype)
    uncond = data.text([""])  # (1, 77, D): the teacher's unconditional branch

    # 4. Resume: student, optimizer, EMA, LR schedule and RNG states; the data position from the progress record
    progress = resume_progress(accelerator, cfg.resume, out)
    step = first_step = progress["step"]
    if ema is not None:
        ema.copy_to(target_unet.parameters())
    clock = RunClock(accelerator, cfg.time_budget_minutes, progress, cfg.train_time_budget_minutes, started)
    bar = tqdm(total=cfg.max_steps, initial=step, desc="distill", disable=not accelerator.is_main_process)
    after = AfterStep(accelerator, clock, out, cfg, lambda at: validate(cfg, accelerator, parts, student, out, at),
                      bar, cfg.batch_size * accelerator.num_processes)

    # 5. Distillation loop (Luo et al. 2023, Algorithm 1)
    for epoch, i, batch in data.batches(progress) if step < cfg.max_steps else ():
        latents = data.latents(batch)  # z_0 (B, C, h, w)
        text = data.text(batch["captions"])  # c (B, 77, D)
        b = len(latents)
        # LCD step: the student at t_{n+k}; the teacher's guided DDIM step to t_n; the target network there
        index, t_start, t_end = solver.sample_timesteps(b, accelerator.device)  # n, t_{n+k}, t_n (B,)
        z_start = noise_scheduler.add_noise(latents, torch.randn_like(latents), t_start)  # z_{t_{n+k}} (B, C, h, w)
        w = sample_guidance(b, cfg.w_min, cfg.w_max, accelerator.device)  # (B,)
        w_embedding = guidance_embedding(w, cfg.time_cond_proj_dim) if cfg.mode == "full" else None  # (B, dim)
        pred = consistency_function(student, z_start, t_start, text, w_embedding, lcm_scheduler, alphas_cumprod)
        with torch.no_grad(), accelerator.autocast():
            z_prev = teacher_ddim_step(teacher, z_start.to(frozen_dtype), t_start, index, text, uncond.expand(b, -1, -1),
                                       w, solver, alphas_cumprod, noise_scheduler.config.prediction_type).float()
            target_net = target_unet if target_unet is not None else accelerator.unwrap_model(student)
            target = consistency_function(target_net, z_prev, t_end, text, w_embedding, lcm_scheduler, alphas_cumprod)
        loss = consistency_loss(pred, target, cfg.loss, cfg.huber_c)  # (B,)
        if not torch.isfinite(loss).all():
            raise RuntimeError(f"Non-finite loss at step {step}: lower --learning-rate or resume from a checkpoint.")
        accelerator.backward(loss.mean())
        accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        lr_schedule.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1  # one optimizer step done: move theta^- towards theta
        if ema is not None:
            ema.step(accelerator.unwrap_model(student).parameters())
            ema.copy_to(target_unet.parameters())
        if after(step, epoch, i + 1, loss=loss.mean().item(), lr=lr_schedule.get_last_lr()[0]):
            break
    bar.close()
    clock.stop()

    # 6. The result: the student's LoRA weights or a complete pipeline folder, and the run's summary
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        target = save_outputs(cfg, parts, accelerator.unwrap_model(student), out)
        write_summary(run_summary(accelerator, clock, step=step, first_step=first_step, images_seen=after.images_seen,
                                  data=data, mode=cfg.mode, teacher=cfg.teacher, final_loss=after.logs.get("loss")),
                      out, target)
        save_config(cfg, target / "training_config.json")
        accelerator.print(f"{data.dataset.skips.summary()}\nwrote {target}\nuse it: {usage(cfg, target)}")
    accelerator.end_training()


@torch.no_grad()
def validate(cfg: DistillLCMConfig, accelerator, parts: dict, student, out: Path, step: int) -> None:
    """A grid of the fixed prompts (columns) at 1/2/4/8 LCM steps (rows), fixed seeds."""
    if not accelerator.is_main_process:
        return
    model = accelerator.unwrap_model(student)
    scheduler = LCMScheduler.from_config(parts["lcm_scheduler"].config)  # a fresh one: the pipeline sets its steps
    pipe = LatentDiffusionPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
                                   unet=model, scheduler=scheduler)
    model.eval()
    grid = steps_grid(pipe, cfg.validation_prompts, cfg.seed, cfg.validation_steps, cfg.validation_guidance,
                      out / "samples" / f"step-{step:07d}.png")
    model.train()
    log_image(accelerator, "validation", grid, step)


if __name__ == "__main__":
    from latentdiff.training.config import run_entry_point

    run_entry_point(main)
