"""The `latentdiff` command. Each subcommand parses its arguments here and calls one library function."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, NoReturn

from latentdiff.version import __version__

# Library errors that mean "the user asked for something that cannot be done": one line, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, OSError)


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block), so bad use reads like the library's own errors."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _sampler_names() -> list[str]:
    from latentdiff.pipelines.samplers import sampler_names

    return sampler_names()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


# ---------------------------------------------------------------------------------------------- generate
def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate images from a prompt", description=(
        "Generate images from a prompt and write PNGs that carry their generation parameters. Without --model "
        "it uses the shipped default model, or, where none exists yet, the random-weight `small` preset."))
    p.add_argument("prompt", help="what to draw")
    p.add_argument("--model", help="pipeline folder, hub repo id (user/name), or preset:NAME")
    p.add_argument("--sampler", choices=_SAMPLERS, metavar="NAME", help=f"one of: {', '.join(_SAMPLERS)}")
    p.add_argument("--steps", type=_positive_int, default=20, help="sampler steps (default 20)")
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    p.add_argument("--seed", type=int, default=0, help="random seed; image i uses seed+i (default 0)")
    p.add_argument("-n", "--num-images", type=_positive_int, default=1, help="number of images (default 1)")
    p.add_argument("--height", type=int, help="image height in pixels (default: the model's)")
    p.add_argument("--width", type=int, help="image width in pixels (default: the model's)")
    p.add_argument("--negative", help="negative prompt: what to guide away from")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("-o", "--output", default="latentdiff.png", help="output PNG (default latentdiff.png)")
    p.set_defaults(func=_run_generate)


def _run_generate(args) -> None:
    from latentdiff.generate import GenerationRequest, generate_files
    from latentdiff.loading import load_model

    if not args.output.lower().endswith(".png"):
        raise ValueError(f"-o must name a .png file, got {args.output!r}.")
    loaded = load_model(args.model, device=args.device)
    if args.model is None and loaded.random_weights:
        print(f"note: generating with {loaded.source}: no trained default model is shipped yet, so the image is "
              "noise-like. Pass --model DIR_OR_REPO_ID to use a trained one.", file=sys.stderr)
    request = GenerationRequest(prompt=args.prompt, negative_prompt=args.negative, sampler=args.sampler,
                                steps=args.steps, guidance=args.guidance, seed=args.seed,
                                num_images=args.num_images, height=args.height, width=args.width)
    for path in generate_files(loaded, request, args.output):
        print(path)


# ---------------------------------------------------------------------------------------------- bench
def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="speed benchmarks against stock diffusers")
    benches = p.add_subparsers(dest="bench", required=True, metavar="BENCH", parser_class=Parser)
    g = benches.add_parser("generate", help="seconds per image: LatentDiffusionPipeline vs StableDiffusionPipeline",
                           description="Time LatentDiffusionPipeline against stock diffusers StableDiffusionPipeline "
                                       "on the same weights and scheduler, in one run, and print the ratio.")
    g.add_argument("--model", help="pipeline folder, hub repo id, or preset:NAME (default: the default model)")
    g.add_argument("--sampler", choices=_SAMPLERS, metavar="NAME", help="named sampler for both pipelines")
    g.add_argument("--steps", type=_positive_int, default=20)
    g.add_argument("--height", type=int)
    g.add_argument("--width", type=int)
    g.add_argument("--batch", type=_positive_int, default=1, help="images per call")
    g.add_argument("--guidance", type=float, default=7.5)
    g.add_argument("--repeats", type=_positive_int, default=5, help="timed calls per pipeline (median reported)")
    g.add_argument("--device", default="auto")
    g.add_argument("--json", help="also write the result as JSON to this file")
    g.set_defaults(func=_run_bench_generate)


def _run_bench_generate(args) -> None:
    from dataclasses import asdict

    from latentdiff.bench import bench_generate
    from latentdiff.loading import load_model

    loaded = load_model(args.model, device=args.device)
    if args.sampler:
        loaded.pipe.set_sampler(args.sampler)
    result = bench_generate(loaded.pipe, loaded.source, steps=args.steps, height=args.height, width=args.width,
                            batch=args.batch, guidance=args.guidance, repeats=args.repeats)
    print(result.table())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(asdict(result) | {"speedup": result.speedup}, f, indent=2)


# ---------------------------------------------------------------------------------------------- shapes
def _add_shapes(sub) -> None:
    from latentdiff.data import shapes

    p = sub.add_parser("shapes", help="write a ShapesWorld dataset (captioned procedural scenes)",
                       description="Write a seeded ShapesWorld dataset as a Hugging Face imagefolder: images, "
                                   "metadata.jsonl (caption + scene spec) and a README that states the splits.")
    shapes.add_arguments(p)
    p.set_defaults(func=shapes.run)


# ---------------------------------------------------------------------------------------------- main
_SAMPLERS: list[str] = []
COMMANDS: list[Callable] = [_add_generate, _add_bench, _add_shapes]


def build_parser() -> Parser:
    _SAMPLERS[:] = _sampler_names()
    parser = Parser(prog="latentdiff", description="Text-to-image latent diffusion, native to Hugging Face diffusers.")
    parser.add_argument("--version", action="version", version=f"latentdiff {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
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
        args.func(args)
    except USER_ERRORS as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"latentdiff {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("latentdiff: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
