"""Staging an upload: copy what plain diffusers needs into a new folder, load it stock, draw samples, write the card.

The model folder is only read. See `latentdiff.hub` for what goes into the staged folder and why.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from latentdiff.hub.card import CardFacts, CardInfo, build_card, read_card_info
from latentdiff.hub.tokens import HubError, redact
from latentdiff.loading import REPO_ID

MODEL_INDEX = "model_index.json"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
LORA_PICKLE = "pytorch_lora_weights.bin"
STOCK_LIBRARIES = ("diffusers", "transformers")
# The components of a Stable Diffusion 1.x/2.x folder: the required five, and the optional ones it may name.
SD_COMPONENTS = frozenset({"vae", "text_encoder", "tokenizer", "unet", "scheduler"})
SD_OPTIONAL = frozenset({"safety_checker", "feature_extractor", "image_encoder"})
OUR_PIPELINE = "LatentDiffusionPipeline"
# Weight formats other than safetensors: never uploaded (pickles can run code; the rest diffusers won't read).
NOT_SAFETENSORS = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".msgpack", ".h5", ".onnx", ".pb")
SAMPLES_DIR = "samples"
# What a component folder of a diffusers pipeline holds: configs (config.json, scheduler_config.json, tokenizer and
# generation configs, safetensors index files), safetensors weights, tokenizer vocabularies (merges.txt, vocab.txt,
# sentencepiece *.model, chat templates) and the modules of custom-code components. Anything else is left out with a
# note, so that a stray file (notes, logs, keys) in a model folder is never published by accident.
COMPONENT_SUFFIXES = (".json", ".safetensors", ".model", ".jinja", ".py")
COMPONENT_NAMES = frozenset({"merges.txt", "vocab.txt"})


@dataclass(frozen=True)
class StagedFile:
    path: str  # path in the repo, with forward slashes
    size: int  # bytes


@dataclass
class StagedUpload:
    """A staged upload: the folder, its files, and what was established about it."""

    folder: Path  # the staging directory (the upload's root)
    kind: str  # "pipeline" or "lora"
    loader: str  # "stock", "remote-code" or "lora"
    pipeline_class: str | None  # what plain diffusers instantiates (None for a LoRA)
    files: list[StagedFile]  # everything that would be uploaded, sorted by path
    validation: str  # one sentence: how the folder was checked, or why it was not
    validated: bool  # True when stock diffusers loaded the staged folder
    base_model: str | None  # the hub repo id the card names as base model
    card: Any  # the huggingface_hub.ModelCard written to README.md
    notes: list[str] = field(default_factory=list)  # things skipped or worth knowing, one line each

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def listing(self) -> str:
        """One line per file, `SIZE  PATH` with the exact size in bytes, then the total."""
        width = max(len(f"{self.total_bytes:,}"), 5)
        lines = [f"{f.size:>{width},}  {f.path}" for f in self.files]
        lines.append(f"{self.total_bytes:>{width},}  total ({len(self.files)} files)")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- helpers
def _pipelines_dir() -> Path:
    import latentdiff.pipelines

    return Path(latentdiff.pipelines.__file__).parent


def _read_index(folder: Path) -> dict[str, Any]:
    try:
        index = json.loads((folder / MODEL_INDEX).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise HubError(f"{folder / MODEL_INDEX}: not valid JSON ({err}).") from err
    if not isinstance(index, dict) or "_class_name" not in index:
        raise HubError(f"{folder / MODEL_INDEX}: has no _class_name; it is not a diffusers pipeline index.")
    return index


def _components(index: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """component name -> (library, class) for the entries that name a loadable component."""
    return {k: (v[0], v[1]) for k, v in index.items()
            if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and v[0] and v[1]}


def _is_stock_library(library: str) -> bool:
    """True for what stock diffusers imports itself: diffusers, transformers (and the other libraries it knows),
    and its own pipeline modules (e.g. `stable_diffusion` for Stable Diffusion's safety checker)."""
    import diffusers.pipelines
    from diffusers.pipelines.pipeline_loading_utils import LOADABLE_CLASSES

    return library in STOCK_LIBRARIES or library in LOADABLE_CLASSES or hasattr(diffusers.pipelines, library)


def _is_standard(index: Mapping[str, Any]) -> bool:
    """Our pipeline on Stable Diffusion's components, all of stock classes: what StableDiffusionPipeline runs."""
    components = _components(index)
    return (index["_class_name"] == OUR_PIPELINE and SD_COMPONENTS <= set(components) <= SD_COMPONENTS | SD_OPTIONAL
            and all(_is_stock_library(lib) for lib, _ in components.values()))


def _is_local_dir(name: str | None) -> bool:
    return bool(name) and Path(name).is_dir()


def _is_repo_id(name: str | None) -> bool:
    return bool(name) and bool(REPO_ID.match(name)) and not Path(name).exists()


def _unsafe(path: Path, root: Path) -> str | None:
    """Why `path` must not be staged (a link that leaves `root`, which is resolved, or not a regular file), or None."""
    try:
        target = path.resolve(strict=True)
        mode = target.stat().st_mode
    except (OSError, RuntimeError):  # a broken or looping link
        return "a broken link"
    if not target.is_relative_to(root):
        return "a link to a file outside the model folder"
    if not stat.S_ISREG(mode):
        return "not a regular file"
    return None


def _copy_file(path: Path, dst: Path, root: Path) -> None:
    """Copy `path`, which must be a regular file inside `root` (links are resolved and checked), to `dst`."""
    why = _unsafe(path, root)
    if why:
        raise HubError(f"{path} is {why}; only regular files inside the model folder are uploaded.")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path.resolve(), dst)


