"""Typed training configs: a dataclass, filled from a YAML recipe, then from command-line flags.

    cfg = parse_config(TextToImageConfig, argv)     # --config recipe.yaml --max-steps 100 ...

Every field of the dataclass becomes a flag (`max_steps` -> `--max-steps`) whose type comes from the field's
annotation, and whose help is the comment written beside the field. Precedence: dataclass default < YAML
recipe < command line. Unknown keys in a recipe are an error, not silently ignored, and so is a value of the
wrong type (`use_ema: "no"` is read as false, `batch_size: none` is refused) or out of range for the fields the
training scripts share (`check_common`): one ValueError line, at parse time, before any work.

A script's `if __name__ == "__main__":` block calls `run_entry_point(main)`, which prints such an error as one
line on stderr and exits with status 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import io
import json
import math
import os
import re
import sys
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, Callable, TypeVar

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


def _is_optional(annotation: Any) -> bool:
    return (typing.get_origin(annotation) in (typing.Union, types.UnionType)
            and type(None) in typing.get_args(annotation))


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


_KIND_WORDS = {bool: "true or false", int: "a whole number", float: "a finite number", str: "a string"}
_LIST_WORDS = {bool: "true/false values", int: "whole numbers", float: "finite numbers", str: "strings"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _scalar(kind: type, value: Any, name: str) -> Any:
    """`value` (from YAML or a flag) as `kind`, or a ValueError naming the flag and what it takes."""
    try:
        if kind is bool:
            if isinstance(value, bool) or value in (0, 1):  # (0 and 1 as the flag takes them)
                return bool(value)
            if isinstance(value, str):
                return _parse_bool(value)
        elif kind is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            number = float(value) if isinstance(value, (float, str)) else math.nan
            if number.is_integer():
                return int(number)
        elif kind is float:
            number = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else math.nan
            if math.isfinite(number):
                return number
        elif kind is str:
            if isinstance(value, str):
                return value
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
        else:
            return value
    except (ValueError, argparse.ArgumentTypeError):
        pass
    raise ValueError(f"{_flag(name)} must be {_KIND_WORDS.get(kind, kind.__name__)}, got {value!r}.")


def coerce_values(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """`values` (recipe or command line) converted to the types `cls` declares; None only where a field is Optional.
    A ValueError names `where`, the flag and what it takes."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name not in hints:
            out[name] = value  # (unknown names are reported by from_dict)
            continue
        annotation = hints[name]
        kind, is_list = _base_type(annotation)
        try:
            if value is None:
                if not _is_optional(annotation):
                    what = f"a list of {_LIST_WORDS[kind]}" if is_list else _KIND_WORDS.get(kind, kind.__name__)
                    raise ValueError(f"{_flag(name)} must be {what}, got none; it cannot be left empty.")
                out[name] = None
            elif is_list:
                items = [value] if isinstance(value, (str, int, float)) else value
                if not isinstance(items, (list, tuple)):
                    raise ValueError(f"{_flag(name)} must be a list of {_LIST_WORDS[kind]}, got {value!r}.")
                out[name] = [_scalar(kind, item, name) for item in items]
            else:
                out[name] = _scalar(kind, value, name)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    return out


def check_common(cfg: Any) -> None:
    """Range checks of the fields the training configs share, each applied when `cfg` has that field; a ValueError
    saying what to change. (Each config's __post_init__ checks its own fields.)"""

    def need(name: str, ok: Callable[[Any], bool], what: str) -> None:
        if hasattr(cfg, name) and getattr(cfg, name) is not None and not ok(getattr(cfg, name)):
            raise ValueError(f"{_flag(name)} must be {what}, got {getattr(cfg, name)!r}.")

    for name in ("batch_size", "max_steps", "gradient_accumulation_steps", "checkpoint_every", "keep_checkpoints",
                 "validation_every", "resolution", "stop_after", "max_bad_steps"):
        need(name, lambda v: v >= 1, ">= 1")
    for name in ("num_workers", "lr_warmup_steps"):
        need(name, lambda v: v >= 0, ">= 0")
    need("learning_rate", lambda v: v > 0, "> 0")
    need("weight_decay", lambda v: v >= 0, ">= 0")
    need("max_grad_norm", lambda v: v > 0, "> 0")
    need("ema_decay", lambda v: 0 <= v < 1, "in [0, 1)")
    need("caption_dropout", lambda v: 0 <= v <= 1, "in [0, 1]")
    need("time_budget_minutes", lambda v: v > 0, "> 0")
    need("train_time_budget_minutes", lambda v: v > 0, "> 0")
    need("mixed_precision", lambda v: v in ("no", "fp16", "bf16"), "one of no, fp16, bf16")
    need("report_to", lambda v: v in REPORT_TO, f"one of {', '.join(REPORT_TO)}")
    need("seed", lambda v: 0 <= v < 2**32, "in [0, 2**32)")  # what numpy's seeding (accelerate's set_seed) takes
    need("validation_steps", lambda v: all(n >= 1 for n in (v if isinstance(v, list) else [v])), ">= 1")
    need("validation_prompts", lambda v: len(v) > 0, "at least one prompt (the sample grids are drawn from them)")


# --report_to values: accelerate's trackers (Accelerator(log_with=...)), or none.
REPORT_TO = ("tensorboard", "wandb", "none")


def run_entry_point(main: Callable[[], Any]) -> None:
    """Run a training script's `main()` as a command: a ValueError (a config, data or path the user must change) is
    one line on stderr and exit status 2, not a traceback (set LATENTDIFF_TRACEBACK=1 to see it anyway). argparse's
    own errors are one line already (build_parser's parser)."""
    try:
        main()
    except ValueError as err:
        if os.environ.get("LATENTDIFF_TRACEBACK"):
            raise
        text = str(err).strip()
        print(f"{Path(sys.argv[0]).stem}: error: {text.splitlines()[0] if text else type(err).__name__}",
              file=sys.stderr)
        sys.exit(2)


