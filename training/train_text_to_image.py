"""Train a text-to-image latent diffusion model with accelerate: from scratch, full fine-tune, or LoRA.

    accelerate launch -m latentdiff.training.train_text_to_image --config training/recipes/shapes-tiny.yaml

From scratch (`--preset small --vae out/vae-shapes/vae`): the UNet and the CLIP text encoder are trained
jointly on a frozen VAE, as the original LDM text-to-image model trained its text transformer jointly
(Rombach et al. 2022, sec. 4.3.1). Fine-tuning (`--pretrained DIR`): the full UNet (optionally the text
encoder), or LoRA adapters through peft (`--lora-rank R`; Hu et al. 2022), saved as
`pytorch_lora_weights.safetensors` in the diffusers format `load_lora_weights` reads.
`--process cld` trains critically-damped Langevin diffusion instead of DDPM (Dockhorn et al. 2022; the step is
in cld_step.py) and saves its CLD scheduler with the pipeline.

One linear loop: data -> (cached) VAE latents -> noise -> UNet -> per-sample loss -> backward -> EMA ->
logs, sample grids, checkpoints. Everything else lives in the modules it calls.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from latentdiff.data.cache import LatentCache, TextEmbeddingCache
from latentdiff.hub import check_hub_arguments, push_folder
from latentdiff.data.dataset import DataConfig, build_dataloader
from latentdiff.cld import CLDConfig
from latentdiff.pipelines import LatentDiffusionPipeline, make_scheduler
from latentdiff.pipelines.cld_process import HSM_WEIGHTINGS
from latentdiff.pipelines.samplers import PROCESSES
from latentdiff.presets import build_components, get_preset
from latentdiff.training.cld_step import CLDObjective, cld_preset
from latentdiff.training.checkpoint import batches_from, resume_progress, save_checkpoint
from latentdiff.training.config import parse_config, save_config, start_run
from latentdiff.training.hardware import hardware_description
from latentdiff.training.losses import add_noise, diffusion_loss
from latentdiff.training.run_clock import RunClock, due
from latentdiff.training.validation import log_image, sample_grid


@dataclass
class TextToImageConfig:
    """Train a text-to-image latent diffusion model (UNet + CLIP text encoder on a frozen VAE)."""

    train_data: str  # captioned images: imagefolder / sidecar folder / datasets folder / .tar shards
    output_dir: str = "out/text-to-image"  # checkpoints, samples, logs, and the final pipeline folder
    preset: str = "small"  # architecture when training from scratch (latentdiff/presets.py)
    pretrained: str | None = None  # pipeline folder or hub id to fine-tune (instead of --preset)
    vae: str | None = None  # trained VAE folder (train_vae's output/vae); required from scratch
    resolution: int = 64  # square training crops (pixels); with --bucketing the pixel budget is resolution**2
    caption_column: str = "text"  # caption column of metadata.jsonl / the datasets dataset
    bucketing: bool = False  # aspect-ratio buckets instead of square centre crops
    missing_caption: str = "error"  # an image without caption: "error", "empty" (train on "") or "skip"
    min_size: str = "upscale"  # an image smaller than the resolution: "upscale" or "skip"
    outside_root: str = "error"  # a metadata file_name outside the data folder: "error" or "skip"
    batch_size: int = 32  # images per step per process
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    max_steps: int = 10000  # optimizer steps
    learning_rate: float = 5e-4  # AdamW peak learning rate
    lr_scheduler: str = "cosine"  # diffusers.optimization schedule: constant, constant_with_warmup, cosine, ...
    lr_warmup_steps: int = 500  # linear warm-up steps
    weight_decay: float = 1e-2  # AdamW weight decay
    adam_8bit: bool = False  # bitsandbytes 8-bit AdamW (GPU only)
    max_grad_norm: float = 1.0  # gradient clipping
    train_text_encoder: bool | None = None  # train the text encoder too; default: yes from scratch, no otherwise
    lora_rank: int = 0  # > 0: train LoRA adapters of this rank on the UNet's attention instead of all weights
    process: str = "ddpm"  # noise process: "ddpm" (VP, as Stable Diffusion) or "cld" (critically-damped Langevin)
    # CLD options (--process cld; Dockhorn et al. 2022, defaults the paper's). The process and the mixed score apply
    # from scratch; fine-tuning keeps those of the --pretrained CLD folder.
    cld_beta_schedule: str = "constant"  # beta(t): "constant" (4) or "linear" (0.1 -> 8)
    cld_mass: float = 0.25  # mass M; the friction is Gamma = 2 sqrt(M) (critical damping)
    cld_gamma: float = 0.04  # HSM initial velocity variance factor: v0 ~ N(0, gamma M I)
    cld_mixed_score: bool = True  # mixed-score parameterisation: the UNet learns the residual to the Gaussian score
    cld_loss_weighting: str = "eps"  # HSM weighting lambda(t): "eps" (ell_t^-2, the paper's) or "ml" (max. likelihood)
    prediction_type: str = "epsilon"  # "epsilon" or "v_prediction" (ddpm)
    snr_gamma: float | None = 5.0  # min-SNR-gamma loss weighting (None: plain MSE) (ddpm)
    noise_offset: float = 0.0  # offset-noise strength (ddpm)
    caption_dropout: float = 0.1  # probability of training on the empty caption (for classifier-free guidance)
    use_ema: bool = True  # keep an exponential moving average of the UNet; the final pipeline uses it
    ema_decay: float = 0.999  # EMA decay (with warm-up)
    gradient_checkpointing: bool = False  # trade compute for memory
    channels_last: bool = True  # UNet weights and activations in NHWC layout (faster convolutions, CPU and GPU)
    fused_adam: bool = True  # fused AdamW kernel (one kernel for all parameters instead of a loop over them)
    compile: bool = False  # torch.compile the UNet (minutes of compiling first; pays off on long runs)
    mixed_precision: str = "no"  # "no", "fp16" or "bf16" (GPU; CPU runs fp32)
    cache_latents: bool = True  # cache the frozen VAE's latent distributions on disk
    cache_text: bool = True  # cache the text embeddings on disk when the text encoder is frozen
    cache_dir: str | None = None  # where the caches live (default: output_dir/cache)
    checkpoint_every: int = 1000  # steps between checkpoints
    keep_checkpoints: int = 2  # checkpoints kept (oldest removed)
    resume: str | None = None  # "latest" or a checkpoint folder
    stop_after: int | None = None  # end this invocation after this many steps (a time slot); resume to go on
    time_budget_minutes: float | None = None  # finish (final folder as at --max-steps) after this much training
    # time, summed over resumed invocations; validation and checkpoint pauses do not count. For same-budget comparisons.
    validation_every: int = 1000  # steps between sample grids
    validation_prompts: list[str] = field(default_factory=lambda: [
        "a red circle", "two blue squares", "a green triangle to the left of a yellow star",
        "a purple cross above an orange diamond"])  # prompts of the sample grid
    validation_steps: int = 20  # sampler steps for the grid (DPM-Solver++ 2M; cld: cld-ode)
    validation_guidance: float = 4.0  # guidance scale for the grid
    max_bad_steps: int = 10  # this many non-finite losses in a row stop the run
    num_workers: int = 0  # DataLoader workers
    seed: int = 0  # seeds weights, data order, noise and the validation grid
    push_to_hub: bool = False  # upload the final folder with `latentdiff push` (token: $HF_TOKEN or `hf auth login`)
    hub_repo_id: str | None = None  # USER/NAME to upload to (needed with --push-to-hub)
    hub_private: bool = False  # create the hub repo as private

    def __post_init__(self):
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"--prediction-type must be epsilon or v_prediction, got {self.prediction_type!r}.")
        if self.process not in PROCESSES:
            raise ValueError(f"--process must be one of {', '.join(PROCESSES)}, got {self.process!r}.")
        if self.process == "cld":
            try:
                cld_process_config(self)
            except ValueError as err:
                raise ValueError(f"--cld-beta-schedule / --cld-mass / --cld-gamma: {err}") from None
            if self.cld_loss_weighting not in HSM_WEIGHTINGS:
                raise ValueError(f"--cld-loss-weighting must be one of {', '.join(HSM_WEIGHTINGS)}, got "
                                 f"{self.cld_loss_weighting!r}.")
            if self.noise_offset:
                raise ValueError("--noise-offset is offset noise for the DDPM process; CLD draws its own noise. "
                                 "Leave it at 0 with --process cld.")
        for name in ("batch_size", "max_steps", "checkpoint_every", "validation_every", "gradient_accumulation_steps",
                     "max_bad_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}.")
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ValueError(f"--caption-dropout must be in [0, 1], got {self.caption_dropout}.")
        if self.lora_rank < 0:
            raise ValueError(f"--lora-rank must be >= 0, got {self.lora_rank}.")
        if self.pretrained is None and self.vae is None:
            raise ValueError("Training from scratch needs a trained VAE: pass --vae DIR (train_vae's output/vae), "
                             "or --pretrained DIR to fine-tune a pipeline.")
        if self.lora_rank and self.pretrained is None:
            raise ValueError("--lora-rank needs --pretrained DIR: LoRA adapts a trained model.")
        if self.time_budget_minutes is not None and self.time_budget_minutes <= 0:
            raise ValueError(f"--time-budget-minutes must be > 0, got {self.time_budget_minutes}.")
        if self.train_text_encoder is None:
            self.train_text_encoder = self.pretrained is None
        check_hub_arguments(self)  # before training, not after: a missing token or repo id fails now


SAMPLER = {"ddpm": "dpm++2m", "cld": "cld-ode"}  # the named sampler of the sample grids and the final folder


def cld_process_config(cfg: TextToImageConfig) -> dict:
    """The CLD scheduler config of a from-scratch run: the process (validated by CLDConfig) and the mixed score."""
    process = dict(M=cfg.cld_mass, gamma=cfg.cld_gamma, beta_schedule=cfg.cld_beta_schedule)
    CLDConfig(**process)
    return {**process, "mixed_score": cfg.cld_mixed_score}


def load_models(cfg: TextToImageConfig) -> dict:
    """vae, text_encoder, tokenizer, unet and the noise process for this run: a DDPMScheduler, or for CLD the CLD
    scheduler whose config records the process (and the mixed score)."""
    if cfg.pretrained is not None:
        pipe = LatentDiffusionPipeline.from_pretrained(cfg.pretrained)
        if pipe.process != cfg.process:
            names = {"cld": "a CLD (critically-damped Langevin diffusion) model", "ddpm": "a DDPM-family model"}
            raise ValueError(
                f"--process {cfg.process} needs {names[cfg.process]}, but --pretrained {cfg.pretrained} is "
                f"{names[pipe.process]} (UNet in_channels {pipe.unet.config.in_channels}, scheduler "
                f"{type(pipe.scheduler).__name__}). Fine-tune it with --process {pipe.process}, or train a "
                f"{cfg.process} model from scratch with --preset NAME --vae DIR --process {cfg.process}.")
        parts = pipe.components
        process = dict(parts["scheduler"].config)
    else:
        preset = get_preset(cfg.preset)
        preset = cld_preset(preset) if cfg.process == "cld" else preset  # CLD: the UNet sees (x, v)
        parts = build_components(preset, seed=cfg.seed)
        process = cld_process_config(cfg) if cfg.process == "cld" else preset.process
    if cfg.vae is not None:
        parts["vae"] = AutoencoderKL.from_pretrained(cfg.vae, use_safetensors=True)
    if cfg.process == "cld":
        parts["noise_scheduler"] = make_scheduler(SAMPLER["cld"], process)
    else:
        parts["noise_scheduler"] = DDPMScheduler.from_config(process, prediction_type=cfg.prediction_type)
    return parts


def add_lora(unet: UNet2DConditionModel, rank: int) -> None:
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))


def save_outputs(cfg: TextToImageConfig, parts: dict, unet, text_encoder, out: Path) -> Path:
    """The final diffusers folder (pipeline, or LoRA weights), loadable by stock diffusers."""
    if cfg.lora_rank:
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        target = out / "lora"
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        LatentDiffusionPipeline.save_lora_weights(target, unet_lora_layers=layers, safe_serialization=True)
        return target
    scheduler = make_scheduler(SAMPLER[cfg.process], dict(parts["noise_scheduler"].config))
    pipe = LatentDiffusionPipeline(vae=parts["vae"], text_encoder=text_encoder, tokenizer=parts["tokenizer"],
                                   unet=unet, scheduler=scheduler)
    target = out / "pipeline"
    pipe.save_pretrained(target)
    return target


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(TextToImageConfig, argv, prog="train_text_to_image")
    accelerator, out = start_run(cfg, "train_text_to_image", dynamo_backend="inductor" if cfg.compile else "no",
                                 gradient_accumulation_steps=cfg.gradient_accumulation_steps)

    # 1. Models: frozen VAE; trained UNet (or its LoRA) and, optionally, text encoder
    parts = load_models(cfg)
    vae, text_encoder, tokenizer, unet = parts["vae"], parts["text_encoder"], parts["tokenizer"], parts["unet"]
    noise_scheduler = parts["noise_scheduler"]
    cld = None  # the CLD step (cld_step.py) in place of add_noise / diffusion_loss
    if cfg.process == "cld":
        cld = CLDObjective(noise_scheduler.process, cfg.cld_loss_weighting, noise_scheduler.config.mixed_score)
    vae.requires_grad_(False).eval()
    text_encoder.requires_grad_(cfg.train_text_encoder)
    if cfg.lora_rank:
        add_lora(unet, cfg.lora_rank)
    if cfg.channels_last:
        unet.to(memory_format=torch.channels_last)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if cfg.train_text_encoder:
            text_encoder.gradient_checkpointing_enable()
    frozen_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    vae.to(accelerator.device, frozen_dtype)
    if not cfg.train_text_encoder:
        text_encoder.to(accelerator.device, frozen_dtype)
    ema = None
    if cfg.use_ema and not cfg.lora_rank:
        ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, model_cls=UNet2DConditionModel,
                       model_config=unet.config)
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)

    # 2. Optimizer and learning-rate schedule over the trained parameters
    params = [p for p in unet.parameters() if p.requires_grad]
    if cfg.train_text_encoder:
        params += list(text_encoder.parameters())
    if cfg.adam_8bit:
        try:
            import bitsandbytes as bnb
        except ImportError as err:
            raise ValueError("--adam-8bit needs bitsandbytes and a CUDA GPU: pip install bitsandbytes") from err
        optimizer = bnb.optim.AdamW8bit(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                      fused=cfg.fused_adam or None)
    lr_schedule = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                num_training_steps=cfg.max_steps)
    if cfg.train_text_encoder:
        unet, text_encoder, optimizer, lr_schedule = accelerator.prepare(unet, text_encoder, optimizer, lr_schedule)
    else:
        unet, optimizer, lr_schedule = accelerator.prepare(unet, optimizer, lr_schedule)

    # 3. Data: this rank's shard; VAE latents from the on-disk cache where possible
    data = DataConfig(train_data=cfg.train_data, resolution=cfg.resolution, seed=cfg.seed,
                      caption_column=cfg.caption_column, bucketing=cfg.bucketing, missing_caption=cfg.missing_caption,
                      min_size=cfg.min_size, outside_root=cfg.outside_root)
    loader = build_dataloader(data, cfg.batch_size, num_workers=cfg.num_workers, drop_last=True,
                              rank=accelerator.process_index, world_size=accelerator.num_processes)
    cache_root = Path(cfg.cache_dir or out / "cache")
    cache = LatentCache(cache_root, vae, data.transform_config(), data.bucket_config()) if cfg.cache_latents else None
    text_cache = None
    if cfg.cache_text and not cfg.train_text_encoder:
        text_cache = TextEmbeddingCache(cache_root, text_encoder, tokenizer)
    # 4. Resume: model, optimizer, EMA, LR schedule and RNG states; the data position follows from the step
    progress = resume_progress(accelerator, cfg.resume, out)
    step = first_step = progress["step"]

    # 5. Training loop
    bar = tqdm(total=cfg.max_steps, initial=step, desc="train", disable=not accelerator.is_main_process)
    clock = RunClock(accelerator, cfg.time_budget_minutes, progress)  # training time, all invocations
    images_seen, bad_in_a_row, bad_total = 0, 0, 0
    # steady-state throughput leaves out this invocation's first WARMUP steps (allocator, lazy init, compiling)
    steady = None  # {"train_seconds", "images"} at the end of the warm-up
    seen: list[str] = []  # names of the samples this rank trained on (this invocation), for the rank report
    batches = batches_from(loader, progress["epoch"], progress["batch"], cfg.gradient_accumulation_steps)
    for epoch, i, batch in batches if step < cfg.max_steps else ():
        loader.dataset.skips.update(batch["skipped"])  # broken files ride along in batches (data/dataset.py)
        if accelerator.reduce(torch.tensor(float(len(batch["keys"]) == 0), device=accelerator.device)) > 0:
            continue  # a batch of broken files only, on some rank: all ranks move on together
        seen += batch["names"]
        with accelerator.accumulate(unet):
            x = batch["pixel_values"].to(accelerator.device, frozen_dtype)  # (B, 3, H, W)
            with torch.no_grad():
                dist = cache.latent_dist(x, batch["keys"]) if cache else vae.encode(x).latent_dist
                latents = dist.sample().float() * vae.config.scaling_factor  # (B, 4, h, w)
            captions = [("" if float(r) < cfg.caption_dropout else c)
                        for c, r in zip(batch["captions"], torch.rand(len(x)))]
            if text_cache is not None:
                text = text_cache.encode(captions, accelerator.device)  # (B, 77, D)
            else:
                ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                                truncation=True, return_tensors="pt").input_ids.to(accelerator.device)  # (B, 77)
                with torch.set_grad_enabled(cfg.train_text_encoder):
                    text = text_encoder(ids)[0]  # (B, 77, D)
            # DDPM: z_t (B, 4, h, w) and integer t; CLD: u_t = (x_t, v_t) (B, 8, h, w) and unet_timestep(t)
            noised = cld.perturb(latents) if cld else add_noise(noise_scheduler, latents, cfg.noise_offset)
            pred = unet(noised.noisy, noised.timesteps, text).sample  # (B, 4, h, w): eps / v; CLD: eps_v
            loss = cld.loss(pred, noised) if cld else diffusion_loss(pred, noised, noise_scheduler, cfg.snr_gamma)

            # A non-finite loss on any rank skips the step on every rank (so DDP's all-reduce stays in step).
            bad = accelerator.reduce(torch.tensor(float(not torch.isfinite(loss).all()),
                                                  device=accelerator.device), "sum").item() > 0
            if bad:
                optimizer.zero_grad(set_to_none=True)
                bad_in_a_row, bad_total = bad_in_a_row + 1, bad_total + 1
                if bad_in_a_row >= cfg.max_bad_steps:
                    raise RuntimeError(f"{bad_in_a_row} non-finite losses in a row at step {step}: lower "
                                       "--learning-rate, check the data, or resume from an earlier checkpoint.")
                continue
            bad_in_a_row = 0
            accelerator.backward(loss.mean())
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            lr_schedule.step()
            optimizer.zero_grad(set_to_none=True)
        if not accelerator.sync_gradients:
            continue

        # one optimizer step done
        step += 1
        if ema is not None:
            ema.step(unet.parameters())
        images_seen += len(x) * accelerator.num_processes * cfg.gradient_accumulation_steps
        if step - first_step == WARMUP:
            steady = {"train_seconds": clock.train_seconds, "images": images_seen}
        logs = {"loss": loss.mean().item(), "lr": lr_schedule.get_last_lr()[0],
                "images_per_s": images_seen / clock.train_seconds, "bad_steps": bad_total}
        accelerator.log(logs, step=step)
        bar.update()
        bar.set_postfix(loss=f"{logs['loss']:.4f}", img_s=f"{logs['images_per_s']:.1f}")

        out_of_time = clock.out_of_time()  # the same on every rank
        with clock.paused():  # validation and checkpoints are not training time
            if due(step, cfg.validation_every, cfg.max_steps, now=out_of_time):
                validate(cfg, accelerator, parts, unet, text_encoder, ema, out, step)
            if due(step, cfg.checkpoint_every, cfg.max_steps, cfg.stop_after, now=out_of_time):
                # the position of the next batch, so that a resumed run continues with exactly that batch
                save_checkpoint(accelerator, out, step, cfg.keep_checkpoints, extra=clock.progress(epoch, i + 1))
        if out_of_time:
            accelerator.print(f"time budget of {cfg.time_budget_minutes} min spent at step {step}")
            break
        if cfg.stop_after is not None and step >= cfg.stop_after and step < cfg.max_steps:
            accelerator.print(f"stopping at step {step} (--stop-after); go on with --resume latest")
            accelerator.end_training()
            return
        if step >= cfg.max_steps:
            break
    bar.close()
    clock.stop()
    train_seconds = clock.train_seconds
    steady_images_per_s = steady_rate(steady, images_seen, train_seconds)
    final_loss = logs["loss"] if step > first_step else None

    # 6. The final folder: the EMA weights of the UNet where EMA is on
    write_rank_report(out, accelerator, seen, accelerator.unwrap_model(unet))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final_unet = accelerator.unwrap_model(unet)
        if ema is not None:
            ema.copy_to(final_unet.parameters())
        target = save_outputs(cfg, parts, final_unet, accelerator.unwrap_model(text_encoder), out)
        summary = {"steps": step, "epochs": epochs_done(step, cfg, accelerator.num_processes, loader.dataset),
                   "wall_clock_seconds": clock.wall_clock_seconds,
                   "hardware": hardware_description(accelerator),
                   "train_seconds_all_invocations": clock.total_train_seconds, "final_loss": final_loss,
                   "seconds": clock.seconds, "non_finite_steps_skipped": bad_total,
                   "processes": accelerator.num_processes, "device": str(accelerator.device),
                   "skipped_files": loader.dataset.skips.counts,
                   "train_seconds": train_seconds, "images_per_s": images_seen / train_seconds,
                   "steady_images_per_s": steady_images_per_s,
                   "steps_per_s": (step - first_step) / train_seconds,
                   "latent_cache": None if cache is None else {"hits": cache.hits, "misses": cache.misses},
                   "text_cache": None if text_cache is None else {"hits": text_cache.hits, "misses": text_cache.misses}}
        for folder in (out, target):  # beside the checkpoints, and in the model folder for its card
            (folder / "training_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        save_config(cfg, target / "training_config.json")
        accelerator.print(loader.dataset.skips.summary())
        accelerator.print(f"wrote {target}")
        if cfg.push_to_hub:
            base = cfg.pretrained if cfg.pretrained and not Path(cfg.pretrained).exists() else None
            push_folder(target, cfg.hub_repo_id, private=cfg.hub_private, base_model=cfg.pretrained,
                        base_model_id=base, log=accelerator.print)
    accelerator.end_training()


WARMUP = 3  # first steps of an invocation left out of the steady-state throughput


def steady_rate(steady: dict | None, images_seen: int, train_seconds: float) -> float | None:
    """Images/s after the warm-up steps (None when the run was too short to have any). `steady` holds the
    invocation's training seconds and images at the end of the warm-up."""
    if steady is None:
        return None
    seconds = train_seconds - steady["train_seconds"]
    return (images_seen - steady["images"]) / seconds if seconds > 0 and images_seen > steady["images"] else None


