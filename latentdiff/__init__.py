"""latentdiff: text-to-image latent diffusion, native to the Hugging Face ecosystem."""

import logging

from latentdiff.version import __version__


class _NoTorchvisionNotice(logging.Filter):
    # diffusers imports transformers' CLIPImageProcessor (for SD's safety checker, which latentdiff never uses);
    # without torchvision, transformers then warns that it falls back to the PIL processor. That is exactly
    # right for us, and torchvision has no CPU build here, so drop this one notice and nothing else.
    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_NoTorchvisionNotice())

__all__ = ["__version__", "LatentDiffusionPipeline", "build_pipeline"]


def __getattr__(name):
    # Lazy exports: `import latentdiff` stays cheap (the CLI's --help and --version need no torch).
    if name == "LatentDiffusionPipeline":
        from latentdiff.pipelines import LatentDiffusionPipeline

        return LatentDiffusionPipeline
    if name == "build_pipeline":
        from latentdiff.presets import build_pipeline

        return build_pipeline
    raise AttributeError(f"module 'latentdiff' has no attribute {name!r}")
