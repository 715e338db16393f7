"""A language-model objective for a CLIP text encoder trained on captions alone.

CLIP's text transformer is causal (Radford et al. 2021, sec. 2.4: "masked self-attention was used in the text
encoder"): position i attends to positions <= i. A masked-language-model objective (BERT) would have to predict a
masked token from its left context only; the objective that fits a causal encoder is next-token prediction (GPT,
Radford et al. 2018), which is what we train: the hidden state at position i, through the final layer norm,
scores the vocabulary by its dot product with the token embeddings (tied weights, Press & Wolf 2017, so the saved
encoder is a plain CLIPTextModel with no extra head), and the loss is the cross-entropy of token i + 1. Every
hidden state the UNet later attends to then carries what the caption said up to that token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def next_token_loss(text_encoder, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-caption mean cross-entropy (B,) of predicting token i + 1 from tokens <= i, over the real tokens
    (attention_mask 1). The encoder runs as the pipeline runs it (no attention mask): being causal, its states at
    real tokens never see the padding after them."""
    hidden = text_encoder(input_ids=input_ids).last_hidden_state  # (B, L, D)
    embeddings = text_encoder.get_input_embeddings().weight  # (V, D)
    logits = hidden[:, :-1] @ embeddings.T  # (B, L - 1, V)
    targets = input_ids[:, 1:]  # (B, L - 1)
    weight = attention_mask[:, 1:].to(logits.dtype)  # (B, L - 1): 1 where the target is a real token
    ce = F.cross_entropy(logits.transpose(1, 2).float(), targets, reduction="none")  # (B, L - 1)
    return (ce * weight).sum(1) / weight.sum(1).clamp(min=1)