def epochs_done(step: int, cfg: TextToImageConfig, processes: int, dataset) -> float | None:
    """Passes over the training data so far; None for a streamed dataset of unknown length."""
    try:
        n = len(dataset)
    except TypeError:
        return None
    return round(step * cfg.batch_size * cfg.gradient_accumulation_steps * processes / max(n, 1), 3)


def write_rank_report(out: Path, accelerator, seen: list[str], unet) -> None:
    """ranks/rank-N.json: the samples this process trained on and a checksum of its final UNet weights, so
    that a multi-process run can be checked for disjoint data and identical parameters."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(unet.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    report = {"rank": accelerator.process_index, "samples": seen, "unet_sha256": digest.hexdigest()}
    (out / "ranks").mkdir(parents=True, exist_ok=True)
    (out / "ranks" / f"rank-{accelerator.process_index}.json").write_text(json.dumps(report) + "\n")


@torch.no_grad()
def validate(cfg, accelerator, parts, unet, text_encoder, ema, out: Path, step: int) -> None:
    """The sample grid of the fixed prompts and seeds, with the EMA weights where EMA is on."""
    if not accelerator.is_main_process:
        return
    model = accelerator.unwrap_model(unet)
    if ema is not None:
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
    scheduler = make_scheduler(SAMPLER[cfg.process], dict(parts["noise_scheduler"].config))
    pipe = LatentDiffusionPipeline(vae=parts["vae"], text_encoder=accelerator.unwrap_model(text_encoder),
                                   tokenizer=parts["tokenizer"], unet=model, scheduler=scheduler)
    was_training = model.training, pipe.text_encoder.training
    model.eval(), pipe.text_encoder.eval()
    grid = sample_grid(pipe, cfg.validation_prompts, cfg.seed, cfg.validation_steps, cfg.validation_guidance,
                       out / "samples" / f"step-{step:07d}.png")
    model.train(was_training[0]), pipe.text_encoder.train(was_training[1])
    if ema is not None:
        ema.restore(model.parameters())
    log_image(accelerator, "validation", grid, step)


if __name__ == "__main__":
    from latentdiff.training.config import run_entry_point

    run_entry_point(main)
