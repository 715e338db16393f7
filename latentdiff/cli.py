"""The `latentdiff` command. Each subcommand parses its arguments here and calls one library function.

The top-level parser knows each subcommand by its name and help line only: a subcommand's options are added, and
the modules they need imported, when the command line chooses it (or asks for its --help), so `latentdiff --help`
imports neither torch nor diffusers."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Callable

from latentdiff.parsing import USER_ERRORS, Parser
from latentdiff.version import __version__


def _sampler_names() -> list[str]:
    from latentdiff.pipelines.samplers import sampler_names

    return sampler_names()


class _Subcommand(Parser):
    """A subcommand's parser whose options come from `add_arguments(parser)`, called the first time the parser is
    used (parsing or --help) rather than when the top-level parser is built."""

    def __init__(self, *args, add_arguments: Callable[[Parser], None] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._add_arguments = add_arguments

    def _complete(self) -> None:
        if self._add_arguments is not None:
            add, self._add_arguments = self._add_arguments, None
            add(self)

    def parse_known_args(self, args=None, namespace=None):
        self._complete()  # argparse hands a chosen subcommand its arguments through this method
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._complete()
        return super().format_help()


def _module_arguments(parser: Parser, module) -> None:
    """Options and handler of a subcommand that live in `module` (its `add_arguments(parser)` and `run(args)`)."""
    module.add_arguments(parser)
    parser.set_defaults(func=module.run)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


# ---------------------------------------------------------------------------------------------- generate
def _add_generate(sub) -> None:
    sub.add_parser("generate", help="generate images from a prompt", add_arguments=_generate_arguments, description=(
        "Generate images from a prompt and write PNGs that carry their generation parameters. Without --model "
        "it uses the shipped default model, or, where none exists yet, the random-weight `small` preset. "
        "--from IMAGE.png makes an image again from the parameters it carries; flags given with it override them."))


def _generate_arguments(p: Parser) -> None:
    samplers = _sampler_names()  # imports the pipelines: only once generate is chosen
    p.add_argument("prompt", nargs="?", help="what to draw (optional with --from)")
    p.add_argument("--from", dest="from_image", metavar="IMAGE.png",
                   help="take every parameter from a PNG written by latentdiff generate or serve")
    p.add_argument("--model", help="pipeline folder, hub repo id (user/name), or preset:NAME")
    p.add_argument("--sampler", choices=samplers, metavar="NAME", help=f"one of: {', '.join(samplers)}")
    # Defaults of None, filled from _GENERATE_DEFAULTS in _run_generate: so that --from can tell a flag given
    # on the command line (which overrides the stored value) from one left at its default (which does not).
    p.add_argument("--steps", type=_positive_int, help="sampler steps (default 20)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default 7.5)")
    p.add_argument("--seed", type=int, help="random seed; image i uses seed+i (default 0)")
    p.add_argument("-n", "--num-images", type=_positive_int, help="number of images (default 1)")
    p.add_argument("--height", type=int, help="image height in pixels (default: the model's)")
    p.add_argument("--width", type=int, help="image width in pixels (default: the model's)")
    p.add_argument("--negative", dest="negative_prompt", help="negative prompt: what to guide away from")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("-o", "--output", default="latentdiff.png", help="output PNG (default latentdiff.png)")
    p.add_argument("--overwrite", action="store_true", help="replace output files that exist (default: refuse)")
    p.set_defaults(func=_run_generate)


_GENERATE_DEFAULTS = {"steps": 20, "guidance": 7.5, "seed": 0, "num_images": 1}
_REQUEST_FIELDS = ("prompt", "negative_prompt", "sampler", "steps", "guidance", "seed", "num_images", "height",
                   "width")
_FLAGS = {"prompt": "a prompt", "negative_prompt": "--negative", "sampler": "--sampler", "steps": "--steps",
          "guidance": "--guidance", "seed": "--seed", "num_images": "-n", "height": "--height", "width": "--width"}


def _stored_parameters(image: str) -> dict:
    """The generation parameters a PNG carries, or a ValueError saying it has none."""
    from latentdiff.images import read_parameters

    params = read_parameters(image)
    if not params:
        raise ValueError(f"{image} carries no latentdiff generation parameters (only PNGs written by "
                         "`latentdiff generate` or `latentdiff serve` do; a grid image does not).")
    return params


def _from_image(image: str, given: dict) -> dict:
    """The stored parameters of `image` that flags (`given`) do not override, checked, as generate's arguments."""
    from latentdiff.generate import check_value

    stored = _stored_parameters(image)
    values = {k: stored[k] for k in _REQUEST_FIELDS if stored.get(k) is not None and k not in given}
    if values.get("sampler") not in _sampler_names():
        # Made without --sampler: the value is the scheduler class the model folder itself sets, which the
        # model loads with again.
        values.pop("sampler", None)
    for key, value in values.items():
        try:
            check_value(key, value)
        except ValueError as err:
            raise ValueError(f"{image} carries a bad parameter: {err} Give {_FLAGS[key]} to override it.") from None
    if stored.get("model") is not None and "model" not in given:
        values["model"] = _stored_model(image, stored["model"])
    return values


