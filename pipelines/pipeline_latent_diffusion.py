"""LatentDiffusionPipeline: text-to-image generation in a VAE latent space (Rombach et al., CVPR 2022).

prompt -> CLIP tokenizer -> text encoder -> (uncond, cond) embeddings -> sampler loop over the UNet
-> latent -> VAE decoder -> PIL / numpy / torch.

The pipeline owns the loop, the scheduler owns the update rule, the UNet owns one prediction. A folder
written by this pipeline is a Stable Diffusion 1.x folder: stock `diffusers.StableDiffusionPipeline` loads it
and draws the same image for the same seed, scheduler and steps.

This file imports only torch, diffusers, transformers and its siblings, so it can be uploaded next to weights
and loaded by plain diffusers users with `custom_pipeline=...` / `trust_remote_code=True`.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.configuration_utils import FrozenDict
from diffusers.image_processor import PipelineImageInput, VaeImageProcessor
from diffusers.loaders import (
    FromSingleFileMixin,
    IPAdapterMixin,
    StableDiffusionLoraLoaderMixin,
    TextualInversionLoaderMixin,
)
from diffusers.models.embeddings import MultiIPAdapterImageProjection
from diffusers.pipelines.pipeline_utils import StableDiffusionMixin
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg, retrieve_timesteps
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import (
    USE_PEFT_BACKEND,
    BaseOutput,
    deprecate,
    is_xformers_available,
    logging,
    scale_lora_layers,
    unscale_lora_layers,
)
from transformers import (CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection,
                          T5EncoderModel)

from .cld_process import CLD  # noqa: F401  (see below)
from .conversions import append_dims  # noqa: F401  (see below)
from .flow_process import FLOW_PREDICTION  # noqa: F401  (see below)
from .genie_head import GENIEHead
from .processes import PROCESSES, process_of
from .sampler_spec import SamplerSpec  # noqa: F401  (see below)
from .scheduling_cld import unet_timestep  # noqa: F401  (see below)
from .samplers import make_scheduler, sampler_names
from .scheduling_genie import GenieDerivative, takes_derivative

# Loaded from a local folder with trust_remote_code, diffusers copies only the siblings this file imports directly
# (dynamic_modules_utils.get_cached_module_file: one level, not recursive), so it imports every sibling that its
# siblings need: cld_process (for scheduling_cld), scheduling_cld (for processes), conversions (for genie_head).

logger = logging.get_logger(__name__)  # diffusers' logging helper, as stock pipelines use it

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")


@dataclass
class LatentDiffusionPipelineOutput(BaseOutput):
    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor  # (B, H, W, 3) for np, (B, 3, H, W) for pt


class LatentDiffusionPipeline(
    DiffusionPipeline,
    StableDiffusionMixin,
    TextualInversionLoaderMixin,
    StableDiffusionLoraLoaderMixin,
    IPAdapterMixin,
    FromSingleFileMixin,
):
    r"""Text-to-image latent diffusion with classifier-free guidance.

    Components: `vae` (`AutoencoderKL`), `text_encoder` (`CLIPTextModel`, or `T5EncoderModel` run without an attention
    mask, as SD3 runs its T5), `tokenizer` (`CLIPTokenizer`),
    `unet` (`UNet2DConditionModel`), `scheduler` (any diffusers scheduler; `set_sampler` picks one by name), and
    the optional components of `StableDiffusionPipeline`, so that `LatentDiffusionPipeline(**sd_pipe.components)`
    works:

    - `feature_extractor` (`CLIPImageProcessor`) and `image_encoder` (`CLIPVisionModelWithProjection`): IP-Adapter
      (`load_ip_adapter`, `set_ip_adapter_scale`, `unload_ip_adapter`; `ip_adapter_image` / `ip_adapter_image_embeds`
      in `__call__`), as in `StableDiffusionPipeline`.
    - `safety_checker`: accepted and **not run**. It is kept as a component only so that components round-trip
      with `StableDiffusionPipeline`; images come back unfiltered (a one-time note through diffusers' logger says
      so). `from_pretrained` does not load a folder's safety checker unless you pass one.

    Absent optional components leave no `[null, null]` entry in model_index.json.

    As in `StableDiffusionPipeline.__init__`, a diffusers scheduler whose config has the legacy `steps_offset` != 1
    or `clip_sample=True` is corrected (with diffusers' deprecation message), so that the same scheduler gives the
    same image here and there. Schedulers defined outside diffusers (ours: CLD, GENIE, flow) keep their config.

    Critically-damped Langevin diffusion (CLD; Dockhorn et al. 2022) models are recognised by their UNet, which sees
    the phase-space state u = (x, v) and predicts eps_v: in_channels = 2 x out_channels. They need a CLD scheduler
    (`scheduling_cld.py`; `set_sampler("cld-ode")` or `"cld-sscs"`), which draws the initial state, takes the
    continuous time t mapped by `unet_timestep`, and applies the mixed score when its config says so; the loop
    is the same, and only the x half is decoded.

    Optional `genie_head` (`GENIEHead`, `genie_head.py`): with the "taylor2" sampler (`scheduling_genie.py`), each step
    adds GENIE's second-order Taylor term from the head's d_γ ε (Dockhorn et al. 2022); see `_genie`.
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->unet->genie_head->vae"
    _optional_components: list[str] = ["safety_checker", "feature_extractor", "image_encoder", "genie_head"]
    _exclude_from_cpu_offload = ["safety_checker"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel | T5EncoderModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
        safety_checker: torch.nn.Module | None = None,
        feature_extractor: CLIPImageProcessor | None = None,
        image_encoder: CLIPVisionModelWithProjection | None = None,
        genie_head: GENIEHead | None = None,
    ):
        super().__init__()
        if scheduler is not None:
            fix_legacy_scheduler_config(scheduler)
        if safety_checker is not None:
            note_safety_checker_not_run()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                              safety_checker=safety_checker, feature_extractor=feature_extractor,
                              image_encoder=image_encoder, genie_head=genie_head)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if vae is not None else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self._attention_backend_chosen = False

    # IP-Adapter image embeddings: StableDiffusionPipeline's own methods (they use only the components above).
    encode_image = StableDiffusionPipeline.encode_image
    prepare_ip_adapter_image_embeds = StableDiffusionPipeline.prepare_ip_adapter_image_embeds

    # ------------------------------------------------------------------ loading
    @property
    def components(self) -> dict[str, Any]:
        """`DiffusionPipeline.components`, without `genie_head` when there is none: the same set as
        `StableDiffusionPipeline.components`, so that components pass between the two classes either way."""
        components = super().components
        if components.get("genie_head") is None:
            components.pop("genie_head", None)
        return components

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`DiffusionPipeline.save_pretrained`, without `[null, null]` entries in model_index.json for absent optional
        components (stock diffusers warns about a component it cannot load, e.g. `genie_head`; loading leaves an
        absent optional component None either way)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        index_path = os.path.join(os.fspath(save_directory), "model_index.json")
        with open(index_path) as f:
            index = json.load(f)
        absent = [name for name in self._optional_components if index.get(name) == [None, None]]
        if absent:
            for name in absent:
                del index[name]
            with open(index_path, "w") as f:
                f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """`DiffusionPipeline.from_pretrained`, but safetensors-only unless `use_safetensors=False` is passed.

        Pickle files (.bin/.ckpt/.pt) can run arbitrary code when loaded, so a folder whose weights exist only in
        that form is refused. Remote code is never trusted unless `trust_remote_code=True` is passed.

        A folder's safety checker is not loaded (this pipeline never runs it) unless you pass `safety_checker=...`.
        """
        kwargs.setdefault("safety_checker", None)
        # Only an explicit False opts in to pickle; None (diffusers' "whatever is there") counts as the default.
        allow_pickle = kwargs.pop("use_safetensors", True) is False
        path = os.fspath(pretrained_model_name_or_path)
        if not allow_pickle and os.path.isdir(path):
            # components passed in (or left out, as the safety checker) are not read from the folder
            pickled = [name for name in pickle_only_components(path) if name not in kwargs]
            if pickled:
                raise ValueError(
                    f"{path}: the weights of {', '.join(pickled)} exist only as pickle files, which can run "
                    "arbitrary code when loaded. Convert them to safetensors, or pass use_safetensors=False to "
                    "load them anyway if you trust their source."
                )
        # With the opt-in, ask diffusers for safetensors where a component has them and pickle elsewhere (None):
        # its False would also refuse the safetensors that transformers 5 always writes for the text encoder.
        kwargs["use_safetensors"] = None if allow_pickle else True
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except Exception as err:
            # A truncated or empty weights file fails deep inside diffusers or transformers (an OSError that reads
            # like "no safetensors weights", or safetensors' own header error): name the file instead.
            if os.path.isdir(path):
                from safetensors import safe_open

                for root, _, files in sorted(os.walk(path)):
                    for name in sorted(f for f in files if f.endswith(".safetensors")):
                        weights = os.path.join(root, name)
                        try:
                            with safe_open(weights, "pt"):
                                pass
                        except Exception as bad:  # safetensors raises its own SafetensorError
                            raise ValueError(
                                f"{weights}: the weights file is corrupt or truncated ({os.path.getsize(weights)} "
                                f"bytes; {str(bad).strip() or type(bad).__name__}). Copy or download it again."
                            ) from err
            if isinstance(err, OSError) and not allow_pickle and "safetensors" in str(err):
                raise ValueError(
                    f"{path}: no safetensors weights found ({err}). Pass use_safetensors=False to load pickle "
                    "weights if you trust their source."
                ) from err
            raise

    # ------------------------------------------------------------------ samplers
    def set_sampler(self, name: str, **options: Any) -> "LatentDiffusionPipeline":
        """Swap the scheduler for a named sampler (see `samplers.SAMPLERS`) on the same noise process.

        `options` override the scheduler config of that sampler, e.g. `set_sampler("ddim", timestep_spacing=
        "trailing")`. Returns the pipeline, so calls chain.
        """
        self.scheduler = make_scheduler(name, dict(self.scheduler.config), **options)
        return self

    def sampler_names(self) -> list[str]:
        """The named samplers that fit this model's noise process."""
        return sampler_names(self.process)

    # ------------------------------------------------------------------ noise process (processes.PROCESSES)
    @property
    def process(self) -> str:
        """The name of the noise process the scheduler samples ("ddpm", "cld", ...; a key of processes.PROCESSES)."""
        return process_of(self.scheduler.config).name

    def check_process(self) -> None:
        """A ValueError unless the UNet fits the process the scheduler samples (its channels, e.g. CLD's (x, v))."""
        row, unet = process_of(self.scheduler.config), self.unet.config
        if row.matches_unet(unet):
            return
        fitting = [r for r in PROCESSES.values() if r.matches_unet(unet)]
        fits = " or ".join(r.description for r in fitting) or "no known process"
        names = ", ".join(n for r in fitting for n in sampler_names(r.name))
        raise ValueError(
            f"The scheduler {type(self.scheduler).__name__} is for {row.description}, but this UNet (in_channels "
            f"{unet.in_channels}, out_channels {unet.out_channels}) is {fits}. Load the scheduler saved with the "
            f"model (SchedulerClass.from_pretrained(MODEL_DIR, subfolder='scheduler')), then pipe.set_sampler(NAME) "
            f"with one of its samplers: {names}."
        )

    def _genie(self) -> GenieDerivative:
        """GENIE for one step: with a scheduler whose step takes `derivative=` (the "taylor2" sampler), capture the
        UNet's last features and time embedding during its call, and give `step_kwargs(...)` the head's guided
        d_γ ε; for any other scheduler, a no-op."""
        if not takes_derivative(self.scheduler):
            return GenieDerivative.off()
        if getattr(self, "genie_head", None) is None:
            raise ValueError(
                f"The {type(self.scheduler).__name__} sampler needs a GENIE head (d_γ ε predictor) and this pipeline "
                "has none: load one with LatentDiffusionPipeline.from_pretrained(MODEL, genie_head=GENIEHead."
                "from_pretrained(HEAD_DIR)) or pipe.register_modules(genie_head=head) (distil it with "
                "latentdiff.training.distill_genie), or pick another sampler, e.g. pipe.set_sampler('ddim')."
            )
        return GenieDerivative(self.unet, self.genie_head, self.scheduler, self.do_classifier_free_guidance,
                               self._guidance_scale)

    # ------------------------------------------------------------------ properties used by the loop
    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        # Guidance-distilled UNets (time_cond_proj_dim, e.g. LCM) take the scale as an input instead.
        return self._guidance_scale > 1 and self.unet.config.time_cond_proj_dim is None

    @property
    def cross_attention_kwargs(self) -> dict[str, Any] | None:
        return self._cross_attention_kwargs

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this: the VAE's downsampling times the UNet's."""
        return self.vae_scale_factor * 2 ** self.unet.num_upsamplers

    # ------------------------------------------------------------------ text
    def _tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, list[str]]:
        """Token ids (B, 77) padded to the tokenizer's length; also the text cut off from long prompts."""
        max_length = self.tokenizer.model_max_length
        ids = self.tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                             return_tensors="pt").input_ids  # (B, 77)
        # verbose=False: we warn once per call ourselves instead of transformers' per-tokenizer warning.
        full = self.tokenizer(prompts, truncation=False, verbose=False).input_ids
        removed = [self.tokenizer.decode(f[max_length - 1 : -1]) for f in full if len(f) > max_length]
        return ids, removed

    def _embed(self, prompts: list[str], device: torch.device, clip_skip: int | None) -> tuple[torch.Tensor, list[str]]:
        if isinstance(self, TextualInversionLoaderMixin):
            prompts = self.maybe_convert_prompt(prompts, self.tokenizer)
        ids, removed = self._tokenize(prompts)
        if clip_skip is None:
            embeds = self.text_encoder(ids.to(device))[0]  # (B, 77, D)
        else:
            if not isinstance(self.text_encoder, CLIPTextModel):
                raise ValueError(f"clip_skip needs a CLIPTextModel text encoder; this pipeline's is "
                                 f"{type(self.text_encoder).__name__}: drop clip_skip")
            hidden = self.text_encoder(ids.to(device), output_hidden_states=True).hidden_states
            # transformers 5's CLIPTextModel holds final_layer_norm itself; 4.x (and ...WithProjection) in .text_model
            text_model = getattr(self.text_encoder, "text_model", self.text_encoder)
            embeds = text_model.final_layer_norm(hidden[-(clip_skip + 1)])  # (B, 77, D)
        return embeds, removed

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        device: torch.device,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        lora_scale: float | None = None,
        clip_skip: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text embeddings (B * num_images_per_prompt, 77, D) for the prompt and, with guidance, the negative."""
        if lora_scale is not None and USE_PEFT_BACKEND:
            self._lora_scale = lora_scale
            scale_lora_layers(self.text_encoder, lora_scale)

        removed: list[str] = []
        if prompt_embeds is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            prompt_embeds, cut = self._embed(prompts, device, clip_skip)
            removed += cut
        batch_size = prompt_embeds.shape[0]

        if do_classifier_free_guidance and negative_prompt_embeds is None:
            if negative_prompt is None:
                negatives = [""] * batch_size
            elif isinstance(negative_prompt, str):
                negatives = [negative_prompt] * batch_size
            else:
                negatives = list(negative_prompt)
            negative_prompt_embeds, cut = self._embed(negatives, device, None)
            removed += cut
        if removed:  # one warning a call, for prompts and negative prompts together; stock's message
            logger.warning(
                "The following part of your input was truncated because CLIP can only handle sequences up to"
                f" {self.tokenizer.model_max_length} tokens: {removed}"
            )

        dtype = self.text_encoder.dtype if self.text_encoder is not None else self.unet.dtype
        prompt_embeds = prompt_embeds.to(dtype=dtype, device=device).repeat_interleave(num_images_per_prompt, dim=0)
        if do_classifier_free_guidance:
            negative_prompt_embeds = negative_prompt_embeds.to(dtype=dtype, device=device)
            negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)

        if lora_scale is not None and USE_PEFT_BACKEND:
            unscale_lora_layers(self.text_encoder, lora_scale)
        return prompt_embeds, negative_prompt_embeds

    # ------------------------------------------------------------------ checks
    def check_inputs(
        self,
        prompt,
        negative_prompt,
        prompt_embeds,
        negative_prompt_embeds,
        height: int,
        width: int,
        num_inference_steps: int,
        timesteps,
        sigmas,
        guidance_scale: float,
        num_images_per_prompt: int,
        output_type: str,
        callback_on_step_end_tensor_inputs: list[str],
        ip_adapter_image=None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
    ) -> None:
        multiple = self.size_multiple
        if not (isinstance(height, int) and isinstance(width, int)) or height <= 0 or width <= 0:
            raise ValueError(f"`height` and `width` must be positive integers, got {height!r} and {width!r}.")
        if height % multiple or width % multiple:
            raise ValueError(
                f"`height` and `width` must be multiples of {multiple} for this model (VAE downsampling "
                f"{self.vae_scale_factor} x UNet downsampling {multiple // self.vae_scale_factor}); got {height}x{width}. "
                f"Try {round(height / multiple) * multiple or multiple}x{round(width / multiple) * multiple or multiple}."
            )
        if timesteps is not None and sigmas is not None:
            raise ValueError("Pass either `timesteps` or `sigmas`, not both.")
        for name, schedule in (("timesteps", timesteps), ("sigmas", sigmas)):
            if schedule is not None and len(schedule) == 0:
                raise ValueError(f"`{name}` is empty: pass at least one value, or leave it out and set "
                                 "`num_inference_steps`.")
        if timesteps is None and sigmas is None and (not isinstance(num_inference_steps, int) or num_inference_steps < 1):
            raise ValueError(f"`num_inference_steps` must be an integer >= 1, got {num_inference_steps!r}.")
        if not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale):
            raise ValueError(f"`guidance_scale` must be a finite number, got {guidance_scale!r}.")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be an integer >= 1, got {num_images_per_prompt!r}.")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"Unknown `output_type` {output_type!r}; choose one of {', '.join(OUTPUT_TYPES)}.")
        unknown = [k for k in callback_on_step_end_tensor_inputs or [] if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` may name only {self._callback_tensor_inputs}; got {unknown}."
            )

        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("Pass exactly one of `prompt` and `prompt_embeds`.")
        if prompt is not None and not (isinstance(prompt, str) or (isinstance(prompt, list) and prompt
                                                                   and all(isinstance(p, str) for p in prompt))):
            raise ValueError(f"`prompt` must be a string or a non-empty list of strings, got {type(prompt).__name__}.")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("Pass at most one of `negative_prompt` and `negative_prompt_embeds`.")
        batch = prompt_embeds.shape[0] if prompt_embeds is not None else (1 if isinstance(prompt, str) else len(prompt))
        if isinstance(negative_prompt, list) and len(negative_prompt) != batch:
            raise ValueError(
                f"`negative_prompt` has {len(negative_prompt)} entries but `prompt` has {batch}: pass one negative "
                "prompt per prompt, or a single string for all."
            )
        if negative_prompt is not None and not isinstance(negative_prompt, (str, list)):
            raise ValueError(f"`negative_prompt` must be a string or a list of strings, got {type(negative_prompt).__name__}.")
        if prompt_embeds is not None and negative_prompt_embeds is not None and prompt_embeds.shape != negative_prompt_embeds.shape:
            raise ValueError(
                f"`prompt_embeds` {tuple(prompt_embeds.shape)} and `negative_prompt_embeds` "
                f"{tuple(negative_prompt_embeds.shape)} must have the same shape."
            )
        self.check_ip_adapter_inputs(ip_adapter_image, ip_adapter_image_embeds)

    def check_ip_adapter_inputs(self, ip_adapter_image, ip_adapter_image_embeds: list[torch.Tensor] | None) -> None:
        """A ValueError unless the IP-Adapter inputs fit the adapters loaded (`load_ip_adapter`)."""
        if ip_adapter_image is None and ip_adapter_image_embeds is None:
            return
        if ip_adapter_image is not None and ip_adapter_image_embeds is not None:
            raise ValueError("Pass at most one of `ip_adapter_image` and `ip_adapter_image_embeds`.")
        projection = getattr(self.unet, "encoder_hid_proj", None)
        if not isinstance(projection, MultiIPAdapterImageProjection):
            raise ValueError(
                "`ip_adapter_image` / `ip_adapter_image_embeds` need an IP-Adapter: load one first with "
                "pipe.load_ip_adapter(...), or leave them out."
            )
        adapters = len(projection.image_projection_layers)
        if ip_adapter_image_embeds is not None:
            if not isinstance(ip_adapter_image_embeds, list) or not all(
                    isinstance(e, torch.Tensor) and e.ndim in (3, 4) for e in ip_adapter_image_embeds):
                raise ValueError(
                    "`ip_adapter_image_embeds` must be a list of 3D or 4D tensors, one per IP-Adapter "
                    "((2 x B, n, D) with guidance: the negative half first), got "
                    f"{type(ip_adapter_image_embeds).__name__}."
                )
            given = len(ip_adapter_image_embeds)
        else:
            if self.image_encoder is None:
                raise ValueError(
                    "`ip_adapter_image` needs an image encoder and this pipeline has none: load the IP-Adapter with "
                    "its image encoder (pipe.load_ip_adapter(..., image_encoder_folder=...)), or pass "
                    "`ip_adapter_image_embeds` instead."
                )
            given = len(ip_adapter_image) if isinstance(ip_adapter_image, list) else 1
        if given != adapters:
            raise ValueError(f"Got IP-Adapter inputs for {given} adapters but {adapters} are loaded: pass one per "
                             "IP-Adapter.")

    # ------------------------------------------------------------------ latents
    def prepare_latents(
        self,
        batch_size: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        shape = (batch_size, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"Got {len(generator)} generators for {batch_size} images (prompts x num_images_per_prompt): pass one "
                "generator per image, or a single generator."
            )
        if latents is None:
            # the process's prior (B, C_in, h, w), scaled as its scheduler expects (processes.py)
            return process_of(self.scheduler.config).initial_noise(self.scheduler, shape, generator, device, dtype)
        else:
            if tuple(latents.shape) != shape:
                raise ValueError(
                    f"`latents` has shape {tuple(latents.shape)} but this call needs {shape} "
                    "(batch, UNet in_channels, height / VAE factor, width / VAE factor)."
                )
            latents = latents.to(device=device, dtype=dtype)
        # Scale given noise by the standard deviation the scheduler expects (1 for VP, sigma_max for k-style).
        return latents * getattr(self.scheduler, "init_noise_sigma", 1.0)

    def _step_kwargs(self, generator, eta: float) -> dict[str, Any]:
        params = inspect.signature(self.scheduler.step).parameters
        kwargs: dict[str, Any] = {}
        if "eta" in params:
            kwargs["eta"] = eta
        if "generator" in params:
            kwargs["generator"] = generator
        return kwargs

    def _choose_attention_backend(self, device: torch.device) -> None:
        # SDPA is diffusers' default attention processor. On CUDA, prefer xformers when it is installed, once
        # per pipeline, so that a user's own later choice of processor is left alone.
        if self._attention_backend_chosen:
            return
        self._attention_backend_chosen = True
        if device.type == "cuda" and is_xformers_available():
            try:
                self.enable_xformers_memory_efficient_attention()
            except Exception as err:  # an xformers build without kernels for this GPU: stay on SDPA
                warnings.warn(f"xformers is installed but unusable here ({err}); using SDPA attention.")

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.5,
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        clip_skip: int | None = None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        ip_adapter_image: PipelineImageInput | None = None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
    ) -> LatentDiffusionPipelineOutput | tuple:
        r"""Generate images from text.

        Args:
            prompt: the prompt or prompts; or pass `prompt_embeds` instead.
            height, width: image size in pixels, multiples of `self.size_multiple`; default: the UNet's sample size
                times the VAE factor.
            num_inference_steps: sampler steps (ignored when `timesteps` or `sigmas` are given).
            timesteps, sigmas: a custom schedule, for schedulers whose `set_timesteps` accepts one.
            guidance_scale: classifier-free guidance weight w (Ho & Salimans 2022); guidance is off at w <= 1.
            negative_prompt: what to guide away from (one string, or one per prompt).
            num_images_per_prompt: images per prompt.
            eta: DDIM's eta (ignored by other schedulers).
            generator: a `torch.Generator`, or one per image, for reproducible noise.
            latents: initial noise (B, C, h, w); drawn from `generator` when omitted. For a CLD model, the state
                u = (x, v) at scheduler.timesteps[0], (B, 2C, h, w).
            prompt_embeds, negative_prompt_embeds: precomputed text embeddings (B, 77, D).
            output_type: "pil", "np" (B, H, W, 3 in [0, 1]), "pt" (B, 3, H, W in [0, 1]) or "latent" (the data
                latent (B, C, h, w); for CLD the x half).
            return_dict: return a `LatentDiffusionPipelineOutput` rather than a tuple.
            cross_attention_kwargs: passed to the attention processors (e.g. `{"scale": 0.5}` for LoRA).
            guidance_rescale: phi of Lin et al. 2024, sec. 3.4, against over-exposure at high guidance.
            clip_skip: use the text encoder's hidden state this many layers before the last.
            callback_on_step_end: `fn(pipe, step, timestep, tensors) -> dict` called after every step; the
                returned dict may replace `latents`, `prompt_embeds` or `negative_prompt_embeds`.
            callback_on_step_end_tensor_inputs: the names of the tensors passed to that callback.
            ip_adapter_image: image(s) for the IP-Adapter(s) loaded with `load_ip_adapter`, one per adapter.
            ip_adapter_image_embeds: precomputed IP-Adapter image embeddings instead, a list with one tensor per
                adapter, (B, n, D) or (B, k, n, D); with guidance (2B, ...), the negative half first.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        callback_on_step_end_tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]

        # 0. Default height and width from the UNet's sample size (an int, or (height, width))
        sample_size = self.unet.config.sample_size
        sample_h, sample_w = (sample_size, sample_size) if isinstance(sample_size, int) else sample_size
        height = sample_h * self.vae_scale_factor if height is None else height
        width = sample_w * self.vae_scale_factor if width is None else width

        # 1. Check inputs
        self.check_inputs(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, height, width,
                          num_inference_steps, timesteps, sigmas, guidance_scale, num_images_per_prompt,
                          output_type, callback_on_step_end_tensor_inputs, ip_adapter_image, ip_adapter_image_embeds)
        self.check_process()
        self._guidance_scale = float(guidance_scale)
        self._cross_attention_kwargs = cross_attention_kwargs
        self._interrupt = False

        # 2. Define call parameters
        batch_size = 1 if isinstance(prompt, str) else (len(prompt) if prompt is not None else prompt_embeds.shape[0])
        device = self._execution_device
        self._choose_attention_backend(device)

        # 3. Encode input prompt: (B*n, 77, D) each; with guidance, one batch [uncond; cond] of (2*B*n, 77, D)
        lora_scale = cross_attention_kwargs.get("scale") if cross_attention_kwargs else None
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, device, num_images_per_prompt, self.do_classifier_free_guidance, negative_prompt,
            prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            lora_scale=lora_scale, clip_skip=clip_skip,
        )
        text_embeds = torch.cat([negative_prompt_embeds, prompt_embeds]) if self.do_classifier_free_guidance else prompt_embeds
        added_cond_kwargs = None
        if ip_adapter_image is not None or ip_adapter_image_embeds is not None:
            # one (B*n, 1, E) per adapter (E: its image embedding size; FaceID (B*n, 1, k, E)); with guidance
            # (2*B*n, ...), [uncond; cond] like text_embeds. The UNet's IP-Adapter projection makes them tokens.
            image_embeds = self.prepare_ip_adapter_image_embeds(
                ip_adapter_image, ip_adapter_image_embeds, device, batch_size * num_images_per_prompt,
                self.do_classifier_free_guidance)
            added_cond_kwargs = {"image_embeds": image_embeds}

        # 4. Prepare timesteps
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, timesteps, sigmas)

        # 5. Prepare latent variables: (B*n, C, h, w); for CLD u = (x, v), (B*n, 2C, h, w)
        latents = self.prepare_latents(batch_size * num_images_per_prompt, height, width, prompt_embeds.dtype,
                                       device, generator, latents)

        # 6. Prepare extra step kwargs and, for guidance-distilled UNets, the guidance embedding
        step_kwargs = self._step_kwargs(generator, eta)
        timestep_cond = None
        if self.unet.config.time_cond_proj_dim is not None:
            # (B,) -> (B, time_cond_proj_dim): diffusers' sinusoidal embedding of w - 1 (Meng et al. 2023)
            w = torch.full((latents.shape[0],), self._guidance_scale - 1)
            timestep_cond = StableDiffusionPipeline.get_guidance_scale_embedding(
                self, w, embedding_dim=self.unet.config.time_cond_proj_dim).to(device, latents.dtype)

        # 7. Denoising loop
        num_warmup_steps = len(timesteps) - num_inference_steps * self.scheduler.order
        self._num_timesteps = len(timesteps)
        genie = self._genie()  # GENIE: the UNet's last features for the head, every step; else a no-op
        process = process_of(self.scheduler.config)  # the process's hooks: model input, model timestep, data latent
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                model_input = torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
                model_input = process.model_input(self.scheduler, model_input, t)  # (2B, C, h, w) with guidance
                with genie:  # eps (or v); for CLD eps_v: (B, C, h, w) per half
                    noise_pred = self.unet(model_input, process.model_timestep(t), encoder_hidden_states=text_embeds,
                                           timestep_cond=timestep_cond, cross_attention_kwargs=cross_attention_kwargs,
                                           added_cond_kwargs=added_cond_kwargs, return_dict=False)[0]
                if self.do_classifier_free_guidance:
                    noise_uncond, noise_text = noise_pred.chunk(2)  # (B, C, h, w) each
                    noise_pred = noise_uncond + self._guidance_scale * (noise_text - noise_uncond)
                    if guidance_rescale > 0.0:
                        noise_pred = rescale_noise_cfg(noise_pred, noise_text, guidance_rescale=guidance_rescale)

                latents = self.scheduler.step(noise_pred, t, latents, **step_kwargs,
                                              **genie.step_kwargs(model_input, noise_pred, t), return_dict=False)[0]

                if callback_on_step_end is not None:
                    tensors = {"latents": latents, "prompt_embeds": prompt_embeds,
                               "negative_prompt_embeds": negative_prompt_embeds}
                    out = callback_on_step_end(self, i, t, {k: tensors[k] for k in callback_on_step_end_tensor_inputs})
                    out = out or {}
                    latents = out.pop("latents", latents)
                    if "prompt_embeds" in out or "negative_prompt_embeds" in out:
                        prompt_embeds = out.pop("prompt_embeds", prompt_embeds)
                        negative_prompt_embeds = out.pop("negative_prompt_embeds", negative_prompt_embeds)
                        text_embeds = (torch.cat([negative_prompt_embeds, prompt_embeds])
                                       if self.do_classifier_free_guidance else prompt_embeds)

                if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % self.scheduler.order == 0):
                    progress_bar.update()

        # 8. Decode: (B, C, h, w) -> (B, 3, H, W) in [-1, 1] -> output type
        latents = process.data_latents(latents)  # CLD: u = (x, v) -> x
        if not torch.isfinite(latents).all():
            # diffusers would decode NaNs into a black picture with only numpy's cast warning: we refuse instead
            raise ValueError(
                f"The sampler produced non-finite latents (NaN or inf) with guidance_scale {self._guidance_scale:g} "
                f"and {type(self.scheduler).__name__}: lower guidance_scale, or try another sampler or more steps."
            )
        if output_type == "latent":
            images = latents
        else:
            decoded = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False, generator=generator)[0]
            images = self.image_processor.postprocess(decoded, output_type=output_type)

        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return LatentDiffusionPipelineOutput(images=images)


