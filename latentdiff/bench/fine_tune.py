"""`latentdiff bench fine-tune`: did a fine-tune move its generations toward its training images?

A fixed subset of the training captions (`max_captions` of the captions in --data's metadata.jsonl that name
exactly one image, drawn with `seed`) is drawn by the base model and by each tuned model (a pipeline folder, or a
LoRA folder loaded onto the base with diffusers' `load_lora_weights`), one image per caption, caption i from seed
+ i for every model. Each generation is compared in pixels with the subset's training images, which are read as
training reads them (`latentdiff.data`: resized to cover the model's resolution and centre-cropped):

  distance      RMSE over RGB pixels in [0, 1] (0: identical; 1: black against white everywhere), at the model's
                resolution: it asks whether the picture came out, not whether it is a plausible sample.
  own_rmse      mean over captions of the distance between a caption's generation and its own training image.
  nearest_rmse  mean over captions of the distance between a generation and its nearest training image (any).
  retrieval_topk  fraction of generations whose own training image is among the k nearest of the subset's
                training images (k = 1 and 5); ties go to the own image (only training images strictly closer
                count against it). Chance is k / number of captions.

The same metrics for the training images passed through the base's VAE (encode, posterior mean, decode) give the
floor: no fine-tune that keeps the VAE draws closer than its own decoder reconstructs (a VAE trained on other
pictures may not reproduce these at all; `vae_floor` in the JSON, "through the VAE" in the table). So every
model is also measured against those reconstructions (`vae_space`, the table's second block): what the fine-tune
learns toward, without the part of the distance the VAE cannot draw (a ShapesWorld VAE turns white grey).

A fine-tune that learnt its data lowers own_rmse and raises retrieval against the base model; the table and
fine_tune.json give each model's numbers and their ratio to (or change from) the base's. fine_tune.png shows the
first `GRID_ROWS` captions: the training image, the base's generation and each tuned model's.
"""

from __future__ import annotations

import argparse
import shlex
import textwrap
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from latentdiff.bench.report import figure, save_figure, write_report
from latentdiff.eval.reference import vae_roundtrip
from latentdiff.eval.seeded import generate_seeded, plan_batches

GRID_ROWS = 8  # captions shown in fine_tune.png
TOP_K = (1, 5)  # retrieval_top1, retrieval_top5
VAE_SPACE = "against the training images through the VAE (what a fine-tune that keeps the VAE learns toward)"


# ---------------------------------------------------------------------------------------------- the metrics
def rmse_matrix(generated: torch.Tensor, training: torch.Tensor) -> torch.Tensor:
    """(N, M) RMSE between each of N generated and M training images, (N, C, H, W) and (M, C, H, W) in [0, 1]."""
    if generated.ndim != 4 or training.shape[1:] != generated.shape[1:]:
        raise ValueError(f"rmse_matrix: images of one shape (N, C, H, W) needed, got {tuple(generated.shape)} and "
                         f"{tuple(training.shape)}")
    reference = training.flatten(1).double()  # (M, C*H*W)
    return torch.stack([(reference - g).pow(2).mean(1).sqrt() for g in generated.flatten(1).double()])  # (N, M)


def nearest_neighbour_metrics(generated: torch.Tensor, training: torch.Tensor,
                              own: Sequence[int] | torch.Tensor | None = None) -> dict[str, float]:
    """own_rmse, nearest_rmse and retrieval_top1/top5 (see the module doc) of N generated images against M training
    images (both (·, C, H, W) in [0, 1]); generation i's own training image is training[own[i]] (default: i)."""
    distances = rmse_matrix(generated, training)  # (N, M)
    n = len(generated)
    own = torch.arange(n) if own is None else torch.as_tensor(own, dtype=torch.long)
    if own.shape != (n,) or (n and not 0 <= int(own.min()) <= int(own.max()) < len(training)):
        raise ValueError(f"nearest_neighbour_metrics: `own` needs one index into the {len(training)} training images "
                         f"per generation ({n}), got {own.tolist()}")
    own_distance = distances[torch.arange(n), own]  # (N,)
    closer = (distances < own_distance[:, None]).sum(1)  # (N,) training images strictly closer than the own one
    return {"own_rmse": own_distance.mean().item(), "nearest_rmse": distances.min(1).values.mean().item(),
            **{f"retrieval_top{k}": (closer < k).double().mean().item() for k in TOP_K}}


