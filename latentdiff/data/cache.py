"""On-disk caches for frozen encoders: VAE latent distributions and text-encoder embeddings.

With a frozen VAE the encoder output of an image never changes, so it is computed once and read back in
later epochs and later runs. The cache stores the whole latent distribution (the DiagonalGaussian
`parameters` = concat(mean, logvar), (2C, h, w)), not a sample, so training still draws
`latent_dist.sample(generator)` exactly as with on-the-fly encoding:

    cache = LatentCache("cache/latents", vae, config.transform_config(), config.bucket_config(),
                        model_id="stabilityai/sd-vae-ft-mse@main")       # or leave None: hash the weights
    latent_dist = cache.latent_dist(batch["pixel_values"], batch["keys"])  # misses are encoded and stored
    latents = latent_dist.sample(generator) * vae.config.scaling_factor  # (B, C, h, w)

An entry lives at root/<namespace>/<key[:2]>/<key>_<W>x<H>.safetensors, where key is the hash of the
image file's bytes and namespace hashes everything else that changes the result: the VAE config, the
VAE weights (the hash of its state dict, or a model id + revision you pass), and the transform (resolution,
crop, flip, resize filter, buckets). Random crops and flips are refused: a cached latent would freeze one
draw. Entries are written to a temporary file and moved into place with os.replace, so readers never see
half an entry and processes that write the same entry at once are safe (the last one wins; both wrote the
same values).

TextEmbeddingCache does the same for captions: key = hash of the caption, namespace = text encoder
config + weights + tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from latentdiff.data.buckets import BucketConfig
from latentdiff.data.transforms import TransformConfig

__all__ = ["LatentCache", "TextEmbeddingCache", "config_hash", "state_dict_hash"]

CACHE_FORMAT = 1  # bump when the entry layout changes: old entries then land in another namespace


def _hash(text: str | bytes, digest_size: int = 16) -> str:
    return hashlib.blake2b(text.encode() if isinstance(text, str) else text, digest_size=digest_size).hexdigest()


def config_hash(config: Any) -> str:
    """Hash of a JSON-able config (a dict, or a diffusers/transformers config), keys sorted, private keys dropped."""
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    config = {k: v for k, v in dict(config).items() if not str(k).startswith("_")}
    return _hash(json.dumps(config, sort_keys=True, default=str))


@torch.no_grad()
def state_dict_hash(module: torch.nn.Module) -> str:
    """Hash of a module's weights: every state-dict tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """save_file to a temporary file in the same folder, then os.replace it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


class _EntryStore:
    """root/<namespace>/<name[:2]>/<name>.safetensors entries holding one tensor each, plus an info.json."""

    def __init__(self, root: str | Path, namespace: str, info: dict[str, Any], tensor_name: str):
        self.dir = Path(root) / namespace
        self.namespace, self.tensor_name = namespace, tensor_name
        info_path = self.dir / "info.json"
        if not info_path.is_file():
            _atomic_write_text(info_path, json.dumps(info, indent=2, sort_keys=True, default=str))
        self.hits = self.misses = 0

    def path(self, name: str) -> Path:
        return self.dir / name[:2] / f"{name}.safetensors"

    def load(self, name: str) -> torch.Tensor | None:
        path = self.path(name)
        try:
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("namespace") != self.namespace:
                    return None
                return f.get_tensor(self.tensor_name)
        except (FileNotFoundError, OSError, RuntimeError, ValueError):  # absent, or unreadable: encode again
            return None

    def save(self, name: str, tensor: torch.Tensor) -> None:
        _atomic_save({self.tensor_name: tensor}, self.path(name), {"namespace": self.namespace, "name": name})

    def fetch(self, names: Sequence[str], encode: Callable[[list[int]], torch.Tensor],
              dtype: torch.dtype) -> list[torch.Tensor]:
        """The entries `names`: read where stored; the missing ones computed by ONE call
        `encode(missing_indices) -> (M, ...)`, stored in `dtype`, and counted as misses."""
        found = [self.load(n) for n in names]
        missing = [i for i, t in enumerate(found) if t is None]
        self.hits += len(names) - len(missing)
        self.misses += len(missing)
        if missing:
            for i, tensor in zip(missing, encode(missing)):
                found[i] = tensor.to(dtype)
                self.save(names[i], found[i])
        return found


class _CachedEncoder:
    """What both caches share: an entry store and its counters."""

    store: _EntryStore
    encoder_calls: int

    @property
    def hits(self) -> int:
        return self.store.hits

    @property
    def misses(self) -> int:
        return self.store.misses

    def _count_call(self, encode: Callable[[list[int]], torch.Tensor]) -> Callable[[list[int]], torch.Tensor]:
        def counted(missing: list[int]) -> torch.Tensor:
            self.encoder_calls += 1
            return encode(missing)

        return counted


