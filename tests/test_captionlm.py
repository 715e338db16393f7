"""Text-encoder pretraining on captions alone: the next-token objective (latentdiff/captionlm) and its entry point
(training/pretrain_text_encoder.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from latentdiff.captionlm import next_token_loss
from latentdiff.presets import build_components
from latentdiff.training.pretrain_text_encoder import Captions, main


@pytest.fixture(scope="module")
def tiny():
    parts = build_components("tiny")
    return parts["tokenizer"], parts["text_encoder"]


def test_loss_is_the_cross_entropy_of_the_next_real_token(tiny):
    tokenizer, encoder = tiny
    t = tokenizer(["a red circle", "two blue stars above a square"], padding="max_length", return_tensors="pt")
    loss = next_token_loss(encoder, t.input_ids, t.attention_mask)  # (2,)
    hidden = encoder(t.input_ids).last_hidden_state
    logits = hidden @ encoder.get_input_embeddings().weight.T  # tied head
    for b in range(2):
        n = int(t.attention_mask[b].sum())  # real tokens: BOS .. EOS
        expected = F.cross_entropy(logits[b, : n - 1], t.input_ids[b, 1:n])
        assert loss[b].item() == pytest.approx(expected.item(), rel=1e-5)
    # padding after the caption is neither input that counts (causal) nor target
    ids = t.input_ids.clone()
    ids[0, int(t.attention_mask[0].sum()):] = 5
    assert torch.allclose(next_token_loss(encoder, ids, t.attention_mask), loss)
    # so pretraining pads to the batch's longest caption: the same loss as at the pipeline's 77 tokens
    short = tokenizer(["a red circle", "two blue stars above a square"], padding="longest", return_tensors="pt")
    assert short.input_ids.shape[1] < t.input_ids.shape[1]
    assert torch.allclose(next_token_loss(encoder, short.input_ids, short.attention_mask), loss, atol=1e-6)


def test_captions_are_a_sequence_of_the_streams_scenes_or_the_files_lines(tmp_path):
    stream = Captions("shapesworld:train?n=4&fresh=false&templates=1")
    assert stream.batch(1, 2) == [stream[2], stream[3]] and stream[5] == stream[1]
    (tmp_path / "c.txt").write_text("a cat\n\na dog\n", encoding="utf-8")
    assert Captions(str(tmp_path / "c.txt")).batch(0, 3) == ["a cat", "a dog", "a cat"]


def test_pretraining_learns_saves_a_plain_encoder_and_resumes_exactly(tmp_path):
    common = ["--captions", "shapesworld:train", "--preset", "tiny", "--batch-size", "16", "--max-steps", "6",
              "--learning-rate", "3e-3", "--lr-warmup-steps", "0", "--checkpoint-every", "3",
              "--validation-every", "100", "--report-to", "none"]
    main([*common, "--output-dir", str(tmp_path / "full")])
    main([*common, "--output-dir", str(tmp_path / "cut"), "--stop-after", "3"])
    main([*common, "--output-dir", str(tmp_path / "cut"), "--resume", "latest"])
    full = load_file(tmp_path / "full" / "text_encoder" / "model.safetensors")
    cut = load_file(tmp_path / "cut" / "text_encoder" / "model.safetensors")
    assert full.keys() == cut.keys() and all(torch.equal(full[k], cut[k]) for k in full)
    summary = json.loads((tmp_path / "full" / "training_summary.json").read_text())
    vocab = len(build_components("tiny")["tokenizer"])
    assert summary["steps"] == 6 and summary["val_loss"] < math.log(vocab) - 0.2  # ln(vocab): a guess at random
    from transformers import CLIPTextModel, CLIPTokenizer

    CLIPTextModel.from_pretrained(tmp_path / "full" / "text_encoder")
    CLIPTokenizer.from_pretrained(tmp_path / "full" / "tokenizer")


def test_bad_captions_are_one_line_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="--captions"):
        main(["--captions", str(tmp_path / "none.txt"), "--output-dir", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


@pytest.mark.usefixtures("fresh_accelerator_state")
def test_a_from_scratch_run_starts_from_the_pretrained_encoder_and_keeps_it_frozen(tmp_path):
    from latentdiff import build_pipeline
    from latentdiff.data.shapes import write_dataset
    from latentdiff.training import train_text_to_image
    from latentdiff.training.config import parse_config

    main(["--captions", "shapesworld:train", "--preset", "tiny", "--batch-size", "8", "--max-steps", "2",
          "--output-dir", str(tmp_path / "lm"), "--report-to", "none", "--text-width", "64", "--text-heads", "4"])
    write_dataset(tmp_path / "data", n=8, size=16, seed=0, progress=False)
    build_pipeline("tiny").vae.save_pretrained(tmp_path / "vae")
    argv = ["--preset", "tiny", "--vae", str(tmp_path / "vae"), "--train-data", str(tmp_path / "data"),
            "--resolution", "16", "--batch-size", "4", "--max-steps", "2", "--output-dir", str(tmp_path / "run"),
            "--text-encoder", str(tmp_path / "lm"), "--validation-steps", "1", "--report-to", "none"]
    cfg = parse_config(train_text_to_image.TextToImageConfig, argv)
    assert cfg.train_text_encoder is False  # frozen by default: its embeddings are cached
    train_text_to_image.main(argv)
    pretrained = load_file(tmp_path / "lm" / "text_encoder" / "model.safetensors")
    final = load_file(tmp_path / "run" / "pipeline" / "text_encoder" / "model.safetensors")
    assert all(torch.equal(pretrained[k], final[k]) for k in pretrained)
    unet = json.loads((tmp_path / "run" / "pipeline" / "unet" / "config.json").read_text())
    assert unet["cross_attention_dim"] == 64  # the UNet attends to the pretrained encoder's width
    with pytest.raises(ValueError, match="brings its own size"):
        parse_config(train_text_to_image.TextToImageConfig, [*argv, "--text-layers", "3"])
    with pytest.raises(ValueError, match="has no text_encoder/config.json"):
        parse_config(train_text_to_image.TextToImageConfig, [*argv[:-4], "--text-encoder", str(tmp_path)])


# ------------------------------------------------------------------------------------------- layout objective
def test_layout_loss_is_the_thumbnails_mean_squared_error_whatever_the_padding(tiny):
    from latentdiff.captionlm.layout import LayoutHead, binding, layout_loss, thumbnails

    tokenizer, encoder = tiny
    torch.manual_seed(0)
    head = LayoutHead(encoder.config.hidden_size, grid=4)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    thumbs = thumbnails(images, 4)  # (2, 3, 4, 4)
    assert thumbs.shape == (2, 3, 4, 4)
    torch.testing.assert_close(thumbs[1, 2, 3, 0], images[1, 2, 12:16, 0:4].mean())
    texts = ["a red circle above a blue star", "two green squares"]
    full = tokenizer(texts, padding="max_length", return_tensors="pt").input_ids
    loss = layout_loss(encoder, head, full, thumbs)  # (2,)
    expected = (head(encoder(full).last_hidden_state) - thumbs).square().flatten(1).mean(1)
    torch.testing.assert_close(loss, expected)
    assert loss.shape == (2,) and (loss > 0).all()
    # binding: a caption "reversed" into itself ties, which counts half
    tokenize = lambda t: tokenizer(t, padding="longest", return_tensors="pt").input_ids
    assert binding(encoder, head, tokenize, [(images[0], texts[0], texts[0])]) == 0.5
    with pytest.raises(ValueError, match="divisible"):
        LayoutHead(30, grid=4, heads=4)


def test_stream_captions_follow_the_streams_own_scenes():
    position = Captions("shapesworld:train?n=8&fresh=false&categories=position&position_pairs=absolute")
    assert all(any(p in position[j] for p in ("at the top", "at the bottom", "on the left", "on the right"))
               for j in range(8))
    assert position.thumbnail(3, 8).shape == (3, 8, 8) and position.thumbnail_batch(0, 2, 4).shape == (2, 3, 4, 4)


def test_layout_pretraining_learns_binds_saves_a_plain_encoder_and_resumes_exactly(tmp_path):
    common = ["--captions", "shapesworld:train?n=64&fresh=false&categories=position", "--objective", "layout",
              "--layout-grid", "4", "--preset", "tiny", "--batch-size", "16", "--learning-rate", "3e-3",
              "--lr-warmup-steps", "0", "--checkpoint-every", "3", "--validation-every", "100", "--report-to", "none"]
    main([*common, "--max-steps", "6", "--output-dir", str(tmp_path / "full")])
    main([*common, "--max-steps", "6", "--output-dir", str(tmp_path / "cut"), "--stop-after", "3"])
    main([*common, "--max-steps", "6", "--output-dir", str(tmp_path / "cut"), "--resume", "latest"])
    full = load_file(tmp_path / "full" / "text_encoder" / "model.safetensors")
    cut = load_file(tmp_path / "cut" / "text_encoder" / "model.safetensors")
    assert full.keys() == cut.keys() and all(torch.equal(full[k], cut[k]) for k in full)  # the head resumed too
    assert not any("queries" in k or "attention.in_proj" in k for k in full)  # the encoder's folder is plain CLIP
    from latentdiff.captionlm.layout import LayoutHead

    heads = [LayoutHead.from_pretrained(tmp_path / run / "layout_head") for run in ("full", "cut")]  # kept beside it
    assert heads[0].config.grid == 4 and all(torch.equal(a, b) for a, b in zip(*(h.state_dict().values() for h in heads)))
    main([*common, "--max-steps", "1", "--output-dir", str(tmp_path / "one")])
    summary = json.loads((tmp_path / "full" / "training_summary.json").read_text())
    first = json.loads((tmp_path / "one" / "training_summary.json").read_text())
    assert summary["objective"] == "layout" and 0.0 <= summary["binding"] <= 1.0
    assert summary["val_loss"] < first["val_loss"]  # the thumbnails are learnt from the captions


def test_layout_needs_pictures_and_a_known_objective_before_any_work(tmp_path):
    (tmp_path / "c.txt").write_text("a cat\n", encoding="utf-8")
    with pytest.raises(ValueError, match="--objective layout needs each caption's picture"):
        main(["--captions", str(tmp_path / "c.txt"), "--objective", "layout", "--output-dir", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="--objective must be one of next_token, layout"):
        main(["--captions", "shapesworld:train", "--objective", "mlm", "--output-dir", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def _layout_run(tmp_path, *extra: str, out: str = "run") -> list[str]:
    """A tiny from-scratch text-to-image run whose text encoder starts from a layout-pretrained one (lm/)."""
    from latentdiff import build_pipeline
    from latentdiff.data.shapes import write_dataset

    if not (tmp_path / "lm").exists():
        main(["--captions", "shapesworld:train?n=16&fresh=false", "--objective", "layout", "--layout-grid", "4",
              "--preset", "tiny", "--batch-size", "8", "--max-steps", "2", "--output-dir", str(tmp_path / "lm"),
              "--report-to", "none", "--text-width", "64", "--text-heads", "4", "--validation-every", "100"])
        write_dataset(tmp_path / "data", n=8, size=16, seed=0, progress=False)
        build_pipeline("tiny").vae.save_pretrained(tmp_path / "vae")
    return ["--preset", "tiny", "--vae", str(tmp_path / "vae"), "--train-data", str(tmp_path / "data"),
            "--resolution", "16", "--batch-size", "4", "--max-steps", "4", "--output-dir", str(tmp_path / out),
            "--text-encoder", str(tmp_path / "lm"), "--train-text-encoder", "--validation-steps", "1",
            "--validation-every", "100", "--checkpoint-every", "2", "--report-to", "none", *extra]


def test_the_layout_objective_trains_the_encoder_beside_the_unet_from_the_saved_head_and_resumes_exactly(tmp_path):
    from latentdiff.captionlm.layout import LayoutHead
    from latentdiff.training import train_text_to_image as t2i
    from latentdiff.training.config import parse_config

    argv = _layout_run(tmp_path, "--layout-loss-weight", "1")
    cfg = parse_config(t2i.TextToImageConfig, argv)
    encoder = t2i.load_models(cfg)["text_encoder"]
    head = t2i.layout_head(cfg, encoder)
    saved = LayoutHead.from_pretrained(tmp_path / "lm" / "layout_head")
    assert head.config.grid == 4 != cfg.layout_grid  # the saved head's grid, not --layout-grid's default
    assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(), saved.state_dict().values()))
    assert t2i.layout_head(parse_config(t2i.TextToImageConfig, _layout_run(tmp_path)), encoder) is None

    t2i.main(argv)
    t2i.main(_layout_run(tmp_path, "--layout-loss-weight", "1", "--stop-after", "2", out="cut"))
    t2i.main(_layout_run(tmp_path, "--layout-loss-weight", "1", "--resume", "latest", out="cut"))
    t2i.main(_layout_run(tmp_path, out="plain"))
    weights = {run: load_file(tmp_path / run / "pipeline" / "text_encoder" / "model.safetensors")
               for run in ("run", "cut", "plain")}
    assert all(torch.equal(weights["run"][k], weights["cut"][k]) for k in weights["run"])  # the head resumed too
    assert not all(torch.equal(weights["run"][k], weights["plain"][k]) for k in weights["run"])  # the loss counts
    assert not (tmp_path / "run" / "pipeline" / "layout_head").exists()  # a training aid: not in the model folder


def test_the_layout_objective_needs_an_encoder_that_learns(tmp_path):
    from latentdiff.training import train_text_to_image as t2i
    from latentdiff.training.config import parse_config

    argv = _layout_run(tmp_path, "--layout-loss-weight", "1")
    frozen = [a for a in argv if a != "--train-text-encoder"]
    with pytest.raises(ValueError, match="--layout-loss-weight trains the text encoder"):
        parse_config(t2i.TextToImageConfig, frozen)
    with pytest.raises(ValueError, match="--layout-loss-weight must be >= 0"):
        parse_config(t2i.TextToImageConfig, [*argv, "--layout-loss-weight", "-1"])
