"""Model-output conversions of the VP (DDPM) family, in one place.

    z_t = alpha_t x0 + sigma_t eps,   alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t)   (Ho et al. 2020, eq. 4)
    v   = alpha_t eps - sigma_t x0                                                     (Salimans & Ho 2022, sec. 4)

A UNet predicts eps, v or x0 ("sample"), as its scheduler's `prediction_type` says; samplers and distillation
targets need it in another form. `alpha` and `sigma` broadcast against the sample, e.g. (B, 1, 1, 1) from
`append_dims`. This file imports only torch, so it travels with the pipeline files.
"""

from __future__ import annotations

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def append_dims(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) with like's number of dimensions, device and dtype: a per-sample scalar that
    broadcasts over a (B, C, h, w) latent."""
    return values.to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def alpha_sigma(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_t, sigma_t), each (B, 1, 1, 1), of integer timesteps (B,) of a VP process."""
    abar = append_dims(alphas_cumprod.to(timesteps.device)[timesteps], like)
    return abar.sqrt(), (1 - abar).sqrt()


def _check(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}.")


def to_epsilon(output: torch.Tensor, sample: torch.Tensor, alpha, sigma, prediction_type: str) -> torch.Tensor:
    """The model output in the eps parameterisation (B, C, h, w)."""
    _check(prediction_type)
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":  # eps = alpha v + sigma z_t
        return alpha * output + sigma * sample
    return (sample - alpha * output) / sigma


def to_x0(output: torch.Tensor, sample: torch.Tensor, alpha, sigma, prediction_type: str) -> torch.Tensor:
    """The model output as the predicted clean sample x0 (B, C, h, w)."""
    _check(prediction_type)
    if prediction_type == "epsilon":
        return (sample - sigma * output) / alpha
    if prediction_type == "v_prediction":  # x0 = alpha z_t - sigma v
        return alpha * sample - sigma * output
    return output
