"""Hostile input to the `latentdiff` command (issue 17): crafted PNG parameters, a PNG that names a hub model,
devices this build lacks, output paths that cannot be written, corrupt weights. Each is one line on stderr and exit
status 1, before any model is loaded where the problem is known without one."""

import json
import shutil

import pytest
import torch
from PIL import Image, PngImagePlugin

from latentdiff import build_pipeline
from latentdiff.cli import main
from latentdiff.generate import MAX_IMAGES, MAX_STEPS, GenerationRequest
from latentdiff.images import PARAMETERS_KEY, read_parameters, save_png

STORED = {"prompt": "a red circle", "steps": 2, "guidance": 5.0, "seed": 0, "num_images": 1,
          "model": "preset:tiny (random weights)"}


def one_error_line(capsys) -> str:
    """The one line on stderr (besides loading progress bars, which a real load prints first)."""
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line and "%|" not in line]
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def no_loading(monkeypatch):
    """load_model replaced by a tripwire: the tests that use it must fail before any model is loaded."""
    calls = []

    def tripwire(model=None, **kw):
        calls.append(model)
        raise AssertionError(f"load_model({model!r}) was called")

    monkeypatch.setattr("latentdiff.loading.load_model", tripwire)
    return calls


def crafted(tmp_path, **changes) -> str:
    path = tmp_path / "crafted.png"
    save_png(Image.new("RGB", (16, 16)), path, STORED | changes)
    return str(path)


# ---------------------------------------------------------------------------------------------- generate --from
@pytest.mark.parametrize("change, message", [
    ({"steps": 10**9}, f"steps must be a whole number from 1 to {MAX_STEPS}, got 1000000000. Give --steps to "
                       "override it."),
    ({"num_images": 10**7}, f"num_images must be a whole number from 1 to {MAX_IMAGES} (run several times for "
                            "more), got 10000000. Give -n to override it."),
    ({"seed": "abc"}, "seed must be a whole number from -9223372036854775808 to 18446744073709551615, got 'abc'. "
                      "Give --seed to override it."),
    ({"seed": 1.5}, "seed must be a whole number from -9223372036854775808 to 18446744073709551615, got 1.5. "
                    "Give --seed to override it."),
    ({"steps": True}, "steps must be a whole number from 1 to 1000, got True. Give --steps to override it."),
    ({"guidance": "NaN"}, "guidance must be a finite number, got 'NaN'. Give --guidance to override it."),
    ({"height": 10**6}, "height must be a whole number of pixels from 1 to 4096, got 1000000. Give --height to "
                        "override it."),
    ({"prompt": ["a", "b"]}, "prompt must be a non-empty string, got ['a', 'b']. Give a prompt to override it."),
])
def test_crafted_stored_values_are_one_line(tmp_path, capsys, no_loading, change, message):
    image = crafted(tmp_path, **change)
    assert main(["generate", "--from", image, "-o", str(tmp_path / "out.png")]) == 1
    assert one_error_line(capsys) == f"latentdiff generate: error: {image} carries a bad parameter: {message}"
    assert no_loading == [] and not (tmp_path / "out.png").exists()


def test_a_stored_model_that_is_not_a_string(tmp_path, capsys, no_loading):
    image = crafted(tmp_path, model=5)
    assert main(["generate", "--from", image]) == 1
    assert one_error_line(capsys) == (f"latentdiff generate: error: {image} carries a bad parameter: model must be a "
                                      "folder, repo id or preset:NAME, got 5. Give --model to override it.")


def test_a_stored_hub_model_is_never_fetched_implicitly(tmp_path, capsys, no_loading):
    image = crafted(tmp_path, model="someone/some-model")
    assert main(["generate", "--from", image, "-o", str(tmp_path / "out.png")]) == 1
    assert one_error_line(capsys) == (
        f"latentdiff generate: error: {image} was made with the model 'someone/some-model', which is not a folder "
        "here, and --from downloads nothing by itself: pass --model someone/some-model to fetch it from the hub, or "
        "--model DIR.")
    assert no_loading == []


def test_an_explicit_model_and_flags_override_stored_values(tmp_path, capsys, monkeypatch):
    image = crafted(tmp_path, model="someone/some-model", steps=10**9, seed="abc")
    asked = []

    def fake_load(model=None, **kw):  # stands in for the download the user asked for
        from latentdiff.loading import LoadedModel

        asked.append(model)
        pipe = build_pipeline("tiny", seed=0)
        pipe.set_progress_bar_config(disable=True)
        return LoadedModel(pipe, model, False)

    monkeypatch.setattr("latentdiff.loading.load_model", fake_load)
    out = tmp_path / "out.png"
    assert main(["generate", "--from", image, "--model", "someone/some-model", "--steps", "2", "--seed", "4",
                 "-o", str(out)]) == 0
    assert asked == ["someone/some-model"]
    params = read_parameters(out)
    assert (params["model"], params["steps"], params["seed"], params["prompt"]) == \
        ("someone/some-model", 2, 4, "a red circle")


