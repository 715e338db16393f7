"""The web page's logic without a browser: checks, seeds, PNGs with their parameters, Stop; `info` and `--from`.

Only test_page_is_queued_and_local needs Gradio (the app extra); the rest runs on the test extra alone.
"""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from latentdiff.app import DEFAULT_SAMPLER, MAX_SEED, App, Cancelled, Limits, example_prompts, summary
from latentdiff.cli import build_parser, main
from latentdiff.images import read_parameters, save_png
from latentdiff.loading import LoadedModel

SOURCE = "preset:tiny (random weights)"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy 2-core machine OpenMP's waiting threads make
    them ten times slower (measured here: 11 s instead of 0.8 s for one test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def app(tiny_pipe):
    return App(LoadedModel(tiny_pipe, SOURCE, random_weights=True), Limits(max_steps=50, max_images=3),
               examples=["a red circle"])


def values(**changes):
    """The page's values as the browser sends them (sliders give floats), with `changes`."""
    base = dict(prompt="a red circle", negative_prompt="", sampler=DEFAULT_SAMPLER, steps=3.0, guidance=7.5, seed=5,
                random_seed=False, width=16.0, height=16.0, num_images=1.0)
    return base | changes


def test_request_from_page_values(app):
    request = app.request(**values(prompt="  a red circle ", negative_prompt=" ", sampler="euler", width=24.0))
    assert (request.prompt, request.negative_prompt, request.sampler) == ("a red circle", None, "euler")
    assert (request.steps, request.width, request.height, request.seed) == (3, 24, 16, 5)
    assert all(type(v) is int for v in (request.steps, request.width, request.height, request.num_images))
    assert app.request(**values()).sampler is None  # "default": the model's own scheduler
    assert (app.multiple, app.native, app.max_side) == (4, 16, 32)


@pytest.mark.parametrize("change, message", [
    ({"prompt": ""}, "Write a prompt"),
    ({"prompt": "   "}, "Write a prompt"),
    ({"prompt": None}, "Write a prompt"),
    ({"steps": 0}, "Steps must be between 1 and 50"),
    ({"steps": 51}, "Steps must be between 1 and 50"),
    ({"steps": 2.5}, "Steps must be a whole number"),
    ({"steps": "many"}, "Steps must be a whole number"),
    ({"width": 18}, "multiples of 4"),
    ({"height": 36}, "Height must be between 4 and 32"),
    ({"width": 0}, "Width must be between 4 and 32"),
    ({"num_images": 4}, "Number of images must be between 1 and 3"),
    ({"guidance": math.nan}, "Guidance must be between 0 and 30"),
    ({"guidance": -1}, "Guidance must be between"),
    ({"guidance": None}, "Guidance must be a number"),
    ({"sampler": "nope"}, "Unknown sampler 'nope'"),
    ({"seed": -1}, "Seed must be between 0"),
    ({"seed": None}, "Seed must be a whole number"),
])
def test_bad_values_are_refused_with_a_message(app, change, message):
    with pytest.raises(ValueError, match=message):
        app.request(**values(**change))


def test_random_seed_is_drawn_and_reported(app):
    seeds = {app.request(**values(random_seed=True, seed=None)).seed for _ in range(5)}
    assert len(seeds) > 1 and all(0 <= s <= MAX_SEED - 3 for s in seeds)
    result = app.generate(app.request(**values(random_seed=True, steps=1)))
    seed = result.parameters["seed"]
    assert read_parameters(result.paths[0])["seed"] == seed and f"seed {seed}" in summary(result)


def test_generate_writes_pngs_that_carry_their_parameters(app, tmp_path, capsys):
    steps = []
    request = app.request(**values(num_images=2, width=24.0, negative_prompt="green", sampler="euler"))
    result = app.generate(request, on_step=lambda done, total: steps.append((done, total)))
    assert steps == [(1, 3), (2, 3), (3, 3)]  # fed from callback_on_step_end, one call per step
    assert len(result.paths) == 2 and not any("grid" in p.name for p in result.paths)
    for i, path in enumerate(result.paths):
        assert path.parent.parent == app.out_dir
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (24, 16)
        assert read_parameters(path) == {"prompt": "a red circle", "negative_prompt": "green", "sampler": "euler",
                                         "steps": 3, "guidance": 7.5, "seed": 5 + i, "num_images": 1,
                                         "height": 16, "width": 24, "model": SOURCE}
    assert result.parameters["num_images"] == 2 and result.parameters["seed"] == 5
    assert summary(result).startswith("2 images in") and summary(result).endswith("seeds 5–6")

    # A PNG downloaded from the page is made again, pixel for pixel, by the command line.
    again = tmp_path / "again.png"
    assert main(["generate", "--from", str(result.paths[1]), "-o", str(again)]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(result.paths[1])))
    assert read_parameters(again) == read_parameters(result.paths[1])


def test_default_sampler_is_the_models_own_again(app):
    default = app.loaded.pipe.scheduler
    app.generate(app.request(**values(sampler="ddim", steps=1)))
    result = app.generate(app.request(**values(steps=1)))
    assert app.loaded.pipe.scheduler is default
    assert result.parameters["sampler"] == type(default).__name__