# ---------------------------------------------------------------------------------------------- models and data
LORA = "LoRA on the base"


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.is_dir() and pb.is_dir() and pa.resolve() == pb.resolve()


def check_findable(flag: str, model: str) -> None:
    """A ValueError of one line, before any model is loaded, when `model` is no folder, repo id or preset:NAME."""
    from latentdiff.loading import REPO_ID

    if not (Path(model).is_dir() or model.startswith("preset:") or (REPO_ID.match(model) and not Path(model).exists())):
        folders = "a pipeline or LoRA folder" if flag == "--tuned" else "a pipeline folder"
        raise ValueError(f"{flag} {model} not found: pass {folders}, a hub repo id such as user/name, or preset:NAME.")


def model_kind(tuned: str, base: str) -> str:
    """"pipeline", or LORA for a LoRA folder whose recorded base model is `base`; a ValueError of one line for a
    LoRA that records another base, or none (nothing then says that it belongs on `base`)."""
    from latentdiff.hub.card import read_card_info
    from latentdiff.hub.stage import LORA_PICKLE, LORA_WEIGHTS, MODEL_INDEX

    folder = Path(tuned)
    if not folder.is_dir() or (folder / MODEL_INDEX).is_file():
        check_findable("--tuned", tuned)
        return "pipeline"  # a pipeline folder, repo id or preset:NAME: load_model checks it further
    if (folder / LORA_PICKLE).is_file() and not (folder / LORA_WEIGHTS).is_file():
        raise ValueError(f"--tuned {tuned}: its LoRA weights exist only as {LORA_PICKLE} (pickle, which can run code "
                         f"when loaded); save them as {LORA_WEIGHTS}.")
    if not (folder / LORA_WEIGHTS).is_file():
        raise ValueError(f"--tuned {tuned} is neither a pipeline folder (no {MODEL_INDEX}) nor a LoRA folder (no "
                         f"{LORA_WEIGHTS}).")
    recorded = read_card_info(folder).base_model
    if not recorded:
        raise ValueError(f"--tuned {tuned} is a LoRA folder that records no base model (no training_config.json "
                         f"naming 'pretrained'), so nothing says it belongs on --base {base}; if it does, write "
                         f"{{\"pretrained\": \"{base}\"}} to {folder / 'training_config.json'}.")
    if not _same_model(recorded, base):
        raise ValueError(f"--tuned {tuned} is a LoRA of {recorded} (its training_config.json), not of --base {base}: "
                         f"pass --base {recorded}.")
    return LORA


def load(model: str, kind: str, base: str, device: str):
    """The pipeline of `model` (a LoRA: loaded onto a fresh copy of `base`), progress bars off."""
    from latentdiff.loading import load_model

    pipe = load_model(base if kind == LORA else model, device=device).pipe
    if kind == LORA:
        try:
            pipe.load_lora_weights(model)
        except Exception as err:  # a LoRA made for another architecture, or no peft: one line
            message = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ValueError(f"cannot load the LoRA {model} onto --base {base}: {type(err).__name__}: {message}") \
                from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check_data(data: str) -> Path:
    """The imagefolder `data`, or a ValueError of one line when it is not a folder with a metadata.jsonl."""
    folder = Path(data)
    if not folder.is_dir():
        raise ValueError(f"--data {data} is not a folder: pass the imagefolder the model was fine-tuned on.")
    if not (folder / "metadata.jsonl").is_file():
        raise ValueError(f"--data {data} has no metadata.jsonl: pass the imagefolder the model was fine-tuned on "
                         "(latentdiff glyphs and latentdiff shapes write one).")
    return folder


@dataclass
class Subset:
    captions: list[str]  # the chosen captions, in the order drawn
    file_names: list[str]  # each caption's training image, as metadata.jsonl names it
    images: torch.Tensor  # (N, 3, H, W) in [0, 1]: the training images as training reads them
    eligible: int  # captions of the data that name exactly one image


