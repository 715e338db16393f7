"""Pretrain a text encoder on captions (latentdiff/captionlm), with accelerate.

    accelerate launch -m latentdiff.training.pretrain_text_encoder --captions "shapesworld:train" \
        --preset small --output-dir out/text-lm --max-steps 2000

Two objectives (`--objective`): "next_token" (captions alone, captionlm/objective.py) or "layout" (each caption and
a G x G thumbnail of its picture, captionlm/layout.py: the encoder must say where each colour goes, the binding
relation captions need; a ShapesWorld stream, whose scenes are rendered for it).

The encoder is the preset's CLIPTextModel (with --text-layers/--text-width/--text-heads as in train_text_to_image)
over the preset's tokenizer; the result, `OUTPUT_DIR/text_encoder/` and `OUTPUT_DIR/tokenizer/`, is what
`train_text_to_image --text-encoder OUTPUT_DIR` starts from instead of random weights (frozen there with
`--train-text-encoder false`, its embeddings cached). Captions: a ShapesWorld stream (`shapesworld:train?...`, the
captions of the scenes a text-to-image run on it sees, without rendering them) or a text file, one caption a
line. Batch k of the run is captions k*B .. (k+1)*B - 1 of that sequence (the file's wrapping around), so a
resumed run goes on with exactly the batch it would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from latentdiff.captionlm import next_token_loss
from latentdiff.captionlm.layout import LayoutHead, binding, layout_loss, thumbnails
from latentdiff.data.procedural import ShapesWorldDataset, ShapesWorldStream, image_tensor, is_procedural
from latentdiff.data.shapes import render
from latentdiff.eval.relation_use import SCENES, position_scenes, scenes_like
from latentdiff.presets import build_components, variant
from latentdiff.training.checkpoint import resume_progress
from latentdiff.training.config import parse_config, start_run
from latentdiff.training.optim import optimizer_and_schedule
from latentdiff.training.periodic import AfterStep
from latentdiff.training.run_clock import RunClock
from latentdiff.training.summary import run_summary, write_summary


@dataclass
class TextPretrainConfig:
    """Pretrain a text encoder on captions (next-token prediction, or their pictures' layout)."""

    captions: str  # "shapesworld:SPLIT?..." (the scenes' captions) or a text file, one caption a line
    objective: str = "next_token"  # "next_token" (captions alone) or "layout" (+ thumbnails; a ShapesWorld stream)
    layout_grid: int = 8  # objective "layout": the thumbnail's cells per side
    output_dir: str = "out/text-lm"  # checkpoints, logs, and the final text_encoder/ and tokenizer/
    preset: str = "small"  # the text encoder and tokenizer come from this preset (latentdiff/presets.py)
    text_layers: int | None = None  # text-encoder layers (None: the preset's)
    text_width: int | None = None  # text-encoder width (None: the preset's)
    text_heads: int | None = None  # text-encoder attention heads (None: the preset's)
    batch_size: int = 256  # captions per step per process
    max_steps: int = 2000  # optimizer steps (the LR schedule's length)
    stop_after: int | None = None  # end this invocation after this many steps (a time slot); resume to go on
    learning_rate: float = 1e-3  # AdamW peak learning rate
    lr_scheduler: str = "cosine"  # diffusers.optimization schedule
    lr_warmup_steps: int = 100  # linear warm-up steps
    weight_decay: float = 1e-2  # AdamW weight decay
    adam_8bit: bool = False  # bitsandbytes 8-bit AdamW (GPU only)
    max_grad_norm: float = 1.0  # gradient clipping
    mixed_precision: str | None = None  # "no", "fp16" or "bf16"; default: accelerate launch's
    report_to: str | None = "tensorboard"  # "tensorboard", "wandb" or none
    checkpoint_every: int = 500  # steps between checkpoints
    keep_checkpoints: int = 2  # checkpoints kept (oldest removed)
    resume: str | None = None  # "latest" or a checkpoint folder
    validation_every: int = 500  # steps between held-out losses (next-token cross-entropy in nats, or layout MSE)
    seed: int = 0  # seeds weights (as train_text_to_image's --seed does) and nothing else: the data is a sequence

    def __post_init__(self):
        for name in ("batch_size", "max_steps", "checkpoint_every", "validation_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}.")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}.")
        if self.objective == "layout" and not is_procedural(self.captions):
            raise ValueError("--objective layout needs each caption's picture: give --captions shapesworld:SPLIT?... "
                             "(or use --objective next_token with a text file)")
        if not 1 <= self.layout_grid <= 64:
            raise ValueError(f"--layout-grid must be in 1..64, got {self.layout_grid}.")
        if is_procedural(self.captions):
            ShapesWorldStream.parse(self.captions)
        elif not Path(self.captions).is_file() or not read_lines(self.captions):
            raise ValueError(f"--captions {self.captions}: give shapesworld:SPLIT or a text file with one caption a "
                             "line")
        self.architecture = variant(self.preset, text_layers=self.text_layers, text_width=self.text_width,
                                    text_heads=self.text_heads)


