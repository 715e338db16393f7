"""GENIE's prediction head k_ψ: d_γ ε_θ from the UNet's last features (Dockhorn et al. 2022, sec. 3.2, fig. 4).

A small convolutional head beside the UNet's output layers. It reads
    features  the UNet's last decoder features, the input of `unet.conv_norm_out`     (B, C0, h, w)
    sample    x_t                                                                      (B, C, h, w)
    eps       the direction dx̄/dγ: ε_θ, or the guided ε_w                             (B, C, h, w)
    temb      the UNet's time embedding (FiLM scale and shift in every block)          (B, D)
    gamma     γ_t = σ_t / α_t                                                          (B,)
and predicts d_γ ε_θ (B, C, h, w). As in the paper's code (GENIEModel), the network gives three maps h1, h2, h3
and the prediction is

    k_ψ = −h1 / γ + h2 γ / (1 + γ²) + h3 / (γ (1 + γ²)),

the γ-dependence that d_γ ε has for simple data (for Gaussian data N(μ, s²) it is (x̄ − μ) s² / (s² + γ²)²), so
the network outputs stay O(1) from γ ≈ 0.03 to γ ≈ 15. The output convolution starts at zero: an untrained head
predicts d_γ ε = 0, i.e. GENIE starts out as DDIM.

Layers: GroupNorm on the features, conv3x3 on [features, x_t, ε], `num_blocks` diffusers ResnetBlock2D (GroupNorm,
SiLU, conv3x3, FiLM of the time embedding by "scale_shift"), GroupNorm, SiLU, conv3x3 -> 3C channels. With
one block at the UNet's top width, on the default model (assets/shapes-tiny) it has 156k parameters, 4.1 % of the
UNet's (tests/test_genie.py reports it), and a call takes about 6 % of a UNet call's time on CPU.

This file imports only torch and diffusers: the pipeline imports it, so diffusers finds the class when a folder's
model_index.json names a `genie_head`, and it travels with the pipeline file.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from .conversions import append_dims


class GENIEHead(ModelMixin, ConfigMixin):
    """k_ψ(features, x_t, ε, temb, γ) -> d_γ ε (see the module doc). Save and load with save_pretrained /
    from_pretrained (safetensors); `GENIEHead.for_unet(unet)` sizes one for a UNet2DConditionModel."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,  # C: latent channels (the UNet's out_channels)
        feature_channels: int = 320,  # C0: channels of the UNet's last decoder features (block_out_channels[0])
        temb_channels: int = 1280,  # D: width of the UNet's time embedding (4 x block_out_channels[0] by default)
        width: int | None = None,  # the head's channels; None: feature_channels
        num_blocks: int = 1,  # residual blocks (the paper's CIFAR-10 head has one)
        norm_num_groups: int = 32,  # GroupNorm groups (clipped to a divisor of each width)
    ):
        super().__init__()
        if in_channels < 1 or feature_channels < 1 or temb_channels < 1 or num_blocks < 0:
            raise ValueError(f"GENIEHead: in_channels, feature_channels and temb_channels must be >= 1 and num_blocks "
                             f">= 0; got {in_channels}, {feature_channels}, {temb_channels}, {num_blocks}.")
        width = width or feature_channels
        self.feature_norm = nn.GroupNorm(_groups(norm_num_groups, feature_channels), feature_channels, eps=1e-6)
        self.conv_in = nn.Conv2d(feature_channels + 2 * in_channels, width, 3, padding=1)
        self.blocks = nn.ModuleList([
            ResnetBlock2D(in_channels=width, out_channels=width, temb_channels=temb_channels,
                          groups=_groups(norm_num_groups, width), time_embedding_norm="scale_shift")
            for _ in range(num_blocks)
        ])
        self.norm_out = nn.GroupNorm(_groups(norm_num_groups, width), width, eps=1e-6)
        self.act = nn.SiLU()
        self.conv_out = nn.Conv2d(width, 3 * in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # k_ψ = 0 at initialisation: GENIE starts as DDIM
        nn.init.zeros_(self.conv_out.bias)

    @classmethod
    def for_unet(cls, unet, **kwargs) -> "GENIEHead":
        """A head sized for a diffusers UNet2DConditionModel (kwargs override, e.g. num_blocks=2)."""
        c0 = unet.config.block_out_channels[0]
        temb = unet.time_embedding.linear_2.out_features
        return cls(in_channels=unet.config.out_channels, feature_channels=c0, temb_channels=temb,
                   norm_num_groups=unet.config.norm_num_groups or 32, **kwargs)

    def forward(self, features: torch.Tensor, sample: torch.Tensor, eps: torch.Tensor, temb: torch.Tensor,
                gamma: torch.Tensor) -> torch.Tensor:
        c = self.config.in_channels
        if sample.shape[1] != c or eps.shape != sample.shape or features.shape[0] != sample.shape[0] \
                or features.shape[-2:] != sample.shape[-2:] or features.shape[1] != self.config.feature_channels:
            raise ValueError(
                f"GENIEHead expects features (B, {self.config.feature_channels}, h, w) and sample, eps "
                f"(B, {c}, h, w) of the same B, h, w; got {tuple(features.shape)}, {tuple(sample.shape)}, "
                f"{tuple(eps.shape)}. Build the head for this UNet with GENIEHead.for_unet(unet).")
        h = torch.cat([self.feature_norm(features), sample, eps], dim=1)  # (B, C0 + 2C, h, w)
        h = self.conv_in(h)  # (B, width, h, w)
        for block in self.blocks:
            h = block(h, temb)  # FiLM by the time embedding (B, D)
        h = self.conv_out(self.act(self.norm_out(h)))  # (B, 3C, h, w)
        h1, h2, h3 = h.chunk(3, dim=1)  # (B, C, h, w) each
        g = append_dims(gamma, h)  # (B, 1, 1, 1)
        return -h1 / g + h2 * g / (1 + g**2) + h3 / (g * (1 + g**2))  # d_γ ε (B, C, h, w)


def _groups(groups: int, channels: int) -> int:
    """The largest divisor of `channels` not above `groups`."""
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g