def _stored_model(image: str, model) -> str:
    """The model a PNG names, when it is here: a preset or a local folder. A repo id is never downloaded because
    a file said so; the user names it with --model."""
    from pathlib import Path

    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"{image} carries a bad parameter: model must be a folder, repo id or preset:NAME, got "
                         f"{model!r}. Give --model to override it.")
    # loading.load_model records a preset as "preset:NAME (random weights)"; presets are seeded, so the same
    # preset name builds the same weights.
    model = model.removesuffix(" (random weights)")
    if model.startswith("preset:") or Path(model).is_dir():
        return model
    raise ValueError(f"{image} was made with the model {model!r}, which is not a folder here, and --from downloads "
                     f"nothing by itself: pass --model {model} to fetch it from the hub, or --model DIR.")


def _run_generate(args) -> None:
    from latentdiff.generate import GenerationRequest, check_output, generate_files
    from latentdiff.loading import load_model

    # 1. Everything is checked before the model is loaded: the request, and that -o can be written
    given = {k: getattr(args, k) for k in (*_REQUEST_FIELDS, "model") if getattr(args, k) is not None}
    values = _GENERATE_DEFAULTS | (_from_image(args.from_image, given) if args.from_image else {}) | given
    if not values.get("prompt"):
        raise ValueError("Give a prompt to draw, or --from IMAGE.png to make an image again.")
    model = values.pop("model", None)
    request = GenerationRequest(**values)
    check_output(args.output, request.num_images, args.overwrite)
    # 2. Load and generate
    loaded = load_model(model, device=args.device)
    if model is None and loaded.random_weights:
        print(f"note: generating with {loaded.source}: no trained default model is shipped yet, so the image is "
              "noise-like. Pass --model DIR_OR_REPO_ID to use a trained one.", file=sys.stderr)
    for path in generate_files(loaded, request, args.output, overwrite=args.overwrite):
        print(path)


# ---------------------------------------------------------------------------------------------- info
def _add_info(sub) -> None:
    sub.add_parser("info", help="print the generation parameters a PNG carries", add_arguments=_info_arguments,
                   description="Print the generation parameters stored in a PNG by `latentdiff generate` or "
                               "`latentdiff serve`; `latentdiff generate --from IMAGE.png` makes the image again "
                               "from them.")


def _info_arguments(p: Parser) -> None:
    p.add_argument("image", help="a PNG written by latentdiff")
    p.add_argument("--json", action="store_true", help="print them as one JSON object")
    p.set_defaults(func=_run_info)


def _run_info(args) -> None:
    params = _stored_parameters(args.image)
    if args.json:
        print(json.dumps(params, sort_keys=True))
        return
    known = (*_REQUEST_FIELDS, "model")
    keys = [k for k in known if k in params] + sorted(set(params) - set(known))
    pad = max(map(len, keys))
    for key in keys:
        value = params[key]
        print(f"{key + ':':<{pad + 1}} {value if isinstance(value, str) else json.dumps(value)}")


# ---------------------------------------------------------------------------------------------- serve
def _add_serve(sub) -> None:
    sub.add_parser("serve", help="a web page to generate with (Gradio)", add_arguments=_serve_arguments, description=(
        "Serve a web page to generate with: one model, a bounded queue, live progress, a Stop button, and PNGs "
        "that carry their parameters. Needs the app extra: pip install -e \".[app]\"."))


def _serve_arguments(p: Parser) -> None:
    p.add_argument("--model", help="pipeline folder, hub repo id (user/name), or preset:NAME (default: the default "
                                   "model)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every network)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--queue-size", type=_positive_int, default=16,
                   help="requests that may wait behind the running one; more are turned away (default 16)")
    p.add_argument("--max-steps", type=_positive_int, default=100,
                   help="most steps a request may ask for (default 100)")
    p.add_argument("--max-images", type=_positive_int, default=4, help="most images per request (default 4)")
    p.set_defaults(func=_run_serve)