OBJECTIVES = ("next_token", "layout")


def read_lines(path: str) -> list[str]:
    return [line.strip() for line in Path(path).read_text(encoding="utf-8-sig").splitlines() if line.strip()]


class Captions:
    """Caption j of the run's sequence: a ShapesWorld stream's scene j (fresh: a new scene for every j; fixed:
    scene j mod n), or line j mod N of a file."""

    def __init__(self, source: str):
        if is_procedural(source):
            self.dataset, self.lines = ShapesWorldDataset(ShapesWorldStream.parse(source), 64), None
        else:
            self.dataset, self.lines = None, read_lines(source)

        self._thumbs: dict[int, torch.Tensor] = {}  # scene index -> thumbnail (a fixed set repeats its scenes)

    def _scene(self, j: int):
        n = self.dataset.stream.n
        return self.dataset.scene(j % n, j // n)  # (scene index, scene): item j mod n of epoch j // n

    def __getitem__(self, j: int) -> str:
        if self.lines is not None:
            return self.lines[j % len(self.lines)]
        return self.dataset.caption(self._scene(j)[1])

    def thumbnail(self, j: int, grid: int) -> torch.Tensor:
        """(3, grid, grid) mean colours of caption j's picture (a ShapesWorld stream's scene, rendered)."""
        index, scene = self._scene(j)
        if index in self._thumbs:
            return self._thumbs[index]
        picture = image_tensor(render(scene, size=max(8, grid), supersample=8))  # (3, >= grid, >= grid)
        thumb = thumbnails(picture[None], grid)[0]  # (3, G, G)
        if not self.dataset.stream.fresh:  # a fresh stream never shows a scene twice
            self._thumbs[index] = thumb
        return thumb

    def thumbnail_batch(self, k: int, size: int, grid: int, rank: int = 0, world: int = 1) -> torch.Tensor:
        start = (k * world + rank) * size
        return torch.stack([self.thumbnail(j, grid) for j in range(start, start + size)])  # (B, 3, G, G)

    def batch(self, k: int, size: int, rank: int = 0, world: int = 1) -> list[str]:
        start = (k * world + rank) * size
        return [self[j] for j in range(start, start + size)]


def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(TextPretrainConfig, argv, prog="pretrain_text_encoder")
    accelerator, out = start_run(cfg, "pretrain_text_encoder")
    layout = cfg.objective == "layout"

    # 1. Model (the preset's text encoder, random weights from --seed; for "layout" its head), optimizer, schedule
    parts = build_components(cfg.architecture, seed=cfg.seed)
    tokenizer, text_encoder = parts["tokenizer"], parts["text_encoder"].train()
    torch.manual_seed(cfg.seed)
    head = LayoutHead(text_encoder.config.hidden_size, cfg.layout_grid).train() if layout else None
    params = list(text_encoder.parameters()) + (list(head.parameters()) if layout else [])
    optimizer, lr_schedule = optimizer_and_schedule(cfg, params)
    if layout:  # prepared, so that checkpoints hold the head too and a resumed run goes on exactly
        text_encoder, head, optimizer, lr_schedule = accelerator.prepare(text_encoder, head, optimizer, lr_schedule)
    else:
        text_encoder, optimizer, lr_schedule = accelerator.prepare(text_encoder, optimizer, lr_schedule)

    # 2. Data: the caption sequence; held-out captions (a far-away stretch of it, or of the held-out split); for
    #    "layout" their thumbnails, and position scenes with their relation reversed to measure binding
    captions = Captions(cfg.captions)
    held_out = Captions(cfg.captions.replace("train", "heldout", 1) if is_procedural(cfg.captions) else cfg.captions)
    val_texts = held_out.batch(10_000_000, 256)
    val_thumbs = held_out.thumbnail_batch(10_000_000, 256, cfg.layout_grid).to(accelerator.device) if layout else None
    relation_scenes = position_scenes(scenes_like(cfg.captions) or SCENES, 64, 256) if layout else None

    def tokens(texts: list[str]):
        # padded to the batch's longest caption, not to the pipeline's 77: the encoder is causal, so its states at
        # real tokens (the only ones the loss reads) are the same either way, at a fraction of the compute
        t = tokenizer(texts, padding="longest", truncation=True, max_length=tokenizer.model_max_length,
                      return_tensors="pt")
        return t.input_ids.to(accelerator.device), t.attention_mask.to(accelerator.device)  # (B, L <= 77) each

    def loss_of(model, texts: list[str], thumbs: torch.Tensor | None, layout_head=None) -> torch.Tensor:  # (B,)
        ids, mask = tokens(texts)
        return layout_loss(model, layout_head, ids, thumbs) if layout else next_token_loss(model, ids, mask)

    @torch.no_grad()
    def measure(at: int | None) -> dict[str, float]:
        model = accelerator.unwrap_model(text_encoder).eval()
        layout_head = accelerator.unwrap_model(head).eval() if layout else None
        found = {"val_loss": loss_of(model, val_texts, val_thumbs, layout_head).mean().item()}
        if layout:
            found["binding"] = binding(model, layout_head, lambda t: tokens(t)[0],
                                       [(image, true, rev) for image, true, rev, _ in relation_scenes])
            layout_head.train()
        model.train()
        if at is not None:
            accelerator.log(found, step=at)
            accelerator.print(f"step {at}: held-out {cfg.objective} loss {found['val_loss']:.4f}"
                              + (f", binding {found['binding']:.3f}" if layout else ""))
        return found

    # 3. Resume: model, optimizer, LR schedule and RNG states; the step is the data position
    progress = resume_progress(accelerator, cfg.resume, out)
    step = progress["step"]
    clock = RunClock(accelerator, None, progress)
    stop = min(cfg.max_steps, cfg.stop_after or cfg.max_steps)
    bar = tqdm(total=cfg.max_steps, initial=step, desc="pretrain_text_encoder",
               disable=not accelerator.is_main_process)
    after = AfterStep(accelerator, clock, out, cfg, measure, bar, cfg.batch_size * accelerator.num_processes)

    # 4. Training loop
    while step < stop:
        rank, world = accelerator.process_index, accelerator.num_processes
        texts = captions.batch(step, cfg.batch_size, rank, world)
        thumbs = (captions.thumbnail_batch(step, cfg.batch_size, cfg.layout_grid, rank, world).to(accelerator.device)
                  if layout else None)  # (B, 3, G, G)
        loss = loss_of(text_encoder, texts, thumbs, head)  # (B,)
        accelerator.backward(loss.mean())
        accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        lr_schedule.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if after(step, 0, step, loss=loss.mean().item(), lr=lr_schedule.get_last_lr()[0]):
            break
    bar.close()
    clock.stop()

    # 5. The final text_encoder/ and tokenizer/ folders (for "layout" its head in layout_head/), and the run summary
    if accelerator.is_main_process:
        final = measure(None)
        model = accelerator.unwrap_model(text_encoder).eval()
        model.save_pretrained(out / "text_encoder")
        tokenizer.save_pretrained(out / "tokenizer")
        if layout:
            accelerator.unwrap_model(head).save_pretrained(out / "layout_head")
        write_summary(run_summary(accelerator, clock, step=step, first_step=progress["step"],
                                  images_seen=after.images_seen, objective=cfg.objective, **final,
                                  parameters=sum(p.numel() for p in model.parameters())), out)
        accelerator.print(f"held-out {cfg.objective} loss {final['val_loss']:.4f}"
                          + (f", binding {final['binding']:.3f}" if layout else "") + f"; wrote {out / 'text_encoder'}")
    accelerator.end_training()


if __name__ == "__main__":
    from latentdiff.training.config import run_entry_point

    run_entry_point(main)
