"""DDPM / VP diffusion (Ho et al. 2020), the process of Stable Diffusion: its training objective."""

from latentdiff.ddpm.objective import DDPMObjective, DDPMNoised

__all__ = ["DDPMNoised", "DDPMObjective"]
