"""Train a text-to-image latent diffusion model with accelerate: from scratch, full fine-tune, or LoRA.

    accelerate launch -m latentdiff.training.train_text_to_image --config training/recipes/shapes-tiny.yaml

From scratch (`--preset small --vae out/vae-shapes/vae`): the UNet and the CLIP text encoder are trained
jointly on a frozen VAE, as the original LDM text-to-image model trained its text transformer jointly
(Rombach et al. 2022, sec. 4.3.1). Fine-tuning (`--pretrained DIR`): the full UNet (optionally the text
encoder), or LoRA adapters through peft (`--lora-rank R`, with `--train-text-encoder` on the text encoder too; Hu
et al. 2022), saved as `pytorch_lora_weights.safetensors` in the diffusers format `load_lora_weights` reads. Where
the kinds of run want different learning rates, warm-up, EMA and caption dropout, MODE_DEFAULTS holds each.
`--process NAME` picks the noise process and its objective (latentdiff/objective.py: DDPM, CLD, ...); the loop is
the same for all: data -> (cached) VAE latents -> objective.perturb -> UNet -> objective.loss -> backward -> EMA
-> logs, checkpoints, sample grids. Everything else lives in the modules it calls.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any, ClassVar

import torch
from accelerate import Accelerator
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from tqdm.auto import tqdm

from latentdiff.captionlm.layout import LayoutHead, layout_error, thumbnails
from latentdiff.data.dataset import DataConfig
from latentdiff.hub import check_hub_arguments, push_folder
from latentdiff.loading import load_pipeline
from latentdiff.objective import objective_row
from latentdiff.pipelines import LatentDiffusionPipeline, make_scheduler
from latentdiff.pipelines.processes import get_process
from latentdiff.presets import build_components, fit_unet, variant
from latentdiff.training.checkpoint import resume_progress
from latentdiff.training.config import parse_config, save_config, start_run
from latentdiff.training.data import TrainingData, drop_captions
from latentdiff.training.ema import ema_weights, make_ema
from latentdiff.training.frozen import place_frozen
from latentdiff.training.optim import optimizer_and_schedule
from latentdiff.training.periodic import AfterStep
from latentdiff.training.run_clock import GRIDS, RunClock
from latentdiff.training.summary import run_summary, write_summary
from latentdiff.training.validation import log_image, prompts_from_data, sample_grid


# The three kinds of run, told apart by two options: no --pretrained trains from scratch; --pretrained fine-tunes all
# of the UNet; --pretrained with --lora-rank R > 0 trains LoRA adapters instead.
SCRATCH, FULL, LORA = "from scratch", "full fine-tune", "LoRA"


@dataclass(frozen=True)
class ShareOfRun:
    """A default number of steps given as a share of --max-steps, at most `most`."""

    share: float
    most: int

    def steps(self, max_steps: int) -> int:
        return min(self.most, max(1, round(self.share * max_steps)))

    def __str__(self) -> str:
        return f"{self.share:.0%} of --max-steps, at most {self.most}"


# Defaults that depend on the kind of run. A value given on the command line or in a recipe always wins; the run's
# first lines say which of these it took. From scratch: the values the shipped default model was trained with
# (training/recipes/shapes-tiny.yaml). Fine-tuning moves a trained model a short way towards a few hundred images
# in a few hundred steps; issue 16 found the from-scratch values wrong for it (5e-4 with EMA turned the default
# model's pictures into texture, and 500 warm-up steps outlasted the run):
# - learning rate: diffusers' examples/text_to_image README fine-tunes all of Stable Diffusion's UNet at 1e-5 over
#   15,000 steps; a run of a few hundred steps takes twice that, still 25x below from scratch. The same README
#   trains LoRA at 1e-4, as diffusers' DreamBooth LoRA example does in 500 steps: LoRA's B starts at zero and its
#   update is scaled by alpha / rank = 1 here, so adapters of the usual rank 4 to 16 (Hu et al. 2022 found small
#   ranks enough) take the larger rate.
# - warm-up: 5% of the run, at most 100 steps. It guards trained weights from Adam's first, poorly estimated
#   steps, which takes tens of steps (diffusers' fine-tuning examples use none).
# - EMA: off. Over a short run an average of the weights lags behind them, back towards the base they started
#   from (the README's EMA fine-tune runs 15,000 steps); a LoRA trains adapters, not the weights EMA averages.
# - caption dropout 5%: the base already has its unconditional branch; a few empty captions keep it in step with
#   the new data, against which classifier-free guidance measures the prompt, at little cost to a small data set.
MODE_DEFAULTS: dict[str, dict[str, Any]] = {
    "learning_rate": {SCRATCH: 5e-4, FULL: 2e-5, LORA: 1e-4},
    "lr_warmup_steps": {SCRATCH: 500, FULL: ShareOfRun(0.05, 100), LORA: ShareOfRun(0.05, 100)},
    "use_ema": {SCRATCH: True, FULL: False, LORA: False},
    "caption_dropout": {SCRATCH: 0.1, FULL: 0.05, LORA: 0.05},
}


# The from-scratch architecture options (None: the preset's); a --pretrained pipeline refuses them
ARCHITECTURE_FIELDS = ("unet_blocks", "unet_attention", "unet_layers_per_block", "unet_head_dim", "text_layers",
                       "text_width", "text_heads", "text_model")


@dataclass
class TextToImageConfig:
    """Train a text-to-image latent diffusion model (UNet + CLIP text encoder on a frozen VAE)."""

    train_data: str  # captioned images: imagefolder / sidecar folder / datasets folder / .tar shards
    output_dir: str = "out/text-to-image"  # checkpoints, samples, logs, and the final pipeline folder
    preset: str = "small"  # architecture when training from scratch (latentdiff/presets.py)
    unet_blocks: list[int] | None = None  # from scratch: UNet block widths, top to bottom (None: the preset's)
    unet_attention: list[bool] | None = None  # from scratch: cross-attention per level, e.g. false true true
    unet_layers_per_block: int | None = None  # from scratch: ResNet layers per UNet block
    unet_head_dim: int | None = None  # from scratch: diffusers' attention_head_dim (UNet2DConditionModel: the head count)
    text_layers: int | None = None  # from scratch: text-encoder layers
    text_width: int | None = None  # from scratch: text-encoder width (the UNet's cross-attention width follows)
    text_heads: int | None = None  # from scratch: text-encoder attention heads
    text_model: str | None = None  # from scratch: text-encoder family, "clip" (causal, SD 1.x) or "t5" (bidirectional)
    text_encoder: str | None = None  # from scratch: pretrain_text_encoder's output folder to start the text encoder
    # (and tokenizer) from instead of random weights; frozen, its embeddings cached, unless --train-text-encoder
    pretrained: str | None = None  # pipeline folder or hub id to fine-tune (instead of --preset)
    vae: str | None = None  # trained VAE folder (train_vae's output/vae); required from scratch
    resolution: int = 64  # square training crops (pixels); with --bucketing the pixel budget is resolution**2
    caption_column: str = "text"  # caption column of metadata.jsonl / the datasets dataset
    bucketing: bool = False  # aspect-ratio buckets instead of square centre crops
    missing_caption: str = "error"  # an image without caption: "error", "empty" (train on "") or "skip"
    min_size: str = "upscale"  # an image smaller than the resolution: "upscale" or "skip"
    outside_root: str = "error"  # a metadata file_name outside the data folder: "error" or "skip"
    batch_size: int = 32  # images per step per process
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    max_steps: int = 10000  # optimizer steps
    learning_rate: float | None = None  # AdamW peak learning rate
    lr_scheduler: str = "cosine"  # diffusers.optimization schedule: constant, constant_with_warmup, cosine, ...
    lr_warmup_steps: int | None = None  # linear warm-up steps
    lr_cooldown_steps: int = 0  # > 0: the LR falls linearly to 0 over the last N steps before --max-steps (WSD)
    weight_decay: float = 1e-2  # AdamW weight decay
    adam_8bit: bool = False  # bitsandbytes 8-bit AdamW (GPU only)
    max_grad_norm: float = 1.0  # gradient clipping
    train_text_encoder: bool | None = None  # also train the text encoder (LoRA: adapters); default: only from scratch
    layout_loss_weight: float = 0.0  # > 0: add this times the layout objective (captionlm/layout.py: predict each
    # picture's thumbnail from its caption's token states) to the loss, training the text encoder to bind words to
    # places as it learns with the UNet; the head starts from --text-encoder's layout_head/ where it has one
    layout_grid: int = 8  # the layout objective's thumbnail grid (G x G); a --text-encoder's head brings its own
    lora_rank: int = 0  # > 0: train LoRA adapters of this rank (4 to 16 usual) on the UNet's attention, not all weights
    process: str = "ddpm"  # noise process and its objective: "ddpm" (VP, as Stable Diffusion), "cld", ... (objective.py)
    timestep_sampling: str = "uniform"  # training time density: "uniform", "logit_normal" (SD3) or "speed" (ddpm: SpeeD)
    timestep_shift: float = 1.0  # shift of that density towards noise, t' = s t / (1 + (s - 1) t) (SD3 eq. 23)
    zero_terminal_snr: bool = False  # rescale betas to zero terminal SNR (Lin et al. 2024); needs v_prediction (ddpm)
    # CLD options (--process cld; Dockhorn et al. 2022, defaults the paper's). The process and the mixed score apply
    # from scratch; fine-tuning keeps those of the --pretrained CLD folder.
    cld_beta_schedule: str = "constant"  # beta(t): "constant" (4) or "linear" (0.1 -> 8)
    cld_mass: float = 0.25  # mass M; the friction is Gamma = 2 sqrt(M) (critical damping)
    cld_gamma: float = 0.04  # HSM initial velocity variance factor: v0 ~ N(0, gamma M I)
    cld_mixed_score: bool = True  # mixed-score parameterisation: the UNet learns the residual to the Gaussian score
    cld_loss_weighting: str = "eps"  # HSM weighting lambda(t): "eps" (ell_t^-2, the paper's) or "ml" (max. likelihood)
    prediction_type: str = "epsilon"  # "epsilon" or "v_prediction" (ddpm)
    snr_gamma: float | None = 5.0  # min-SNR-gamma loss weighting (None: plain MSE) (ddpm)
    noise_offset: float = 0.0  # offset-noise strength (ddpm)
    caption_dropout: float | None = None  # probability of training on the empty caption (classifier-free guidance)
    use_ema: bool | None = None  # keep an exponential moving average of the UNet; the final pipeline uses it
    ema_decay: float = 0.999  # EMA decay (with warm-up)
    gradient_checkpointing: bool = False  # trade compute for memory
    channels_last: bool = True  # UNet weights and activations in NHWC layout (faster convolutions, CPU and GPU)
    fused_adam: bool = True  # fused AdamW kernel (one kernel for all parameters instead of a loop over them)
    compile: bool = False  # torch.compile the UNet (minutes of compiling first; pays off on long runs)
    mixed_precision: str | None = None  # "no", "fp16" or "bf16" (GPU; CPU runs fp32); default: accelerate launch's
    # --mixed_precision or `accelerate config`'s
    report_to: str | None = "tensorboard"  # where logs go: "tensorboard", "wandb" (accelerate's trackers) or none
    cache_latents: bool = True  # cache the frozen VAE's latent distributions on disk
    cache_text: bool = True  # cache the text embeddings on disk when the text encoder is frozen
    cache_dir: str | None = None  # where the caches live (default: output_dir/cache)
    checkpoint_every: int = 1000  # steps between checkpoints
    keep_checkpoints: int = 2  # checkpoints kept (oldest removed)
    resume: str | None = None  # "latest" or a checkpoint folder
    stop_after: int | None = None  # end this invocation after this many steps (a time slot); resume to go on
    time_budget_minutes: float | None = None  # wall-clock minutes for the run, grids and saves included, over resumes
    # (it stops early enough for the final grid, checkpoint and folder; an upload comes after)
    train_time_budget_minutes: float | None = None  # training minutes only (no grids, checkpoints), over resumes
    # (for comparing recipes at equal training time, as `latentdiff bench speedrun` does)
    validation_every: int | None = None  # steps between sample grids, and one at the end; default: 4 evenly spaced
    # (by steps, or by a time budget that ends the run sooner)
    validation_prompts: list[str] | None = None  # grid prompts; default: 4 captions of the data (seeded) and ""
    validation_steps: int = 20  # sampler steps for the grid (DPM-Solver++ 2M; cld: cld-ode)
    validation_guidance: float = 4.0  # guidance scale for the grid
    max_bad_steps: int = 10  # this many non-finite losses in a row stop the run
    num_workers: int = 0  # DataLoader workers
    seed: int = 0  # seeds weights, data order, noise and the validation grid
    push_to_hub: bool = False  # upload the final folder with `latentdiff push` (token: $HF_TOKEN or `hf auth login`)
    hub_repo_id: str | None = None  # USER/NAME to upload to (needed with --push-to-hub)
    hub_private: bool = False  # create the hub repo as private

    MODE_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = MODE_DEFAULTS  # (listed by --help)
    HELP_EPILOG: ClassVar[str] = (
        "Kinds of run: from scratch (no --pretrained), full fine-tune (--pretrained DIR), LoRA (--pretrained DIR "
        "--lora-rank R). Where a default differs between them, --help lists each; a value you give always wins, and "
        "a run's first lines show the values it took.")

    def __post_init__(self):
        objective_row(self.process).check(self)  # the process's own options (ValueError naming the flag)
        if not self.timestep_shift > 0:
            raise ValueError(f"--timestep-shift must be > 0, got {self.timestep_shift}.")
        densities = objective_row(self.process).timestep_samplings
        if self.timestep_sampling not in densities:
            raise ValueError(f"--timestep-sampling must be one of {', '.join(densities)} for --process "
                             f"{self.process}, got {self.timestep_sampling!r}.")
        for name in ("batch_size", "max_steps", "checkpoint_every", "gradient_accumulation_steps", "max_bad_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}.")
        if self.lora_rank < 0:
            raise ValueError(f"--lora-rank must be >= 0, got {self.lora_rank}.")
        if not 0 <= self.lr_cooldown_steps <= self.max_steps:
            raise ValueError(f"--lr-cooldown-steps must be in [0, --max-steps {self.max_steps}], got "
                             f"{self.lr_cooldown_steps}.")
        if self.pretrained is None and self.vae is None:
            raise ValueError("Training from scratch needs a trained VAE: pass --vae DIR (train_vae's output/vae), "
                             "or --pretrained DIR to fine-tune a pipeline.")
        if self.lora_rank and self.pretrained is None:
            raise ValueError("--lora-rank needs --pretrained DIR: LoRA adapts a trained model.")
        if self.lora_rank and self.use_ema:
            raise ValueError("--use-ema averages all of the UNet's weights, but a LoRA run (--lora-rank) trains "
                             "adapters only: drop --use-ema, or fine-tune all weights without --lora-rank.")
        self.mode_defaults = apply_mode_defaults(self)  # {field: value} the kind of run chose (not a flag)
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ValueError(f"--caption-dropout must be in [0, 1], got {self.caption_dropout}.")
        if self.pretrained is not None and Path(self.pretrained).is_dir():
            # recorded as an absolute path in training_config.json, so that `latentdiff push` finds a LoRA's base
            # from wherever it runs
            self.pretrained = str(Path(self.pretrained).resolve())
        shaping = [f"--{f.replace('_', '-')}" for f in ARCHITECTURE_FIELDS if getattr(self, f) is not None]
        if self.pretrained is not None and shaping:
            raise ValueError(f"{', '.join(shaping)} shape a from-scratch model; the --pretrained pipeline has its own "
                             "architecture: drop them.")
        if self.text_encoder is not None:
            if self.pretrained is not None:
                raise ValueError("--text-encoder starts a from-scratch run's text encoder; a --pretrained pipeline "
                                 "has its own: drop one of them.")
            if any(v is not None for v in (self.text_layers, self.text_width, self.text_heads, self.text_model)):
                raise ValueError("--text-encoder brings its own size and family: drop --text-layers/--text-width/"
                                 "--text-heads/--text-model.")
            for sub in ("text_encoder/config.json", "tokenizer"):
                if not (Path(self.text_encoder) / sub).exists():
                    raise ValueError(f"--text-encoder {self.text_encoder} has no {sub}: give pretrain_text_encoder's "
                                     "output folder.")
        if self.train_text_encoder is None:
            self.train_text_encoder = self.pretrained is None and self.text_encoder is None
        if not self.layout_loss_weight >= 0 or self.layout_grid < 1:
            raise ValueError(f"--layout-loss-weight must be >= 0 and --layout-grid >= 1, got {self.layout_loss_weight} "
                             f"and {self.layout_grid}.")
        if self.layout_loss_weight and not self.train_text_encoder:
            raise ValueError("--layout-loss-weight trains the text encoder, which this run keeps frozen: add "
                             "--train-text-encoder, or drop --layout-loss-weight.")
        if self.pretrained is None:
            architecture(self)  # ValueError now for sizes that do not fit, not after loading the data
        check_hub_arguments(self)  # before training, not after: a missing token or repo id fails now


def mode_of(cfg: TextToImageConfig) -> str:
    """SCRATCH, FULL or LORA."""
    return SCRATCH if cfg.pretrained is None else LORA if cfg.lora_rank else FULL


def apply_mode_defaults(cfg: TextToImageConfig) -> dict[str, Any]:
    """Fill the MODE_DEFAULTS fields left unset (None) with the values of the run's kind; returns those."""
    chosen = {}
    for name, per_mode in MODE_DEFAULTS.items():
        if getattr(cfg, name) is None:
            value = per_mode[mode_of(cfg)]
            chosen[name] = value.steps(cfg.max_steps) if isinstance(value, ShareOfRun) else value
            setattr(cfg, name, chosen[name])
    return chosen


