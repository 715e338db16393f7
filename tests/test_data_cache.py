"""The latent and text-embedding caches: the loss with the cache equals on-the-fly encoding, later epochs
and runs skip the encoder, and the key changes with the VAE config, weights and transform."""

import threading

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from latentdiff.data.buckets import BucketConfig
from latentdiff.data.cache import LatentCache, TextEmbeddingCache, _atomic_save, state_dict_hash
from latentdiff.data.dataset import DataConfig, build_dataloader, set_epoch
from latentdiff.data.shapes import write_dataset
from latentdiff.data.transforms import TransformConfig


def tiny_vae(seed=0, **kw):
    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(8, 16), norm_num_groups=8, layers_per_block=1, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         **kw).eval()


def tiny_unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                layers_per_block=1, norm_num_groups=8, cross_attention_dim=16, attention_head_dim=2,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).eval()


class CountingEncode:
    """Wraps vae.encode and counts calls."""

    def __init__(self, vae):
        self.calls, self.inner = 0, vae.encode
        vae.encode = self

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("cache") / "shapes", n=8, size=32, progress=False)


@torch.no_grad()
def diffusion_loss(latent_dist, vae, unet, scheduler):
    """The training loss with fixed generator, noise, timesteps and text embeddings."""
    latents = latent_dist.sample(torch.Generator().manual_seed(0)) * vae.config.scaling_factor  # (B, 4, 16, 16)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(latents.shape, generator=g)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=g)
    text = torch.randn(latents.shape[0], 7, 16, generator=g)  # (B, L, D)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    return F.mse_loss(unet(noisy, timesteps, text).sample, noise)


def test_cached_loss_equals_on_the_fly_and_skips_encoder(tmp_path, shapes):
    config = DataConfig(str(shapes), resolution=32, seed=0)
    loader = build_dataloader(config, batch_size=4, shuffle=False)
    vae, unet, scheduler = tiny_vae(), tiny_unet(), DDPMScheduler(num_train_timesteps=1000)
    counter = CountingEncode(vae)
    cache = LatentCache(tmp_path, vae, config.transform_config())
    reference = {}
    for epoch in range(2):
        set_epoch(loader, epoch)
        for batch in loader:
            x, keys = batch["pixel_values"], tuple(batch["keys"])
            if epoch == 0:
                with torch.no_grad():
                    reference[keys] = diffusion_loss(vae.encode(x).latent_dist, vae, unet, scheduler).item()
            calls = counter.calls
            cached = diffusion_loss(cache.latent_dist(x, keys), vae, unet, scheduler)  # epoch 0: miss, 1: hit
            assert abs(cached.item() - reference[keys]) < 1e-5
            assert counter.calls - calls == (1 if epoch == 0 else 0)  # the second epoch never calls the encoder
    assert (cache.misses, cache.hits) == (8, 8) and cache.encoder_calls == 2
    # a later run (a new cache object over the same folder) does not encode either
    again = LatentCache(tmp_path, vae, config.transform_config())
    batch = next(iter(loader))
    calls = counter.calls
    params = again.parameters(batch["pixel_values"], batch["keys"])
    assert counter.calls == calls and again.hits == 4
    with torch.no_grad():
        assert torch.allclose(params, vae.encode(batch["pixel_values"]).latent_dist.parameters, atol=1e-6)
    # entries are safetensors files in one namespace folder, with no temporary files left behind
    files = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert len([f for f in files if f.endswith(".safetensors")]) == 8 and "info.json" in files
    assert not [f for f in files if f.endswith(".tmp")]


def test_cache_key_changes_with_vae_and_transform(tmp_path):
    transform = TransformConfig(resolution=32)
    vae = tiny_vae()
    base = LatentCache(tmp_path, vae, transform).namespace
    assert LatentCache(tmp_path, tiny_vae(), transform).namespace == base  # same config and weights
    assert LatentCache(tmp_path, tiny_vae(seed=1), transform).namespace != base  # weights
    assert LatentCache(tmp_path, tiny_vae(scaling_factor=0.5), transform).namespace != base  # config
    assert LatentCache(tmp_path, vae, TransformConfig(resolution=64)).namespace != base
    assert LatentCache(tmp_path, vae, TransformConfig(resolution=32, resample="lanczos")).namespace != base
    assert LatentCache(tmp_path, vae, transform, BucketConfig(32, 8)).namespace != base
    with_id = LatentCache(tmp_path, vae, transform, model_id="org/vae@abc").namespace
    assert with_id != base and with_id != LatentCache(tmp_path, vae, transform, model_id="org/vae@def").namespace
    weights = state_dict_hash(vae)
    with torch.no_grad():
        next(vae.parameters())[0] += 1e-3
    assert state_dict_hash(vae) != weights


def test_cache_refuses_random_transforms(tmp_path):
    for transform in (TransformConfig(center_crop=False), TransformConfig(random_flip=True)):
        with pytest.raises(ValueError, match="transform is random"):
            LatentCache(tmp_path, tiny_vae(), transform)


def test_concurrent_writes_of_one_entry(tmp_path):
    path = tmp_path / "ab" / "entry.safetensors"
    errors = []

    def write(value):
        try:
            for _ in range(20):
                _atomic_save({"parameters": torch.full((8, 4, 4), float(value))}, path, {"namespace": "n"})
        except Exception as e:  # pragma: no cover - the test fails below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(v,)) for v in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    from safetensors.torch import load_file

    value = load_file(str(path))["parameters"]
    assert not errors and (value == value.flatten()[0]).all()  # one whole entry, never a mix
    assert [p.name for p in path.parent.iterdir()] == ["entry.safetensors"]


def test_text_embedding_cache(tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    from latentdiff.tokenizer import shapes_tokenizer

    tokenizer = shapes_tokenizer()
    torch.manual_seed(0)
    encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                           num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                           pad_token_id=tokenizer.pad_token_id)).eval()
    captions = ["a red circle", "two blue squares", "a red circle"]
    cache = TextEmbeddingCache(tmp_path, encoder, tokenizer)
    out = cache.encode(captions)
    ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(out, encoder(ids)[0], atol=1e-6) and out.shape == (3, 77, 16)
    calls = cache.encoder_calls
    again = TextEmbeddingCache(tmp_path, encoder, tokenizer).encode(captions[::-1])
    assert torch.equal(again, out.flip(0)) and cache.encoder_calls == calls
    assert TextEmbeddingCache(tmp_path, encoder, tokenizer, max_length=32).namespace != cache.namespace