def _copy_tree(src: Path, dst: Path, notes: list[str], root: Path) -> None:
    """Copy the files of `src` that a diffusers component folder holds into `dst`; every other file, each link
    that leaves `root` and each non-regular file is left out with a note (hidden files and caches silently)."""
    for dirpath, dirnames, filenames in os.walk(src):  # followlinks=False: a linked folder is listed, never entered
        here = Path(dirpath)
        for name in [d for d in dirnames if (here / d).is_symlink()]:
            notes.append(f"left out {(here / name).relative_to(root).as_posix()}/ (a linked folder)")
        dirnames[:] = sorted(d for d in dirnames if not (d.startswith(".") or d == "__pycache__"
                                                         or (here / d).is_symlink()))
        for name in sorted(f for f in filenames if not f.startswith(".")):
            path = here / name
            shown = path.relative_to(root).as_posix()
            if name.endswith(NOT_SAFETENSORS) or name.endswith(tuple(s + ".index.json" for s in NOT_SAFETENSORS)):
                notes.append(f"left out {shown} (not safetensors)")
                continue
            why = _unsafe(path, root)
            if why is None and not (name.endswith(COMPONENT_SUFFIXES) or name in COMPONENT_NAMES):
                why = "not a file a diffusers folder holds: configs, safetensors weights, tokenizer files, code"
            if why:
                notes.append(f"left out {shown} ({why})")
                continue
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path.resolve(), target)


def _copy_module(module: str, search: Sequence[Path], dst: Path, root: Path) -> list[str]:
    """Copy `module`.py from the first folder of `search` that has it, with the sibling files it imports
    relatively (recursively, as diffusers resolves them), into `dst`; returns the file names copied. A file in the
    model folder `root` must be a regular file inside it."""
    from diffusers.utils.dynamic_modules_utils import get_relative_import_files

    for folder in search:
        source = folder / f"{module}.py"
        if source.is_file():
            break
    else:
        raise HubError(
            f"no file {module}.py for the custom class in {MODEL_INDEX}: looked in "
            f"{', '.join(str(s) for s in search)}. Pass the folder that holds it with --code-dir."
        )
    files = [source] + [Path(p) for p in get_relative_import_files(str(source))]
    dst.mkdir(parents=True, exist_ok=True)
    for path in files:
        if not path.is_file():
            raise HubError(f"{source} imports {path.stem} relatively, but {path} does not exist.")
        if path.absolute().is_relative_to(root):
            _copy_file(path, dst / path.name, root)
        else:  # our own pipeline files, or a --code-dir the user named
            shutil.copy2(path, dst / path.name)
    return [p.name for p in files]