def describe_run(cfg: TextToImageConfig) -> str:
    """The run's first lines: its kind, and the values of MODE_DEFAULTS it took or was given."""
    mode = mode_of(cfg)
    what = {SCRATCH: f"from scratch (preset {cfg.preset})", FULL: f"full fine-tune of {cfg.pretrained}",
            LORA: f"LoRA (rank {cfg.lora_rank}) on {cfg.pretrained}"}[mode]
    budgets = [f"{minutes:g} min of {kind}" for minutes, kind in ((cfg.time_budget_minutes, "wall clock"),
                                                                  (cfg.train_time_budget_minutes, "training time"))
               if minutes is not None]
    lines = [f"train_text_to_image: {what}, up to {cfg.max_steps} steps" + "".join(f" or {b}" for b in budgets)]

    def shown(name: str) -> str:
        value, default = getattr(cfg, name), MODE_DEFAULTS[name][mode]
        text = f"--{name.replace('_', '-')} {str(value).lower() if isinstance(value, bool) else f'{value:g}'}"
        return text + (f" ({default})" if isinstance(default, ShareOfRun) and name in cfg.mode_defaults else "")

    lines.append(f"{mode} defaults: " + (", ".join(map(shown, cfg.mode_defaults)) or "none taken"))
    given = [name for name in MODE_DEFAULTS if name not in cfg.mode_defaults]
    if given:
        lines.append("given: " + ", ".join(map(shown, given)))
    if cfg.lr_cooldown_steps:
        lines.append(f"LR cooldown: linearly to 0 over steps {cfg.max_steps - cfg.lr_cooldown_steps}..{cfg.max_steps} "
                     f"(--lr-cooldown-steps {cfg.lr_cooldown_steps})")
    return "\n".join(lines)


