import sys
from pathlib import Path

import pytest
import torch


@pytest.fixture
def tiny_pipe():
    """A fresh tiny-preset pipeline (random weights, seed 0) on CPU, progress bars off."""
    from latentdiff import build_pipeline

    pipe = build_pipeline("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def gen():
    """gen(seed) -> a CPU torch.Generator seeded with `seed`."""
    return lambda seed=0: torch.Generator("cpu").manual_seed(seed)


@pytest.fixture
def report(capsys):
    """report(text): print straight to the terminal, past pytest's capture (numbers CI logs should show)."""

    def _report(text: str) -> None:
        with capsys.disabled():
            print(f"\n[report] {text}")

    return _report


@pytest.fixture
def fresh_accelerator_state():
    """Accelerate's process-wide state reset before and after, so that each training run in a test starts afresh."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


# Shared test helpers (tests/messy.py) are imported as plain modules: pytest runs in importlib mode, which
# does not put tests/ on sys.path by itself.
sys.path.insert(0, str(Path(__file__).parent))
