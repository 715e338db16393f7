"""The training-objective interface and the table of objectives, one per noise process.

Every objective turns clean latents into a training example and scores the UNet's prediction on it:

    noised = objective.perturb(z0, generator)   # z0 (B, C, h, w): VAE latents * scaling_factor
    pred = unet(noised.noisy, noised.timesteps, text).sample
    loss = objective.loss(pred, noised)         # (B,), unreduced: the loop reduces and logs

`Noised` carries the UNet's input and timestep input; each objective's subclass adds what its loss needs. The
training loop calls only these two methods, whatever the process. A row of `OBJECTIVES` says, for one process
(a key of `latentdiff.pipelines.processes.PROCESSES`), how to make the scheduler config a from-scratch model is
trained and saved with, and how to build its objective from that config and the run's options; the rows'
code lives in each method's own package (latentdiff/ddpm, latentdiff/cld, latentdiff/flow).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch


@dataclass
class Noised:
    noisy: torch.Tensor  # the UNet's input (B, C_in, h, w)
    timesteps: torch.Tensor  # the UNet's timestep input (B,)


class Objective(Protocol):
    def perturb(self, z0: torch.Tensor, generator: torch.Generator | None = None) -> Noised: ...

    def loss(self, prediction: torch.Tensor, noised: Noised) -> torch.Tensor: ...


TIMESTEP_DENSITIES = ("uniform", "logit_normal")  # the process-agnostic ones, of `timestep_density`


@dataclass(frozen=True)
class ObjectiveRow:
    # (run options, base scheduler config, pretrained?) -> the scheduler config the run trains and saves: the base
    # is the preset's VP process for a from-scratch run, the folder's scheduler config when fine-tuning
    scheduler_config: Callable[[Any, dict, bool], dict]
    # (scheduler config, run options) -> the objective; ValueError for options that do not fit
    build: Callable[[dict, Any], Objective]
    # (run options) -> None; ValueError naming the flag for an option this process cannot take
    check: Callable[[Any], None] = lambda options: None
    # the --timestep-sampling densities this process can train with
    timestep_samplings: tuple[str, ...] = TIMESTEP_DENSITIES


def objective_rows() -> dict[str, ObjectiveRow]:
    """process name -> its ObjectiveRow. Imported lazily: each row's package imports its own dependencies."""
    from latentdiff.cld.objective import CLD_OBJECTIVE
    from latentdiff.ddpm.objective import DDPM_OBJECTIVE
    from latentdiff.flow.objective import FLOW_OBJECTIVE

    return {"ddpm": DDPM_OBJECTIVE, "cld": CLD_OBJECTIVE, "flow": FLOW_OBJECTIVE}


def objective_row(process: str) -> ObjectiveRow:
    rows = objective_rows()
    if process not in rows:
        raise ValueError(f"--process must be one of {', '.join(rows)}, got {process!r}.")
    return rows[process]



def timestep_density(kind: str, batch: int, generator: torch.Generator | None, device, *, shift: float = 1.0,
                     mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """u in (0, 1), (B,), drawn from a training-time density over the process's time (0: data, 1: noise).

    "uniform"      u ~ U(0, 1)
    "logit_normal" u = sigmoid(n), n ~ N(mean, std): Esser et al. 2024 (SD3), sec. 3.1, eq. 19; more weight on
                   the middle of the process, where the task is hardest
    then shifted towards noise by `shift` (SD3 sec. 5.3.2, eq. 23): u' = shift u / (1 + (shift - 1) u).
    """
    if kind == "uniform":
        u = torch.rand(batch, generator=generator, device=device)
    elif kind == "logit_normal":
        u = torch.sigmoid(mean + std * torch.randn(batch, generator=generator, device=device))
    else:
        raise ValueError(f"--timestep-sampling must be one of {', '.join(TIMESTEP_DENSITIES)}, got {kind!r}.")
    return u if shift == 1.0 else shift * u / (1 + (shift - 1) * u)
