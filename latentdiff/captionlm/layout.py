"""A layout objective for a text encoder trained on captions and their pictures' thumbnails.

Next-token prediction (objective.py) teaches an encoder what a caption says, not where it puts things: on relation
captions ("a red circle above a blue circle") the UNets trained on either kind of encoder never learn which colour
goes where (README, "Why position stays at chance"), while one given single-object place words ("a red circle at
the top") reads them within ten minutes. The missing piece is *binding*: a token state that says "red, upper half".
This objective asks for exactly that. A layout head of G x G learned queries, one per cell of a coarse grid, reads
the encoder's token states with one cross-attention layer (as the UNet's cross-attention reads them: queries
from places, keys and values from tokens, no padding mask) and regresses the picture's G x G thumbnail (mean
colours, in [-1, 1]) from the caption alone:

    L = || head(E(caption)) - avgpool_G(x) ||^2

The best prediction is the caption-conditional mean thumbnail E[avgpool_G(x) | caption], the coarse layout the
noisiest denoising steps must commit to; to predict it for a relation caption the encoder must bind each colour
to its side. The encoder's folder is a plain CLIPTextModel, as after next-token pretraining; the head is saved
beside it (`layout_head/`, diffusers' save_pretrained) so that a text-to-image run can keep the objective going.

The same loss serves as an auxiliary objective while the encoder trains jointly with the UNet
(train_text_to_image's --layout-loss-weight): `layout_error` takes the token states the UNet is given, so the
encoder runs once per step for both losses.

`binding` measures what the objective is for, on position scenes: the fraction whose thumbnail the head predicts
better from the true caption than from the same caption with the relation reversed (0.5: no binding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


class LayoutHead(ModelMixin, ConfigMixin):
    """G x G learned queries, one cross-attention over the token states, an MLP to RGB: (B, L, D) -> (B, 3, G, G).
    Save and load with save_pretrained / from_pretrained (safetensors)."""

    @register_to_config
    def __init__(self, width: int, grid: int = 8, heads: int = 4):
        super().__init__()
        if grid < 1 or width % heads:
            raise ValueError(f"LayoutHead: grid must be >= 1 and width ({width}) divisible by heads ({heads})")
        self.grid = grid
        self.queries = nn.Parameter(torch.randn(grid * grid, width) * 0.02)  # (G*G, D): one per cell
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.out = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, 3))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        q = self.queries[None].expand(hidden.shape[0], -1, -1)  # (B, G*G, D)
        cells, _ = self.attention(q, hidden, hidden, need_weights=False)  # (B, G*G, D)
        rgb = self.out(cells)  # (B, G*G, 3)
        return rgb.transpose(1, 2).reshape(hidden.shape[0], 3, self.grid, self.grid)  # (B, 3, G, G)


def thumbnails(images: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, 3, H, W) pictures in [-1, 1] -> (B, 3, G, G) mean colour of each cell."""
    return F.adaptive_avg_pool2d(images, grid)


def layout_error(head: LayoutHead, hidden: torch.Tensor, thumbs: torch.Tensor) -> torch.Tensor:
    """Per-caption mean squared error (B,) of the head's thumbnail from token states `hidden` (B, L, D) against
    `thumbs` (B, 3, G, G)."""
    return (head(hidden).float() - thumbs.float()).square().flatten(1).mean(1)


def layout_loss(text_encoder, head: LayoutHead, input_ids: torch.Tensor, thumbs: torch.Tensor) -> torch.Tensor:
    """layout_error of the captions' token states. The encoder runs as the pipeline runs it (no attention mask);
    causal, its states at real tokens are the same whatever the padding after them."""
    return layout_error(head, text_encoder(input_ids=input_ids).last_hidden_state, thumbs)  # (B,)


@torch.no_grad()
def binding(text_encoder, head: LayoutHead, tokenize, scenes: list[tuple[torch.Tensor, str, str]]) -> float:
    """Fraction of `scenes` ((image (3, H, W), true caption, reversed caption)) whose thumbnail the head predicts
    better from the true caption than from the reversed one; ties count half."""
    thumbs = thumbnails(torch.stack([s[0] for s in scenes]), head.grid)  # (N, 3, G, G)
    true = layout_loss(text_encoder, head, tokenize([s[1] for s in scenes]), thumbs)  # (N,)
    rev = layout_loss(text_encoder, head, tokenize([s[2] for s in scenes]), thumbs)
    return ((true < rev).double() + 0.5 * (true == rev).double()).mean().item()
