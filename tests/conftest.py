"""Shared fixtures (helpers live in helpers.py): offline Hub, few torch threads, a tiny config, fresh Accelerate state."""

from __future__ import annotations

import os

import pytest
import torch

from helpers import tiny_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def config():
    return tiny_config()


@pytest.fixture
def fresh_accelerate_state():
    """Reset Accelerate's process-wide singletons before and after a test that runs a training script in-process
    (an earlier test may have left them initialised with other settings, e.g. another mixed precision)."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    def reset():
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        PartialState._reset_state()

    reset()
    yield
    reset()
