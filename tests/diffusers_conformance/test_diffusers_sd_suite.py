"""diffusers' own fast tests for StableDiffusionPipeline, run against LatentDiffusionPipeline (issue 17).

This file holds none of diffusers' test code: it imports diffusers' test modules from a diffusers source tree that
you point it to, and runs their fast classes with `pipeline_class = LatentDiffusionPipeline`. Without the tree it
is skipped; `test_drop_in.py` beside it (always run) checks the same contract in our own tests.

    pip install parameterized requests_mock   # imported by diffusers' model tests
    DIFFUSERS_TESTS=/path/to/diffusers/tests pytest tests/diffusers_conformance -W ignore::pytest.PytestUnknownMarkWarning

Checked against: the diffusers tests at commit 58eb52c0803ea9af3abec60841c2a093bdf1f951 (main, 2026-08-23), the
newest public diffusers source we could read: it has no v0.42.x tag, and the 0.42.1 sdist on PyPI ships only
`tests/testing_utils.py`, which lacks names these tests import, so the whole tree is that commit's. Installed:
diffusers 0.42.1 (its `pipeline_stable_diffusion.py` differs from that commit's by one return annotation). From
that tree: `tests/pipelines/stable_diffusion/test_stable_diffusion.py` (fast classes TestStableDiffusionPipeline,
...Memory and ...IPAdapter; not the nightly GPU class), which builds on `tests/pipelines/testing_utils/`
(PipelineTesterMixin, MemoryTesterMixin), `tests/pipelines/stable_diffusion/ip_adapter_tester.py`,
`tests/pipelines/pipeline_params.py`, `tests/testing_utils.py` and `tests/models/unets/
test_models_unet_2d_condition.py` (its dummy IP-Adapter state dicts). There, the older
`StableDiffusionPipelineFastTests` / `test_pipelines_common.py` mixins have become these (diffusers PR #14339).
Result there: 43 passed, 20 skipped (5 pickle, 2 network, 13 accelerator), 30-50 s with OMP_NUM_THREADS=1.

Adaptations, each as small as running offline against our class needs:
1. `pipeline_class = LatentDiffusionPipeline` (the components are diffusers' dummy ones, unchanged).
2. Tokenizer: `CLIPTokenizer.from_pretrained("hf-internal-testing/tiny-random-clip")` (a hub download) gives
   `latentdiff.tokenizer.clip_tokenizer(vocab_size=1000)` instead: CLIP's BPE cut to the same 1000-token vocabulary.
3. Tests that compare with a hard-coded slice (made with the hub tokenizer, so other prompt ids) compare with stock
   `StableDiffusionPipeline`'s output on the same components, seed and inputs instead, within 1e-4 (their own
   tolerance is 1e-2): `_against_stock`.
4. Tests that save with `safe_serialization=False` and load the pickle files back are skipped (our from_pretrained
   is safetensors-only unless `use_safetensors=False`; README, "Working with plain diffusers"); each also runs
   unchanged but for its saves, which write safetensors (`..._safetensors`).
5. `test_stable_diffusion_long_prompt` captures the logger of the pipeline's module (`pipe.__module__`, as the
   common tests do) instead of the name of stock's module.
6. `test_encode_prompt_works_in_isolation`: diffusers reads the return names of `encode_prompt` from the class of
   the same name under `diffusers.pipelines`, where a pipeline class from outside diffusers is not (0.42 has no
   class of our name there); it is given ours.
7. Tests that need the Hugging Face Hub (network) are skipped with that reason; CUDA/accelerator tests skip by
   diffusers' own markers.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline

from latentdiff.pipelines import LatentDiffusionPipeline
from latentdiff.tokenizer import clip_tokenizer

SOURCE = os.environ.get("DIFFUSERS_TESTS")
if not SOURCE:
    pytest.skip("set DIFFUSERS_TESTS to a diffusers source tree's tests/ folder to run diffusers' own SD suite",
                allow_module_level=True)
for _name in ("parameterized", "requests_mock"):  # imported by diffusers' model tests (dummy IP-Adapter weights)
    pytest.importorskip(_name, reason=f"diffusers' model tests import {_name}: pip install {_name}")

PACKAGE = "diffusers_tests"  # diffusers' tests/ imported under this name, so that its relative imports resolve
HUB_TOKENIZER = "hf-internal-testing/tiny-random-clip"
PICKLE = ("saves with safe_serialization=False and loads the pickle files back: LatentDiffusionPipeline loads "
          "safetensors only unless use_safetensors=False (README, 'Working with plain diffusers')")
NETWORK = "downloads a model from the Hugging Face Hub (no network here)"


def _import_diffusers_tests(root: Path):
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACKAGE, root / "__init__.py", submodule_search_locations=[str(root)])
        package = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"{PACKAGE}.pipelines.stable_diffusion.test_stable_diffusion")


sd = _import_diffusers_tests(Path(SOURCE).resolve())


class _TinyClipTokenizer:
    """Stands in for CLIPTokenizer in diffusers' get_dummy_components: the hub's tiny tokenizer, offline."""

    @staticmethod
    def from_pretrained(name: str, *args, **kwargs):
        assert name == HUB_TOKENIZER, name
        return _tokenizer()


@functools.lru_cache(maxsize=1)
def _tokenizer():
    return clip_tokenizer(vocab_size=1000)


class _Ours:
    pipeline_class = LatentDiffusionPipeline

    def get_dummy_components(self, time_cond_proj_dim=None):
        with mock.patch.object(sd, "CLIPTokenizer", _TinyClipTokenizer):
            return super().get_dummy_components(time_cond_proj_dim=time_cond_proj_dim)


def _against_stock(test):
    """`test` with its hard-coded expected slices replaced by stock StableDiffusionPipeline's slices from the same
    components, seed and inputs (adaptation 3): run once per class, capturing what it asserts on."""

    def run(self, *args, **kwargs):
        captured = {}
        for cls in (StableDiffusionPipeline, LatentDiffusionPipeline):
            slices = captured[cls] = []
            with mock.patch.object(sd, "assert_tensors_close", lambda actual, *_, **__: slices.append(actual.clone())):
                self.pipeline_class = cls
                try:
                    test(self, *args, **kwargs)
                finally:
                    del self.pipeline_class
        ours, stock = captured[LatentDiffusionPipeline], captured[StableDiffusionPipeline]
        assert len(ours) == len(stock) > 0
        for a, b in zip(ours, stock):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)

    return functools.wraps(test)(run)


def _with_safetensors(test):
    """`test` with every save_pretrained writing safetensors (adaptation 4)."""
    save = DiffusionPipeline.save_pretrained

    def run(self, *args, **kwargs):
        with mock.patch.object(DiffusionPipeline, "save_pretrained",
                               lambda pipe, *a, **kw: save(pipe, *a, **{**kw, "safe_serialization": True})):
            test(self, *args, **kwargs)

    return functools.wraps(test)(run)


def _skip(reason: str):
    def test(self):
        pytest.skip(reason)

    return test


Base = sd.TestStableDiffusionPipeline


class TestLatentDiffusionPipeline(_Ours, Base):
    # 3. hard-coded slices -> stock's output on the same components
    test_stable_diffusion_ddim = _against_stock(Base.test_stable_diffusion_ddim)
    test_stable_diffusion_lcm = _against_stock(Base.test_stable_diffusion_lcm)
    test_stable_diffusion_lcm_custom_timesteps = _against_stock(Base.test_stable_diffusion_lcm_custom_timesteps)
    test_stable_diffusion_ddim_factor_8 = _against_stock(Base.test_stable_diffusion_ddim_factor_8)
    test_stable_diffusion_pndm = _against_stock(Base.test_stable_diffusion_pndm)
    test_stable_diffusion_k_lms = _against_stock(Base.test_stable_diffusion_k_lms)
    test_stable_diffusion_k_euler_ancestral = _against_stock(Base.test_stable_diffusion_k_euler_ancestral)
    test_stable_diffusion_k_euler = _against_stock(Base.test_stable_diffusion_k_euler)
    test_stable_diffusion_negative_prompt = _against_stock(Base.test_stable_diffusion_negative_prompt)

    # 4. pickle saves
    test_save_load_local = _skip(PICKLE)
    test_save_load_local_safetensors = _with_safetensors(Base.test_save_load_local)
    test_save_load_optional_components = _skip(PICKLE)
    test_save_load_optional_components_safetensors = _with_safetensors(Base.test_save_load_optional_components)
    test_loading_with_variants = _skip(PICKLE)
    test_loading_with_variants_safetensors = _with_safetensors(Base.test_loading_with_variants)
    test_loading_with_incorrect_variants_raises_error = _skip(PICKLE)
    test_loading_with_incorrect_variants_raises_error_safetensors = _with_safetensors(
        Base.test_loading_with_incorrect_variants_raises_error)
    test_torch_dtype_dict = _skip(PICKLE)
    test_torch_dtype_dict_safetensors = _with_safetensors(Base.test_torch_dtype_dict)

    # 7. network
    test_stable_diffusion_no_safety_checker = _skip(NETWORK)
    test_pipeline_accept_tuple_type_unet_sample_size = _skip(NETWORK)

    def test_stable_diffusion_long_prompt(self):
        # 5. the pipeline's own module logger
        get_logger = sd.logging.get_logger
        stock_module = StableDiffusionPipeline.__module__
        with mock.patch.object(sd.logging, "get_logger", lambda name=None: get_logger(
                LatentDiffusionPipeline.__module__ if name == stock_module else name)):
            super().test_stable_diffusion_long_prompt()

    def test_encode_prompt_works_in_isolation(self):
        # 6. encode_prompt's return names read from our class
        import diffusers.pipelines

        with mock.patch.object(diffusers.pipelines, "LatentDiffusionPipeline", LatentDiffusionPipeline, create=True):
            super().test_encode_prompt_works_in_isolation()


class TestLatentDiffusionPipelineMemory(_Ours, sd.TestStableDiffusionPipelineMemory):
    pass


class TestLatentDiffusionPipelineIPAdapter(_Ours, sd.TestStableDiffusionPipelineIPAdapter):
    pass