def read_subset(data: str, resolution: int, max_captions: int, seed: int) -> Subset:
    """`max_captions` captions of the imagefolder `data` that each name one image, drawn with `seed`, and their
    images at `resolution` (the training transform: cover, centre crop)."""
    import numpy as np

    from latentdiff.data.dataset import DataConfig, build_dataset

    dataset = build_dataset(DataConfig(train_data=str(check_data(data)), kind="imagefolder", resolution=resolution))
    captions = [c if isinstance(c, str) else c[0] for c in map(dataset.caption_at, range(len(dataset)))]
    counts = Counter(captions)
    eligible = [i for i, c in enumerate(captions) if c.strip() and counts[c] == 1]
    if len(eligible) < 2:
        raise ValueError(f"--data {data} has {len(eligible)} caption(s) that name exactly one image; retrieval needs "
                         "at least 2 (a caption shared by several images has no one training image to move toward).")
    picks = np.random.default_rng(seed).choice(eligible, size=min(max_captions, len(eligible)), replace=False)
    images, names = [], []
    for pos in map(int, picks):
        sample = dataset[pos]
        if sample["skipped"]:
            bad = sample["skipped"][0]
            raise ValueError(f"--data {data}: {bad.name} cannot be read ({bad.reason}); fix or remove it.")
        images.append((sample["pixel_values"] + 1) / 2)  # (3, H, W) in [0, 1]
        names.append(sample["name"])
    return Subset([captions[int(p)] for p in picks], names, torch.stack(images), len(eligible))


