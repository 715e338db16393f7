"""The VAE ceiling (latentdiff.eval.reference, `latentdiff eval --reference`), ShapesWorld drawn on the fly
(latentdiff.data.procedural) and the VAE's reconstruction loss (training/vae_loss.py)."""

from __future__ import annotations

import json

import pytest
import torch

from latentdiff import build_pipeline
from latentdiff.cli import main
from latentdiff.data.dataset import DataConfig, build_dataloader
from latentdiff.data.procedural import ShapesWorldDataset, ShapesWorldStream
from latentdiff.data.shapes import PLACES, make_caption, place_holds, render, scene_at
from latentdiff.eval.reference import evaluate_reference, prompt_scenes, psnr_db, to_images, to_tensor
from latentdiff.training.vae_loss import ReconstructionLoss, foreground_weight

INDIST, HELDOUT = "assets/prompts/indist.jsonl", "assets/prompts/heldout.jsonl"


@pytest.mark.parametrize("prompts", [INDIST, HELDOUT])
def test_rendered_scenes_of_every_prompt_pass_the_scorer(prompts):
    result = evaluate_reference(prompts, "render")
    assert result.overall == 1.0 and all(v == 1.0 for v in result.categories.values())
    assert sum(b for _, b in result.counts.values()) == 120


def test_reference_scenes_are_the_prompt_sets_own():
    prompt, spec, source = prompt_scenes(INDIST)[5]
    scene = scene_at(source["index"], source["seed"], source["split"])
    assert scene.caption == prompt and scene.category == spec.category


