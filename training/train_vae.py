"""Train an AutoencoderKL (Rombach et al. 2022, sec. 3; Kingma & Welling 2014) from a preset, with accelerate.

    accelerate launch -m latentdiff.training.train_vae --config training/recipes/vae-shapes.yaml

Loss per image: mean squared reconstruction error + kl_weight * KL(q(z|x) || N(0, I)). No perceptual term:
LPIPS needs pretrained VGG/AlexNet weights, which the project cannot have offline. Every `validation_every`
steps: PSNR on held-out images (posterior mean, no sampling) and a reconstruction grid PNG. At the end the
latents' standard deviation is measured and `scaling_factor = 1 / std` is written into the VAE config, so that
the diffusion model sees unit-variance latents (Rombach et al. 2022, sec. G).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL
from diffusers.image_processor import VaeImageProcessor
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from latentdiff.data.dataset import DataConfig, build_dataloader
from latentdiff.images import make_grid
from latentdiff.presets import get_preset
from latentdiff.training.checkpoint import batches_from, resume_progress, save_checkpoint
from latentdiff.training.config import parse_config, start_run
from latentdiff.training.hardware import hardware_description
from latentdiff.training.run_clock import RunClock, due


@dataclass
class VAEConfig:
    """Train a VAE (AutoencoderKL) for latent diffusion."""

    train_data: str  # training images: imagefolder / sidecar folder / datasets folder / .tar shards
    val_data: str  # held-out images for PSNR and the reconstruction grid (same kinds)
    output_dir: str = "out/vae"  # checkpoints, samples, logs, and the final `vae/` folder
    preset: str = "small"  # the VAE architecture comes from this preset (latentdiff/presets.py)
    resolution: int = 64  # square training crops
    batch_size: int = 32  # images per step per process
    max_steps: int = 4000  # optimizer steps (the LR schedule's length)
    stop_after: int | None = None  # end this invocation after this many steps (a time slot); resume to go on
    learning_rate: float = 1e-3  # AdamW peak learning rate
    lr_scheduler: str = "cosine"  # diffusers.optimization schedule: constant, cosine, linear, ...
    lr_warmup_steps: int = 200  # linear warm-up steps
    weight_decay: float = 0.0  # AdamW weight decay
    kl_weight: float = 1e-6  # weight of the KL term against the per-pixel MSE
    max_grad_norm: float = 1.0  # gradient clipping
    mixed_precision: str = "no"  # "no", "fp16" or "bf16" (GPU)
    checkpoint_every: int = 1000  # steps between checkpoints
    keep_checkpoints: int = 2  # checkpoints kept (oldest removed)
    resume: str | None = None  # "latest" or a checkpoint folder
    validation_every: int = 1000  # steps between PSNR measurements and grids
    val_images: int = 256  # held-out images used for PSNR and the scaling factor
    num_workers: int = 0  # DataLoader workers
    seed: int = 0  # seeds weights, data order and noise

    def __post_init__(self):
        for name in ("batch_size", "max_steps", "checkpoint_every", "validation_every", "val_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}.")


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image (B,) for images in [-1, 1] (peak-to-peak 2)."""
    mse = (a.float() - b.float()).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-12)
    return 10 * torch.log10(4.0 / mse)


