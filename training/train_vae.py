"""Train an AutoencoderKL (Rombach et al. 2022, sec. 3; Kingma & Welling 2014) from a preset, with accelerate.

    accelerate launch -m latentdiff.training.train_vae --config training/recipes/vae-shapes.yaml

Loss per image: a reconstruction error (MSE, L1 or both; object pixels weighted, an optional edge term) +
kl_weight * KL(q(z|x) || N(0, I)), see `vae_loss.py`. Training data may be a folder or `shapesworld:train`
(scenes drawn on the fly, fresh every epoch: latentdiff.data.procedural). Every `validation_every` steps: PSNR
on held-out images (posterior mean, no sampling), a reconstruction grid PNG and, for each prompt set in
`ceiling_prompts`, the VAE ceiling (latentdiff.eval.reference: the ground-truth scenes of the prompts,
through the VAE, scored as `latentdiff eval` scores a model). At the end the
latents' standard deviation is measured and `scaling_factor = 1 / std` is written into the VAE config, so that
the diffusion model sees unit-variance latents (Rombach et al. 2022, sec. G).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from diffusers.image_processor import VaeImageProcessor
from tqdm.auto import tqdm

from latentdiff.data.dataset import DataConfig, build_dataloader
from latentdiff.images import make_grid
from latentdiff.eval.reference import evaluate_reference, prompt_scenes, psnr_db
from latentdiff.presets import vae_kwargs
from latentdiff.training.checkpoint import resume_progress
from latentdiff.training.config import parse_config, start_run
from latentdiff.training.data import TrainingData
from latentdiff.training.optim import optimizer_and_schedule
from latentdiff.training.periodic import AfterStep
from latentdiff.training.run_clock import RunClock
from latentdiff.training.summary import run_summary, write_summary
from latentdiff.training.vae_loss import ReconstructionLoss


@dataclass
class VAEConfig:
    """Train a VAE (AutoencoderKL) for latent diffusion."""

    train_data: str  # training images: imagefolder / sidecar folder / datasets folder / .tar shards
    val_data: str  # held-out images for PSNR and the reconstruction grid (same kinds)
    output_dir: str = "out/vae"  # checkpoints, samples, logs, and the final `vae/` folder
    preset: str = "small"  # the VAE architecture comes from this preset (latentdiff/presets.py)
    vae_blocks: list[int] | None = None  # other block widths; their count sets the factor 2**(n-1) (None: preset's)
    latent_channels: int | None = None  # latent channels (None: the preset's 4)
    loss: str = "mse"  # reconstruction error: "mse", "l1" or "l1+mse" (vae_loss.py)
    object_weight: float = 1.0  # weight of foreground (object) pixels against background pixels
    grad_weight: float = 0.0  # weight of the L1 edge (finite-difference) term
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
    ceiling_prompts: list[str] | None = None  # prompt sets whose VAE ceiling is measured at every validation
    num_workers: int = 0  # DataLoader workers
    seed: int = 0  # seeds weights, data order and noise

    def __post_init__(self):
        for name in ("batch_size", "max_steps", "checkpoint_every", "validation_every", "val_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}.")
        self.objective = ReconstructionLoss(self.loss, self.object_weight, self.grad_weight, self.kl_weight)
        self.architecture = vae_kwargs(self.preset, self.vae_blocks, self.latent_channels)
        for path in self.ceiling_prompts or ():
            prompt_scenes(path)  # every line must name its scene: fail now, not at the first validation


def ceilings(vae: AutoencoderKL, prompt_sets: list[str] | None, resolution: int) -> dict[str, float]:
    """{"ceiling/<set>/<category or overall>": score, "ceiling/<set>/psnr_db": dB} of `vae` on each prompt set."""
    out = {}
    for path in prompt_sets or ():
        r = evaluate_reference(path, "vae", vae, size=resolution)
        stem = Path(path).stem
        out.update({f"ceiling/{stem}/{c}": v for c, v in r.categories.items()})
        out.update({f"ceiling/{stem}/overall": r.overall, f"ceiling/{stem}/psnr_db": r.settings["psnr_db"]})
    return out


@torch.no_grad()
def evaluate(vae: AutoencoderKL, batches: list[torch.Tensor]) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    """(mean PSNR dB, latent std, first originals, their reconstructions) over held-out batches."""
    scores, latents = [], []
    for x in batches:  # (B, 3, H, W) in [-1, 1]
        z = vae.encode(x).latent_dist.mode()  # (B, C, h, w)
        rec = vae.decode(z).sample.clamp(-1, 1)
        scores.append(psnr_db(rec, x))
        latents.append(z.flatten())
    first = batches[0][:8]
    return float(torch.cat(scores).mean()), float(torch.cat(latents).std()), first, vae.decode(
        vae.encode(first).latent_dist.mode()).sample.clamp(-1, 1)


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(VAEConfig, argv, prog="train_vae")
    accelerator, out = start_run(cfg, "train_vae", "vae_config.json", subfolders=("samples",))

    # 1. Model, optimizer, schedule
    vae = AutoencoderKL(**cfg.architecture)
    optimizer, lr_schedule = optimizer_and_schedule(cfg, list(vae.parameters()))
    vae, optimizer, lr_schedule = accelerator.prepare(vae, optimizer, lr_schedule)

    # 2. Data: this rank's shard of the training images; the held-out batches, loaded once
    data = TrainingData(DataConfig(train_data=cfg.train_data, resolution=cfg.resolution, seed=cfg.seed,
                                   missing_caption="empty"), accelerator, cfg.batch_size, num_workers=cfg.num_workers)
    val_batches = held_out_batches(cfg, accelerator.device)

    # 3. Resume: model, optimizer, LR schedule and RNG states; the data position from the progress record
    progress = resume_progress(accelerator, cfg.resume, out)
    step = progress["step"]
    clock = RunClock(accelerator, None, progress)
    stop = min(cfg.max_steps, cfg.stop_after or cfg.max_steps)
    bar = tqdm(total=cfg.max_steps, initial=step, desc="train_vae", disable=not accelerator.is_main_process)
    after = AfterStep(accelerator, clock, out, cfg, lambda at: validate(cfg, accelerator, vae, val_batches, out, at,
                                                                         clock), bar, cfg.batch_size * accelerator.num_processes)

    # 4. Training loop
    for epoch, i, batch in data.batches(progress) if step < stop else ():
        x = batch["pixel_values"].to(accelerator.device)  # (B, 3, H, W) in [-1, 1]
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample()).sample  # (B, 3, H, W)
        loss = cfg.objective(rec, x, posterior.kl())  # (B,)
        accelerator.backward(loss.mean())
        accelerator.clip_grad_norm_(vae.parameters(), cfg.max_grad_norm)
        optimizer.step()
        lr_schedule.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if after(step, epoch, i + 1, loss=loss.mean().item(), lr=lr_schedule.get_last_lr()[0]):
            break
    bar.close()
    clock.stop()

    # 5. Scaling factor and the final folder, with the VAE's PSNR and ceilings in the run summary
    model = accelerator.unwrap_model(vae).eval()
    final_psnr, latent_std, _, _ = evaluate(model, val_batches)
    if accelerator.is_main_process:
        model.register_to_config(scaling_factor=1.0 / latent_std)
        model.save_pretrained(out / "vae")
        write_summary(run_summary(accelerator, clock, step=step, first_step=progress["step"],
                                  images_seen=after.images_seen, data=data, val_psnr_db=final_psnr,
                                  latent_std=latent_std, scaling_factor=1.0 / latent_std,
                                  parameters=sum(p.numel() for p in model.parameters()),
                                  **ceilings(model, cfg.ceiling_prompts, cfg.resolution)), out)
        accelerator.print(f"held-out PSNR {final_psnr:.2f} dB; latent std {latent_std:.4f} -> scaling_factor "
                          f"{1 / latent_std:.4f}; wrote {out / 'vae'}")
    accelerator.end_training()


def held_out_batches(cfg: VAEConfig, device) -> list[torch.Tensor]:
    """The first `val_images` held-out images, (B, 3, H, W) batches in [-1, 1] on `device`."""
    val = build_dataloader(DataConfig(train_data=cfg.val_data, resolution=cfg.resolution, missing_caption="empty"),
                           cfg.batch_size, shuffle=False)
    batches, n = [], 0
    for batch in val:
        batches.append(batch["pixel_values"].to(device))
        n += len(batch["pixel_values"])
        if n >= cfg.val_images:
            break
    return batches


@torch.no_grad()
def validate(cfg: VAEConfig, accelerator, vae, val_batches: list, out: Path, step: int, clock: RunClock) -> None:
    """PSNR on the held-out images, the VAE ceilings of `ceiling_prompts`, and a reconstruction grid."""
    model = accelerator.unwrap_model(vae).eval()
    psnr, _, originals, recs = evaluate(model, val_batches)
    ceiling = ceilings(model, cfg.ceiling_prompts, cfg.resolution)
    model.train()
    if accelerator.is_main_process:
        pictures = VaeImageProcessor().postprocess(torch.cat([originals, recs]), output_type="pil")
        make_grid(pictures, cols=len(originals)).save(out / "samples" / f"recon-{step:07d}.png")
        accelerator.log({"val_psnr": psnr, **ceiling}, step=step)
        accelerator.print(f"step {step}: val PSNR {psnr:.2f} dB, CPU {clock.cpu_seconds:.0f} s"
                          + "".join(f", {k} {v:.3f}" for k, v in ceiling.items() if k.endswith("overall")))


if __name__ == "__main__":
    from latentdiff.training.config import run_entry_point

    run_entry_point(main)
