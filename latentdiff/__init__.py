"""latentdiff: text-to-image latent diffusion, native to the Hugging Face ecosystem."""

from latentdiff.version import __version__

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