@torch.no_grad()
def evaluate(vae: AutoencoderKL, batches: list[torch.Tensor]) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """(mean PSNR dB, latent std, first originals, their reconstructions) over held-out batches."""
    scores, latents = [], []
    for x in batches:  # (B, 3, H, W) in [-1, 1]
        z = vae.encode(x).latent_dist.mode()  # (B, C, h, w)
        rec = vae.decode(z).sample.clamp(-1, 1)
        scores.append(psnr(rec, x))
        latents.append(z.flatten())
    first = batches[0][:8]
    return float(torch.cat(scores).mean()), float(torch.cat(latents).std()), first, vae.decode(
        vae.encode(first).latent_dist.mode()).sample.clamp(-1, 1)


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(VAEConfig, argv, prog="train_vae")
    accelerator, out = start_run(cfg, "train_vae", "vae_config.json", subfolders=("samples",))

    # 1. Model, optimizer, schedule
    vae = AutoencoderKL(**get_preset(cfg.preset).vae)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    lr_schedule = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                num_training_steps=cfg.max_steps)
    vae, optimizer, lr_schedule = accelerator.prepare(vae, optimizer, lr_schedule)

    # 2. Data: this rank's shard of the training images; the held-out batches, loaded once
    data = DataConfig(train_data=cfg.train_data, resolution=cfg.resolution, seed=cfg.seed, missing_caption="empty")
    loader = build_dataloader(data, cfg.batch_size, num_workers=cfg.num_workers, drop_last=True,
                              rank=accelerator.process_index, world_size=accelerator.num_processes)
    val = build_dataloader(DataConfig(train_data=cfg.val_data, resolution=cfg.resolution, missing_caption="empty"),
                           cfg.batch_size, shuffle=False)
    val_batches, n = [], 0
    for batch in val:
        val_batches.append(batch["pixel_values"].to(accelerator.device))
        n += len(batch["pixel_values"])
        if n >= cfg.val_images:
            break

    # 3. Resume: model, optimizer, LR schedule and RNG states; the data position from the progress record
    progress = resume_progress(accelerator, cfg.resume, out)
    step = progress["step"]

    # 4. Training loop
    bar = tqdm(total=cfg.max_steps, initial=step, desc="train_vae", disable=not accelerator.is_main_process)
    clock = RunClock(accelerator, None, progress)  # never paused: the VAE's validation counts as training time
    images_seen, last_psnr = 0, float("nan")
    stop = min(cfg.max_steps, cfg.stop_after or cfg.max_steps)
    for epoch, i, batch in batches_from(loader, progress["epoch"], progress["batch"]) if step < stop else ():
        loader.dataset.skips.update(batch["skipped"])  # broken files ride along in batches (data/dataset.py)
        if accelerator.reduce(torch.tensor(float(len(batch["keys"]) == 0), device=accelerator.device)) > 0:
            continue  # a batch of broken files only, on some rank: all ranks move on together
        x = batch["pixel_values"].to(accelerator.device)  # (B, 3, H, W) in [-1, 1]
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample()).sample
        loss = (rec.float() - x.float()).pow(2).mean(dim=(1, 2, 3)) + cfg.kl_weight * posterior.kl()  # (B,)
        accelerator.backward(loss.mean())
        accelerator.clip_grad_norm_(vae.parameters(), cfg.max_grad_norm)
        optimizer.step()
        lr_schedule.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        images_seen += len(x) * accelerator.num_processes
        bar.update()
        logs = {"loss": loss.mean().item(), "lr": lr_schedule.get_last_lr()[0],
                "images_per_s": images_seen / clock.train_seconds}
        bar.set_postfix(loss=f"{logs['loss']:.4f}", psnr=f"{last_psnr:.1f}")
        accelerator.log(logs, step=step)

        if due(step, cfg.validation_every, stop):
            model = accelerator.unwrap_model(vae).eval()
            last_psnr, _, originals, recs = evaluate(model, val_batches)
            model.train()
            if accelerator.is_main_process:
                pictures = VaeImageProcessor().postprocess(torch.cat([originals, recs]), output_type="pil")
                grid = make_grid(pictures, cols=len(originals))
                grid.save(out / "samples" / f"recon-{step:07d}.png")
                accelerator.log({"val_psnr": last_psnr}, step=step)
        if due(step, cfg.checkpoint_every, stop):
            save_checkpoint(accelerator, out, step, cfg.keep_checkpoints,
                            extra={"epoch": epoch, "batch": i + 1, "train_seconds": clock.total_train_seconds})
        if step >= stop:
            break
    bar.close()

    # 5. Scaling factor and the final folder
    model = accelerator.unwrap_model(vae).eval()
    final_psnr, latent_std, _, _ = evaluate(model, val_batches)
    if accelerator.is_main_process:
        model.register_to_config(scaling_factor=1.0 / latent_std)
        model.save_pretrained(out / "vae")
        summary = {"steps": step, "val_psnr_db": final_psnr, "latent_std": latent_std,
                   "scaling_factor": 1.0 / latent_std, "seconds": clock.seconds,
                   "train_seconds_all_invocations": clock.total_train_seconds,
                   "hardware": hardware_description(accelerator),
                   "processes": accelerator.num_processes, "device": str(accelerator.device),
                   "parameters": sum(p.numel() for p in model.parameters())}
        (out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        accelerator.print(f"held-out PSNR {final_psnr:.2f} dB; latent std {latent_std:.4f} -> scaling_factor "
                          f"{1 / latent_std:.4f}; wrote {out / 'vae'}")
    accelerator.end_training()


if __name__ == "__main__":
    from latentdiff.training.config import run_entry_point

    run_entry_point(main)
