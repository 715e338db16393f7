"""Publishing to the Hugging Face Hub: model cards, staged uploads, LoRA, custom code, token safety.

    >>> from latentdiff.hub import push_folder
    >>> push_folder("runs/shapes-tiny", "someone/shapes-tiny", dry_run=True)   # lists files, loads them stock

`latentdiff push MODEL_DIR --repo-id USER/NAME [--private] [--revision BRANCH] [--dry-run]` does the same from
the command line. An upload is built in a *staging directory*; the model folder itself is never changed:

1. each component folder's files are copied if they are what a diffusers folder holds (configs, safetensors
   weights, tokenizer files, custom-code modules) and are regular files inside the model folder; any other
   file, a link that leads out of the folder, a FIFO or device is left out and named in a note (a component whose
   weights exist only as pickle files is refused),
2. `model_index.json` is rewritten so that one line of plain diffusers loads the repo:
   - a standard folder (our `LatentDiffusionPipeline` with stock diffusers/transformers components) is
     declared a `StableDiffusionPipeline`, which it is: `DiffusionPipeline.from_pretrained(repo)` needs no
     remote code and draws the same image for the same seed;
   - a folder with a component class that diffusers lacks (a `model_index.json` entry whose library is not
     diffusers/transformers, or a `_class_name` that is already a list) gets our pipeline files
     (`pipeline_latent_diffusion.py` and the siblings it imports) at the root, `_class_name:
     ["pipeline_latent_diffusion", "LatentDiffusionPipeline"]`, and each custom component's module as
     `COMPONENT/MODULE.py` with its entry `[MODULE, Class]`, so `DiffusionPipeline.from_pretrained(repo,
     trust_remote_code=True)` loads it (and refuses without `trust_remote_code`);
   - a LoRA folder uploads `pytorch_lora_weights.safetensors` only, for `pipe.load_lora_weights(repo)`;
3. the staged folder is loaded with stock `DiffusionPipeline.from_pretrained` (plus `load_lora_weights` on the
   base model for a LoRA), and that pipeline draws the sample images (`samples/N.png`, `samples/grid.png`);
4. `README.md`, the model card, is written (`huggingface_hub.ModelCard`; it round-trips through
   `ModelCard.load`), then the folder is uploaded with `HfApi.create_repo(exist_ok=True)` and `upload_folder`.

What the card says comes from files in the model folder (each optional; a missing file makes the card say
"not recorded" / "not evaluated", never a guessed number):

- `card.json`: hand-written card fields, any of `title`, `description`, `license`, `base_model` (a hub repo
  id), `datasets` (list), `tags` (list, added to ours), `sample_prompts` (list), `intended_use`,
  `limitations`.
- `training_config.json` (or `recipe.yaml`): the training script's arguments, a flat mapping. Scalars and short
  lists become the hyperparameter table (keys naming tokens, secrets or local `*_dir` folders are left out).
  `base_model` or `pretrained_model_name_or_path` names the model that was fine-tuned; `datasets`,
  `dataset`, `dataset_name` or `train_data_dir` name the data.
- `training_summary.json`: what the run did, e.g. `{"steps": 20000, "epochs": 4.0, "wall_clock_seconds":
  3600.0, "hardware": "1x NVIDIA H100 80GB", "final_loss": 0.071}`; any other scalar keys are listed too.
- `eval.json` (written by `latentdiff eval`): `{"metrics": {"NAME": number, ...}, "dataset": "NAME" or
  {"name": ..., "id": "USER/DATASET", "split": ...}, "settings": {...}, "command": "latentdiff eval ..."}`;
  the metrics go into the card's table and its `model-index` evaluation results.

A token is never written anywhere: `redact(text, token)` scrubs it (and anything shaped like a Hugging Face
token or an Authorization header) from every message, and `loggable_args(args)` gives training scripts a
token-free copy of their arguments to log or save.
"""

from latentdiff.hub.card import CardInfo, build_card, read_card_info
from latentdiff.hub.push import (
    HubError,
    PushResult,
    add_arguments,
    add_hub_arguments,
    check_hub_arguments,
    loggable_args,
    main,
    push_folder,
    redact,
    run,
)
from latentdiff.hub.stage import StagedFile, StagedUpload, stage_folder

__all__ = [
    "CardInfo",
    "HubError",
    "PushResult",
    "StagedFile",
    "StagedUpload",
    "add_arguments",
    "add_hub_arguments",
    "build_card",
    "check_hub_arguments",
    "loggable_args",
    "main",
    "push_folder",
    "read_card_info",
    "redact",
    "run",
    "stage_folder",
]
