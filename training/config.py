"""Typed training configs: a dataclass, filled from a YAML recipe, then from command-line flags.

    cfg = parse_config(TextToImageConfig, argv)     # --config recipe.yaml --max-steps 100 ...

Every field of the dataclass becomes a flag (`max_steps` -> `--max-steps`) whose type comes from the field's
annotation, and whose help is the comment written beside the field. Precedence: dataclass default < YAML
recipe < command line. Unknown keys in a recipe are an error, not silently ignored.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import json
import re
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

C = TypeVar("C")


def field_comments(cls: type) -> dict[str, str]:
    """The `# comment` written after each field of a dataclass, read from its source (nanoGPT style docs)."""
    comments: dict[str, str] = {}
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return comments
    pattern = re.compile(r"^\s+(\w+)\s*:")
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            match = pattern.match(tok.line)
            if match:
                comments[match.group(1)] = tok.string.lstrip("# ").strip()
    return comments


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(scalar type, is_list) of an annotation such as `int`, `float | None` or `list[str]`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    if origin in (list, tuple):
        return typing.get_args(annotation)[0], True
    return annotation, False


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _none_or(kind: type):
    def parse(text: str):
        if text.lower() in ("none", "null", ""):
            return None
        return _parse_bool(text) if kind is bool else kind(text)

    parse.__name__ = kind.__name__
    return parse


def build_parser(cls: type, prog: str | None = None) -> argparse.ArgumentParser:
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    parser = argparse.ArgumentParser(prog=prog, description=(cls.__doc__ or "").strip().splitlines()[0],
                                     argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help="YAML recipe (see training/recipes/); flags override it")
    for f in dataclasses.fields(cls):
        kind, is_list = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        help_text = f"{comments.get(f.name, '')} (default: {default!r})"
        if is_list:
            parser.add_argument(flag, dest=f.name, type=_none_or(kind), nargs="*", help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=_none_or(kind), help=help_text)
    return parser


def from_dict(cls: type[C], values: dict[str, Any], where: str = "config") -> C:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown}; {cls.__name__} has: {', '.join(sorted(names))}.")
    try:
        return cls(**values)
    except TypeError as err:  # a required field missing
        raise ValueError(f"{where}: {err}") from err


def parse_config(cls: type[C], argv: list[str] | None = None, prog: str | None = None) -> C:
    """Defaults, then the `--config` YAML recipe, then flags; validated by the dataclass's __post_init__."""
    args = vars(build_parser(cls, prog).parse_args(argv))
    recipe = args.pop("config", None)
    values: dict[str, Any] = {}
    if recipe is not None:
        loaded = yaml.safe_load(Path(recipe).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{recipe}: a recipe must be a YAML mapping of option: value.")
        values.update({k.replace("-", "_"): v for k, v in loaded.items()})
    values.update(args)
    return from_dict(cls, values, where=str(recipe or "command line"))


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as JSON next to the outputs, so a run can be repeated exactly."""
    Path(path).write_text(json.dumps(dataclasses.asdict(cfg), indent=2, default=str) + "\n")


def start_run(cfg: Any, name: str, config_file: str = "training_config.json", subfolders: tuple[str, ...] = (),
              **accelerator_options: Any) -> tuple[Any, Path]:
    """What every training script starts with: the Accelerator (tensorboard logs in `cfg.output_dir`), the seed,
    and on the main process the output folder (and `subfolders` of it), the resolved config as `config_file` and
    the trackers under `name`. `cfg` has output_dir, mixed_precision and seed. Returns (accelerator, output dir)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    out = Path(cfg.output_dir)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, log_with="tensorboard", project_dir=str(out),
                              **accelerator_options)
    set_seed(cfg.seed)
    if accelerator.is_main_process:
        for folder in (out, *(out / sub for sub in subfolders)):
            folder.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / config_file)
        accelerator.init_trackers(name)
    return accelerator, out