def test_stop_ends_a_generation_and_writes_nothing(app):
    def stop_at_step_2(done, total):
        if done == 2:
            assert not app.cancel("someone else")  # Stop stops only one's own generation
            assert app.cancel("me")

    with pytest.raises(Cancelled, match="Stopped"):
        app.generate(app.request(**values(steps=10)), on_step=stop_at_step_2, session="me")
    assert list(max(app.out_dir.iterdir()).iterdir()) == []  # the newest run folder
    assert not app.cancel("me")  # nothing runs now
    assert len(app.generate(app.request(**values(steps=1)), session="me").paths) == 1  # the model is free again


def test_example_prompts(tmp_path):
    assert len(example_prompts(3, tmp_path / "missing")) == 3  # ShapesWorld captions
    (tmp_path / "a.jsonl").write_text('{"prompt": "two red squares", "tags": ["count"]}\n\n'
                                      '{"prompt": "a blue star"}\n{"prompt": "two red squares"}\n')
    (tmp_path / "b.jsonl").write_text(json.dumps({"prompt": "a green circle"}) + "\n")
    assert example_prompts(6, tmp_path) == ["two red squares", "a blue star", "a green circle"]
    (tmp_path / "c.jsonl").write_text("not json\n")
    with pytest.raises(ValueError, match="c.jsonl:1"):
        example_prompts(6, tmp_path)


# ---------------------------------------------------------------------------------------------- command line
def generate_one(tmp_path, *flags):
    out = tmp_path / "one.png"
    assert main(["generate", "a blue star", "--model", "preset:tiny", "--steps", "2", "--seed", "3", "--negative",
                 "red", "--sampler", "ddim", "-o", str(out), *flags]) == 0
    return out


def test_info_prints_the_parameters(tmp_path, capsys):
    out = generate_one(tmp_path)
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["prompt:", "a", "blue", "star"]
    assert {"negative_prompt: red", "sampler: ddim", "steps: 2", "seed: 3", "model: preset:tiny (random weights)"} \
        <= {" ".join(line.split()) for line in lines}
    assert main(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == read_parameters(out)


def test_generate_from_remakes_the_same_image_and_flags_override(tmp_path, capsys):
    out = generate_one(tmp_path)
    again = tmp_path / "again.png"
    assert main(["generate", "--from", str(out), "-o", str(again)]) == 0
    assert Image.open(again).tobytes() == Image.open(out).tobytes()  # pixel-identical
    assert read_parameters(again) == read_parameters(out)

    other = tmp_path / "other.png"
    assert main(["generate", "a red circle", "--from", str(out), "--seed", "4", "--steps", "3", "-o", str(other)]) == 0
    params = read_parameters(other)
    assert (params["prompt"], params["seed"], params["steps"]) == ("a red circle", 4, 3)
    assert (params["negative_prompt"], params["sampler"]) == ("red", "ddim")  # the rest as stored
    assert Image.open(other).tobytes() != Image.open(out).tobytes()


@pytest.mark.parametrize("argv, message", [
    (["info", "{tmp}/missing.png"], "No such file"),
    (["info", "{tmp}/plain.png"], "carries no latentdiff generation parameters"),
    (["info", "{tmp}/text.png"], "cannot identify image file"),
    (["generate", "--from", "{tmp}/plain.png"], "carries no latentdiff generation parameters"),
    (["generate", "--model", "preset:tiny"], "Give a prompt"),
])
def test_bad_use_is_one_line(tmp_path, capsys, argv, message):
    save_png(Image.new("RGB", (8, 8)), tmp_path / "plain.png")  # a PNG without parameters
    (tmp_path / "text.png").write_text("not an image")
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err


def test_serve_defaults_to_this_machine_only():
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.model, args.queue_size) == ("127.0.0.1", 7860, None, 16)
    for argv in (["serve", "--help"], ["info", "--help"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 0


@pytest.mark.parametrize("model", ["", "  "])
def test_an_empty_model_is_refused(model):
    from latentdiff.app import create_app

    with pytest.raises(ValueError, match="The model is empty"):
        create_app(model)


def test_serve_without_gradio_says_how_to_install_it(monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else find_spec(name, *a))
    assert main(["serve", "--model", "preset:tiny"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install -e ".[app]"' in err


@pytest.mark.browser  # needs the app extra (Gradio), which .ci/run installs for the browser tests
def test_page_is_queued_and_local(app, monkeypatch):
    """The Gradio page itself: a bounded queue, one generation at a time, no analytics, loopback by default."""
    gr = pytest.importorskip("gradio")
    from latentdiff import app as app_module

    demo = app_module.build_demo(app)
    demo.queue(max_size=4, default_concurrency_limit=1)
    assert demo.analytics_enabled is False and demo._queue.max_size == 4
    assert demo._queue.default_concurrency_limit == 1
    generate = next(fn for fn in demo.fns.values() if fn.api_name == "generate")
    assert generate.concurrency_limit == "default" and generate.queue  # "default": the queue's, 1
    stop = next(fn for fn in demo.fns.values() if fn.name == "on_stop")
    assert not stop.queue  # Stop gets through while a generation holds the one slot...
    assert any(fn.cancels for fn in demo.fns.values())  # ...and cancels the visitor's queued ones

    launched = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: launched.update(kw))
    demo.latentdiff_app = app
    app_module.launch(demo, block=False)
    assert launched["server_name"] == "127.0.0.1" and launched["share"] is False
    assert launched["allowed_paths"] == [str(app.out_dir)]