def load_models(cfg: TextToImageConfig) -> dict:
    """vae, text_encoder, tokenizer, unet, and "process": the scheduler config of the run's noise process (the
    pretrained folder's, or for a from-scratch model the preset's, with a UNet whose channels fit the VAE)."""
    if cfg.pretrained is not None:
        pipe = load_pipeline(cfg.pretrained)
        if pipe.process != cfg.process:
            raise ValueError(
                f"--process {cfg.process} needs {get_process(cfg.process).description}, but --pretrained "
                f"{cfg.pretrained} is {get_process(pipe.process).description} (UNet in_channels "
                f"{pipe.unet.config.in_channels}, scheduler {type(pipe.scheduler).__name__}). Fine-tune it with "
                f"--process {pipe.process}, or train a {cfg.process} model from scratch with --preset NAME --vae DIR "
                f"--process {cfg.process}.")
        parts = pipe.components
        base = dict(parts["scheduler"].config)
    else:
        vae = AutoencoderKL.from_pretrained(cfg.vae, use_safetensors=True)
        factor = 2 ** (len(vae.config.block_out_channels) - 1)  # the VAE's downsampling
        preset = fit_unet(architecture(cfg), cfg.process, vae.config.latent_channels, cfg.resolution // factor)
        parts = build_components(preset, seed=cfg.seed)
        base = preset.process
        if cfg.text_encoder is not None:  # a pretrained text encoder (training/pretrain_text_encoder.py)
            parts["text_encoder"] = CLIPTextModel.from_pretrained(Path(cfg.text_encoder) / "text_encoder",
                                                                  use_safetensors=True).eval()
            parts["tokenizer"] = CLIPTokenizer.from_pretrained(Path(cfg.text_encoder) / "tokenizer")
    if cfg.vae is not None:
        parts["vae"] = AutoencoderKL.from_pretrained(cfg.vae, use_safetensors=True)
    parts["process"] = objective_row(cfg.process).scheduler_config(cfg, base, cfg.pretrained is not None)
    return parts


def architecture(cfg: TextToImageConfig):
    """The preset of a from-scratch run with the run's architecture options applied (a --text-encoder's size for
    the text encoder's: the UNet's cross-attention width follows it)."""
    text = (cfg.text_layers, cfg.text_width, cfg.text_heads)
    if cfg.text_encoder is not None:
        c = CLIPTextConfig.from_pretrained(Path(cfg.text_encoder) / "text_encoder")
        text = (c.num_hidden_layers, c.hidden_size, c.num_attention_heads)
    return variant(cfg.preset, unet_blocks=cfg.unet_blocks, unet_attention=cfg.unet_attention,
                   unet_layers_per_block=cfg.unet_layers_per_block, unet_head_dim=cfg.unet_head_dim,
                   text_layers=text[0], text_width=text[1], text_heads=text[2], text_model=cfg.text_model)


def layout_head(cfg: TextToImageConfig, text_encoder) -> LayoutHead | None:
    """The head of the auxiliary layout objective (latentdiff/captionlm/layout.py) where --layout-loss-weight > 0:
    --text-encoder's layout_head/ (written by pretrain_text_encoder --objective layout) where it has one, else a new
    one of --layout-grid, seeded by --seed. The head is a training aid: the final folder does not keep it."""
    if not cfg.layout_loss_weight:
        return None
    saved = Path(cfg.text_encoder) / "layout_head" if cfg.text_encoder is not None else None
    if saved is not None and saved.is_dir():
        head = LayoutHead.from_pretrained(saved, use_safetensors=True)
        if head.config.width != text_encoder.config.hidden_size:
            raise ValueError(f"{saved} reads states of width {head.config.width}, but the text encoder's are "
                             f"{text_encoder.config.hidden_size} wide: give the folder the head was trained with.")
        return head.train()
    torch.manual_seed(cfg.seed)
    return LayoutHead(text_encoder.config.hidden_size, cfg.layout_grid).train()


def add_lora(unet: UNet2DConditionModel, text_encoder, rank: int, train_text_encoder: bool) -> None:
    """Freeze the UNet (and the text encoder) and give their attention LoRA adapters (Hu et al. 2022) through peft,
    with B = 0 (each starts as the base model) and alpha = rank; the text encoder's only with `train_text_encoder`
    (the projections diffusers' LoRA examples adapt; CLIP's only: stock `load_lora_weights` reads text-encoder
    adapters of a CLIPTextModel, not of a T5EncoderModel, so those are refused before any training)."""
    from peft import LoraConfig, inject_adapter_in_model

    if train_text_encoder and not isinstance(text_encoder, CLIPTextModel):
        raise ValueError(f"--train-text-encoder with --lora-rank adapts a CLIPTextModel only (what stock diffusers' "
                         f"load_lora_weights reads); this model's text encoder is a {type(text_encoder).__name__}: "
                         "drop --train-text-encoder (UNet adapters only), or fine-tune all weights without "
                         "--lora-rank.")
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    if train_text_encoder:
        text_encoder.requires_grad_(False)
        # (peft itself: transformers' add_adapter asks for a newer peft than exists for it)
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                           target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]), text_encoder)


