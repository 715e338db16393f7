"""The Diffusers pipeline classes of latentdiff (installed as `latentdiff.pipelines`).

Each file here imports only torch, diffusers, transformers and its siblings, so that it can be uploaded next to
weights and loaded by plain diffusers with `trust_remote_code=True`.
"""

from .pipeline_latent_diffusion import LatentDiffusionPipeline, LatentDiffusionPipelineOutput
from .samplers import SAMPLERS, make_scheduler, sampler_names

__all__ = ["LatentDiffusionPipeline", "LatentDiffusionPipelineOutput", "SAMPLERS", "make_scheduler", "sampler_names"]
