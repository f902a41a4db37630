"""Shared fixtures and parametrizations."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# The oracle modules sit beside the tests (tests/ is not a package under importlib mode).
sys.path.insert(0, str(Path(__file__).parent))

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
        ],
    ),
]