def pipeline_of(cfg: TextToImageConfig, parts: dict, unet, text_encoder) -> LatentDiffusionPipeline:
    """The pipeline of these weights, with the process's default sampler."""
    scheduler = make_scheduler(get_process(cfg.process).default_sampler, parts["process"])
    return LatentDiffusionPipeline(vae=parts["vae"], text_encoder=text_encoder, tokenizer=parts["tokenizer"],
                                   unet=unet, scheduler=scheduler)


def save_outputs(cfg: TextToImageConfig, parts: dict, unet, text_encoder, out: Path) -> Path:
    """The final diffusers folder (pipeline, or LoRA weights), loadable by stock diffusers."""
    if cfg.lora_rank:
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        target = out / "lora"
        text_layers = (convert_state_dict_to_diffusers(get_peft_model_state_dict(text_encoder))
                       if cfg.train_text_encoder else None)
        LatentDiffusionPipeline.save_lora_weights(
            target, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
            text_encoder_lora_layers=text_layers, safe_serialization=True)
        return target
    target = out / "pipeline"
    pipeline_of(cfg, parts, unet, text_encoder).save_pretrained(target)
    return target


def main(argv: list[str] | None = None) -> None:
    started = perf_counter()  # the wall-clock time budget counts from here
    cfg = parse_config(TextToImageConfig, argv, prog="train_text_to_image")
    accelerator, out = start_run(cfg, "train_text_to_image", dynamo_backend="inductor" if cfg.compile else "no",
                                 gradient_accumulation_steps=cfg.gradient_accumulation_steps)
    accelerator.print(describe_run(cfg))

    # 1. Models: frozen VAE; trained UNet (or its LoRA) and, optionally, text encoder; the objective
    parts = load_models(cfg)
    vae, text_encoder, unet = parts["vae"], parts["text_encoder"], parts["unet"]
    objective = objective_row(cfg.process).build(parts["process"], cfg)
    frozen_dtype = prepare_models(cfg, accelerator, vae, text_encoder, unet)
    ema = make_ema(unet, accelerator, cfg.ema_decay) if cfg.use_ema and not cfg.lora_rank else None
    head = layout_head(cfg, text_encoder)  # the auxiliary layout objective's head, or None
    grid = head.config.grid if head is not None else None  # its thumbnails are (B, 3, grid, grid)

    # 2. Optimizer and learning-rate schedule over the trained parameters
    # (the head is prepared too, so that checkpoints hold it and a resumed run goes on exactly; it exists only
    # where the text encoder trains)
    trained = [unet] + ([text_encoder] if cfg.train_text_encoder else []) + ([head] if head is not None else [])
    params = [p for model in trained for p in model.parameters() if p.requires_grad]
    optimizer, lr_schedule = optimizer_and_schedule(cfg, params)
    *trained, optimizer, lr_schedule = accelerator.prepare(*trained, optimizer, lr_schedule)
    unet, text_encoder = trained[0], trained[1] if cfg.train_text_encoder else text_encoder
    head = trained[2] if head is not None else None

    # 3. Data: this rank's shard; VAE latents (and frozen text embeddings) from the on-disk caches
    data = TrainingData(data_config(cfg), accelerator, cfg.batch_size, vae=vae, text_encoder=text_encoder,
                        tokenizer=parts["tokenizer"], cache_dir=cfg.cache_dir or out / "cache",
                        cache_latents=cfg.cache_latents, cache_text=cfg.cache_text and not cfg.train_text_encoder,
                        train_text_encoder=cfg.train_text_encoder, num_workers=cfg.num_workers, dtype=frozen_dtype)
    if cfg.validation_prompts is None:  # drawn from the data, then recorded with the run's config
        cfg.validation_prompts = prompts_from_data(data.dataset, cfg.seed)
        if accelerator.is_main_process:
            save_config(cfg, out / "training_config.json")
    accelerator.print(f"sample grids of {cfg.validation_prompts} " + (
        f"every {cfg.validation_every} steps" if cfg.validation_every else f"at {GRIDS} evenly spaced points")
        + " and at the end")

    # 4. Resume: model, optimizer, EMA, LR schedule and RNG states; the data position from the progress record
    progress = resume_progress(accelerator, cfg.resume, out)
    step = first_step = progress["step"]
    clock = RunClock(accelerator, cfg.time_budget_minutes, progress, cfg.train_time_budget_minutes, started)

    bar = tqdm(total=cfg.max_steps, initial=step, desc="train", disable=not accelerator.is_main_process)
    after = AfterStep(accelerator, clock, out, cfg, lambda at: validate(cfg, accelerator, parts, unet, text_encoder,
                                                                         ema, out, at),
                      bar, cfg.batch_size * accelerator.num_processes * cfg.gradient_accumulation_steps)
    guard, seen = NonFiniteGuard(cfg.max_bad_steps), []

    # 5. Training loop
    for epoch, i, batch in data.batches(progress, cfg.gradient_accumulation_steps) if step < cfg.max_steps else ():
        seen += batch["names"]
        with accelerator.accumulate(unet):
            z0 = data.latents(batch)  # (B, C, h, w)
            text = data.text(drop_captions(batch["captions"], cfg.caption_dropout))  # (B, 77, D)
            noised = objective.perturb(z0)  # the UNet's input (B, C_in, h, w) and timestep input (B,)
            pred = unet(noised.noisy, noised.timesteps, text).sample  # (B, C, h, w)
            loss = total = objective.loss(pred, noised)  # (B,)
            if head is not None:  # the layout objective on the same token states: (B, 3, H, W) -> (B, 3, G, G)
                thumbs = thumbnails(batch["pixel_values"].to(accelerator.device), grid)
                layout = layout_error(head, text, thumbs)  # (B,)
                total = loss + cfg.layout_loss_weight * layout
            if guard.skip(accelerator, total, step, optimizer):
                continue
            accelerator.backward(total.mean())
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            lr_schedule.step()
            optimizer.zero_grad(set_to_none=True)
        if not accelerator.sync_gradients:
            continue
        step += 1  # one optimizer step done
        if ema is not None:
            ema.step(unet.parameters())
        logs = {"layout_loss": layout.mean().item()} if head is not None else {}  # ("loss": the denoising loss)
        if after(step, epoch, i + 1, loss=loss.mean().item(), lr=lr_schedule.get_last_lr()[0], bad_steps=guard.total,
                 **logs):
            break
    bar.close()
    clock.stop()
    if after.stopped_early:
        return accelerator.end_training()

    # 6. The final folder: the EMA weights of the UNet where EMA is on; the run summary; the upload
    write_rank_report(out, accelerator, seen, accelerator.unwrap_model(unet))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        finish(cfg, accelerator, parts, unet, text_encoder, ema, out, clock, after, data,
               step=step, first_step=first_step, non_finite_steps_skipped=guard.total)
    accelerator.end_training()


