"""Quiet tools (issue 16, part 6): what latentdiff writes loads in stock diffusers without warnings."""

from __future__ import annotations

import json
import logging

from diffusers import StableDiffusionPipeline

from latentdiff import build_pipeline
from latentdiff.pipelines import LatentDiffusionPipeline


def test_no_null_genie_head_in_model_index_and_stock_load_is_quiet(tmp_path, caplog):
    build_pipeline("tiny").save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert "genie_head" not in index
    assert LatentDiffusionPipeline.from_pretrained(tmp_path).genie_head is None  # the optional head stays None
    logger = logging.getLogger("diffusers")
    logger.addHandler(caplog.handler)  # diffusers' logger does not propagate to the root logger
    try:
        with caplog.at_level(logging.WARNING, logger="diffusers"):
            StableDiffusionPipeline.from_pretrained(tmp_path, safety_checker=None, requires_safety_checker=False)
    finally:
        logger.removeHandler(caplog.handler)
    assert not [r.getMessage() for r in caplog.records if "genie_head" in r.getMessage()]
