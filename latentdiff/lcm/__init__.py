"""Latent consistency distillation (LCM; Luo et al. 2023): the student's consistency function, the teacher's
DDIM step on the skipping-step grid, the guidance embedding and the consistency loss (`consistency.py`). The loop
is latentdiff.training.distill_lcm."""

from latentdiff.lcm.consistency import (LOSSES, DDIMSolver, boundary_scalings, consistency_function, consistency_loss,
                                        guidance_embedding, predicted_origin_and_noise, sample_guidance,
                                        teacher_ddim_step)

__all__ = ["LOSSES", "DDIMSolver", "boundary_scalings", "consistency_function", "consistency_loss",
           "guidance_embedding", "predicted_origin_and_noise", "sample_guidance", "teacher_ddim_step"]