def _list_files(stage: Path) -> list[StagedFile]:
    return [StagedFile(p.relative_to(stage).as_posix(), p.stat().st_size)
            for p in sorted(stage.rglob("*")) if p.is_file()]


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Hide diffusers' and transformers' loading progress bars and info chatter; restore them afterwards."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    state = [(m, m.is_progress_bar_enabled(), m.get_verbosity()) for m in (dlog, tlog)]
    for m, _, _ in state:
        m.disable_progress_bar()
        m.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        for m, bar, verbosity in state:
            (m.enable_progress_bar if bar else m.disable_progress_bar)()
            m.set_verbosity(verbosity)


# ---------------------------------------------------------------------------------------------- pipelines
def _stage_pipeline(folder: Path, stage: Path, code_dirs: Sequence[Path],
                    notes: list[str]) -> tuple[str, str, list[str]]:
    """Copy a pipeline folder's components and write its model_index.json; returns (loader, class, code files)."""
    from latentdiff.pipelines.pipeline_latent_diffusion import pickle_only_components

    index = _read_index(folder)
    components = _components(index)
    missing = sorted(name for name in components if not (folder / name).is_dir())
    if missing:
        raise HubError(f"{folder}: {MODEL_INDEX} names component(s) {missing} but the folder has no such sub-folder.")
    pickled = [name for name in pickle_only_components(str(folder)) if name in components]
    if pickled:
        raise HubError(
            f"{folder}: the weights of {', '.join(pickled)} exist only as pickle files, which can run arbitrary code "
            "when loaded and are never uploaded. Convert them to safetensors first, e.g. "
            "LatentDiffusionPipeline.from_pretrained(DIR, use_safetensors=False).save_pretrained(NEW_DIR)."
        )
    for name in components:
        if not (folder / name).resolve().is_relative_to(folder):
            raise HubError(f"{folder}: the component folder {name} is a link to {(folder / name).resolve()}, outside "
                           "the model folder; copy it in, since only files inside the model folder are uploaded.")
        _copy_tree(folder / name, stage / name, notes, folder)

    index_in, class_name = index, index["_class_name"]
    custom = {name: lib_cls for name, lib_cls in components.items() if not _is_stock_library(lib_cls[0])}
    index = {k: v for k, v in index.items() if not k.startswith("_") or k == "_diffusers_version"}
    code_files: list[str] = []
    search = [folder, *code_dirs, _pipelines_dir()]

    if not custom and isinstance(class_name, str):
        import diffusers

        if _is_standard(index_in):
            # Our pipeline on stock components is Stable Diffusion's process: declare the stock class, which
            # draws the same image for the same seed (tests/test_interop.py), and needs no safety checker.
            class_name, loader = "StableDiffusionPipeline", "stock"
            index["requires_safety_checker"] = False
        elif class_name != OUR_PIPELINE and hasattr(diffusers, class_name):
            loader = "stock"
        elif class_name == OUR_PIPELINE:
            loader = "remote-code"  # extra components the stock class lacks: ship our pipeline
        else:
            raise HubError(f"{folder}: diffusers has no pipeline class {class_name!r}, and it is not latentdiff's.")
        if loader == "stock":
            return loader, _write_index(stage, class_name, index), code_files

    # Remote code: the pipeline file (and its relative imports) at the root, each custom component's module in
    # its own sub-folder, where diffusers looks for `COMPONENT/MODULE.py` (pipeline_loading_utils).
    if isinstance(class_name, list):
        module, cls = class_name
    elif class_name == OUR_PIPELINE:
        module, cls = Path(_our_pipeline_file()).stem, OUR_PIPELINE
    else:
        raise HubError(
            f"{folder}: components {sorted(custom)} need custom code, but the pipeline {class_name!r} is not "
            f"latentdiff's {OUR_PIPELINE}; save the model with {OUR_PIPELINE} to publish it."
        )
    code_files += _copy_module(module, search, stage, folder)
    for name, (library, cls_name) in custom.items():
        component_module = library.rsplit(".", 1)[-1]
        copied = _copy_module(component_module, [folder / name, *search], stage / name, folder)
        code_files += [f"{name}/{f}" for f in copied]
        index[name] = [component_module, cls_name]
    _write_index(stage, [module, cls], index)
    return "remote-code", f"{cls} (from {module}.py)", sorted(set(code_files))


