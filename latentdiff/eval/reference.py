"""The ceiling of an evaluation: how ground-truth pictures of each prompt score, raw or through a VAE.

Every line of a prompt set written by `build_prompt_set` names the ShapesWorld scene its caption came from
(`source`: dataset seed and index, and `split`). Re-rendering that scene gives a picture that is true of the
prompt by construction:

    render   the scene as drawn: checks the scorer (it should pass ~every image)
    vae      the scene encoded by a VAE (posterior mean) and decoded again: the best any UNet on that VAE can
             score, since every generated image is a decoded latent

Both are judged exactly as `latentdiff eval` judges a model, and come back as the same `EvalResult`, so a
model's score and its ceiling print in one table format.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from latentdiff.data.shapes import render, scene_at
from latentdiff.eval.prompts import PromptSpec, read_prompt_set
from latentdiff.eval.run import EvalResult, score_images

REFERENCES: tuple[str, ...] = ("render", "vae")


def prompt_scenes(path: str | Path) -> list[tuple[str, PromptSpec, dict]]:
    """(prompt, spec, source) per line of a prompt set; source = {"seed", "index", "split"} of its scene.
    Raises ValueError when a line has no source (hand-written prompt sets cannot give a reference)."""
    prompts = read_prompt_set(path)
    lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    out = []
    for n, ((prompt, spec), d) in enumerate(zip(prompts, lines), 1):
        src = d.get("source")
        if not isinstance(src, dict) or not {"seed", "index"} <= set(src):
            raise ValueError(f"{path}:{n}: no \"source\" scene to render; --reference needs a prompt set made by "
                             "build_prompt_set (assets/prompts/*.jsonl)")
        out.append((prompt, spec, {"seed": int(src["seed"]), "index": int(src["index"]),
                                   "split": d.get("split", "train")}))
    return out


def render_scenes(sources: list[dict], size: int) -> list[Image.Image]:
    """The scene of each source, drawn at `size` x `size`."""
    return [render(scene_at(s["index"], s["seed"], s["split"]), size=size) for s in sources]


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL RGB images -> (B, 3, H, W) float32 in [-1, 1]."""
    x = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])  # (B, H, W, 3)
    return torch.from_numpy(x).permute(0, 3, 1, 2) / 127.5 - 1.0


def to_images(x: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> PIL RGB images (rounded as VaeImageProcessor does)."""
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


@torch.no_grad()
def vae_roundtrip(vae, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Encode (posterior mean) and decode `x` (B, 3, H, W) in [-1, 1]; the reconstruction, same shape."""
    p = next(vae.parameters())
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(p.device, p.dtype)
        z = vae.encode(xb).latent_dist.mode()  # (b, C, H/f, W/f)
        out.append(vae.decode(z).sample.float().clamp(-1, 1).cpu())
    return torch.cat(out)


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image (B,) for images in [-1, 1] (peak-to-peak 2)."""
    mse = (a.float() - b.float()).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-12)
    return 10 * torch.log10(4.0 / mse)


def evaluate_reference(prompts_path: str | Path, reference: str, vae=None, size: int = 64) -> EvalResult:
    """Score the ground-truth scene of every prompt, drawn (`render`) or through `vae` (`vae`), one image per
    prompt. `settings["psnr_db"]` holds the VAE's mean PSNR over those scenes."""
    if reference not in REFERENCES:
        raise ValueError(f"--reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
    if reference == "vae" and vae is None:
        raise ValueError("--reference vae needs a model with a VAE (--model)")
    start = time.perf_counter()
    rows = prompt_scenes(prompts_path)
    images = render_scenes([s for _, _, s in rows], size)
    settings: dict = {"reference": reference, "images_per_prompt": 1, "size": size}
    if reference == "vae":
        x = to_tensor(images)  # (N, 3, size, size)
        rec = vae_roundtrip(vae, x)
        settings["psnr_db"] = float(psnr_db(rec, x).mean())
        images = to_images(rec)
    result = score_images([(p, spec) for p, spec, _ in rows], images, k=1, seconds=time.perf_counter() - start)
    result.settings = settings
    result.images = [[im] for im in images]
    return result
