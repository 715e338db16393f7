"""`latentdiff push` and `push_folder`: stage a model folder, check it, and upload it with huggingface_hub."""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from latentdiff.hub.card import CardInfo
from latentdiff.hub.stage import StagedFile, StagedUpload, stage_folder
from latentdiff.hub.tokens import HubError, loggable_args, redact, resolve_token
from latentdiff.loading import REPO_ID

__all__ = ["HubError", "PushResult", "add_arguments", "add_hub_arguments", "check_hub_arguments", "check_repo_id",
           "loggable_args", "main", "push_folder", "redact", "run"]

HUB_URL = "https://huggingface.co"
# Above this size, use upload_large_folder where this huggingface_hub has it (resumable, several commits);
# huggingface_hub >= 2 dropped it because upload_folder itself now commits large folders in batches.
LARGE_FOLDER_BYTES = 5 * 1024**3


@dataclass
class PushResult:
    repo_id: str
    files: list[StagedFile]  # what was (or, with dry_run, would be) uploaded
    dry_run: bool
    url: str | None  # the commit URL after an upload; None for a dry run
    staged: StagedUpload  # the staged upload (its folder is gone unless stage_dir was given)


def check_repo_id(repo_id: Any, flag: str = "the repo id") -> None:
    """HubError (a ValueError) unless `repo_id` is a USER/NAME the Hub accepts (huggingface_hub's own rules)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        if not isinstance(repo_id, str) or not REPO_ID.match(repo_id):
            raise HFValidationError(repo_id)
        validate_repo_id(repo_id)
    except HFValidationError:
        raise HubError(f"{flag} must look like USER/NAME (letters, digits, - _ .; no '--' or '..', no '.git' at the "
                       f"end, each part at most 96 characters and not starting or ending with - or .), "
                       f"got {repo_id!r}.") from None


def _one_line(err: BaseException, token: str | None) -> str:
    text = str(err).strip()
    return redact(text.splitlines()[0] if text else type(err).__name__, token)


def _hub_failure(err: Exception, repo_id: str, token: str | None) -> str:
    """One line saying what went wrong talking to the Hub: refused token, no connection, or the Hub's answer."""
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    what = f"{type(err).__name__}: {_one_line(err, token)}"
    if status in (401, 403):
        return (f"the Hub refused the token for {repo_id} (HTTP {status}); use a token with write access to "
                f"{repo_id.split('/')[0]} (set HF_TOKEN or run `hf auth login`). The model folder is unchanged.")
    names = " ".join(c.__name__ for c in type(err).__mro__)
    if status is None and any(word in names for word in ("Connect", "Timeout", "Network")):
        return f"could not reach the Hugging Face Hub ({what}). Nothing local was changed; try again when online."
    return f"upload to {repo_id} failed ({what}). The model folder is unchanged."


def _upload(staged: StagedUpload, repo_id: str, private: bool, revision: str | None, token: str,
            commit_message: str | None) -> str:
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        if staged.total_bytes > LARGE_FOLDER_BYTES and hasattr(api, "upload_large_folder"):
            api.upload_large_folder(repo_id=repo_id, folder_path=str(staged.folder), repo_type="model",
                                    revision=revision, private=private)
            return f"{HUB_URL}/{repo_id}"
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(staged.folder), repo_type="model",
                                   revision=revision, commit_message=commit_message or "Upload with latentdiff push")
    except Exception as err:  # network, HTTP, auth: one redacted line; `from None` keeps the raw error out of
        # any traceback (its message may hold the token)
        raise HubError(_hub_failure(err, repo_id, token)) from None
    return str(getattr(commit, "commit_url", None) or f"{HUB_URL}/{repo_id}")


def push_folder(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    dry_run: bool = False,
    card_info: CardInfo | Mapping[str, Any] | None = None,
    *,
    base_model: str | None = None,
    base_model_id: str | None = None,
    samples: bool = True,
    code_dirs: Sequence[str | Path] = (),
    stage_dir: str | Path | None = None,
    commit_message: str | None = None,
    log: Callable[[str], None] = print,
) -> PushResult:
    """Publish a pipeline or LoRA folder to `repo_id` (USER/NAME) on the Hugging Face Hub.

    The upload is staged in a temporary folder (or `stage_dir`, kept, which must be new or empty) and checked by
    loading it with stock diffusers before anything is sent; `folder` is never changed. With `dry_run`, prints
    the files and sizes that would be uploaded and stops. `token` defaults to $HF_TOKEN or the saved login.
    `card_info`: card fields (see `CardInfo`) that override those read from the folder's files. Training
    scripts call this after saving: `push_folder(args.output_dir, args.hub_repo_id, private=args.hub_private)`.

    Raises HubError with one redacted line for anything the user can fix (folder, token, network).
    """
    token = resolve_token(token)
    check_repo_id(repo_id)
    if not dry_run and not token:
        raise HubError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (or use --dry-run).")
    with tempfile.TemporaryDirectory(prefix="latentdiff-push-") as tmp:
        stage = Path(stage_dir) if stage_dir is not None else Path(tmp) / "upload"
        staged = stage_folder(folder, stage, repo_id, card_info, base_model=base_model, base_model_id=base_model_id,
                              samples=samples, code_dirs=code_dirs, token=token, log=log)
        if staged.kind == "lora" and not staged.base_model and not dry_run:
            raise HubError("a LoRA card must name its base model's hub repo id: pass --base-model-id USER/NAME "
                           "(base_model_id=...) or set base_model in the folder's card.json.")
        where = f"{HUB_URL}/{repo_id} ({'private' if private else 'public'}, branch {revision or 'main'})"
        log(f"{'would upload' if dry_run else 'uploading'} {len(staged.files)} files to {where}:")
        log(staged.listing())
        for note in staged.notes:
            log(f"note: {note}")
        log(("ok: " if staged.validated else "warning: ") + staged.validation)
        if dry_run:
            log("dry run: nothing was uploaded.")
            return PushResult(repo_id, staged.files, True, None, staged)
        url = _upload(staged, repo_id, private, revision, token, commit_message)
        log(f"uploaded: {url}")
        return PushResult(repo_id, staged.files, False, url, staged)