def _our_pipeline_file() -> str:
    import inspect

    from latentdiff.pipelines import LatentDiffusionPipeline

    return inspect.getfile(LatentDiffusionPipeline)


def _write_index(stage: Path, class_name: str | list[str], index: dict[str, Any]) -> str:
    out = {"_class_name": class_name, **index}
    (stage / MODEL_INDEX).write_text(json.dumps(out, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return class_name if isinstance(class_name, str) else class_name[1]


# ---------------------------------------------------------------------------------------------- loading
def load_stock(model: str | Path, trust_remote_code: bool = False, local_files_only: bool = False):
    """Load a pipeline folder or repo the way a plain diffusers user would, through `DiffusionPipeline`
    (`local_files_only`: a repo only from the local Hugging Face cache).

    A latentdiff folder that still says `_class_name: LatentDiffusionPipeline` (as `save_pretrained` writes it)
    is loaded as what it publishes as: `StableDiffusionPipeline`, when its components are stock.
    """
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    path = Path(model)
    if path.is_dir() and (path / MODEL_INDEX).is_file():
        if _is_standard(_read_index(path)):
            return StableDiffusionPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False,
                                                           use_safetensors=True)
    return DiffusionPipeline.from_pretrained(model, use_safetensors=True, trust_remote_code=trust_remote_code,
                                             local_files_only=local_files_only)


def _load_base(base_model: str | None, recorded: str | None, token: str | None):
    """The pipeline a LoRA is test-loaded on: `base_model` as given (a folder, or a repo id diffusers may download),
    else the base its folder records, found offline (a folder here, or a repo id in the local Hugging Face cache);
    a HubError of one line where it cannot be loaded."""
    name = base_model or recorded
    where = "given with --base-model" if base_model else "recorded in the LoRA folder"
    if not base_model and not _is_local_dir(recorded) and not _is_repo_id(recorded):
        raise HubError(f"the LoRA's base model {recorded} ({where}) is not a folder here; pass --base-model "
                       "DIR_OR_REPO_ID to test-load it on another copy.")
    try:
        with _quiet_loading():
            return load_stock(name, local_files_only=not base_model and not _is_local_dir(name))
    except Exception as err:  # a missing or broken base: say which and what to pass
        message = redact(str(err).strip().splitlines()[0] if str(err).strip() else "", token)
        offline = "" if base_model or _is_local_dir(name) else " from the local Hugging Face cache"
        raise HubError(f"cannot load the LoRA's base model {name}{offline} ({where}): {type(err).__name__}: "
                       f"{message}. Pass --base-model DIR_OR_REPO_ID.") from None


def _draw_samples(pipe, info: CardInfo, stage: Path) -> tuple[list[tuple[str, str]], str]:
    """Draw one image per sample prompt (seed sample_seed + i) with `pipe`; save them and a grid."""
    import torch

    from latentdiff.eval.seeded import generate_seeded
    from latentdiff.images import make_grid, save_png

    prompts = list(info.sample_prompts)
    if not prompts:
        return [], ""
    pipe.set_progress_bar_config(disable=True)
    if torch.cuda.is_available():  # (training scripts push from GPU machines; the CPU generators keep the noise)
        pipe.to("cuda")
    images = generate_seeded(pipe, prompts, [info.sample_seed + i for i in range(len(prompts))],
                             num_inference_steps=info.sample_steps, guidance_scale=info.sample_guidance).images
    sampler = type(pipe.scheduler).__name__
    samples = []
    for i, (prompt, image) in enumerate(zip(prompts, images, strict=True)):
        path = f"{SAMPLES_DIR}/{i}.png"
        save_png(image, stage / path, {"prompt": prompt, "seed": info.sample_seed + i, "steps": info.sample_steps,
                                        "guidance": info.sample_guidance, "sampler": sampler})
        samples.append((prompt, path))
    grid = f"{SAMPLES_DIR}/grid.png"
    save_png(make_grid(images), stage / grid)
    return samples, grid


# ---------------------------------------------------------------------------------------------- architecture
def _count_params(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                n = 1
                for d in f.get_slice(key).get_shape():
                    n *= d
                total += n
    return total


def _config(folder: Path, name: str) -> dict[str, Any]:
    path = folder / name
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _architecture(stage: Path, kind: str) -> list[tuple[str, str]]:
    """(part, details) rows for the card, read from the staged configs and safetensors headers."""
    rows: list[tuple[str, str]] = []
    if kind == "lora":
        from safetensors import safe_open

        with safe_open(str(stage / LORA_WEIGHTS), "pt") as f:
            keys = list(f.keys())
            ranks = {f.get_slice(k).get_shape()[0] for k in keys if "lora_A" in k or "lora.down" in k}
        parts = sorted({k.split(".", 1)[0] for k in keys})
        rows.append(("LoRA", f"{_count_params(stage) / 1e6:.3g}M parameters in {len(keys)} tensors; rank "
                             f"{', '.join(str(r) for r in sorted(ranks)) or '?'}; adapts {', '.join(parts)}"))
        return rows
    unet, vae, te = _config(stage / "unet", "config.json"), _config(stage / "vae", "config.json"), \
        _config(stage / "text_encoder", "config.json")
    factor = 2 ** (len(vae.get("block_out_channels", [0])) - 1) if vae else None
    if unet:
        px = unet["sample_size"] * factor if factor and isinstance(unet.get("sample_size"), int) else None
        size = f"; {px}×{px} px images" if px else ""
        rows.append(("UNet", f"{_count_params(stage / 'unet') / 1e6:.3g}M parameters; channels "
                             f"{tuple(unet.get('block_out_channels', ()))}; cross-attention width "
                             f"{unet.get('cross_attention_dim')}{size}"))
    if vae:
        rows.append(("VAE", f"{_count_params(stage / 'vae') / 1e6:.3g}M parameters; downsampling x{factor}; "
                            f"{vae.get('latent_channels')} latent channels; "
                            f"scaling factor {vae.get('scaling_factor')}"))
    if te:
        rows.append(("Text encoder", f"{te.get('architectures', ['CLIPTextModel'])[0]}, "
                                     f"{_count_params(stage / 'text_encoder') / 1e6:.3g}M parameters; "
                                     f"{te.get('num_hidden_layers', te.get('num_layers'))} layers, width "
                                     f"{te.get('hidden_size', te.get('d_model'))}, "
                                     f"vocabulary {te.get('vocab_size')}"))
    sched = _config(stage / "scheduler", "scheduler_config.json")
    if sched:  # the process's own one-line description (pipelines/processes.py)
        from latentdiff.pipelines.processes import process_of

        rows.append(("Scheduler", f"{sched.get('_class_name')}; {process_of(sched).describe(sched)}"))
    return rows


# ---------------------------------------------------------------------------------------------- staging
def stage_folder(
    folder: str | Path,
    stage_dir: str | Path,
    repo_id: str,
    card_info: CardInfo | Mapping[str, Any] | None = None,
    *,
    base_model: str | None = None,
    base_model_id: str | None = None,
    samples: bool = True,
    code_dirs: Sequence[str | Path] = (),
    token: str | None = None,
    log: Callable[[str], None] | None = None,
) -> StagedUpload:
    """Build the upload of `folder` (a pipeline folder or a LoRA folder) in `stage_dir`, which must be new or empty.

    `base_model` is a folder or repo id to load a LoRA on for validation and samples (default: the base model the
    folder records, found offline: a folder, or a repo in the local Hugging Face cache); `base_model_id` is the repo id the card names as base model (default:
    the card info's, or `base_model` when that is a repo id). `code_dirs` are searched for custom component
    modules after the model folder. The staged folder is loaded with stock diffusers; a failure is a HubError.
    """
    folder = Path(folder).resolve()
    stage = Path(stage_dir).resolve()
    if not folder.is_dir():
        raise HubError(f"{folder} is not a folder.")
    if stage == folder or folder in stage.parents:
        raise HubError(f"the staging folder {stage} must be outside the model folder {folder}, which is never changed.")
    if stage.exists() and any(stage.iterdir()):
        raise HubError(f"the staging folder {stage} is not empty; pass a new or empty folder.")
    stage.mkdir(parents=True, exist_ok=True)
    info = read_card_info(folder, card_info)
    notes: list[str] = []

    # 1. Copy the weights and write model_index.json
    if (folder / MODEL_INDEX).is_file():
        kind = "pipeline"
        loader, pipeline_class, code_files = _stage_pipeline(folder, stage, [Path(d) for d in code_dirs], notes)
    elif (folder / LORA_WEIGHTS).is_file():
        kind, loader, pipeline_class, code_files = "lora", "lora", None, []
        _copy_file(folder / LORA_WEIGHTS, stage / LORA_WEIGHTS, folder)
    elif (folder / LORA_PICKLE).is_file():
        raise HubError(f"{folder}: the LoRA weights exist only as {LORA_PICKLE} (pickle), which can run arbitrary "
                       f"code when loaded; save them as {LORA_WEIGHTS} (save_lora_weights does by default).")
    else:
        raise HubError(f"{folder} is neither a pipeline folder (no {MODEL_INDEX}) "
                       f"nor a LoRA folder (no {LORA_WEIGHTS}).")

    # 2. Which base model the card names, and which one a LoRA is loaded on
    if base_model_id and not _is_repo_id(base_model_id):
        raise HubError(f"--base-model-id must be a hub repo id such as user/name, got {base_model_id!r}.")
    recorded = info.base_model  # what the folder's training_config.json / card.json name
    card_base = (base_model_id or (recorded if _is_repo_id(recorded) else None)
                 or (base_model if _is_repo_id(base_model) else None))
    info.base_model = card_base
    if not card_base and _is_local_dir(base_model or recorded):
        info.base_model_name = Path(base_model or recorded).name

    # 3. Load the staged folder the way a plain diffusers user would, and draw the samples with it
    import diffusers

    pipe, validated = None, False
    trust = loader == "remote-code"
    if kind == "lora" and not (base_model or recorded):
        validation = ("The LoRA was not test-loaded: its folder records no base model (training_config.json) and "
                      "none was given (pass --base-model DIR_OR_REPO_ID).")
    else:
        call = ("pipe.load_lora_weights(REPO)" if kind == "lora" else
                f"DiffusionPipeline.from_pretrained(REPO{', trust_remote_code=True' if trust else ''})")
        if kind == "lora":
            pipe = _load_base(base_model, recorded, token)
        if log:
            log(f"checking that stock diffusers loads the staged folder: {call}")
        try:
            with _quiet_loading():
                if kind == "lora":
                    pipe.load_lora_weights(str(stage))
                else:
                    pipe = load_stock(stage, trust_remote_code=trust)
        except Exception as err:  # any failure to load means the upload would be broken
            message = redact(str(err).strip().splitlines()[0] if str(err).strip() else "", token)
            raise HubError(f"stock diffusers cannot load the staged folder ({call}): "
                           f"{type(err).__name__}: {message}") from None
        validated = True
        validation = (f"Before upload, stock diffusers {diffusers.__version__} loaded these files with `{call}` "
                      + (f"on the base model (a `{type(pipe).__name__}`)" if kind == "lora"
                         else f"(as `{type(pipe).__name__}`)"))
    sample_list, grid = [], None
    if pipe is not None and samples:
        if log:
            log(f"drawing {len(info.sample_prompts)} sample images ({info.sample_steps} steps each)")
        sample_list, grid = _draw_samples(pipe, info, stage)
        grid = grid or None
    if validated:
        validation += " and drew the sample images above." if grid else "."

    # 4. The card
    facts = CardFacts(repo_id=repo_id, kind=kind, loader=loader, pipeline_class=pipeline_class, code_files=code_files,
                      architecture=_architecture(stage, kind), samples=sample_list, grid=grid,
                      sampler=type(pipe.scheduler).__name__ if pipe is not None else None, validation=validation)
    card = build_card(info, facts, token)
    card.save(stage / "README.md")
    if kind == "lora" and not card_base:
        notes.append("the card names no base model: pass --base-model-id USER/NAME or set base_model in card.json")
    return StagedUpload(folder=stage, kind=kind, loader=loader, pipeline_class=pipeline_class, files=_list_files(stage),
                        validation=validation, validated=validated, base_model=card_base, card=card, notes=notes)