class _Identity(torch.nn.Module):
    """A VAE whose latent is the image itself: the ceiling of a perfect autoencoder."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))

    def encode(self, x):
        class Dist:
            def mode(self_):
                return x
        return type("Out", (), {"latent_dist": Dist()})()

    def decode(self, z):
        return type("Out", (), {"sample": z})()


def test_vae_reference_round_trips_through_the_vae_and_reports_psnr():
    perfect = evaluate_reference(INDIST, "vae", _Identity())
    assert perfect.overall == 1.0 and perfect.settings["psnr_db"] > 60  # only 8-bit rounding left
    random_vae = build_pipeline("tiny").vae.eval()
    blurred = evaluate_reference(INDIST, "vae", random_vae, size=16)
    assert blurred.overall < 0.2 and blurred.settings["psnr_db"] < 20  # an untrained VAE loses the objects


def test_tensor_round_trip_and_psnr():
    images = [render(scene_at(i), size=32) for i in range(3)]
    x = to_tensor(images)
    assert x.shape == (3, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert [list(im.getdata()) for im in to_images(x)] == [list(im.getdata()) for im in images]
    assert torch.isinf(psnr_db(x, x)).logical_not().all() and (psnr_db(x, x) > 100).all()


def test_reference_needs_scenes_and_a_vae(tmp_path):
    hand = tmp_path / "hand.jsonl"
    hand.write_text(json.dumps({"prompt": "a red circle"}) + "\n")
    with pytest.raises(ValueError, match="no \"source\" scene to render"):
        evaluate_reference(hand, "render")
    with pytest.raises(ValueError, match="--reference vae needs a model"):
        evaluate_reference(INDIST, "vae")
    with pytest.raises(ValueError, match="--reference must be one of render, vae"):
        evaluate_reference(INDIST, "pixels")


def test_eval_reference_command_prints_the_table_and_writes_json(tmp_path, capsys):
    assert main(["eval", "--prompts", HELDOUT, "--reference", "render", "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "reference render" in out and "overall         1.000" in out
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["overall"] == 1.0 and rep["metrics"]["heldout/overall"] == 1.0 and (tmp_path / "r.png").is_file()


def test_eval_reference_vae_takes_a_vae_folder_alone_or_the_pipeline_holding_it(tmp_path, capsys):
    pipe = build_pipeline("tiny", seed=0)
    pipe.save_pretrained(tmp_path / "pipe")
    pipe.vae.save_pretrained(tmp_path / "vae")  # train_vae's OUTPUT/vae, assets/vae-shapes
    for name in ("vae", "pipe"):
        argv = ["eval", "--model", str(tmp_path / name), "--prompts", INDIST, "--reference", "vae",
                "--json", str(tmp_path / f"{name}.json")]
        assert main(argv) == 0
    assert f"{tmp_path / 'vae'} (VAE)" in capsys.readouterr().out
    alone, in_pipe = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("vae", "pipe"))
    assert alone["overall"] == in_pipe["overall"] and alone["categories"] == in_pipe["categories"]
    assert alone["settings"]["psnr_db"] == pytest.approx(in_pipe["settings"]["psnr_db"])
    direct = evaluate_reference(INDIST, "vae", pipe.vae, size=16)
    assert alone["overall"] == direct.overall


# ---------------------------------------------------------------------------------------------- procedural data
def test_shapesworld_stream_parses_and_refuses_bad_options():
    assert ShapesWorldStream.parse("shapesworld:heldout?seed=3&n=10&fresh=false") == ShapesWorldStream(
        "heldout", 3, 10, False)
    assert ShapesWorldStream.parse("shapesworld:") == ShapesWorldStream()
    for bad, match in (("shapesworld:val", "unknown split"), ("shapesworld:train?size=3", "unknown option"),
                       ("shapesworld:train?n=0", "n >= 1"), ("shapesworld:train?seed=x", "whole numbers"),
                       ("shapesworld:train?fresh=maybe", "fresh must be true or false"),
                       ("shapesworld:train?templates=0", "templates >= 1"),
                       ("shapesworld:train?templates=two", "whole numbers"),
                       ("shapesworld:train?categories=position,squares", "categories must name"),
                       ("shapesworld:train?categories=", "categories must name"),
                       ("shapesworld:train?position_pairs=same", "position_pairs must be one of any, same_shape")):
        with pytest.raises(ValueError, match=match):
            ShapesWorldStream.parse(bad)


def test_fresh_scenes_change_every_epoch_and_a_fixed_set_does_not():
    fresh = ShapesWorldDataset(ShapesWorldStream("train", 0, 8, True), 16)
    fixed = ShapesWorldDataset(ShapesWorldStream("train", 0, 8, False), 16)
    assert fresh[(2, 0)]["caption"] == fixed[(2, 0)]["caption"] == fixed[(2, 5)]["caption"]
    assert fresh[(2, 1)]["key"] != fresh[(2, 0)]["key"] and fixed[(2, 1)]["key"] == fixed[(2, 0)]["key"]
    sample = fresh[(3, 2)]
    assert sample["caption"] == scene_at(2 * 8 + 3).caption and sample["pixel_values"].shape == (3, 16, 16)
    torch.testing.assert_close(sample["pixel_values"], to_tensor([render(scene_at(19), size=16)])[0])


def test_both_splits_alternate_scene_by_scene():
    both = ShapesWorldDataset(ShapesWorldStream("both", 0, 8, False), 16)
    assert both[(4, 0)]["caption"] == scene_at(4, 0, "train").caption
    assert both[(5, 0)]["caption"] == scene_at(5, 0, "heldout").caption


def test_templates_option_rewords_captions_and_keeps_the_images():
    assert ShapesWorldStream.parse("shapesworld:train?templates=2").templates == 2
    one = ShapesWorldDataset(ShapesWorldStream("train", 0, 200, False, templates=1), 16)
    every = ShapesWorldDataset(ShapesWorldStream("train", 0, 200, False), 16)
    for i in range(200):
        scene = scene_at(i)
        category = scene.template_id.split("/")[0]
        assert one[i]["caption"] == make_caption(category, 0, scene.objects, scene.relation)
        assert every[i]["caption"] == scene.caption
    assert torch.equal(one[7]["pixel_values"], every[7]["pixel_values"])
    assert any(one[i]["caption"] != every[i]["caption"] for i in range(200))  # some scenes had other wordings


def test_categories_option_draws_only_those_scenes_under_their_own_cache_keys():
    stream = ShapesWorldStream.parse("shapesworld:train?n=60&fresh=false&categories=position,counting")
    assert stream.categories == ("position", "counting")
    only = ShapesWorldDataset(stream, 16)
    every = ShapesWorldDataset(ShapesWorldStream("train", 0, 60, False), 16)
    kinds = {only.scene(i, 0)[1].category for i in range(60)}
    assert kinds == {"position", "counting"} and len({every.scene(i, 0)[1].category for i in range(60)}) == 6
    sample = only[4]
    scene = only.scene(4, 0)[1]
    assert sample["caption"] == scene.caption and sample["key"] != every[4]["key"]  # a shared cache cannot mix them
    torch.testing.assert_close(sample["pixel_values"], to_tensor([render(scene, size=16)])[0])


def test_same_shape_position_pairs_leave_only_the_relation_to_tell_the_objects_apart():
    stream = ShapesWorldStream.parse("shapesworld:train?n=40&fresh=false&categories=position&position_pairs=same_shape")
    assert stream.position_pairs == "same_shape"
    same = ShapesWorldDataset(stream, 16)
    anyp = ShapesWorldDataset(ShapesWorldStream.parse("shapesworld:train?n=40&fresh=false&categories=position"), 16)
    for i in range(40):
        a, b = same.scene(i, 0)[1].objects
        assert a.shape == b.shape and a.color != b.color
    assert any(x.shape != y.shape for x, y in (anyp.scene(i, 0)[1].objects for i in range(40)))
    keys = {same[i]["key"] for i in range(3)}
    assert keys.isdisjoint(anyp[i]["key"] for i in range(3))  # a shared cache cannot mix them
    # the default stream's scenes and keys are those of before the option existed
    assert ShapesWorldStream.parse("shapesworld:train?n=5").scene_config is None
    assert ShapesWorldDataset(ShapesWorldStream("train", 0, 5, False), 16)[1]["key"] == "shapesworld-train-0-1-16"


def test_absolute_position_scenes_name_the_half_their_one_object_is_in():
    from latentdiff.eval.relation_use import position_scenes, scenes_like
    source = "shapesworld:train?n=64&fresh=false&categories=position&position_pairs=absolute"
    data = ShapesWorldDataset(ShapesWorldStream.parse(source), 32)
    phrases = {"top": "at the top", "bottom": "at the bottom", "left": "on the left", "right": "on the right"}
    seen = set()
    for i in range(64):
        scene = data.scene(i, 0)[1]
        (obj,) = scene.objects
        assert scene.relation in PLACES and place_holds(obj, scene.relation)
        assert scene.caption.endswith(phrases[scene.relation]) and obj.color in scene.caption
        ink = (data[i]["pixel_values"] - data[i]["pixel_values"][:, :1, :1]).abs().amax(0) > 0.2  # (32, 32)
        ys, xs = ink.nonzero(as_tuple=True)
        half = {"top": ys < 16, "bottom": ys >= 16, "left": xs < 16, "right": xs >= 16}[scene.relation]
        assert len(ys) > 20 and half.all(), (scene.caption, ys, xs)  # every object pixel in the named half
        seen.add(scene.relation)
    assert seen == set(PLACES)
    assert not place_holds(scene_at(0, config=data.scene_config).objects[0].__class__(
        "red", "circle", "small", 0.5, 0.5, 0.1, (255, 0, 0)), "top")  # straddling the middle: in no half
    with pytest.raises(ValueError, match="unknown place"):
        place_holds(obj, "middle")
    # relation use reverses the place and keeps the rest; a run on such data is measured on its own kind
    image, true, reversed_, recoloured = position_scenes(source, 32, 1)[0]
    assert true.replace("top", "X").replace("bottom", "top").replace("X", "bottom").replace(
        "left", "X").replace("right", "left").replace("X", "right") == reversed_ and true != reversed_
    assert scenes_like(source).endswith("&categories=position&position_pairs=absolute")
    assert scenes_like("shapesworld:train?n=5") is None and scenes_like("some/folder") is None


def test_a_shapesworld_loader_batches_like_a_folder():
    loader = build_dataloader(DataConfig(train_data="shapesworld:train?n=20", resolution=16), 8, drop_last=True)
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (8, 3, 16, 16) and len(batch["captions"]) == 8 and batch["skipped"] == []
    assert len(loader) == 2


# ---------------------------------------------------------------------------------------------- VAE loss
def test_foreground_weight_marks_object_pixels():
    x = to_tensor([render(scene_at(0), size=32)])
    w = foreground_weight(x, 5.0)
    assert w.shape == (1, 1, 32, 32) and set(w.unique().tolist()) == {1.0, 5.0}
    assert w[0, 0, 0, 0] == 1.0  # a border pixel is background
    assert torch.equal(foreground_weight(x, 1.0), torch.ones(1, 1, 32, 32))


def test_reconstruction_loss_terms():
    x = to_tensor([render(scene_at(i), size=16) for i in range(2)])
    rec = x + 0.1
    kl = torch.tensor([2.0, 4.0])
    mse = ReconstructionLoss("mse", kl_weight=0.0)(rec, x, kl)
    torch.testing.assert_close(mse, torch.full((2,), 0.01))
    l1 = ReconstructionLoss("l1", kl_weight=0.5)(rec, x, kl)
    torch.testing.assert_close(l1, torch.tensor([0.1 + 1.0, 0.1 + 2.0]))
    # a constant offset has no edges: the gradient term is 0; object weights leave a uniform error unchanged
    torch.testing.assert_close(ReconstructionLoss("l1", 5.0, 1.0, 0.0)(rec, x, kl), torch.full((2,), 0.1))
    with pytest.raises(ValueError, match="--loss must be one of mse, l1, l1\\+mse"):
        ReconstructionLoss("huber")
    with pytest.raises(ValueError, match="--object-weight must be >= 0"):
        ReconstructionLoss("l1", object_weight=-1)


def test_fresh_scenes_are_never_cached_and_a_fixed_set_is(tmp_path, capsys):
    from accelerate import Accelerator

    from latentdiff.training.data import TrainingData

    vae = build_pipeline("tiny").vae
    fresh = TrainingData(DataConfig("shapesworld:train?n=16", resolution=16), Accelerator(cpu=True), 4, vae=vae,
                         cache_dir=tmp_path)
    assert fresh.latent_cache is None and "encoded every step, not cached" in capsys.readouterr().out
    fixed = TrainingData(DataConfig("shapesworld:train?n=16&fresh=false", resolution=16), Accelerator(cpu=True), 4,
                         vae=vae, cache_dir=tmp_path)
    assert fixed.latent_cache is not None
    z = fixed.latents(next(iter(fixed.loader)))
    assert z.shape == (4, 4, 8, 8) and fixed.latent_cache.misses == 4