def _run_serve(args) -> None:
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise ValueError('latentdiff serve needs Gradio: pip install -e ".[app]" (or pip install gradio).')
    from latentdiff.app import Limits, serve

    serve(args.model, host=args.host, port=args.port, device=args.device,
          limits=Limits(max_steps=args.max_steps, max_images=args.max_images, queue_size=args.queue_size))


# ---------------------------------------------------------------------------------------------- bench
def _add_bench(sub) -> None:
    sub.add_parser("bench", help="speed and quality benchmarks against stock diffusers or a baseline recipe",
                   add_arguments=_bench_arguments)


def _bench_arguments(p: Parser) -> None:
    from latentdiff.bench import BENCHES, module_of

    benches = p.add_subparsers(dest="bench", required=True, metavar="BENCH", parser_class=_Subcommand)
    for bench in BENCHES:
        benches.add_parser(bench.name, help=bench.help, description=bench.description,
                           add_arguments=lambda b, bench=bench: _module_arguments(b, module_of(bench)))


# ---------------------------------------------------------------------------------------------- shapes
def _add_module_command(sub, name: str, module: str, help: str, description: str) -> None:
    """A subcommand whose arguments and handler live in the module named `module`, imported when it is used."""
    sub.add_parser(name, help=help, description=description,
                   add_arguments=lambda p: _module_arguments(p, importlib.import_module(module)))


def _add_shapes(sub) -> None:
    _add_module_command(sub, "shapes", "latentdiff.data.shapes", help="write a ShapesWorld dataset (captioned procedural scenes)",
                        description="Write a seeded ShapesWorld dataset as a Hugging Face imagefolder: images, "
                                    "metadata.jsonl (caption + scene spec) and a README that states the splits.")


def _add_glyphs(sub) -> None:
    _add_module_command(sub, "glyphs", "latentdiff.data.glyphs",
                        help="write a captioned glyph dataset from the DejaVu fonts matplotlib ships",
                        description="Render characters of fonts (default: matplotlib's DejaVu Sans and Serif, "
                                    "regular and bold) with FreeType, black on white, captioned with their Unicode "
                                    "names and the font's style (\"latin capital letter a, bold serif\"), as a "
                                    "Hugging Face imagefolder with a README.txt naming the fonts and their licence. "
                                    "Needs matplotlib.")


# ---------------------------------------------------------------------------------------------- eval
def _add_eval(sub) -> None:
    _add_module_command(sub, "eval", "latentdiff.eval.run", help="score a model on a ShapesWorld prompt set (GenEval-style categories)",
                        description="Generate images for every prompt of a prompt set, judge each against its "
                                    "prompt's spec, print a table per category and overall (the mean of the "
                                    "categories), and write JSON and a PNG grid with pass/fail frames.")


# ---------------------------------------------------------------------------------------------- push
def _add_push(sub) -> None:
    _add_module_command(sub, "push", "latentdiff.hub.push",
                        help="publish a model folder or LoRA to the Hugging Face Hub (with a model card)",
                        description="Stage a model folder (safetensors weights, model card, sample grid, and code "
                                    "where diffusers lacks it), check that stock diffusers loads it, and upload it. "
                                    "The token comes from HF_TOKEN or `hf auth login`.")


# ---------------------------------------------------------------------------------------------- export
def _add_export(sub) -> None:
    _add_module_command(sub, "export", "latentdiff.export",
                        help="write a model folder as one original Stable Diffusion checkpoint (A1111 / ComfyUI)",
                        description="Write a diffusers pipeline folder as a single-file checkpoint in the original "
                                    "Stable Diffusion layout, with its original (v1-inference.yaml-style) config and "
                                    "a diffusers config folder, so that A1111, ComfyUI and "
                                    "StableDiffusionPipeline.from_single_file load it offline.")


# ---------------------------------------------------------------------------------------------- main
COMMANDS: list[Callable] = [_add_generate, _add_eval, _add_bench, _add_shapes, _add_glyphs, _add_info, _add_serve,
                             _add_push, _add_export]


def build_parser() -> Parser:
    parser = Parser(prog="latentdiff", description="Text-to-image latent diffusion, native to Hugging Face diffusers.")
    parser.add_argument("--version", action="version", version=f"latentdiff {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Subcommand)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--version"]:  # answer without importing torch
        print(f"latentdiff {__version__}")
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.func(args)  # None or 0: success; a handler that reports its own failure returns non-zero
    except USER_ERRORS as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        command = " ".join(filter(None, (args.command, getattr(args, "bench", None))))  # "bench fine-tune"
        print(f"latentdiff {command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("latentdiff: interrupted", file=sys.stderr)
        return 130
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
