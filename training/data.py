"""The training data of one rank: batches (broken ones skipped on every rank together), latents and text embeddings.

    data = TrainingData(DataConfig(...), accelerator, cfg.batch_size, vae=vae, text_encoder=te, tokenizer=tok,
                        cache_dir=out / "cache", cache_latents=True, cache_text=not train_text_encoder)
    for epoch, i, batch in data.batches(progress):     # resumes at the checkpoint's (epoch, batch)
        z0 = data.latents(batch)                       # (B, C, h, w), times the VAE's scaling_factor
        text = data.text(batch["captions"])            # (B, 77, D), from the cache where the encoder is frozen

Latents come from the on-disk cache of the frozen VAE's latent distributions where `cache_latents` is on (a
sample is drawn from the cached distribution every step, as from a fresh encode), else from encoding the batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from latentdiff.data.cache import LatentCache, TextEmbeddingCache
from latentdiff.data.dataset import DataConfig, build_dataloader
from latentdiff.training.checkpoint import batches_from


class TrainingData:
    def __init__(self, config: DataConfig, accelerator, batch_size: int, *, vae=None, text_encoder=None,
                 tokenizer=None, cache_dir: str | Path | None = None, cache_latents: bool = True,
                 cache_text: bool = True, train_text_encoder: bool = False, num_workers: int = 0,
                 dtype: torch.dtype = torch.float32):
        self.config, self.accelerator, self.dtype = config, accelerator, dtype
        self.train_text_encoder = train_text_encoder  # encode captions with gradients
        self.vae, self.text_encoder, self.tokenizer = vae, text_encoder, tokenizer
        self.loader = build_dataloader(config, batch_size, num_workers=num_workers, drop_last=True,
                                       rank=accelerator.process_index, world_size=accelerator.num_processes)
        root = Path(cache_dir) if cache_dir else None
        if cache_latents and not getattr(self.loader.dataset, "cacheable", True):
            accelerator.print("note: the training images are new every epoch; their latents are encoded every step, "
                              "not cached")
            cache_latents = False
        self.latent_cache = (LatentCache(root, vae, config.transform_config(), config.bucket_config())
                             if cache_latents and vae is not None and root else None)
        self.text_cache = (TextEmbeddingCache(root, text_encoder, tokenizer)
                           if cache_text and text_encoder is not None and root else None)

    @property
    def dataset(self):
        return self.loader.dataset

    def batches(self, progress: dict, accumulation: int = 1) -> Iterator[tuple[int, int, dict]]:
        """(epoch, index, batch) from the progress record's position on, without end. Files that failed to decode
        ride along in batches (data/dataset.py) and are counted here; a batch of broken files only, on any rank,
        is skipped by all ranks together."""
        for epoch, i, batch in batches_from(self.loader, progress["epoch"], progress["batch"], accumulation):
            self.dataset.skips.update(batch["skipped"])
            empty = torch.tensor(float(len(batch["keys"]) == 0), device=self.accelerator.device)
            if self.accelerator.reduce(empty) > 0:
                continue
            yield epoch, i, batch

    @torch.no_grad()
    def latents(self, batch: dict) -> torch.Tensor:
        """z0 = a sample of q(z | x) times scaling_factor, (B, C, h, w) float32."""
        x = batch["pixel_values"].to(self.accelerator.device, self.dtype)  # (B, 3, H, W)
        dist = self.latent_cache.latent_dist(x, batch["keys"]) if self.latent_cache else self.vae.encode(x).latent_dist
        return dist.sample().float() * self.vae.config.scaling_factor  # (B, C, h, w)

    def text(self, captions: list[str]) -> torch.Tensor:
        """Text embeddings (B, 77, D): cached for a frozen encoder, else encoded (with gradients if it trains)."""
        device = self.accelerator.device
        if self.text_cache is not None:
            return self.text_cache.encode(captions, device)
        ids = self.tokenizer(captions, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(device)  # (B, 77)
        with torch.set_grad_enabled(self.train_text_encoder):
            return self.text_encoder(ids)[0]  # (B, 77, D)

    def cache_stats(self) -> dict:
        """Hits and misses of the caches in use (None where a cache is off), for the run summary."""
        def stats(cache):
            return None if cache is None else {"hits": cache.hits, "misses": cache.misses}
        return {"latent_cache": stats(self.latent_cache), "text_cache": stats(self.text_cache)}


def drop_captions(captions: list[str], p: float) -> list[str]:
    """Each caption replaced by "" with probability p (classifier-free guidance training; Ho & Salimans 2022)."""
    return [("" if float(r) < p else c) for c, r in zip(captions, torch.rand(len(captions)))]