def finish(cfg: TextToImageConfig, accelerator, parts: dict, unet, text_encoder, ema, out: Path, clock: RunClock,
           after: AfterStep, data: TrainingData, *, step: int, first_step: int, **extra) -> None:
    """Save the final folder (EMA weights where EMA is on), its summary and config, and push it if asked."""
    final_unet = accelerator.unwrap_model(unet)
    if ema is not None:
        ema.copy_to(final_unet.parameters())
    target = save_outputs(cfg, parts, final_unet, accelerator.unwrap_model(text_encoder), out)
    write_summary(run_summary(accelerator, clock, step=step, first_step=first_step, images_seen=after.images_seen,
                              data=data, epochs=epochs_done(step, cfg, accelerator.num_processes, data.dataset),
                              final_loss=after.logs.get("loss"), steady_images_per_s=after.steady_images_per_s,
                              stop_reason=after.stop_reason, **extra), out, target)
    save_config(cfg, target / "training_config.json")
    accelerator.print(f"{data.dataset.skips.summary()}\nwrote {target}")
    if cfg.push_to_hub:
        base = cfg.pretrained if cfg.pretrained and not Path(cfg.pretrained).exists() else None
        push_folder(target, cfg.hub_repo_id, private=cfg.hub_private, base_model=cfg.pretrained, base_model_id=base,
                    log=accelerator.print)


