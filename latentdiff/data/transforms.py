"""Image transforms for training: resize to cover a target size, crop, optional flip, to a [-1, 1] tensor.

Written with PIL + numpy + torch (no torchvision, which has no CPU build here). One function does both
square training and aspect buckets: the image is scaled so that it just covers the target (W, H), which
for a square target is "resize the shorter side to the resolution", then cropped to (W, H).

    transform = ImageTransform(TransformConfig(resolution=512))
    out = transform(image, (512, 512), rng)           # {"pixel_values": (3, 512, 512) in [-1, 1], ...}

Randomness (random crop, flip) comes from the `rng` the caller passes; the datasets seed it from
(seed, epoch, sample index), so augmentations do not depend on the number of DataLoader workers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from latentdiff.data.decode import SkipError

__all__ = ["RESAMPLE", "ImageTransform", "TransformConfig", "check_size", "resize_and_crop", "to_tensor"]

RESAMPLE: dict[str, Image.Resampling] = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}
MIN_SIZE_POLICIES: tuple[str, ...] = ("upscale", "skip")


@dataclass(frozen=True)
class TransformConfig:
    resolution: int = 512      # the side of square training images; the pixel budget (resolution**2) of buckets
    center_crop: bool = True   # True: centre crop (deterministic, cacheable); False: a random crop (not cacheable)
    random_flip: bool = False  # horizontal flip with p=0.5; off by default because captions say "left of"
    min_size: str = "upscale"  # an image smaller than its target (W, H): "upscale" it, or "skip" it (too_small)
    resample: str = "bicubic"  # the PIL filter used for resizing: one of RESAMPLE

    def __post_init__(self):
        if not isinstance(self.resolution, int) or self.resolution < 8:
            raise ValueError(f"TransformConfig: resolution must be an int >= 8, got {self.resolution!r}")
        if self.min_size not in MIN_SIZE_POLICIES:
            raise ValueError(f"TransformConfig: min_size must be one of {MIN_SIZE_POLICIES}, got {self.min_size!r}")
        if self.resample not in RESAMPLE:
            raise ValueError(f"TransformConfig: resample must be one of {tuple(RESAMPLE)}, got {self.resample!r}")

    @property
    def deterministic(self) -> bool:
        """True when the same file always gives the same tensor (centre crop, no flip): a latent cache needs it."""
        return self.center_crop and not self.random_flip

    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes the output tensor, for cache keys."""
        return dataclasses.asdict(self)


def check_size(size: tuple[int, int], target: tuple[int, int], min_size: str) -> None:
    """Raise SkipError('too_small') when an image of `size` (w, h) does not cover `target` (W, H) and the
    policy is 'skip'."""
    (w, h), (tw, th) = size, target
    if min_size == "skip" and (w < tw or h < th):
        raise SkipError("too_small", f"{w}x{h} is smaller than the target {tw}x{th}")


def resize_and_crop(image: Image.Image, target: tuple[int, int], *, center: bool = True,
                    rng: np.random.Generator | None = None,
                    resample: str = "bicubic") -> tuple[Image.Image, tuple[int, int]]:
    """Scale `image` so that it just covers `target` (W, H) (aspect kept), then crop to (W, H).

    Returns (the cropped image, (crop_top, crop_left) in the resized image). A random crop (center=False)
    needs `rng`.
    """
    tw, th = target
    w, h = image.size
    scale = max(tw / w, th / h)
    nw, nh = max(tw, round(w * scale)), max(th, round(h * scale))
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), RESAMPLE[resample])
    if center:  # as torchvision's CenterCrop
        top, left = int(round((nh - th) / 2.0)), int(round((nw - tw) / 2.0))
    else:
        if rng is None:
            raise ValueError("resize_and_crop: a random crop (center=False) needs an rng")
        top, left = int(rng.integers(0, nh - th + 1)), int(rng.integers(0, nw - tw + 1))
    if (nw, nh) != (tw, th):
        image = image.crop((left, top, left + tw, top + th))
    return image, (top, left)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32 in [-1, 1], the range diffusers' VAE expects."""
    if image.mode != "RGB":
        raise ValueError(f"to_tensor: expected an RGB image, got mode {image.mode}; decode it with decode_image")
    a = torch.from_numpy(np.array(image, dtype=np.uint8))  # (H, W, 3)
    return a.permute(2, 0, 1).float().div_(127.5).sub_(1.0)  # (3, H, W)


class ImageTransform:
    """The training transform: size check, resize-and-crop to the target, optional flip, to tensor."""

    def __init__(self, config: TransformConfig):
        self.config = config

    @property
    def square(self) -> tuple[int, int]:
        return (self.config.resolution, self.config.resolution)

    def __call__(self, image: Image.Image, target: tuple[int, int] | None = None,
                 rng: np.random.Generator | None = None) -> dict[str, Any]:
        """image (RGB) -> {"pixel_values": (3, H, W) in [-1, 1], "original_size": (h, w),
        "crop_top_left": (top, left), "flipped": bool}; target (W, H) defaults to the square resolution.
        Raises SkipError('too_small') per TransformConfig.min_size."""
        c = self.config
        target = self.square if target is None else tuple(target)
        check_size(image.size, target, c.min_size)
        if rng is None and (not c.center_crop or c.random_flip):
            raise ValueError("ImageTransform: random_flip or a random crop needs an rng (np.random.Generator)")
        original_size = (image.size[1], image.size[0])
        image, crop = resize_and_crop(image, target, center=c.center_crop, rng=rng, resample=c.resample)
        flipped = bool(c.random_flip and rng.random() < 0.5)
        if flipped:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return {"pixel_values": to_tensor(image), "original_size": original_size, "crop_top_left": crop,
                "flipped": flipped}
