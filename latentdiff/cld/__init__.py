"""Critically-damped Langevin diffusion (Dockhorn, Vahdat, Kreis, ICLR 2022): process, HSM loss, samplers."""

from .process import CLD, CLDConfig, Perturbed
from .samplers import CLDExponentialODEScheduler, SSCSScheduler, time_grid

__all__ = ["CLD", "CLDConfig", "CLDExponentialODEScheduler", "Perturbed", "SSCSScheduler", "time_grid"]
