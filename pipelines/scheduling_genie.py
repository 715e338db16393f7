"""GENIE: second-order truncated Taylor steps on DDIM's ODE with a learned dε/dγ (Dockhorn, Vahdat, Kreis,
"GENIE: Higher-Order Denoising Diffusion Solvers", NeurIPS 2022).

DDIM's probability-flow ODE, reparameterised (Song et al. 2021, eq. 14; GENIE eq. 6): with x_t = α_t x_0 + σ_t ε
(VP, α² + σ² = 1; α_t = sqrt(abar_t)), x̄ = x / α and γ = σ / α,

    dx̄/dγ = ε_θ(x̄, γ).

DDIM is Euler's method on it; GENIE (eq. 8) the second truncated Taylor method

    x̄_{n+1} = x̄_n + h_n ε_θ + ½ h_n² d_γ ε_θ,      h_n = γ_{n+1} − γ_n  (< 0 while sampling),

where d_γ ε_θ = ∂ε_θ/∂x̄ · ε_θ + ∂ε_θ/∂γ is a Jacobian-vector product that a small head on the UNet's last
features predicts (`latentdiff.genie.GENIEHead`, distilled by `latentdiff.training.distill_genie`). In x:
x_{n+1} = α_{n+1} x̄_{n+1} = [DDIM's x_{n+1}] + α_{n+1} ½ h_n² d_γ ε_θ, so `GENIEScheduler` is diffusers'
`DDIMScheduler` (same timesteps, spacings, noise table, prediction types) plus that one term; without a
derivative a step is exactly DDIM's. The last step goes to γ = 0 (x̄ = x, "set_alpha_to_one") with the same Taylor
step, as the paper's sampler does without its optional extra denoising step.

NFE: one UNet call and one head call per step, counted as one (the head is a few per cent of a UNet call).

With classifier-free guidance the ODE is dx̄/dγ = ε_w = ε_u + w (ε_c − ε_u), and its total derivative is
d_γ ε_w = (1 − w) D_u(ε_w) + w D_c(ε_w), where D_b(v) = ∂ε_b/∂x̄ · v + ∂ε_b/∂γ is branch b's derivative along the
*guided* direction v = ε_w. The head takes the direction as its ε input, so it runs on the batched
[uncond; cond] features with ε_w given to both halves and its outputs combine like the noise predictions
(`GenieDerivative`); distillation trains it on such guided directions.

This file imports only torch and diffusers, so that it can travel next to published weights with the pipeline.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Iterator

import torch
from diffusers import DDIMScheduler
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin  # noqa: F401  diffusers' loader looks the base up here

from .conversions import to_epsilon


class GENIEScheduler(DDIMScheduler):
    """DDIM plus GENIE's second-order Taylor term: `step(model_output, t, sample, derivative=dε/dγ)`.

    The config is DDIMScheduler's, built with `GENIEScheduler.from_config(pipe.scheduler.config)` so that the trained
    noise process carries over; `clip_sample` defaults to False here (GENIE solves the ODE; clipping x0 leaves it).
    `derivative=None` gives DDIM's step exactly.
    """

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Any = None,
        clip_sample: bool = False,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
    ):
        # by keyword: DDIMScheduler.__init__ registers its config too, and takes positional arguments for defaults
        super().__init__(
            num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
            beta_schedule=beta_schedule, trained_betas=trained_betas, clip_sample=clip_sample,
            set_alpha_to_one=set_alpha_to_one, steps_offset=steps_offset, prediction_type=prediction_type,
            thresholding=thresholding, dynamic_thresholding_ratio=dynamic_thresholding_ratio,
            clip_sample_range=clip_sample_range, sample_max_value=sample_max_value, timestep_spacing=timestep_spacing,
            rescale_betas_zero_snr=rescale_betas_zero_snr,
        )

    def _alpha_bar(self, timestep: int) -> torch.Tensor:
        return self.alphas_cumprod[timestep] if timestep >= 0 else self.final_alpha_cumprod

    def prev_timestep(self, timestep: int | torch.Tensor) -> int:
        """The timestep a step from `timestep` lands on, as DDIMScheduler.step computes it (< 0: the end, x0)."""
        if self.num_inference_steps is None:
            raise ValueError("Call set_timesteps(num_inference_steps) before step().")
        return int(timestep) - self.config.num_train_timesteps // self.num_inference_steps

    def gamma(self, timestep: int | torch.Tensor) -> float:
        """γ_t = σ_t / α_t = sqrt((1 − abar_t) / abar_t) of a trained timestep (t < 0: the final, 0 by default)."""
        abar = self._alpha_bar(int(timestep))
        return float(((1 - abar) / abar).sqrt())

    def epsilon(self, model_output: torch.Tensor, sample: torch.Tensor, timestep: int | torch.Tensor) -> torch.Tensor:
        """The model output in the ε parameterisation (B, C, h, w), whatever the config's prediction_type."""
        abar = self.alphas_cumprod[int(timestep)].to(sample.device, sample.dtype)
        return to_epsilon(model_output, sample, abar.sqrt(), (1 - abar).sqrt(), self.config.prediction_type)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
        derivative: torch.Tensor | None = None,
    ) -> DDIMSchedulerOutput | tuple:
        """One step from `timestep` to the next: DDIM's (eta = 0), plus α_{n+1} ½ h² `derivative` when given.

        Args:
            model_output: the (guided) UNet output at `timestep`, (B, C, h, w), in the config's prediction_type.
            derivative: d_γ ε_θ at (sample, timestep), (B, C, h, w), e.g. from a GENIEHead; None: a DDIM step.
            The other arguments are DDIMScheduler.step's.
        """
        if derivative is not None and eta != 0.0:
            raise ValueError(f"GENIE's Taylor step solves the ODE (DDIM with eta = 0); got eta={eta}. Pass eta=0, "
                             "or derivative=None for a stochastic DDIM step.")
        if derivative is not None and derivative.shape != sample.shape:
            raise ValueError(f"`derivative` has shape {tuple(derivative.shape)} but `sample` has "
                             f"{tuple(sample.shape)}: pass d_γ ε for every element of the sample.")
        out = super().step(model_output, timestep, sample, eta, use_clipped_model_output, generator, variance_noise,
                           return_dict=True)
        prev_sample = out.prev_sample
        if derivative is not None:
            prev = self.prev_timestep(timestep)
            h = self.gamma(prev) - self.gamma(timestep)  # h_n = γ_{n+1} − γ_n < 0
            alpha_prev = float(self._alpha_bar(prev).sqrt())
            # GENIE eq. 8 in x: x_{n+1} = α_{n+1} (x̄_n + h ε + ½ h² d_γ ε) = DDIM's x_{n+1} + α_{n+1} ½ h² d_γ ε
            prev_sample = prev_sample + (alpha_prev * 0.5 * h * h) * derivative.to(prev_sample.dtype)
        if not return_dict:
            return (prev_sample, out.pred_original_sample)
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=out.pred_original_sample)


