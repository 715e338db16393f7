"""Pretraining a text encoder on captions (alone, or with their pictures' layout), before (and instead of)
learning it jointly with the UNet."""

from latentdiff.captionlm.layout import LayoutHead, binding, layout_loss, thumbnails
from latentdiff.captionlm.objective import next_token_loss

__all__ = ["LayoutHead", "binding", "layout_loss", "next_token_loss", "thumbnails"]
