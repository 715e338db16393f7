"""The web page as a Hugging Face Space: copy this file, unchanged, as `app.py` next to a published model.

A Space (Gradio SDK) runs `python app.py`. This file serves the model in its own folder (the diffusers files
model_index.json, unet/, vae/, ... beside it), or the folder or hub repo id in $LATENTDIFF_MODEL, with the same
page as `latentdiff serve`. It needs latentdiff with its app extra, so the Space's requirements.txt holds one
line naming it, e.g. `latentdiff[app] @ git+https://github.com/OWNER/latentdiff` (or `latentdiff[app]` once it is
on PyPI).

Why not a page written against plain diffusers (`trust_remote_code=True`) instead: that would be a second copy of
the page, and of its checks, progress, Stop button, queue and PNG parameters. One copy, installed like any
dependency, keeps the Space and `latentdiff serve` the same page. Example prompts come from prompts/*.jsonl
beside this file when there are any.
"""

import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before anything imports gradio

HERE = Path(__file__).resolve().parent


def main() -> None:
    from latentdiff.app import create_app, example_prompts, launch

    model = os.environ.get("LATENTDIFF_MODEL") or str(HERE)
    demo = create_app(model, examples=example_prompts(folder=HERE / "prompts"))
    # Spaces set GRADIO_SERVER_NAME=0.0.0.0 (and the port); run anywhere else, it stays on this machine.
    launch(demo, host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
           port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))


if __name__ == "__main__":
    main()