@torch.no_grad()
def validate(cfg: TextToImageConfig, accelerator, parts: dict, unet, text_encoder, ema, out: Path, step: int) -> None:
    """The sample grid of the fixed prompts and seeds, with the EMA weights where EMA is on."""
    if not accelerator.is_main_process:
        return
    model, encoder = accelerator.unwrap_model(unet), accelerator.unwrap_model(text_encoder)
    with ema_weights(ema, model), ema_weights(None, encoder):
        grid = sample_grid(pipeline_of(cfg, parts, model, encoder), cfg.validation_prompts, cfg.seed,
                           cfg.validation_steps, cfg.validation_guidance, out / "samples" / f"step-{step:07d}.png")
    log_image(accelerator, "validation", grid, step)


def prepare_models(cfg: TextToImageConfig, accelerator: Accelerator, vae, text_encoder, unet) -> torch.dtype:
    """Freeze the VAE (and the text encoder unless it trains), add LoRA, set layouts; the frozen models' dtype."""
    vae.requires_grad_(False).eval()
    text_encoder.requires_grad_(cfg.train_text_encoder)
    if cfg.lora_rank:
        add_lora(unet, text_encoder, cfg.lora_rank, cfg.train_text_encoder)
    if cfg.channels_last:
        unet.to(memory_format=torch.channels_last)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if cfg.train_text_encoder:
            text_encoder.gradient_checkpointing_enable()
    frozen_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    place_frozen(vae, accelerator.device, frozen_dtype)
    if not cfg.train_text_encoder:
        place_frozen(text_encoder, accelerator.device, frozen_dtype)
    return frozen_dtype


