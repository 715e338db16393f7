"""Hostile input to `latentdiff push` (issue 17): links out of the model folder, stray files, FIFOs, bad repo ids.

Staging copies only regular files inside the model folder that a diffusers folder holds; everything else is left
out and named. All offline: dry runs, no token.
"""

import os
import shutil
from pathlib import Path

import pytest

from latentdiff import build_pipeline, hub

SECRET = "s3cret-do-not-upload-7f3a"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "model"
    build_pipeline("tiny", seed=0).save_pretrained(folder)
    return folder


@pytest.fixture
def no_login(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)


def all_bytes(folder):
    return b"".join(p.read_bytes() for p in Path(folder).rglob("*") if p.is_file())


def test_links_out_stray_files_and_fifos_are_left_out_and_named(tiny_dir, tmp_path, no_login):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    (model / "text_encoder" / "notes.txt").symlink_to(secret)          # a link to a file outside
    (model / "unet" / "hostname.json").symlink_to(secret)              # ... with an allowed name
    (model / "vae" / "id_rsa").write_text(SECRET)                      # a stray regular file
    (model / "vae" / "train.log").write_text(SECRET)
    (model / "tokenizer" / "outside").symlink_to(tmp_path, target_is_directory=True)  # a linked folder
    (model / "unet" / "dangling.json").symlink_to(tmp_path / "nothing-here")
    os.mkfifo(model / "scheduler" / "pipe.json")                       # would hang a copy that opens it
    # a link that stays inside the model folder is a file of the model: copied as the file it points to
    (model / "unet" / "config.json").rename(model / "unet-config.json")
    (model / "unet" / "config.json").symlink_to(model / "unet-config.json")

    lines = []
    result = hub.push_folder(model, "someone/tiny", dry_run=True, samples=False, stage_dir=tmp_path / "stage",
                             log=lines.append)
    staged = {f.path for f in result.files}
    assert staged == {"README.md", "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
                      "text_encoder/model.safetensors", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json",
                      "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
                      "vae/diffusion_pytorch_model.safetensors"}
    assert SECRET.encode() not in all_bytes(tmp_path / "stage")
    assert not (tmp_path / "stage" / "unet" / "config.json").is_symlink()
    assert result.staged.validated  # stock diffusers still loads what is left
    notes = [line for line in lines if line.startswith("note: ")]
    assert sorted(notes) == sorted([
        "note: left out text_encoder/notes.txt (a link to a file outside the model folder)",
        "note: left out unet/hostname.json (a link to a file outside the model folder)",
        "note: left out unet/dangling.json (a broken link)",
        "note: left out vae/id_rsa (not a file a diffusers folder holds: configs, safetensors weights, "
        "tokenizer files, code)",
        "note: left out vae/train.log (not a file a diffusers folder holds: configs, safetensors weights, "
        "tokenizer files, code)",
        "note: left out tokenizer/outside/ (a linked folder)",
        "note: left out scheduler/pipe.json (not a regular file)",
    ])


def test_a_component_folder_linked_from_outside_is_refused(tiny_dir, tmp_path, no_login, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    shutil.move(model / "vae", tmp_path / "vae-elsewhere")
    (model / "vae").symlink_to(tmp_path / "vae-elsewhere", target_is_directory=True)
    assert hub.main([str(model), "--repo-id", "a/b", "--dry-run", "--no-samples"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the component folder vae is a link to" in err[0] and "copy it in" in err[0]


def test_lora_weights_linked_from_outside_are_refused(tmp_path, no_login, capsys):
    (tmp_path / "elsewhere.safetensors").write_bytes(b"x")
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "pytorch_lora_weights.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    assert hub.main([str(tmp_path / "lora"), "--repo-id", "a/b", "--dry-run", "--no-samples"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a link to a file outside the model folder" in err[0]


@pytest.mark.parametrize("repo_id", ["a/..", "a/b--c", "a/b.git", "a/" + "x" * 119, "a/-b", "a/b/c", "ab"])
def test_repo_ids_the_hub_rejects_are_refused_before_staging(repo_id, tmp_path, no_login, capsys):
    assert hub.main([str(tmp_path), "--repo-id", repo_id, "--dry-run"]) == 1  # (tmp_path: staging never starts)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"latentdiff push: error: the repo id must look like USER/NAME (letters, digits, - _ .; no '--' "
                   f"or '..', no '.git' at the end, each part at most 96 characters and not starting or ending with "
                   f"- or .), got {repo_id!r}."]


def test_training_scripts_check_the_repo_id_the_same_way(monkeypatch, no_login):
    import argparse

    monkeypatch.setenv("HF_TOKEN", "hf_FAKEtoken1234567890abcdefghijklmnop")
    parser = hub.add_hub_arguments(argparse.ArgumentParser())
    with pytest.raises(ValueError, match=r"^--hub-repo-id must look like USER/NAME .* got 'a/b--c'\.$"):
        hub.check_hub_arguments(parser.parse_args(["--push-to-hub", "--hub-repo-id", "a/b--c"]))
    hub.check_hub_arguments(parser.parse_args(["--push-to-hub", "--hub-repo-id", "someone/x"]))


def test_the_token_comes_from_huggingface_hub(monkeypatch, no_login):
    from latentdiff.hub.tokens import resolve_token

    assert resolve_token() is None
    monkeypatch.setenv("HF_TOKEN", "hf_fromtheenvironment12345")
    assert resolve_token() == "hf_fromtheenvironment12345"
    monkeypatch.setattr("huggingface_hub.get_token", lambda: "hf_fromthelogin1234567890")
    assert resolve_token() == "hf_fromthelogin1234567890"  # whatever huggingface_hub says
    assert resolve_token("hf_given") == "hf_given"
