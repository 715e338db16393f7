"""Relation use: does the UNet read the relation word of a position caption?

The text probe (text_probe.py) says whether "above" and "below" reach the UNet as different embeddings; this says
whether the UNet *uses* the difference. On position scenes ("a red circle above a blue star"), the held-out
denoising loss with the true caption is compared with the loss on the same scenes, under the same timesteps and
noise, with the relation reversed ("... below a blue star"; left of <-> right of; for the one-object scenes of
`position_pairs=absolute`, "at the top" <-> "at the bottom", "on the left" <-> "on the right"). A model that
places objects by their relation word denoises worse when told the wrong one; a model that ignores the word scores both the same.

- `gap`: mean loss with the reversed relation / mean loss with the true one - 1 (0: the word is ignored);
- `gap_noisier_half`: the same over the draws at the noisier half of the drawn timesteps, where the layout of a
  picture is decided (Ho et al. 2020, sec. 4.3 and fig. 6: coarse structure first, details last);
- `true_lower`: the fraction of (scene, draw) pairs where the true caption's loss is the lower, ties counted half
  (0.5: the word makes no difference or a random one);
- `control_gap`, `control_gap_noisier_half`: the same gaps with the first object's colour word replaced instead
  (by the first palette colour neither object has), on the same scenes, timesteps and noise: the size of a gap
  for a word the model does read, so that a relation gap near 0 is read against it.

Measured with denoising_loss.py's plain objective (uniform timesteps, no weighting), so numbers compare between
models of one process and prediction target (`space`). Reversing keeps every other word, both objects and their
order, so only the relation differs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from latentdiff.data.procedural import ShapesWorldDataset, ShapesWorldStream, is_procedural
from latentdiff.data.shapes import ShapesWorldConfig, make_caption
from latentdiff.eval.denoising_loss import (caption_batches, embedded_batches, loss_space, per_sample_losses,
                                            plain_objective)

REVERSED = {"above": "below", "below": "above", "left_of": "right_of", "right_of": "left_of",
            "top": "bottom", "bottom": "top", "left": "right", "right": "left"}  # the last four: PLACES
# Position scenes of the training split the speedrun never trains on (seed 1, as its loss scenes)
SCENES = "shapesworld:train?seed=1&n=4096&fresh=false"


def scenes_like(train_data: str | None) -> str | None:
    """Relation-use scenes of the kind a ShapesWorld training stream's position scenes are, when that is not the
    default kind (`position_pairs=same_shape` or `absolute`); None otherwise (SCENES then stands for the run)."""
    if not train_data or not is_procedural(train_data):
        return None
    pairs = ShapesWorldStream.parse(train_data).position_pairs
    return None if pairs == "any" else f"{SCENES}&categories=position&position_pairs={pairs}"


def position_scenes(source: str, resolution: int, limit: int) -> list[tuple[torch.Tensor, str, str, str]]:
    """[(image (3, H, W), true caption, reversed caption, recoloured caption)] of the first `limit` position scenes
    of `source` (recoloured: the first object's colour word replaced by the first palette colour neither has)."""
    data = ShapesWorldDataset(ShapesWorldStream.parse(source), resolution)
    palette = list((data.scene_config or ShapesWorldConfig()).colors)
    out = []
    for pos in range(len(data)):
        _, scene = data.scene(pos, 0)
        if scene.relation is None:
            continue
        category, k = scene.template_id.split("/")
        relation = REVERSED[scene.relation]
        flipped = dataclasses.replace(scene, relation=relation,
                                      caption=make_caption(category, int(k), scene.objects, relation))
        other = next(c for c in palette if c not in {o.color for o in scene.objects})
        objects = [dataclasses.replace(scene.objects[0], color=other), *scene.objects[1:]]
        recoloured = dataclasses.replace(scene, objects=objects,
                                         caption=make_caption(category, int(k), objects, scene.relation))
        sample = data[pos]  # the image and caption a training run gets; data.caption words the others alike
        out.append((sample["pixel_values"], sample["caption"], data.caption(flipped), data.caption(recoloured)))
        if len(out) == limit:
            break
    return out


def relation_use(pipe, source: str = SCENES, *, training_config: dict[str, Any] | None = None, scenes: int = 256,
                 draws: int = 4, seed: int = 0, batch_size: int = 64) -> dict[str, Any]:
    """{"gap", "gap_noisier_half", "true_lower", "space", "scenes", ...} of `pipe` on the first `scenes` position
    scenes of `source` (see the module docstring). `pipe` and `training_config` as in `denoising_loss`."""
    if scenes < 1 or draws < 1 or batch_size < 1:
        raise ValueError(f"relation_use: scenes, draws and batch_size must be >= 1, got {scenes}, {draws} and "
                         f"{batch_size}")
    training_config, objective = plain_objective(pipe, training_config)
    found = position_scenes(source, int(training_config["resolution"]), scenes)
    if not found:
        raise ValueError(f"relation_use: {source} has no position scenes; use a ShapesWorld stream with more scenes")

    # 1. The scenes' latents, once, with the true, the reversed and the recoloured captions' embeddings
    true = embedded_batches(pipe, [(row[0], row[1]) for row in found], batch_size)

    def recaptioned(i: int) -> list:  # the same latents with column i's captions
        return [(z0, text) for (z0, _), text in zip(true, caption_batches(pipe, [row[i] for row in found], batch_size))]

    rev, recoloured = recaptioned(2), recaptioned(3)

    # 2. The plain objective on each, under the same timesteps and noise
    loss_true, t = per_sample_losses(pipe.unet, objective, true, draws=draws, seed=seed)  # (draws, N)
    loss_rev, t_rev = per_sample_losses(pipe.unet, objective, rev, draws=draws, seed=seed)
    loss_col, t_col = per_sample_losses(pipe.unet, objective, recoloured, draws=draws, seed=seed)
    assert torch.equal(t, t_rev) and torch.equal(t, t_col), "the passes must draw the same timesteps"
    noisier = t >= t.median()  # (draws, N): the noisier half of the drawn timesteps

    def gap(mask: torch.Tensor, other: torch.Tensor = loss_rev) -> float:
        return (other[mask].double().mean() / loss_true[mask].double().mean() - 1).item()

    true_lower = (loss_true < loss_rev).double() + 0.5 * (loss_true == loss_rev).double()  # (draws, N)
    return {"gap": gap(torch.ones_like(noisier)), "gap_noisier_half": gap(noisier),
            "true_lower": true_lower.mean().item(), "control_gap": gap(torch.ones_like(noisier), loss_col),
            "control_gap_noisier_half": gap(noisier, loss_col), "space": loss_space(training_config),
            "source": source, "scenes": len(found), "draws": draws, "seed": seed}