# ---------------------------------------------------------------------------------------------- training scripts
def add_hub_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add --push-to-hub, --hub-repo-id and --hub-private to a training script's parser (the token comes from
    $HF_TOKEN or `hf auth login`, never from the command line, where it would land in shell history and logs)."""
    group = parser.add_argument_group("Hugging Face Hub")
    group.add_argument("--push-to-hub", action="store_true", help="upload the trained model when training ends")
    group.add_argument("--hub-repo-id", metavar="USER/NAME", help="the repo to upload to (needed with --push-to-hub)")
    group.add_argument("--hub-private", action="store_true", help="create the repo as private")
    return parser


def check_hub_arguments(args: argparse.Namespace) -> None:
    """Raise ValueError (one line) for hub options that cannot work, before training starts, not after."""
    if getattr(args, "push_to_hub", False):
        if not args.hub_repo_id:
            raise ValueError("--push-to-hub needs --hub-repo-id USER/NAME.")
        check_repo_id(args.hub_repo_id, "--hub-repo-id")
        if not resolve_token():
            raise ValueError("--push-to-hub needs a Hugging Face token: set HF_TOKEN or run `hf auth login`.")


# ---------------------------------------------------------------------------------------------- latentdiff push
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `latentdiff push` options to `parser`."""
    parser.add_argument("model_dir", metavar="MODEL_DIR", help="a pipeline folder (model_index.json) or a LoRA folder")
    parser.add_argument("--repo-id", required=True, metavar="USER/NAME", help="the Hub repo to upload to")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", metavar="BRANCH", help="upload to this branch (created if missing)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the files and sizes that would be uploaded, check them with stock diffusers, "
                             "upload nothing")
    parser.add_argument("--base-model", metavar="DIR_OR_REPO_ID",
                        help="for a LoRA: the base model to load it on for the check and samples (default: the one its "
                             "training recorded, found offline)")
    parser.add_argument("--base-model-id", metavar="USER/NAME",
                        help="the base model's repo id, for the card's base_model")
    parser.add_argument("--license", help="licence id for the card (default: card.json's, else apache-2.0)")
    parser.add_argument("--no-samples", action="store_true", help="do not draw sample images for the card")
    parser.add_argument("--sample-steps", type=int, metavar="N",
                        help="sampler steps for the sample images (default 20)")
    parser.add_argument("--code-dir", action="append", default=[], metavar="DIR",
                        help="a folder holding the .py file of a custom component class (repeatable)")
    parser.add_argument("--stage-dir", metavar="DIR", help="build the upload in this new folder and keep it")
    parser.add_argument("--commit-message", help="commit message (default: 'Upload with latentdiff push')")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run `latentdiff push` with parsed arguments; returns the exit status (errors: one line on stderr, 1)."""
    overrides: dict[str, Any] = {}
    if args.license:
        overrides["license"] = args.license
    if args.sample_steps is not None:
        if args.sample_steps < 1:
            print("latentdiff push: error: --sample-steps must be >= 1.", file=sys.stderr)
            return 2
        overrides["sample_steps"] = args.sample_steps
    token = None
    try:
        token = resolve_token()
        push_folder(args.model_dir, args.repo_id, private=args.private, revision=args.revision, token=token,
                    dry_run=args.dry_run, card_info=overrides, base_model=args.base_model,
                    base_model_id=args.base_model_id, samples=not args.no_samples, code_dirs=args.code_dir,
                    stage_dir=args.stage_dir, commit_message=args.commit_message)
    except HubError as err:
        print(f"latentdiff push: error: {_one_line(err, token)}", file=sys.stderr)
        return 1
    except Exception as err:  # anything else still gets one redacted line, never a traceback that may hold a token
        print(f"latentdiff push: error: {type(err).__name__}: {_one_line(err, token)}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m latentdiff.hub MODEL_DIR --repo-id USER/NAME ...`: the same as `latentdiff push`."""
    from latentdiff.parsing import Parser

    parser = add_arguments(Parser(prog="latentdiff push", description=__doc__.splitlines()[0]))
    return run(parser.parse_args(argv))