def data_config(cfg: TextToImageConfig) -> DataConfig:
    return DataConfig(train_data=cfg.train_data, resolution=cfg.resolution, seed=cfg.seed,
                      caption_column=cfg.caption_column, bucketing=cfg.bucketing, missing_caption=cfg.missing_caption,
                      min_size=cfg.min_size, outside_root=cfg.outside_root)


class NonFiniteGuard:
    """A non-finite loss on any rank skips the step on every rank (so DDP's all-reduce stays in step); this many
    in a row stop the run."""

    def __init__(self, limit: int):
        self.limit, self.in_a_row, self.total = limit, 0, 0

    def skip(self, accelerator, loss: torch.Tensor, step: int, optimizer) -> bool:
        bad = accelerator.reduce(torch.tensor(float(not torch.isfinite(loss).all()), device=accelerator.device),
                                 "sum").item() > 0
        if not bad:
            self.in_a_row = 0
            return False
        optimizer.zero_grad(set_to_none=True)
        self.in_a_row, self.total = self.in_a_row + 1, self.total + 1
        if self.in_a_row >= self.limit:
            raise RuntimeError(f"{self.in_a_row} non-finite losses in a row at step {step}: lower --learning-rate, "
                               "check the data, or resume from an earlier checkpoint.")
        return True


def epochs_done(step: int, cfg: TextToImageConfig, processes: int, dataset) -> float | None:
    """Passes over the training data so far; None for a streamed dataset of unknown length."""
    try:
        n = len(dataset)
    except TypeError:
        return None
    return round(step * cfg.batch_size * cfg.gradient_accumulation_steps * processes / max(n, 1), 3)


def write_rank_report(out: Path, accelerator, seen: list[str], unet) -> None:
    """ranks/rank-N.json: the samples this process trained on and a checksum of its final UNet weights, so
    that a multi-process run can be checked for disjoint data and identical parameters."""
    digest = hashlib.sha256()
    for name, tensor in sorted(unet.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    report = {"rank": accelerator.process_index, "samples": seen, "unet_sha256": digest.hexdigest()}
    (out / "ranks").mkdir(parents=True, exist_ok=True)
    (out / "ranks" / f"rank-{accelerator.process_index}.json").write_text(json.dumps(report) + "\n")


if __name__ == "__main__":
    from latentdiff.training.config import run_entry_point

    run_entry_point(main)