def test_a_parameter_chunk_that_is_a_json_list(tmp_path, capsys, no_loading):
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, json.dumps(["a red circle", 20]))
    image = tmp_path / "list.png"
    Image.new("RGB", (8, 8)).save(image, pnginfo=info)
    expected = (f"{image}: its 'latentdiff' text chunk holds a JSON list, not the object of parameters latentdiff "
                "writes; it was not written by latentdiff, or was changed since.")
    assert main(["info", str(image)]) == 1
    assert one_error_line(capsys) == f"latentdiff info: error: {expected}"
    assert main(["generate", "--from", str(image)]) == 1
    assert one_error_line(capsys) == f"latentdiff generate: error: {expected}"


def test_request_bounds_hold_for_flags_and_python_callers():
    with pytest.raises(ValueError, match=r"^steps must be a whole number from 1 to 1000, got 5000\.$"):
        GenerationRequest("a red circle", steps=5000)
    with pytest.raises(ValueError, match=r"^seed \+ num_images - 1 must be at most 18446744073709551615"):
        GenerationRequest("a red circle", seed=2**64 - 1, num_images=2)
    GenerationRequest("a red circle", steps=MAX_STEPS, num_images=MAX_IMAGES, seed=-5, guidance=7)


# ---------------------------------------------------------------------------------------------- devices
@pytest.mark.parametrize("command", [
    ["generate", "a red circle", "--model", "preset:tiny", "--device", "cuda"],
    ["eval", "--model", "preset:tiny", "--prompts", "assets/prompts/indist.jsonl", "--json", "r.json",
     "--device", "cuda"],
])
def test_cuda_on_a_cpu_only_build_is_one_line(command, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(__import__("pathlib").Path(__file__).parents[1] / "assets" / "prompts", tmp_path / "assets" /
                    "prompts")
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(command) == 1
    assert one_error_line(capsys) == (f"latentdiff {command[0]}: error: CUDA is not available in this PyTorch "
                                      "build; use --device cpu.")


# ---------------------------------------------------------------------------------------------- output paths
def test_output_paths_are_checked_before_generation(tmp_path, capsys, no_loading):
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "file").write_text("x")
    cases = [
        (str(tmp_path / "folder.png"), f"Cannot write {tmp_path / 'folder.png'}: it is a folder. Name a .png file "
                                       f"inside it, e.g. -o {tmp_path / 'folder.png' / 'image.png'}."),
        (str(tmp_path / "missing" / "x.png"), f"Cannot write {tmp_path / 'missing' / 'x.png'}: the folder "
                                              f"{tmp_path / 'missing'} does not exist. Create it, or choose another -o."),
        (str(tmp_path / "file" / "x.png"), f"Cannot write {tmp_path / 'file' / 'x.png'}: the folder "
                                           f"{tmp_path / 'file'} is not a folder. Create it, or choose another -o."),
    ]
    for output, message in cases:
        assert main(["generate", "a red circle", "--model", "preset:tiny", "-o", output]) == 1
        assert one_error_line(capsys) == f"latentdiff generate: error: {message}"
    assert no_loading == [] and not (tmp_path / "missing").exists()


def test_existing_files_are_kept_unless_overwrite(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out.png"
    out.write_bytes(b"precious")
    base = ["generate", "a red circle", "--model", "preset:tiny", "--steps", "1", "-o", str(out)]
    assert main(base) == 1
    assert one_error_line(capsys) == (f"latentdiff generate: error: {out} already exists; pass --overwrite to "
                                      "replace, or choose another -o.")
    assert out.read_bytes() == b"precious"
    (tmp_path / "out-grid.png").write_bytes(b"precious too")  # with -n 2, any of the files it would write
    assert main([*base, "-n", "2"]) == 1
    assert f"{tmp_path / 'out-grid.png'} already exists" in one_error_line(capsys)
    assert main([*base, "--overwrite"]) == 0
    assert read_parameters(out)["prompt"] == "a red circle"


# ---------------------------------------------------------------------------------------------- corrupt weights
@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_corrupt_safetensors_name_the_file(tmp_path, capsys, damage):
    model = tmp_path / "model"
    build_pipeline("tiny", seed=0).save_pretrained(model)
    weights = model / ("unet/diffusion_pytorch_model.safetensors" if damage == "truncated"
                       else "text_encoder/model.safetensors")
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    capsys.readouterr()
    assert main(["generate", "a red circle", "--model", str(model), "-o", str(tmp_path / "x.png")]) == 1
    line = one_error_line(capsys)
    assert line.startswith(f"latentdiff generate: error: {weights}: the weights file is corrupt or truncated "
                           f"({weights.stat().st_size} bytes; ")
    assert line.endswith("). Copy or download it again.")
    assert "use_safetensors" not in line and "pickle" not in line