def fix_legacy_scheduler_config(scheduler: SchedulerMixin) -> None:
    """`StableDiffusionPipeline.__init__`'s corrections of legacy scheduler configs, with its deprecation messages:
    `steps_offset` != 1 becomes 1 and `clip_sample=True` becomes False. Applied, as stock applies them, to diffusers'
    own schedulers of a process whose row asks for them (VP); schedulers defined elsewhere (ours) are left alone."""
    if not type(scheduler).__module__.startswith("diffusers.") or not process_of(scheduler.config).stock_config_fixups:
        return
    if getattr(scheduler.config, "steps_offset", 1) != 1:
        deprecation_message = (
            f"The configuration file of this scheduler: {scheduler} is outdated. `steps_offset`"
            f" should be set to 1 instead of {scheduler.config.steps_offset}. Please make sure "
            "to update the config accordingly as leaving `steps_offset` might led to incorrect results"
            " in future versions. If you have downloaded this checkpoint from the Hugging Face Hub,"
            " it would be very nice if you could open a Pull request for the `scheduler/scheduler_config.json`"
            " file"
        )
        deprecate("steps_offset!=1", "1.0.0", deprecation_message, standard_warn=False)
        scheduler._internal_dict = FrozenDict({**scheduler.config, "steps_offset": 1})
    if getattr(scheduler.config, "clip_sample", False) is True:
        deprecation_message = (
            f"The configuration file of this scheduler: {scheduler} has not set the configuration `clip_sample`."
            " `clip_sample` should be set to False in the configuration file. Please make sure to update the"
            " config accordingly as not setting `clip_sample` in the config might lead to incorrect results in"
            " future versions. If you have downloaded this checkpoint from the Hugging Face Hub, it would be very"
            " nice if you could open a Pull request for the `scheduler/scheduler_config.json` file"
        )
        deprecate("clip_sample not set", "1.0.0", deprecation_message, standard_warn=False)
        scheduler._internal_dict = FrozenDict({**scheduler.config, "clip_sample": False})


_safety_checker_noted = False


def note_safety_checker_not_run() -> None:
    """Say once per process, through diffusers' logger, that a given safety checker is kept but never run."""
    global _safety_checker_noted
    if not _safety_checker_noted:
        _safety_checker_noted = True
        logger.warning(
            "LatentDiffusionPipeline does not run the safety checker: it is kept as a component only (so that "
            "components pass to and from StableDiffusionPipeline), and images are returned unfiltered."
        )


def pickle_only_components(folder: str) -> list[str]:
    """Names of the component sub-folders of a pipeline folder whose weights exist only as pickle files."""
    found = []
    for name in sorted(os.listdir(folder)):
        sub = os.path.join(folder, name)
        if not os.path.isdir(sub):
            continue
        files = os.listdir(sub)
        has_pickle = any(f.endswith(PICKLE_SUFFIXES) for f in files)
        has_safetensors = any(f.endswith(".safetensors") for f in files)
        if has_pickle and not has_safetensors:
            found.append(name)
    return found
