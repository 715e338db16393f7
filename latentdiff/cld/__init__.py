"""Critically-damped Langevin diffusion (Dockhorn, Vahdat, Kreis, ICLR 2022): process, HSM loss, samplers.

The code lives next to the pipeline, in `latentdiff/pipelines/cld_process.py` (the process, its kernel and the HSM
loss) and `latentdiff/pipelines/scheduling_cld.py` (the samplers as diffusers schedulers), because a CLD model's
published folder carries both files as remote code (pipelines/ imports only torch, diffusers, transformers and
its siblings). This package is their import name inside latentdiff.
"""

from latentdiff.pipelines.cld_process import CLD, CLDConfig, Perturbed
from latentdiff.pipelines.scheduling_cld import CLDExponentialODEScheduler, SSCSScheduler, time_grid, unet_timestep

__all__ = ["CLD", "CLDConfig", "CLDExponentialODEScheduler", "Perturbed", "SSCSScheduler", "time_grid",
           "unet_timestep"]
