"""Publishing (issue 6): model cards, the staged upload, stock/remote-code/LoRA loading, upload calls, token safety.

All offline: huggingface_hub's HfApi.create_repo / create_branch / upload_folder are monkeypatched.
"""

import hashlib
import json
import re
import shutil
import textwrap
from pathlib import Path

import httpx2
import numpy as np
import pytest
import requests
import torch
from diffusers import DiffusionPipeline
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import HfHubHTTPError

from latentdiff import build_pipeline, hub
from latentdiff.pipelines import LatentDiffusionPipeline

FAKE = "hf_FAKEtoken1234567890abcdefghijklmnop"
PROMPT = "a red circle above a blue square"
FAST = ["--sample-steps", "2"]  # sample images in two steps: the tests check files, not pictures


def images(pipe, seed=0):
    pipe.set_progress_bar_config(disable=True)
    return pipe(PROMPT, num_inference_steps=4, guidance_scale=6.0, output_type="np",
                generator=torch.Generator().manual_seed(seed)).images


def snapshot(folder):
    """path -> (size, sha256) of every file: to show a folder was left exactly as it was."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def all_text(folder):
    return b"".join(p.read_bytes() for p in Path(folder).rglob("*") if p.is_file())


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP spinning made this file 4x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny-preset pipeline folder as `save_pretrained` writes it (read only: tests copy it to change it)."""
    folder = tmp_path_factory.mktemp("tiny") / "model"
    build_pipeline("tiny", seed=0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def staged_tiny(tiny_dir, tmp_path_factory):
    """`latentdiff push tiny --dry-run --stage-dir DIR`: (stdout, stage dir)."""
    stage = tmp_path_factory.mktemp("stage") / "upload"
    lines = []
    result = hub.push_folder(tiny_dir, "someone/shapes-tiny", dry_run=True, stage_dir=stage, log=lines.append,
                             card_info={"sample_steps": 2})
    assert result.dry_run and result.url is None
    return "\n".join(lines), stage


@pytest.fixture
def no_login(monkeypatch, tmp_path):
    """No saved huggingface_hub login and no HF_TOKEN, so only what a test sets is a token."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.fixture
def fake_hub(monkeypatch):
    """Replace the HfApi calls with recorders; `calls` lists (name, token, kwargs, files in folder_path)."""
    calls = []

    def recorder(name):
        def call(self, *args, **kwargs):
            if args:
                kwargs = {"repo_id": args[0], **kwargs}
            folder = kwargs.get("folder_path")
            files = (sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file())
                     if folder else None)
            calls.append((name, self.token, kwargs, files))
            if name == "upload_folder":
                return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{kwargs['repo_id']}/commit/abc"})()
        return call

    for name in ("create_repo", "create_branch", "upload_folder"):
        monkeypatch.setattr(HfApi, name, recorder(name))
    return calls


# ---------------------------------------------------------------------------------------------- dry run, stock loading
def test_dry_run_lists_exactly_the_staged_files_and_sizes(staged_tiny, tiny_dir):
    out, stage = staged_tiny
    listed = {m.group(2): int(m.group(1).replace(",", ""))
              for m in re.finditer(r"^\s*([\d,]+)  (\S+)$", out, flags=re.M)}
    actual = {p.relative_to(stage).as_posix(): p.stat().st_size for p in stage.rglob("*") if p.is_file()}
    assert listed == actual
    assert f"{sum(actual.values()):,}  total ({len(actual)} files)" in out
    assert set(actual) == {
        "README.md", "model_index.json", "samples/0.png", "samples/1.png", "samples/2.png", "samples/3.png",
        "samples/grid.png", "scheduler/scheduler_config.json", "text_encoder/config.json",
        "text_encoder/model.safetensors", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json",
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors"}
    # weights are byte-identical copies; the stock loader was the check
    for name in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        assert (stage / name).read_bytes() == (tiny_dir / name).read_bytes()
    assert "ok: Before upload, stock diffusers" in out and "as `StableDiffusionPipeline`" in out
    assert "dry run: nothing was uploaded." in out


def test_stock_diffusers_loads_the_staged_folder_and_draws_our_image(staged_tiny, tiny_pipe, report):
    _, stage = staged_tiny
    index = json.loads((stage / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["requires_safety_checker"] is False
    assert not list(stage.glob("*.py"))  # no remote code for a standard folder
    stock = DiffusionPipeline.from_pretrained(stage)  # one plain line, no custom code
    assert type(stock).__name__ == "StableDiffusionPipeline" and stock.safety_checker is None
    diff = np.abs(images(stock) - images(tiny_pipe)).max()
    report(f"hub: staged folder, stock DiffusionPipeline vs LatentDiffusionPipeline: max pixel difference {diff:.3e}")
    assert diff <= 1e-4
    ours = LatentDiffusionPipeline.from_pretrained(stage)  # and our class still loads the published folder
    np.testing.assert_allclose(images(ours), images(tiny_pipe), atol=1e-6)


def test_card_for_a_folder_without_records_claims_nothing(staged_tiny):
    _, stage = staged_tiny
    card = ModelCard.load(stage / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "diffusers" and data["pipeline_tag"] == "text-to-image"
    assert data["license"] == "apache-2.0"
    assert data["tags"] == ["text-to-image", "diffusers", "latentdiff"]
    assert "base_model" not in data and "datasets" not in data and "model-index" not in data
    assert [w["output"]["url"] for w in data["widget"]] == [f"samples/{i}.png" for i in range(4)]
    assert all((stage / w["output"]["url"]).is_file() for w in data["widget"])
    evaluation = card.text.split("## Evaluation")[1].split("##")[0]
    assert "Not evaluated" in evaluation and not re.search(r"\d", evaluation)
    assert "Training run: not recorded" in card.text and "Recipe: not recorded" in card.text
    assert 'DiffusionPipeline.from_pretrained("someone/shapes-tiny")' in card.text
    assert "## Intended use" in card.text and "## Limitations" in card.text


# ---------------------------------------------------------------------------------------------- card contents
def test_card_records_recipe_scores_and_round_trips(tiny_dir, tmp_path, no_login):
    folder = tmp_path / "model"
    shutil.copytree(tiny_dir, folder)
    (folder / "training_config.json").write_text(json.dumps({
        "pretrained_model_name_or_path": "someone/shapes-base", "dataset_name": "someone/shapesworld",
        "learning_rate": 1e-4, "train_batch_size": 64, "max_train_steps": 20000, "mixed_precision": "bf16",
        "hub_token": FAKE, "output_dir": "/home/alice/runs/x"}))
    (folder / "training_summary.json").write_text(json.dumps({
        "steps": 20000, "epochs": 4.0, "wall_clock_seconds": 5400.0, "hardware": "1x NVIDIA H100 80GB",
        "final_loss": 0.0712}))
    (folder / "eval.json").write_text(json.dumps({
        "metrics": {"overall": 0.8125, "counting": 0.5}, "dataset": {"name": "ShapesWorld", "id": "someone/shapesworld",
                                                                     "split": "heldout"},
        "settings": {"sampler": "dpm++2m", "steps": 20}, "command": "latentdiff eval runs/x --prompts heldout"}))
    (folder / "card.json").write_text(json.dumps({"license": "mit", "tags": ["shapesworld"]}))
    before = snapshot(folder)

    hub.push_folder(folder, "someone/shapes-ft", dry_run=True, stage_dir=tmp_path / "stage", log=lambda s: None,
                    card_info={"sample_steps": 2, "sample_prompts": ["a red circle", "two blue squares"]})
    assert snapshot(folder) == before
    card = ModelCard.load(tmp_path / "stage" / "README.md")
    data = card.data
    assert (data.library_name, data.pipeline_tag, data.license) == ("diffusers", "text-to-image", "mit")
    assert data.tags == ["text-to-image", "diffusers", "latentdiff", "shapesworld"]
    assert data.base_model == "someone/shapes-base" and data.datasets == ["someone/shapesworld"]
    assert data.widget == [{"text": "a red circle", "output": {"url": "samples/0.png"}},
                           {"text": "two blue squares", "output": {"url": "samples/1.png"}}]
    scores = {(r.metric_type, r.metric_value, r.dataset_type, r.dataset_split) for r in data.eval_results}
    assert scores == {("overall", 0.8125, "someone/shapesworld", "heldout"),
                      ("counting", 0.5, "someone/shapesworld", "heldout")}
    for text in ("| learning_rate | 0.0001 |", "| train_batch_size | 64 |", "20000 steps", "90.0 min wall-clock",
                 "on 1x NVIDIA H100 80GB", "| final_loss | 0.0712 |", "| overall | 0.8125 |",
                 "latentdiff eval runs/x --prompts heldout", "Fine-tuned from: `someone/shapes-base`"):
        assert text in card.text, text
    assert FAKE not in card.content and "hub_token" not in card.content and "/home/alice" not in card.content


def test_card_names_local_data_without_paths_and_hub_data_in_metadata(tmp_path):
    from latentdiff.hub.card import CardFacts

    (tmp_path / "training_config.json").write_text(json.dumps({
        "train_data_dir": "/data/alice/shapes-50k", "resume_from": "/home/alice/ckpt", "lr": 1e-4}))
    info = hub.read_card_info(tmp_path)
    assert info.datasets == ["shapes-50k (local folder)"] and info.hyperparameters == {"lr": 1e-4}
    facts = CardFacts(repo_id="someone/m", kind="pipeline", loader="stock", pipeline_class="StableDiffusionPipeline")
    card = hub.build_card(info, facts)
    assert card.data.datasets is None and "shapes-50k" in card.text and "alice" not in card.content
    card = hub.build_card(info.updated({"datasets": ["someone/shapesworld"]}), facts)
    assert card.data.datasets == ["someone/shapesworld"]
    with pytest.raises(hub.HubError, match="unknown field"):
        hub.read_card_info(tmp_path, {"licence": "mit"})


def test_latentdiff_push_command(tiny_dir, capsys):
    from latentdiff import cli

    assert cli.main(["push", str(tiny_dir), "--repo-id", "someone/shapes-tiny", "--dry-run", "--no-samples"]) == 0
    assert "dry run: nothing was uploaded." in capsys.readouterr().out
    assert cli.main(["push", str(tiny_dir), "--repo-id", "bad id", "--dry-run"]) == 1
    assert capsys.readouterr().err.count("\n") == 1


# ---------------------------------------------------------------------------------------------- remote code
CUSTOM_SCHEDULER = textwrap.dedent('''
    """A scheduler class stock diffusers lacks (DDIM under another name), for the remote-code test only."""
    from diffusers import DDIMScheduler


    class TestScheduler(DDIMScheduler):
        pass
''')


def test_custom_component_ships_code_and_needs_trust_remote_code(tmp_path, monkeypatch, no_login):
    code = tmp_path / "code"
    code.mkdir()
    (code / "scheduling_test.py").write_text(CUSTOM_SCHEDULER)
    monkeypatch.syspath_prepend(str(code))
    from scheduling_test import TestScheduler

    pipe = build_pipeline("tiny", seed=0)
    pipe.scheduler = TestScheduler.from_config(pipe.scheduler.config)
    pipe.save_pretrained(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "model_index.json").read_text())
    assert saved["scheduler"] == ["scheduling_test", "TestScheduler"]

    with pytest.raises(hub.HubError, match="no file scheduling_test.py.*--code-dir"):
        hub.stage_folder(tmp_path / "model", tmp_path / "nowhere", "someone/custom", samples=False)
    staged = hub.stage_folder(tmp_path / "model", tmp_path / "stage", "someone/custom", samples=False,
                              code_dirs=[code])
    stage = staged.folder
    assert staged.loader == "remote-code" and staged.validated
    index = json.loads((stage / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_latent_diffusion", "LatentDiffusionPipeline"]
    assert index["scheduler"] == ["scheduling_test", "TestScheduler"]
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    files = {f.path for f in staged.files}
    assert {"pipeline_latent_diffusion.py", "samplers.py", "scheduler/scheduling_test.py"} <= files
    assert "trust_remote_code=True" in (stage / "README.md").read_text()

    # The layout diffusers expects of a hub repo: each custom component's module in its own folder
    from diffusers.pipelines.pipeline_loading_utils import _get_custom_components_and_folders

    custom, _ = _get_custom_components_and_folders("someone/custom", index, sorted(files))
    assert custom == {"scheduler": "scheduling_test"}

    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(stage)
    loaded = DiffusionPipeline.from_pretrained(stage, trust_remote_code=True)
    assert type(loaded).__name__ == "LatentDiffusionPipeline" and type(loaded.scheduler).__name__ == "TestScheduler"
    np.testing.assert_allclose(images(loaded), images(pipe), atol=1e-5)


# ---------------------------------------------------------------------------------------------- LoRA
def test_lora_folder_stages_safetensors_and_loads_on_the_base(tiny_dir, tmp_path, no_login):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = build_pipeline("tiny", seed=0)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:
                param.copy_(0.2 * torch.randn_like(param))  # B starts at zero: make the LoRA change the image
    lora = tmp_path / "lora"
    LatentDiffusionPipeline.save_lora_weights(lora, unet_lora_layers=get_peft_model_state_dict(pipe.unet))
    (lora / "training_config.json").write_text(json.dumps({"base_model": str(tiny_dir), "rank": 4}))
    before = snapshot(lora)

    lines = []
    with pytest.raises(hub.HubError, match="base model's hub repo id"):
        hub.push_folder(lora, "someone/shapes-lora", token=FAKE, samples=False, log=lines.append)
    result = hub.push_folder(lora, "someone/shapes-lora", dry_run=True, stage_dir=tmp_path / "stage",
                             base_model_id="someone/shapes-tiny", log=lines.append, card_info={"sample_steps": 2})
    assert snapshot(lora) == before
    assert [f.path for f in result.files] == ["README.md", "pytorch_lora_weights.safetensors", "samples/0.png",
                                              "samples/1.png", "samples/2.png", "samples/3.png", "samples/grid.png"]
    assert result.staged.validated  # the base came from the training config's local folder
    card = ModelCard.load(tmp_path / "stage" / "README.md")
    assert card.data.base_model == "someone/shapes-tiny" and "lora" in card.data.tags
    assert 'pipe.load_lora_weights("someone/shapes-lora")' in card.text

    stock = hub.stage.load_stock(tiny_dir)
    without = images(stock)
    stock.load_lora_weights(tmp_path / "stage")
    with_lora = images(stock)
    assert np.abs(with_lora - without).max() > 1e-3  # the LoRA took effect ...
    assert np.abs(with_lora - images(pipe)).max() <= 1e-4  # ... and draws what our pipeline with the adapter draws


# ---------------------------------------------------------------------------------------------- uploads
def test_push_calls_the_hub_with_exact_arguments(tiny_dir, fake_hub, monkeypatch, no_login, capsys):
    monkeypatch.setenv("HF_TOKEN", FAKE)
    before = snapshot(tiny_dir)
    assert hub.main([str(tiny_dir), "--repo-id", "someone/shapes-tiny", "--dry-run", "--no-samples"]) == 0
    assert fake_hub == []  # a dry run talks to nobody
    capsys.readouterr()
    assert hub.main([str(tiny_dir), "--repo-id", "someone/shapes-tiny", "--private", "--revision", "dev", *FAST]) == 0
    out = capsys.readouterr()
    assert [c[0] for c in fake_hub] == ["create_repo", "create_branch", "upload_folder"]
    (_, t1, create, _), (_, t2, branch, _), (_, t3, upload, files) = fake_hub
    assert t1 == t2 == t3 == FAKE  # through HfApi(token=...), never in a message
    assert create == {"repo_id": "someone/shapes-tiny", "private": True, "repo_type": "model", "exist_ok": True}
    assert branch == {"repo_id": "someone/shapes-tiny", "branch": "dev", "repo_type": "model", "exist_ok": True}
    assert set(upload) == {"repo_id", "folder_path", "repo_type", "revision", "commit_message"}
    assert (upload["repo_id"], upload["repo_type"], upload["revision"]) == ("someone/shapes-tiny", "model", "dev")
    assert "README.md" in files and "unet/diffusion_pytorch_model.safetensors" in files
    assert not Path(upload["folder_path"]).exists()  # the staging folder is cleaned up ...
    assert snapshot(tiny_dir) == before  # ... and the model folder never touched
    listed = re.findall(r"^\s*[\d,]+  (\S+)$", out.out, flags=re.M)
    assert listed == files
    assert "uploaded: https://huggingface.co/someone/shapes-tiny/commit/abc" in out.out
    assert FAKE not in out.out + out.err


def _http_error(status):
    url = f"https://huggingface.co/api/repos/create?token={FAKE}"
    request = httpx2.Request("POST", url, headers={"authorization": f"Bearer {FAKE}"})
    return HfHubHTTPError(f"{status} Client Error for url: {url}\nheaders: {{'authorization': 'Bearer {FAKE}'}}",
                          response=httpx2.Response(status, request=request))


@pytest.mark.parametrize("where, error, expected", [
    ("upload_folder", lambda: _http_error(401), "the Hub refused the token for someone/shapes-tiny (HTTP 401)"),
    ("create_repo", lambda: _http_error(403), "the Hub refused the token"),
    ("create_repo", lambda: requests.ConnectionError(f"Max retries exceeded: https://x?token={FAKE}"),
     "could not reach the Hugging Face Hub"),
    ("upload_folder", lambda: _http_error(500), "upload to someone/shapes-tiny failed (HfHubHTTPError"),
])
def test_hub_failures_are_one_redacted_line(where, error, expected, tiny_dir, tmp_path, fake_hub, monkeypatch,
                                            no_login, capsys):
    folder = tmp_path / "model"
    shutil.copytree(tiny_dir, folder)
    (folder / "training_config.json").write_text(json.dumps({"hub_token": FAKE, "note": f"token {FAKE}"}))
    before = snapshot(folder)

    def fail(self, *args, **kwargs):
        raise error()

    monkeypatch.setattr(HfApi, where, fail)
    monkeypatch.setenv("HF_TOKEN", FAKE)
    stage = tmp_path / "stage"
    status = hub.main([str(folder), "--repo-id", "someone/shapes-tiny", "--stage-dir", str(stage), *FAST])
    out = capsys.readouterr()
    assert status == 1
    err_lines = [line for line in out.err.splitlines() if line.strip()]
    assert len(err_lines) == 1 and err_lines[0].startswith("latentdiff push: error: ") and expected in err_lines[0]
    assert FAKE not in out.out + out.err
    assert FAKE.encode() not in all_text(stage)  # card, model_index, samples: nowhere in what was staged
    assert snapshot(folder) == before


def test_refusals_are_one_line(tiny_dir, tmp_path, no_login, capsys):
    build_pipeline("tiny").save_pretrained(tmp_path / "pickled", safe_serialization=False)
    capsys.readouterr()  # (save_pretrained's progress bar)
    cases = [
        ([str(tmp_path / "pickled"), "--repo-id", "a/b", "--dry-run"], "exist only as pickle files"),
        ([str(tiny_dir), "--repo-id", "a/b"], "no Hugging Face token"),  # a real push needs a token
        ([str(tiny_dir), "--repo-id", "not a repo", "--dry-run"], "USER/NAME"),
        ([str(tmp_path), "--repo-id", "a/b", "--dry-run"], "neither a pipeline folder"),
        ([str(tiny_dir), "--repo-id", "a/b", "--dry-run", "--stage-dir", str(tiny_dir / "x")],
         "outside the model folder"),
    ]
    for argv, expected in cases:
        assert hub.main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (argv, err)
    assert not (tiny_dir / "x").exists()


# ---------------------------------------------------------------------------------------------- tokens
def test_redact_and_loggable_args(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    text = (f"401 for https://huggingface.co/api?token={FAKE}&x=1 headers {{'Authorization': 'Bearer {FAKE}'}} "
            f"authorization: abc123secret; token {FAKE}")
    clean = hub.redact(text, FAKE)
    assert FAKE not in clean and "abc123secret" not in clean and "x=1" in clean
    assert hub.redact("hf_OTHERtoken9876543210zyxwvutsrq seen") == "*** seen"  # unknown tokens too
    assert hub.redact("my-token-is-short", "abc") == "my-token-is-short"  # no mangling on odd input
    args = hub.add_hub_arguments(__import__("argparse").ArgumentParser())
    ns = args.parse_args(["--push-to-hub", "--hub-repo-id", "someone/x", "--hub-private"])
    ns.hub_token, ns.note = FAKE, f"pushed with {FAKE}"
    safe = hub.loggable_args(ns)
    assert safe == {"push_to_hub": True, "hub_repo_id": "someone/x", "hub_private": True, "note": "pushed with ***"}


def test_hub_arguments_are_checked_before_training(monkeypatch, no_login):
    import argparse

    parser = hub.add_hub_arguments(argparse.ArgumentParser())
    hub.check_hub_arguments(parser.parse_args([]))  # not pushing: nothing to check
    with pytest.raises(ValueError, match="--hub-repo-id"):
        hub.check_hub_arguments(parser.parse_args(["--push-to-hub"]))
    with pytest.raises(ValueError, match="token"):
        hub.check_hub_arguments(parser.parse_args(["--push-to-hub", "--hub-repo-id", "someone/x"]))
    monkeypatch.setenv("HF_TOKEN", FAKE)
    hub.check_hub_arguments(parser.parse_args(["--push-to-hub", "--hub-repo-id", "someone/x"]))