@torch.no_grad()
def generate(pipe, captions: list[str], seed: int, steps: int, guidance: float, resolution: int,
             batch_size: int) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1]: caption i drawn from seed + i."""
    out = []
    for batch in plan_batches(captions, 1, batch_size, seed):
        images = generate_seeded(pipe, batch.prompts, batch.seeds, num_inference_steps=steps, guidance_scale=guidance,
                                 height=resolution, width=resolution, output_type="np").images  # (B, H, W, 3)
        out.append(torch.from_numpy(images).permute(0, 3, 1, 2).float())
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------- the bench
@dataclass
class ModelResult:
    role: str  # "base" or "tuned"
    model: str  # as given on the command line
    kind: str  # "pipeline" or LORA
    metrics: dict[str, float]  # nearest_neighbour_metrics against the training images
    vae_space: dict[str, float]  # the same against the training images through the VAE (see VAE_SPACE)
    own_rmse: list[float]  # per caption: distance to its own training image
    images: torch.Tensor  # (N, 3, H, W) in [0, 1], not written to JSON

    @property
    def label(self) -> str:
        if self.role == "floor":
            return self.model
        return f"{self.role}: {self.model}" + (" (LoRA)" if self.kind == LORA else "")

    @property
    def short(self) -> str:
        """A column title: the last two parts of the path ("glyphs-lora/lora")."""
        return "/".join(Path(self.model).parts[-2:]) or self.model


@dataclass
class FineTuneResult:
    data: str
    subset: Subset
    models: list[ModelResult]  # the base first
    vae_floor: ModelResult  # the training images through the base's VAE: the closest a generation can come
    seed: int
    steps: int
    guidance: float
    resolution: int
    device: str

    def vs_base(self, row: ModelResult, space: str = "metrics") -> dict[str, float | None]:
        """Ratios of the distances to the base's (< 1: closer to the data) and changes of retrieval, in `space`
        ("metrics": against the training images; "vae_space": against them through the VAE)."""
        base, own = getattr(self.models[0], space), getattr(row, space)
        ratio = {f"{m}_ratio": (own[m] / base[m] if base[m] else None) for m in ("own_rmse", "nearest_rmse")}
        return ratio | {f"retrieval_top{k}_change": own[f"retrieval_top{k}"] - base[f"retrieval_top{k}"]
                        for k in TOP_K}

    def table(self) -> str:
        n = len(self.subset.captions)
        width = max(len(r.label) for r in self.models) + 2
        out = [f"{n} captions of {self.data} ({self.subset.eligible} name one image; seed {self.seed}), "
               f"{self.steps} steps, guidance {self.guidance:g}, {self.resolution}x{self.resolution}, {self.device}"]
        for space, title, rows in (("metrics", "against the training images", [*self.models, self.vae_floor]),
                                   ("vae_space", VAE_SPACE, self.models)):
            out += [title, f"{'model':<{width}}{'own RMSE':>9}{'x base':>8}{'nearest':>9}{'x base':>8}{'top-1':>7}"
                           f"{'top-5':>7}"]
            for r in rows:
                vs, m = self.vs_base(r, space), getattr(r, space)
                ratios = [f"{v:>8.3f}" if v is not None else f"{'-':>8}" for v in (vs["own_rmse_ratio"],
                                                                                     vs["nearest_rmse_ratio"])]
                out.append(f"{r.label:<{width}}{m['own_rmse']:>9.4f}{ratios[0]}{m['nearest_rmse']:>9.4f}{ratios[1]}"
                           f"{m['retrieval_top1']:>7.3f}{m['retrieval_top5']:>7.3f}")
        out.append(f"own RMSE: pixel RMSE in [0, 1] between a caption's generation and its own training image; "
                   f"nearest: to the closest training image of the {n}; top-k: own image among the k nearest "
                   f"(chance {1 / n:.3f} / {min(5, n) / n:.3f}). Lower RMSE and higher top-k: closer to the data; "
                   f"'through the VAE' is the floor no fine-tune that keeps the VAE can pass.")
        return "\n".join(out)

    def to_json(self, command: str = "") -> dict[str, Any]:
        return {
            "data": self.data, "captions": len(self.subset.captions), "eligible_captions": self.subset.eligible,
            "seed": self.seed, "steps": self.steps, "guidance": self.guidance, "resolution": self.resolution,
            "device": self.device,
            "chance": {f"retrieval_top{k}": min(k, len(self.subset.captions)) / len(self.subset.captions)
                       for k in TOP_K},
            "models": [{"role": r.role, "model": r.model, "kind": r.kind, "metrics": r.metrics,
                        "vs_base": self.vs_base(r), "vae_space": r.vae_space,
                        "vae_space_vs_base": self.vs_base(r, "vae_space")} for r in self.models],
            "vae_floor": {"metrics": self.vae_floor.metrics, "vs_base": self.vs_base(self.vae_floor)},
            "per_caption": [{"caption": c, "file_name": f, "seed": self.seed + i,
                             "own_rmse": {r.label: r.own_rmse[i] for r in self.models}}
                            for i, (c, f) in enumerate(zip(self.subset.captions, self.subset.file_names))],
            "definitions": {
                "distance": "RMSE over RGB pixels in [0, 1] at the model's resolution; training images resized to "
                            "cover it and centre-cropped, as training reads them",
                "own_rmse": "mean distance of each caption's generation to its own training image",
                "nearest_rmse": "mean distance of each generation to its nearest training image of the subset",
                "retrieval_topk": "fraction of generations whose own training image is among the k nearest of the "
                                  "subset's training images (ties count for the own image)",
                "vs_base": "tuned / base for distances (< 1: closer to the data), tuned - base for retrieval",
                "vae_floor": "the same metrics for the training images encoded (posterior mean) and decoded by the "
                             "base's VAE: the closest any generation through that VAE can come",
                "vae_space": "the same metrics with the training images through the base's VAE as the reference: "
                             "what a fine-tune that keeps the VAE learns toward, without the part of the distance "
                             "(e.g. a background colour) that the VAE cannot draw",
            },
            "command": command,
        }


def bench_fine_tune(base: str, tuned: list[str], data: str, *, max_captions: int = 32, seed: int = 0,
                    steps: int = 20, guidance: float = 5.0, batch_size: int = 16, device: str = "auto",
                    progress: bool = True) -> FineTuneResult:
    """Generate the subset's captions with the base and each tuned model and measure them (see the module doc).
    Every input is checked before a model is loaded."""
    from tqdm.auto import tqdm

    # 1. Check inputs
    for name, value, least in (("--max-captions", max_captions, 2), ("--steps", steps, 1),
                               ("--batch-size", batch_size, 1)):
        if value < least:
            raise ValueError(f"{name} must be >= {least}, got {value}.")
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}.")
    if not tuned:
        raise ValueError("Give at least one --tuned MODEL to compare with --base.")
    check_data(data)
    check_findable("--base", base)
    kinds = [model_kind(t, base) for t in tuned]
    # 2. The base model, its resolution and the training images at it
    base_pipe = load(base, "pipeline", base, device)
    resolution = base_pipe.unet.config.sample_size * base_pipe.vae_scale_factor
    subset = read_subset(data, resolution, max_captions, seed)
    device_name = str(base_pipe._execution_device)
    through_vae = (vae_roundtrip(base_pipe.vae, subset.images * 2 - 1) + 1) / 2  # (N, 3, H, W) in [0, 1]

    def measured(role: str, model: str, kind: str, images: torch.Tensor) -> ModelResult:
        """`images` (N, 3, H, W) in [0, 1] against the training images, raw and through the VAE."""
        return ModelResult(role, model, kind, nearest_neighbour_metrics(images, subset.images),
                           nearest_neighbour_metrics(images, through_vae),
                           rmse_matrix(images, subset.images).diagonal().tolist(), images)

    floor = measured("floor", "through the VAE", "vae", through_vae)
    # 3. Generate and measure, one model at a time
    rows = []
    jobs = [("base", base, "pipeline")] + [("tuned", t, k) for t, k in zip(tuned, kinds)]
    for role, model, kind in tqdm(jobs, desc="fine-tune bench", unit="model", disable=not progress):
        pipe = base_pipe if role == "base" else load(model, kind, base, device)
        base_pipe = None  # (the base's weights go once it has drawn: one model in memory at a time)
        images = generate(pipe, subset.captions, seed, steps, guidance, resolution, batch_size)
        del pipe
        rows.append(measured(role, model, kind, images))
    return FineTuneResult(data, subset, rows, floor, seed, steps, guidance, resolution, device_name)


def write_grid(result: FineTuneResult, path: str | Path) -> Path:
    """PNG: one row per caption (the first GRID_ROWS), columns: training image, the same through the VAE (the
    floor), base, each tuned model; under each its distance to the training image."""
    rows = min(GRID_ROWS, len(result.subset.captions))
    columns = [("training image", result.subset.images, None),
               ("through the VAE", result.vae_floor.images, result.vae_floor.own_rmse)] + [
        (r.short if r.role == "tuned" else "base", r.images, r.own_rmse) for r in result.models]
    fig, axes = figure(rows, len(columns), figsize=(1.4 * len(columns) + 2.2, 1.45 * rows), squeeze=False)
    for i in range(rows):
        for j, (title, images, distances) in enumerate(columns):
            ax = axes[i][j]
            ax.imshow(images[i].permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(textwrap.fill(title, 18), fontsize=7)
            if distances is not None:
                ax.set_xlabel(f"RMSE {distances[i]:.3f}", fontsize=6, labelpad=1)
        axes[i][0].set_ylabel(textwrap.fill(result.subset.captions[i], 26), fontsize=6, rotation=0, ha="right",
                              va="center", labelpad=4)
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------- command line
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="the model the fine-tunes started from: pipeline folder, hub repo "
                                                 "id or preset:NAME")
    p.add_argument("--tuned", required=True, action="append", metavar="MODEL",
                   help="a fine-tuned pipeline folder, or a LoRA folder (loaded onto --base; its training_config.json "
                        "must name --base); repeat for several")
    p.add_argument("--data", required=True, help="the imagefolder they were fine-tuned on (metadata.jsonl)")
    p.add_argument("--max-captions", type=int, default=32,
                   help="captions drawn from the data, each naming one image (default 32)")
    p.add_argument("--seed", type=int, default=0, help="chooses the captions; caption i is drawn from seed + i "
                                                       "(default 0)")
    p.add_argument("--steps", type=int, default=20, help="sampler steps (default 20)")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (default 5)")
    p.add_argument("--batch-size", type=int, default=16, help="images per pipeline call (default 16)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--out", required=True, help="folder for fine_tune.json and fine_tune.png")


def run(args: argparse.Namespace) -> int:
    result = bench_fine_tune(args.base, args.tuned, args.data, max_captions=args.max_captions, seed=args.seed,
                             steps=args.steps, guidance=args.guidance, batch_size=args.batch_size, device=args.device)
    flags = [f"--base={args.base}", *(f"--tuned={t}" for t in args.tuned), f"--data={args.data}",
             f"--max-captions={args.max_captions}", f"--seed={args.seed}", f"--steps={args.steps}",
             f"--guidance={args.guidance}", f"--out={args.out}"]
    command = "latentdiff bench fine-tune " + shlex.join(flags)
    print(result.table())
    write_report(args.out, "fine_tune", result.to_json(command), lambda path: write_grid(result, path))
    return 0
