"""GENIE (Dockhorn, Vahdat, Kreis, "GENIE: Higher-Order Denoising Diffusion Solvers", NeurIPS 2022).

A second-order truncated Taylor sampler on DDIM's ODE dx̄/dγ = ε_θ, whose d_γ ε_θ comes from a small head on the
UNet's last features, distilled from the teacher's own Jacobian-vector products.

    derivative.py  the teacher's d_γ ε by forward-mode AD (GammaSchedule: γ_t and a continuous t(γ))
    distill.py     one distillation example and its loss (the loop: latentdiff.training.distill_genie)
    GENIEHead      the d_γ ε predictor (ModelMixin: save_pretrained / from_pretrained) and GENIEScheduler, the
                   sampler, live beside the pipeline (pipelines/genie_head.py, pipelines/scheduling_genie.py): the
                   pipeline imports them, so "taylor2" is a named sampler, diffusers finds the head's class when a
                   folder names it, and both travel with the pipeline file to the hub

    pipe = LatentDiffusionPipeline.from_pretrained(MODEL, genie_head=GENIEHead.from_pretrained(HEAD_DIR))
    pipe.set_sampler("taylor2")
"""

from latentdiff.genie.derivative import GammaSchedule, ode_derivative, oracle_derivative, teacher_epsilon
from latentdiff.pipelines.genie_head import GENIEHead
from latentdiff.pipelines.scheduling_genie import GENIEScheduler, capture_genie_inputs

__all__ = ["GENIEHead", "GENIEScheduler", "GammaSchedule", "capture_genie_inputs", "ode_derivative",
           "oracle_derivative", "teacher_epsilon"]