class LatentCache(_CachedEncoder):
    """Latent distributions of a frozen VAE on disk (see the module doc).

    `vae`: a diffusers AutoencoderKL (anything with .config and .encode(x).latent_dist.parameters).
    `transform`, `buckets`: the data transform, part of the key; it must be deterministic.
    `model_id`: a stable id of the weights, e.g. "org/vae@<revision>"; None hashes the state dict (a second
    or so for an SD VAE). `dtype`: the storage dtype (float32 keeps the 1e-5 equivalence; float16 halves
    the disk). Counters: hits, misses, encoder_calls.
    """

    def __init__(self, root: str | Path, vae: torch.nn.Module, transform: TransformConfig,
                 buckets: BucketConfig | None = None, *, model_id: str | None = None,
                 dtype: torch.dtype = torch.float32):
        if not transform.deterministic:
            raise ValueError("LatentCache: the transform is random (center_crop=False or random_flip=True), so a "
                             "cached latent would freeze one crop / flip; use center_crop=True, random_flip=False, "
                             "or encode on the fly without a cache")
        self.vae, self.dtype = vae, dtype
        info = {
            "format": CACHE_FORMAT,
            "vae_class": type(vae).__name__,
            "vae_config": config_hash(vae.config),
            "vae_weights": f"id:{model_id}" if model_id is not None else f"sha:{state_dict_hash(vae)}",
            "transform": transform.fingerprint(),
            "buckets": None if buckets is None else vars(buckets),
            "dtype": str(dtype),
        }
        self.namespace = config_hash(info)
        self.store = _EntryStore(root, self.namespace, info, "parameters")
        self.encoder_calls = 0

    def entry_name(self, key: str, size: tuple[int, int]) -> str:
        """The entry of the image with content hash `key` cropped to `size` (H, W)."""
        return f"{key}_{size[1]}x{size[0]}"

    @torch.no_grad()
    def parameters(self, pixel_values: torch.Tensor, keys: Sequence[str]) -> torch.Tensor:
        """(B, 2C, h, w) DiagonalGaussian parameters (mean, logvar) of the batch: read from disk where cached,
        else encoded with the VAE (one call for all misses) and written. pixel_values: (B, 3, H, W) in [-1, 1]."""
        if pixel_values.ndim != 4 or pixel_values.shape[0] != len(keys):
            raise ValueError(f"LatentCache: need pixel_values (B, 3, H, W) and B keys, got {tuple(pixel_values.shape)}"
                             f" and {len(keys)} keys")
        size = tuple(pixel_values.shape[-2:])
        names = [self.entry_name(k, size) for k in keys]
        vae_dtype = next(self.vae.parameters()).dtype

        def encode(missing: list[int]) -> torch.Tensor:  # (M, 3, H, W) -> (M, 2C, h, w)
            return self.vae.encode(pixel_values[missing].to(dtype=vae_dtype)).latent_dist.parameters

        found = self.store.fetch(names, self._count_call(encode), self.dtype)
        return torch.stack([t.to(pixel_values.device) for t in found])  # (B, 2C, h, w)

    def latent_dist(self, pixel_values: torch.Tensor, keys: Sequence[str]):
        """The batch's DiagonalGaussianDistribution, as vae.encode(pixel_values).latent_dist would give it
        (in the VAE's dtype, on pixel_values' device)."""
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        vae_dtype = next(self.vae.parameters()).dtype
        return DiagonalGaussianDistribution(self.parameters(pixel_values, keys).to(vae_dtype))


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return _hash(f"{type(tokenizer).__name__}|{tokenizer.model_max_length}|{tokenizer.padding_side}|{text}")


class TextEmbeddingCache(_CachedEncoder):
    """Text-encoder outputs of captions on disk: `encode(captions)` -> (B, L, D), the first output of
    `text_encoder(input_ids)` for max_length-padded tokens (what the UNet's cross-attention takes).

    `model_id` as in LatentCache; `encode_fn` (optional) maps a list of captions to (B, L, D) for encoders
    that need more than `text_encoder(input_ids)[0]` (it must not change without changing model_id)."""

    def __init__(self, root: str | Path, text_encoder: torch.nn.Module, tokenizer: Any, *,
                 model_id: str | None = None, max_length: int | None = None,
                 encode_fn: Callable[[list[str]], torch.Tensor] | None = None, dtype: torch.dtype = torch.float32):
        self.text_encoder, self.tokenizer, self.encode_fn, self.dtype = text_encoder, tokenizer, encode_fn, dtype
        self.max_length = max_length or tokenizer.model_max_length
        info = {
            "format": CACHE_FORMAT,
            "encoder_class": type(text_encoder).__name__,
            "encoder_config": config_hash(text_encoder.config),
            "encoder_weights": f"id:{model_id}" if model_id is not None else f"sha:{state_dict_hash(text_encoder)}",
            "tokenizer": _tokenizer_fingerprint(tokenizer),
            "max_length": self.max_length,
            "custom_encode_fn": encode_fn is not None,
            "dtype": str(dtype),
        }
        self.namespace = config_hash(info)
        self.store = _EntryStore(root, self.namespace, info, "hidden_states")
        self.encoder_calls = 0

    @torch.no_grad()
    def _encode(self, captions: list[str]) -> torch.Tensor:
        if self.encode_fn is not None:
            return self.encode_fn(captions)
        device = next(self.text_encoder.parameters()).device
        ids = self.tokenizer(captions, padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt").input_ids.to(device)  # (M, L)
        return self.text_encoder(ids)[0]  # (M, L, D)

    def encode(self, captions: Sequence[str], device: torch.device | str | None = None) -> torch.Tensor:
        """(B, L, D) embeddings of the captions, cached by caption text."""
        names = [_hash(c) for c in captions]
        encode = self._count_call(lambda missing: self._encode([captions[i] for i in missing]))
        found = self.store.fetch(names, encode, self.dtype)
        out = torch.stack([t.to("cpu") for t in found])
        encoder_dtype = next(self.text_encoder.parameters()).dtype
        return out.to(device=device or next(self.text_encoder.parameters()).device, dtype=encoder_dtype)