# The flag names of diffusers' examples/text_to_image scripts, as aliases of our fields (ours stay): a command
# written for those scripts runs here unchanged. Each applies to the configs that have the field.
DIFFUSERS_FLAGS: dict[str, str] = {
    "pretrained_model_name_or_path": "pretrained",
    "train_data_dir": "train_data",
    "max_train_steps": "max_steps",
    "checkpointing_steps": "checkpoint_every",
    "resume_from_checkpoint": "resume",
    "validation_prompt": "validation_prompts",
    "train_batch_size": "batch_size",
    "checkpoints_total_limit": "keep_checkpoints",
    "hub_model_id": "hub_repo_id",
    "rank": "lora_rank",
}


def _aliases(name: str) -> list[str]:
    """The other flags of field `name`: its --snake_case spelling (diffusers' scripts spell flags so) and its
    diffusers name where DIFFUSERS_FLAGS has one."""
    names = ["--" + name] + ["--" + alias for alias, field_name in DIFFUSERS_FLAGS.items() if field_name == name]
    return [n for n in dict.fromkeys(names) if n != _flag(name)]


def _default_help(cls: type, name: str, default: Any, comment: str) -> str:
    """What --help says a field defaults to: its default, or one per kind of run where the config's MODE_DEFAULTS
    (field -> {kind of run: value}) has the field; nothing for a None that the comment explains ("default: ...")."""
    per_mode = getattr(cls, "MODE_DEFAULTS", {}).get(name)
    if per_mode:
        return "default: " + "; ".join(f"{mode} {value:g}" if isinstance(value, float) else f"{mode} {value}"
                                       for mode, value in per_mode.items())
    return "" if default is None and "default:" in comment else f"default: {default!r}"


def build_parser(cls: type, prog: str | None = None) -> argparse.ArgumentParser:
    """A flag per field, and its aliases (_aliases: each its own hidden flag, so that an error names the flag typed).
    A bool field is a switch: `--use-ema` alone is true, `--no-use-ema` false; `--use-ema true|false` still works.
    A config may have MODE_DEFAULTS (shown as the defaults of those fields) and HELP_EPILOG (text after the flags)."""
    from latentdiff.parsing import Parser  # argparse with one-line errors

    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    parser = Parser(prog=prog, description=(cls.__doc__ or "").strip().splitlines()[0],
                    epilog=getattr(cls, "HELP_EPILOG", None), argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help="YAML recipe (see training/recipes/); flags override it")
    for f in dataclasses.fields(cls):
        kind, is_list = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        diffusers_names = [a for a in _aliases(f.name) if a != "--" + f.name]
        also = f"also {', '.join(diffusers_names)}" if diffusers_names else ""
        options: dict[str, Any] = dict(dest=f.name, type=_none_or(kind))
        if is_list:
            options["nargs"] = "*"
        elif kind is bool:
            options.update(nargs="?", const=True, metavar="true|false")
        shown = "; ".join(filter(None, [_default_help(cls, f.name, default, comments.get(f.name, "")), also]))
        text = comments.get(f.name, "") + (f" ({shown})" if shown else "")
        parser.add_argument(_flag(f.name), help=text.replace("%", "%%"), **options)  # (argparse formats help with %)
        for alias in _aliases(f.name):
            parser.add_argument(alias, help=argparse.SUPPRESS, **options)
        if kind is bool and not is_list:
            parser.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false",
                                help=f"the same as {_flag(f.name)} false")
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
    """Defaults, then the `--config` YAML recipe, then flags; each value converted to its field's type, then
    validated by the dataclass's __post_init__ and `check_common`."""
    args = vars(build_parser(cls, prog).parse_args(argv))
    recipe = args.pop("config", None)
    values: dict[str, Any] = {}
    if recipe is not None:
        try:
            loaded = yaml.safe_load(Path(recipe).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ValueError(f"{recipe}: cannot read the recipe ({' '.join(str(err).split())}).") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{recipe}: a recipe must be a YAML mapping of option: value.")
        values.update(coerce_values(cls, {str(k).replace("-", "_"): v for k, v in loaded.items()}, str(recipe)))
    values.update(coerce_values(cls, args, "command line"))
    cfg = from_dict(cls, values, where=str(recipe or "command line"))
    check_common(cfg)
    return cfg


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as JSON next to the outputs, so a run can be repeated exactly."""
    Path(path).write_text(json.dumps(dataclasses.asdict(cfg), indent=2, default=str) + "\n")


def start_run(cfg: Any, name: str, config_file: str = "training_config.json", subfolders: tuple[str, ...] = (),
              **accelerator_options: Any) -> tuple[Any, Path]:
    """What every training script starts with: the Accelerator (logs in `cfg.output_dir` through the tracker of
    `cfg.report_to`, tensorboard where the config has no such field), the seed, and on the main process the output
    folder (and `subfolders` of it), the resolved config as `config_file` and the trackers under `name`. `cfg` has
    output_dir, mixed_precision and seed; a mixed_precision of None leaves it to `accelerate launch
    --mixed_precision` / `accelerate config` (Accelerator reads them from the environment). Returns (accelerator,
    output dir)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    out = Path(cfg.output_dir)
    report_to = getattr(cfg, "report_to", "tensorboard")
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision,
                              log_with=None if report_to in (None, "none") else report_to, project_dir=str(out),
                              **accelerator_options)
    set_seed(cfg.seed)
    if accelerator.is_main_process:
        for folder in (out, *(out / sub for sub in subfolders)):
            folder.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / config_file)
        accelerator.init_trackers(name)
    return accelerator, out
