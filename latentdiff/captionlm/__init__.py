"""Pretraining a text encoder on captions alone, before (and instead of) learning it jointly with the UNet."""

from latentdiff.captionlm.objective import next_token_loss

__all__ = ["next_token_loss"]