def takes_derivative(scheduler) -> bool:
    """Whether a scheduler's step takes GENIE's `derivative=` (GENIEScheduler, or one written like it)."""
    return "derivative" in inspect.signature(scheduler.step).parameters


@contextlib.contextmanager
def capture_genie_inputs(unet: torch.nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Inside the block, each UNet call stores what GENIE's head reads besides x_t and ε:

        captured["features"]  the last decoder features, the input of `unet.conv_norm_out`   (B, C0, h, w)
        captured["temb"]      the time embedding the ResNet blocks get, `unet.time_embedding`'s output  (B, D)
    """
    if getattr(unet, "conv_norm_out", None) is None or getattr(unet, "time_embedding", None) is None:
        raise ValueError("GENIE's head reads the UNet's last features (the input of unet.conv_norm_out) and its time "
                         "embedding (unet.time_embedding): this UNet has no conv_norm_out (norm_num_groups=None?).")
    captured: dict[str, torch.Tensor] = {}

    def features_hook(module, args):
        captured["features"] = args[0]

    def temb_hook(module, args, output):
        captured["temb"] = output

    handles = [unet.conv_norm_out.register_forward_pre_hook(features_hook),
               unet.time_embedding.register_forward_hook(temb_hook)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


class GenieDerivative:
    """The pipeline's side of GENIE for one denoising step (see the module doc).

        with GenieDerivative(unet, head, scheduler, cfg, w) as genie:   # or GenieDerivative.off()
            noise_pred = unet(model_input, t, ...)                     # features and time embedding captured
        ... guidance ...
        scheduler.step(noise_pred, t, latents, **genie.step_kwargs(model_input, noise_pred, t))

    `guidance_rescale` (Lin et al. 2024) changes ε_w after the UNet call; the derivative is that of the plain
    guided ε_w.
    """

    def __init__(self, unet=None, head=None, scheduler=None, guided: bool = False, guidance_scale: float = 1.0):
        self.unet, self.head, self.scheduler = unet, head, scheduler
        self.guided, self.guidance_scale = guided, guidance_scale
        self._stack = contextlib.ExitStack()
        self.captured: dict[str, torch.Tensor] = {}

    @classmethod
    def off(cls) -> "GenieDerivative":
        """For schedulers without `derivative=`: captures nothing, adds no step arguments."""
        return cls()

    def __enter__(self) -> "GenieDerivative":
        if self.head is not None:
            self.captured = self._stack.enter_context(capture_genie_inputs(self.unet))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def step_kwargs(self, model_input: torch.Tensor, noise_pred: torch.Tensor, t: torch.Tensor) -> dict[str, Any]:
        """{"derivative": d_γ ε_w (B, C, h, w)} for GENIEScheduler.step; {} when off.

        model_input: x_t as the UNet saw it, (2B, C, h, w) with guidance; noise_pred: the guided ε_w (B, C, h, w).
        """
        if self.head is None:
            return {}
        features, temb = self.captured["features"], self.captured["temb"]  # (2B, C0, h, w), (2B, D) with guidance
        eps = self.scheduler.epsilon(noise_pred, model_input[: noise_pred.shape[0]], t)  # guided ε_w (B, C, h, w)
        direction = torch.cat([eps] * 2) if self.guided else eps  # the direction dx̄/dγ = ε_w for both halves
        gamma = torch.full((model_input.shape[0],), self.scheduler.gamma(t), device=model_input.device)
        head_dtype = next(self.head.parameters()).dtype
        derivative = self.head(features.to(head_dtype), model_input.to(head_dtype), direction.to(head_dtype),
                               temb.to(head_dtype), gamma.to(head_dtype))  # (2B, C, h, w) with guidance
        if self.guided:
            d_uncond, d_text = derivative.chunk(2)
            derivative = d_uncond + self.guidance_scale * (d_text - d_uncond)  # linear in the guidance combination
        return {"derivative": derivative.to(noise_pred.dtype)}
