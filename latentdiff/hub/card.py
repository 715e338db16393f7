"""Model cards: what a model folder records about itself (`read_card_info`) and the card built from it.

The schema of the files read here is documented in `latentdiff.hub` (the package docstring).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from latentdiff.hub.tokens import HubError, SECRET_KEY, redact
from latentdiff.loading import REPO_ID

BASE_TAGS = ["text-to-image", "diffusers", "latentdiff"]
DEFAULT_PROMPTS = [
    "a red circle",
    "three blue squares",
    "a green triangle to the left of a yellow star",
    "a purple diamond and an orange cross",
]
CONFIG_FILES = ("recipe.yaml", "training_config.json")  # read in this order; later files win
BASE_MODEL_KEYS = ("base_model", "pretrained_model_name_or_path", "pretrained")  # the last: train_text_to_image's
DATASET_KEYS = ("datasets", "dataset", "dataset_name", "train_data_dir")


@dataclass
class CardInfo:
    """What the card says beyond what the weights themselves show. Every field is optional."""

    title: str | None = None  # the card's heading; default: the repo's name
    description: str | None = None  # a paragraph under the heading
    license: str = "apache-2.0"  # a licence id the Hub knows (metadata `license`)
    base_model: str | None = None  # hub repo id of the model fine-tuned from, or of a LoRA's base
    base_model_name: str | None = None  # how the text names a base without a hub repo id (a local folder's name)
    datasets: list[str] = field(default_factory=list)  # training data; hub ids also go into the metadata
    tags: list[str] = field(default_factory=list)  # extra tags, after text-to-image / diffusers / latentdiff
    sample_prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))  # drawn for the grid
    sample_steps: int = 20  # sampler steps for the sample images
    sample_guidance: float = 7.5  # classifier-free guidance scale for the sample images
    sample_seed: int = 0  # sample i uses seed sample_seed + i
    intended_use: str | None = None  # replaces the default "Intended use" text
    limitations: str | None = None  # replaces the default "Limitations" text
    hyperparameters: dict[str, Any] = field(default_factory=dict)  # from training_config.json / recipe.yaml
    training: dict[str, Any] = field(default_factory=dict)  # from training_summary.json
    evaluation: dict[str, Any] | None = None  # from eval.json
    sources: list[str] = field(default_factory=list)  # the files these fields were read from

    def updated(self, overrides: Mapping[str, Any] | None) -> "CardInfo":
        """A copy with `overrides` (field name -> value) applied; unknown names are an error."""
        if not overrides:
            return dataclasses.replace(self)
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise HubError(f"card_info has unknown field(s) {unknown}; known fields: {', '.join(sorted(names))}.")
        return dataclasses.replace(self, **dict(overrides))


@dataclass
class CardFacts:
    """What staging established about the upload: the card states these, nothing it cannot check."""

    repo_id: str
    kind: str  # "pipeline" or "lora"
    loader: str  # "stock" (a diffusers class), "remote-code" or "lora"
    pipeline_class: str | None = None  # the class plain diffusers instantiates
    code_files: list[str] = field(default_factory=list)  # uploaded .py files (remote code)
    architecture: list[tuple[str, str]] = field(default_factory=list)  # (part, description) rows
    samples: list[tuple[str, str]] = field(default_factory=list)  # (prompt, path in repo)
    grid: str | None = None  # path in repo of the sample grid
    sampler: str | None = None  # scheduler class the samples were drawn with
    validation: str = ""  # one sentence: how the staged folder was checked


# ---------------------------------------------------------------------------------------------- reading
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise HubError(f"{path}: not valid JSON ({err}); fix or remove the file.") from err


def _read_mapping(path: Path) -> dict[str, Any]:
    if path.suffix == ".yaml":
        try:
            import yaml
        except ImportError as err:
            raise HubError(f"{path}: reading it needs PyYAML (pip install pyyaml).") from err
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    else:
        data = _read_json(path)
    if not isinstance(data, dict):
        raise HubError(f"{path}: expected a mapping of names to values, got {type(data).__name__}.")
    return data


def _as_list(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def _is_local_path(value: Any) -> bool:
    return isinstance(value, str) and (value.startswith(("/", "~", "./", "../")) or value[1:3] in (":\\", ":/"))


def _is_table_value(key: str, value: Any) -> bool:
    """Whether a recorded setting belongs in the card's tables: no secrets, no local folders (they mean nothing
    on the Hub and can reveal user names), and no base model or data (they have their own lines)."""
    if SECRET_KEY.search(key) or key.endswith("_dir") or key in BASE_MODEL_KEYS + DATASET_KEYS:
        return False
    if _is_local_path(value) or (isinstance(value, (list, tuple)) and any(_is_local_path(v) for v in value)):
        return False
    if isinstance(value, (list, tuple)):
        return len(value) <= 8 and all(isinstance(v, (str, int, float, bool)) for v in value)
    return isinstance(value, (str, int, float, bool)) or value is None


def read_card_info(folder: str | Path, overrides: CardInfo | Mapping[str, Any] | None = None) -> CardInfo:
    """The card fields recorded in `folder` (card.json, training_config.json / recipe.yaml,
    training_summary.json, eval.json), then `overrides` on top. A CardInfo passed as `overrides` is used as is."""
    if isinstance(overrides, CardInfo):
        return overrides.updated(None)
    folder = Path(folder)
    info = CardInfo()
    config: dict[str, Any] = {}
    for name in CONFIG_FILES:
        if (folder / name).is_file():
            config.update(_read_mapping(folder / name))
            info.sources.append(name)
    if config:
        info.hyperparameters = {k: v for k, v in config.items() if _is_table_value(str(k), v)}
        info.base_model = next((str(config[k]) for k in BASE_MODEL_KEYS if config.get(k)), None)
        prompts = config.get("validation_prompts")
        if isinstance(prompts, list) and prompts and all(isinstance(p, str) for p in prompts):
            info.sample_prompts = prompts  # the run's own grid prompts (card.json's sample_prompts win)
        key = next((k for k in DATASET_KEYS if config.get(k)), None)
        if key == "train_data_dir":  # a local folder: name it, but not as a hub dataset, and not its full path
            info.datasets = [f"{Path(str(config[key])).name} (local folder)"]
        elif key is not None:
            info.datasets = _as_list(config[key])
    if (folder / "training_summary.json").is_file():
        summary = _read_mapping(folder / "training_summary.json")
        info.training = {k: v for k, v in summary.items() if _is_table_value(str(k), v)}
        info.sources.append("training_summary.json")
    if (folder / "eval.json").is_file():
        info.evaluation = _read_mapping(folder / "eval.json")
        info.sources.append("eval.json")
    if (folder / "card.json").is_file():
        card = _read_mapping(folder / "card.json")
        info = info.updated({k: (_as_list(v) if k in ("datasets", "tags", "sample_prompts") else v)
                             for k, v in card.items()})
        info.sources.append("card.json")
    return info.updated(overrides)


# ---------------------------------------------------------------------------------------------- evaluation
def _eval_metrics(evaluation: Mapping[str, Any]) -> dict[str, float]:
    metrics = evaluation.get("metrics", evaluation)
    if not isinstance(metrics, Mapping):
        return {}
    return {str(k): float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _eval_dataset(evaluation: Mapping[str, Any]) -> tuple[str, str, str | None]:
    """(name, type/id, split) of the evaluation data."""
    dataset = evaluation.get("dataset") or "unnamed"
    if isinstance(dataset, Mapping):
        name = str(dataset.get("name") or dataset.get("id") or "unnamed")
        return name, str(dataset.get("id") or name), (str(dataset["split"]) if dataset.get("split") else None)
    return str(dataset), str(dataset), None


def _eval_results(evaluation: Mapping[str, Any] | None):
    from huggingface_hub import EvalResult

    if not evaluation:
        return None
    name, dataset_type, split = _eval_dataset(evaluation)
    results = [EvalResult(task_type="text-to-image", dataset_type=dataset_type, dataset_name=name,
                          dataset_split=split, metric_type=metric, metric_name=metric, metric_value=value)
               for metric, value in _eval_metrics(evaluation).items()]
    return results or None


# ---------------------------------------------------------------------------------------------- the card
def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return "—" if value is None else str(value)


def _table(rows: list[tuple[str, str]], header: tuple[str, str]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {a} | {b.replace('|', '/')} |" for a, b in rows]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _base_name(info: CardInfo) -> str | None:
    """The base model as the card's text names it (Markdown): its hub repo id, else its folder's name."""
    if info.base_model:
        return f"`{info.base_model}`"
    return f"`{info.base_model_name}` (a local folder)" if info.base_model_name else None


def _shown_prompt(prompt: str) -> str:
    return f"“{prompt}”" if prompt else "“” (no prompt: the unconditional picture)"


def _usage(info: CardInfo, facts: CardFacts) -> str:
    prompt = next((p for p in info.sample_prompts if p), DEFAULT_PROMPTS[0])
    call = (f'image = pipe("{prompt}", num_inference_steps={info.sample_steps}, '
            f"guidance_scale={info.sample_guidance:g},\n"
            f"             generator=torch.Generator().manual_seed({info.sample_seed})).images[0]\n"
            'image.save("out.png")')
    if facts.kind == "lora":
        base = info.base_model or (f"PATH/TO/{info.base_model_name}" if info.base_model_name else "BASE_MODEL")
        load = (f'pipe = DiffusionPipeline.from_pretrained("{base}")\n'
                f'pipe.load_lora_weights("{facts.repo_id}")')
        note = "The LoRA loads on its base model with diffusers' `load_lora_weights`:"
    elif facts.loader == "remote-code":
        load = f'pipe = DiffusionPipeline.from_pretrained("{facts.repo_id}", trust_remote_code=True)'
        note = ("This repository ships the pipeline code that diffusers lacks (" +
                ", ".join(f"`{f}`" for f in facts.code_files) +
                "); `trust_remote_code=True` runs it, so read it first. Without that flag diffusers refuses to "
                "load it.")
    else:
        load = f'pipe = DiffusionPipeline.from_pretrained("{facts.repo_id}")'
        note = f"Plain diffusers loads it as a `{facts.pipeline_class}`; no custom code is needed:"
    snippet = f"```python\nimport torch\nfrom diffusers import DiffusionPipeline\n\n{load}\n{call}\n```"
    ours = ""
    if facts.kind == "pipeline":
        ours = (f"\n\nWith latentdiff installed, `LatentDiffusionPipeline.from_pretrained(\"{facts.repo_id}\")` loads "
                "it too and adds named samplers (`pipe.set_sampler(\"dpm++2m\")`).")
    return f"{note}\n\n{snippet}{ours}"


def _training_section(info: CardInfo, lora: bool) -> str:
    parts = []
    if info.datasets:
        parts.append("Data: " + ", ".join(f"[{d}](https://huggingface.co/datasets/{d})" if REPO_ID.match(d)
                                           else f"`{d}`" for d in info.datasets) + ".")
    if _base_name(info):
        parts.append(f"{'Base model' if lora else 'Fine-tuned from'}: {_base_name(info)}.")
    t = info.training
    if t:
        bits = []
        if t.get("steps") is not None:
            bits.append(f"{t['steps']} steps")
        if t.get("epochs") is not None:
            bits.append(f"{_fmt(t['epochs'])} epochs")
        if isinstance(t.get("wall_clock_seconds"), (int, float)):
            bits.append(f"{_duration(float(t['wall_clock_seconds']))} wall-clock")
        if t.get("hardware"):
            bits.append(f"on {t['hardware']}")
        if bits:
            parts.append("Run: " + ", ".join(bits) + ".")
        rest = [(k, _fmt(v)) for k, v in t.items() if k not in ("steps", "epochs", "wall_clock_seconds", "hardware")]
        if rest:
            parts.append(_table(rest, ("summary", "value")))
    else:
        parts.append("Training run: not recorded (no `training_summary.json` in the model folder), so steps, "
                     "hardware and time are not stated.")
    if info.hyperparameters:
        parts.append(_table([(k, _fmt(v)) for k, v in info.hyperparameters.items()], ("hyperparameter", "value")))
    else:
        parts.append("Recipe: not recorded (no `training_config.json` or `recipe.yaml` in the model folder).")
    return "\n\n".join(parts)


def _evaluation_section(info: CardInfo) -> str:
    evaluation = info.evaluation
    metrics = _eval_metrics(evaluation) if evaluation else {}
    if not metrics:
        return ("Not evaluated: the model folder has no `eval.json` with metrics. `latentdiff eval` writes one; "
                "no score is claimed here.")
    name, dataset_type, split = _eval_dataset(evaluation)
    where = f"{name}" + (f" ({split} split)" if split else "")
    text = f"On {where}:\n\n" + _table([(k, f"{v:.4g}") for k, v in metrics.items()], ("metric", "score"))
    settings = evaluation.get("settings")
    if isinstance(settings, Mapping) and settings:
        text += "\n\nSettings: " + ", ".join(f"{k}={_fmt(v)}" for k, v in settings.items()) + "."
    if evaluation.get("command"):
        text += f"\n\nReproduce with:\n\n```bash\n{evaluation['command']}\n```"
    return text


def build_card(info: CardInfo, facts: CardFacts, token: str | None = None):
    """The `huggingface_hub.ModelCard` for an upload (metadata + Markdown body), with any token redacted."""
    from huggingface_hub import ModelCard, ModelCardData

    lora = facts.kind == "lora"
    tags = list(dict.fromkeys(BASE_TAGS + (["lora"] if lora else []) + list(info.tags)))
    title = info.title or facts.repo_id.split("/")[-1]
    hub_datasets = [d for d in info.datasets if REPO_ID.match(d)]
    widget = [{"text": prompt, "output": {"url": path}} for prompt, path in facts.samples if prompt] or None
    data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="text-to-image",
        license=info.license,
        tags=tags,
        base_model=info.base_model,
        datasets=hub_datasets or None,
        model_name=title,
        eval_results=_eval_results(info.evaluation),
        widget=widget,
    )

    what = (f"LoRA weights for {_base_name(info) or 'its base model'}" if lora
            else "A text-to-image latent diffusion model")
    sections = [f"# {title}", info.description or f"{what}, made with latentdiff."]
    if facts.grid:
        sections.append(f"![sample images]({facts.grid})\n\n*Prompts, left to right and top to bottom: "
                        + "; ".join(_shown_prompt(p) for p, _ in facts.samples)
                        + f". Seeds {info.sample_seed}…{info.sample_seed + len(facts.samples) - 1}, "
                          f"{info.sample_steps} steps of {facts.sampler}, guidance {info.sample_guidance:g}; drawn "
                          "by `latentdiff push` with stock diffusers from the uploaded files.*")
    sections += ["## Use it with diffusers", _usage(info, facts)]
    if facts.architecture:
        sections += ["## Model", _table(facts.architecture, ("part", "details"))]
    sections += ["## Training", _training_section(info, lora), "## Evaluation", _evaluation_section(info)]
    sections += ["## Intended use", info.intended_use or (
        "Research and teaching on text-to-image latent diffusion, and testing code built on diffusers. It is not "
        "meant for production use or for depicting real people.")]
    sections += ["## Limitations", info.limitations or (
        "The model draws only what its training data shows; prompts outside that data give meaningless images. "
        "No safety checker is included. "
        + ("Scores above hold for the stated evaluation data only." if info.evaluation
           else "It has not been evaluated, so nothing is claimed about its quality."))]
    sections += ["## Provenance", f"Card and upload made by `latentdiff push`. {facts.validation}"
                 + (f" Card fields read from: {', '.join(f'`{s}`' for s in info.sources)}." if info.sources else "")]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n"
    return ModelCard(redact(content, token))
